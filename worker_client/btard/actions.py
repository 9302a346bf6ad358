"""What a peer asks its driver to do: the :class:`Action` types the protocol core returns.

A driver carries them out in order (:func:`worker_client.drive.dispatch.carry_out` against a
``Transport``): post on the bulletin board, send a tensor on a private channel, compute a gradient,
fetch evidence by hash, finish the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from btard_wire import payloads as M
from btard_wire.envelope import Envelope

if TYPE_CHECKING:
    from .state import StepResult


@dataclass(frozen=True)
class Action:
    """Something a peer asks its driver to do (:func:`worker_client.drive.dispatch.carry_out`)."""


@dataclass(frozen=True)
class PostEnvelope(Action):
    """Post ``envelope`` on the bulletin board (the site relays it to the whole group)."""

    envelope: Envelope


TENSOR_KINDS = ("part", "aggregate")


@dataclass(frozen=True)
class SendTensor(Action):
    """Send raw little-endian float32 ``data`` to peer ``to`` on a private channel: gradient part ``part``
    to its aggregator (``kind="part"``, the scatter) or the aggregated part ``a_part`` to a group member
    (``kind="aggregate"``, the all-gather). ``header`` is the sender's signed tensor header, if any."""

    kind: str
    to: str
    part: int
    data: bytes
    header: M.TensorHeader | None = None

    def __post_init__(self) -> None:
        if self.kind not in TENSOR_KINDS:
            raise ValueError(f"SendTensor kind must be one of {TENSOR_KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class ComputeGradient(Action):
    """Compute the flat float32 gradient of the model state ``model_ref`` on the public batch ``seed``
    and hand it back with :meth:`BtardPeer.on_gradient` (``request_id``). ``purpose`` is ``own``,
    ``validate`` (recalculation of a target) or ``verdict`` (checking someone else's recalculation)."""

    request_id: str
    seed: int
    model_ref: Any
    step: int
    peer: str
    purpose: str
    flip_labels: bool = False
    batch_size: int = 0  # 0: the driver's batch size; else this many samples (ProtocolParams.global_batch)


@dataclass(frozen=True)
class FetchTensor(Action):
    """Fetch the tensor whose SHA-256 is ``sha256`` (a committed part named as evidence, too large to
    travel inline) from any of ``holders`` and hand it back with :meth:`BtardPeer.on_tensor`. Content
    addressed: any copy with that hash will do, from any holder (:meth:`BtardPeer.serve_tensor`); the
    in-memory transport asks the holders directly, the networked worker maps it to the data plane."""

    sha256: str
    holders: tuple[str, ...]
    step: int
    numel: int


@dataclass(frozen=True)
class Finish(Action):
    """The step is over; ``result`` is this peer's view of it (the driver reports it to the site)."""

    result: StepResult
