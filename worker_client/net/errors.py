"""The data plane's one error type, and the helper that turns every transport failure into it."""

from __future__ import annotations

import asyncio

from btard_wire.errors import ProtocolError


class DataPlaneError(ProtocolError):
    """A data-plane call failed. ``code`` is stable; ``peer`` is the protocol peer id (or p2p id) at fault.

    Codes: ``timeout``, ``unreachable``, ``refused``, ``not_found``, ``size``, ``malformed``, ``hash``,
    ``busy``, ``wrong_run``; the worker tells "withheld" (an ELIMINATE) from "lied" (an ACCUSE) by them.
    """

    def __init__(self, code: str, message: str, *, peer: str = ""):
        super().__init__(message, code=code)
        self.peer = peer

    @classmethod
    def coded(cls, code: str, message: str) -> DataPlaneError:
        return cls(code, message)


async def bounded(coro, *, peer: str, timeout: float, what: str):
    """Await ``coro`` within ``timeout``; every transport failure becomes a :class:`DataPlaneError`."""
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise DataPlaneError("timeout", f"{peer[:8]} did not {what} in {timeout:.1f}s", peer=peer) from None
    except asyncio.IncompleteReadError:
        raise DataPlaneError("unreachable", f"{peer[:8]} closed the stream early", peer=peer) from None
    except DataPlaneError:
        raise
    except ProtocolError as exc:
        raise DataPlaneError("malformed", f"{peer[:8]}: {exc}", peer=peer) from None
    except (ConnectionError, OSError) as exc:
        raise DataPlaneError("unreachable", f"{peer[:8]}: {exc}", peer=peer) from None
