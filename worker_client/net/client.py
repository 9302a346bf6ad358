"""The data plane's calls to other peers: dial, push, fetch (by slot or by hash), ping.

The requester always knows how many float32 values it expects and checks the response header and the
body length against that before it reads or allocates anything (:mod:`.wire`); every call has a
timeout, and every failure is a :class:`~.errors.DataPlaneError` with the peer at fault. Only the
addresses :class:`~.policy.AddressPolicy` allows are dialled, and a peer without a known address is
never dialled blind.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterable

import torch
from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

from btard_wire.errors import ProtocolError

from ..btard.tensors import bytes_to_tensor, sha256_hex
from .directory import Directory
from .errors import DataPlaneError, bounded
from .policy import AddressPolicy
from .server import Traffic
from .store import EVIDENCE_KIND, as_bytes
from .wire import (
    FetchRequest,
    FetchResponse,
    InfoRequest,
    PingRequest,
    PutRequest,
    encode_header,
    read_body,
    read_response,
    write_body,
)

PING_HANDLER = "btard/v1/ping"
FETCH_CODES = frozenset({"not_found", "refused", "size", "wrong_run", "busy"})


def handler_name(run: str) -> str:
    return f"btard/{run}/v1/data"


def split_p2p_addr(addr: str) -> tuple[str | None, str]:
    """``/ip4/../tcp/N/p2p/<id>`` -> (``<id>``, ``/ip4/../tcp/N``)."""
    if "/p2p/" in addr:
        base, _, peer = addr.rpartition("/p2p/")
        return peer, base
    return None, addr


class Client:
    def __init__(self, p2p, directory: Directory, policy: AddressPolicy, traffic: Traffic, *,
                 run: Callable[[], str], call_timeout: float):
        self.p2p = p2p
        self.directory, self.policy, self.traffic = directory, policy, traffic
        self.run = run
        self.call_timeout = call_timeout
        self.connected: set[str] = set()
        self.hash_bodies = True  # fetched bodies arrive hashed (HashedBytes); see DataPlane.hash_bodies

    # --- dialling -----------------------------------------------------------------------------
    def dialable(self, addrs: Iterable[object], limit: int = 16) -> list[str]:
        return self.policy.allowed(addrs, limit=limit)

    async def connect(self, p2p_id: str, addrs: Iterable[str], *, timeout: float | None = None) -> None:
        """Dial a peer at its announced addresses the address policy allows.

        Raises ``DataPlaneError``: ``refused`` when no address may be dialled (private, loopback, DNS or
        garbage; nothing is sent), ``unreachable`` when the dial failed.
        """
        peer = self.directory.peer_of(p2p_id) or p2p_id
        addrs = list(addrs)
        allowed = self.dialable(addrs)
        if not allowed:
            why = self.policy.refusal(addrs[0]) if addrs else "no address given"
            raise DataPlaneError("refused", f"no address of {str(p2p_id)[:12]} may be dialled ({why})", peer=peer)
        try:
            target = PeerID.from_base58(p2p_id)
            maddrs = [Multiaddr(split_p2p_addr(a)[1]) for a in allowed]
        except Exception:  # noqa: BLE001 - base58 and multiaddr parsers raise several kinds
            raise DataPlaneError("malformed", f"{str(p2p_id)[:12]} is not a peer id", peer=peer) from None
        try:
            # hivemind's P2P has no public "dial these addresses" call (P2P.is_identity_taken uses the
            # daemon client the same way); without the addresses p2pd would look the peer up on its own.
            await asyncio.wait_for(self.p2p._client.connect(target, maddrs), timeout or self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - timeouts, and the daemon reports dial errors as ControlFailure
            raise DataPlaneError("unreachable", f"cannot dial {p2p_id[:12]}: {exc or 'timed out'}",
                                 peer=peer) from None
        self.connected.add(p2p_id)

    async def _is_connected(self, p2p_id: str) -> bool:
        try:
            return any(info.peer_id.to_base58() == p2p_id for info in await self.p2p.list_peers())
        except Exception:  # noqa: BLE001 - a daemon error: treat as not connected
            return False

    async def _open(self, p2p_id: str, addrs: list[str], name: str, peer: str):
        if p2p_id not in self.connected:
            if addrs:
                await self.connect(p2p_id, addrs)
            elif not await self._is_connected(p2p_id):
                # Without an address the daemon would look the peer up on its own: never let it dial blind.
                raise DataPlaneError("unreachable", f"no address known for {peer[:8]}", peer=peer)
        try:
            _, reader, writer = await self.p2p.call_binary_stream_handler(PeerID.from_base58(p2p_id), name)
        except Exception as exc:  # noqa: BLE001 - the daemon reports dial errors as ControlFailure
            self.connected.discard(p2p_id)
            raise DataPlaneError("unreachable", f"cannot open a stream to {peer[:8]}: {exc}", peer=peer) from None
        return reader, writer

    async def _call(self, peer: str, p2p_id: str, addrs: list[str], name: str, request,
                    *, expected_bytes: int | None, timeout: float) -> tuple[FetchResponse, bytes | None]:
        async def go():
            reader, writer = await self._open(p2p_id, addrs, name, peer)
            try:
                header = encode_header(request)
                writer.write(header)
                await writer.drain()
                self.traffic.bytes_sent += len(header)
                response = await read_response(reader)
                self.traffic.bytes_received += 4 + len(response.model_dump_json())
                if not response.ok or expected_bytes is None:
                    return response, None
                if response.numel * 4 != expected_bytes:
                    raise DataPlaneError("size", f"{peer[:8]} offers {response.numel} values, "
                                                 f"expected {expected_bytes // 4}", peer=peer)
                body = await read_body(reader, expected_bytes=expected_bytes, digest=self.hash_bodies)
                self.traffic.bytes_received += 8 + len(body)
                return response, body
            finally:
                writer.close()

        return await bounded(go(), peer=peer, timeout=timeout, what="answer")

    # --- calls --------------------------------------------------------------------------------
    async def send(self, peer: str, *, step: int, kind: str, key: str, data: bytes | torch.Tensor,
                   header: dict | None = None, wait: float | None = None, timeout: float | None = None) -> None:
        """Push a tensor to ``peer`` (it checks the size against its layout before reading the body).

        Raises :class:`DataPlaneError`: ``refused``/``size`` when the receiver does not accept it,
        ``timeout``/``unreachable`` on network trouble.
        """
        body = as_bytes(data)
        p2p_id, addrs = self.directory.resolve(peer)
        timeout = timeout or self.call_timeout
        request = PutRequest(run=self.run(), step=step, kind=kind, key=key, numel=len(body) // 4, header=header,
                             wait=min(timeout * 0.8 if wait is None else wait, 600.0))

        async def go():
            reader, writer = await self._open(p2p_id, addrs, handler_name(request.run), peer)
            try:
                head = encode_header(request)
                writer.write(head)
                try:
                    await write_body(writer, body)
                    self.traffic.bytes_sent += len(head) + 8 + len(body)
                except (ConnectionError, OSError):
                    pass  # the receiver may refuse and close before reading the body: read why
                return await read_response(reader)
            finally:
                writer.close()

        response = await bounded(go(), peer=peer, timeout=timeout, what="accept")
        if not response.ok:
            raise DataPlaneError(response.code or "refused", f"{peer[:8]}: {response.message}", peer=peer)

    async def fetch_bytes_with_header(self, peer: str, *, step: int, kind: str, key: str, numel: int,
                                      start: int = 0, wait: float | None = None,
                                      timeout: float | None = None) -> tuple[bytes, dict | None]:
        """Fetch ``numel`` raw float32 values ``peer`` published, and the signed header it served (or None)."""
        p2p_id, addrs = self.directory.resolve(peer)
        timeout = timeout or self.call_timeout
        wait = timeout * 0.8 if wait is None else wait
        request = FetchRequest(run=self.run(), step=step, kind=kind, key=key, start=start, numel=numel,
                               wait=min(wait, 600.0))
        response, body = await self._call(peer, p2p_id, addrs, handler_name(request.run), request,
                                          expected_bytes=4 * numel, timeout=timeout)
        if not response.ok:
            code = response.code if response.code in FETCH_CODES else "refused"
            raise DataPlaneError(code, f"{peer[:8]}: {response.message or response.code}", peer=peer)
        assert body is not None
        return body, response.header

    async def fetch_bytes(self, peer: str, *, step: int, kind: str, key: str, numel: int, start: int = 0,
                          wait: float | None = None, timeout: float | None = None) -> bytes:
        return (await self.fetch_bytes_with_header(peer, step=step, kind=kind, key=key, numel=numel, start=start,
                                                   wait=wait, timeout=timeout))[0]

    async def fetch(self, peer: str, *, step: int, kind: str, key: str, numel: int, start: int = 0,
                    wait: float | None = None, timeout: float | None = None) -> torch.Tensor:
        """Fetch a tensor ``peer`` published; its size is checked against ``numel`` before it is read.

        The server may hold the request up to ``wait`` seconds while the tensor is not published yet.
        Raises :class:`DataPlaneError`; a NaN/inf tensor raises it with code ``malformed``.
        """
        data = await self.fetch_bytes(peer, step=step, kind=kind, key=key, numel=numel, start=start,
                                      wait=wait, timeout=timeout)
        try:
            return bytes_to_tensor(data, expected_numel=numel)
        except ProtocolError as exc:
            raise DataPlaneError("malformed", f"{peer[:8]}: {exc}", peer=peer) from None

    async def fetch_evidence(self, peer: str, *, step: int, sha256: str, numel: int,
                             timeout: float | None = None) -> bytes:
        """Fetch the ``numel`` float32 values whose SHA-256 is ``sha256`` from ``peer`` (content addressed:
        any holder's copy will do). The size is checked before the body is read, the hash as it arrives; a copy
        that does not hash to ``sha256`` raises :class:`DataPlaneError` with code ``hash``."""
        data = await self.fetch_bytes(peer, step=step, kind=EVIDENCE_KIND, key=sha256, numel=numel, wait=0.0,
                                      timeout=timeout)
        if sha256_hex(data) != sha256:  # the digest taken while the body arrived
            raise DataPlaneError("hash", f"{peer[:8]} served evidence that does not hash to {sha256[:16]}",
                                 peer=peer)
        return data

    async def fetch_info(self, peer: str, *, step: int, kind: str, key: str, wait: float = 0.0,
                         timeout: float | None = None) -> FetchResponse:
        p2p_id, addrs = self.directory.resolve(peer)
        request = InfoRequest(run=self.run(), step=step, kind=kind, key=key, wait=max(0.0, min(wait, 600.0)))
        response, _ = await self._call(peer, p2p_id, addrs, handler_name(request.run), request,
                                       expected_bytes=None, timeout=timeout or self.call_timeout)
        if not response.ok:
            raise DataPlaneError(response.code or "refused", f"{peer[:8]}: {response.message}", peer=peer)
        return response

    async def ping(self, p2p_id: str, addrs: Iterable[str], *, timeout: float = 10.0) -> float:
        """Dial ``p2p_id`` at ``addrs`` and round-trip a ping; returns the seconds it took.

        The answer must echo our random nonce and name ``p2p_id`` as the peer that answered (the
        transport authenticates it), else :class:`DataPlaneError` ``malformed``. This is how an
        active peer checks a newcomer's announced address (``btard-worker doctor``).
        """
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        nonce = secrets.token_hex(8)
        response, _ = await self._call(p2p_id, p2p_id, list(addrs), PING_HANDLER, PingRequest(nonce=nonce),
                                       expected_bytes=None, timeout=timeout)
        info = response.info or {}
        if not response.ok or info.get("nonce") != nonce or info.get("p2p_id") != p2p_id:
            raise DataPlaneError("malformed", "the peer answered the ping wrongly", peer=p2p_id)
        return loop.time() - t0
