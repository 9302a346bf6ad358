"""Payload schemas of the BTARD broadcast phases, and the signed header of a deviating tensor.

Every broadcast is a :class:`~btard_wire.envelope.Envelope` whose ``phase`` is one of
:data:`~btard_wire.BROADCAST_PHASES` and whose ``payload`` is one of the models below, selected by its
``type`` discriminator; ``type`` must equal the envelope's phase. :func:`parse_payload` is the only way
the protocol and the site read a payload: anything malformed raises
:class:`~btard_wire.errors.ProtocolError` with a reason, never another exception. The site checks the
``verdict`` and ``eliminate`` payloads it acts on with the same models the peers sign.

See ``docs/protocol.md`` for when each message is sent and what each check proves.
"""

from __future__ import annotations

import enum
import hashlib
import math
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from . import BROADCAST_PHASES
from .envelope import Identity, b64d, b64e, canonical_json, load_public_key
from .errors import ProtocolError
from .json import validate

MAX_GROUP = 1024
# Inline evidence tensors (a contested part travels inside the accusation) are capped so an accusation
# fits in one envelope (envelope.MAX_ENVELOPE_BYTES = 256 KiB, base64 inflates by 4/3).
MAX_INLINE_FLOATS = 40_000

PeerId = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegFinite = Annotated[float, Field(allow_inf_nan=False, ge=0.0)]
Reason = Annotated[str, Field(max_length=500)]


class FaultKind(enum.StrEnum):
    """What a verdict says went wrong. Values are stable strings stored by the site (``str()`` is the value)."""

    part_mismatch = "part_mismatch"            # a signed part whose hash is not the committed one
    malformed_part = "malformed_part"          # a committed part with NaN/inf (provable from the commitment)
    aggregate_mismatch = "aggregate_mismatch"  # a signed aggregate whose hash is not the broadcast H(a_j)
    wrong_distance = "wrong_distance"          # aggregator's d_ij disagrees with ||g_i[j] - a_j||
    wrong_scalar = "wrong_scalar"              # contributor's s_kj disagrees with <z[j], g_k[j] - a_j>
    bad_aggregate = "bad_aggregate"            # CenteredClip fixed point fails along z (Sec. 3.2)
    bad_broadcast = "bad_broadcast"            # a broadcast that is well signed but inconsistent
    bad_reveal = "bad_reveal"                  # MPRNG reveal does not match its commitment
    withheld_reveal = "withheld_reveal"        # MPRNG reveal missing after its deadline
    recalc = "recalc"                          # validation by recalculation failed (Sec. 3.3)
    false_accusation = "false_accusation"      # verdict against an accuser whose evidence failed


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommitPayload(_Payload):
    """Step 3: ``C_i = [H(g_i[1]), ..., H(g_i[n])]`` in group order (hex SHA-256 of the parts)."""

    type: Literal["commit"] = "commit"
    hashes: list[Hex64] = Field(min_length=1, max_length=MAX_GROUP)


class AggResultPayload(_Payload):
    """Step 5: aggregator of part ``part`` publishes ``H(a_j)`` and ``d_kj = ||g_k[j] - a_j||``."""

    type: Literal["agg_result"] = "agg_result"
    part: int = Field(ge=0, lt=MAX_GROUP)
    hash: Hex64
    distances: dict[PeerId, NonNegFinite] = Field(max_length=MAX_GROUP)


class MprngCommitPayload(_Payload):
    """Step 6: ``H(x_i)`` (bound to run, step and sender, see :mod:`.mprng`)."""

    type: Literal["mprng_commit"] = "mprng_commit"
    hash: Hex64


class MprngRevealPayload(_Payload):
    type: Literal["mprng_reveal"] = "mprng_reveal"
    value: Hex64


class ScalarsPayload(_Payload):
    """Step 7: ``s_ij = <z[j], g_i[j] - a_j>`` for every part j, in group order."""

    type: Literal["scalars"] = "scalars"
    values: list[Finite] = Field(min_length=1, max_length=MAX_GROUP)


class TensorHeader(BaseModel):
    """A sender's signature over a bulk tensor it sent on a private channel.

    Honest peers never need one: a tensor whose hash equals the sender's signed broadcast (commitment
    or ``H(a_j)``) is already attributable. A tensor that differs from the broadcast is only
    attributable with this header; without it the receiver treats the tensor as not received
    (ELIMINATE). **(ours)**
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str = Field(min_length=1, max_length=64)
    step: int = Field(ge=0)
    kind: Literal["part", "aggregate"]
    sender: PeerId
    part: int = Field(ge=0, lt=MAX_GROUP)
    sha256: Hex64
    signature: str = Field(default="", max_length=200)

    def signing_bytes(self) -> bytes:
        return b"btard-tensor:" + canonical_json(self.model_dump(exclude={"signature"}))

    def verify(self, public_key_b64: str) -> None:
        try:
            load_public_key(public_key_b64).verify(b64d(self.signature, what="signature"), self.signing_bytes())
        except InvalidSignature:
            raise ProtocolError(f"bad signature on {self.kind} header from {self.sender[:8]}",
                                code="signature") from None


def sign_tensor_header(identity: Identity, *, run: str, step: int, kind: str, part: int,
                       data: bytes) -> TensorHeader:
    unsigned = TensorHeader(run=run, step=step, kind=kind, sender=identity.peer_id, part=part,
                            sha256=hashlib.sha256(data).hexdigest())
    return unsigned.model_copy(update={"signature": b64e(identity.sign(unsigned.signing_bytes()))})


class AccusePayload(_Payload):
    """ACCUSE(sender, accused): evidence every peer checks itself (Sec. 3, "ACCUSE").

    ``evidence`` lists digests of signed envelopes the accusation rests on. ``part`` names the part
    concerned; ``data`` carries a contested part inline (base64 little-endian float32, checked by
    every verifier against the committed hash); ``header`` carries the accused's signed tensor header
    for mismatch accusations; ``target_step`` is the step a recalculation refers to.
    """

    type: Literal["accuse"] = "accuse"
    accused: PeerId
    kind: FaultKind
    evidence: list[Hex64] = Field(default_factory=list, max_length=64)
    reason: Reason = ""
    part: int | None = Field(default=None, ge=0, lt=MAX_GROUP)
    data: str | None = Field(default=None, max_length=4 * MAX_INLINE_FLOATS * 4 // 3 + 8)
    header: TensorHeader | None = None
    target_step: int | None = Field(default=None, ge=0)


class EliminatePayload(_Payload):
    """ELIMINATE(sender, target): an unprovable private-channel fault; both leave the group."""

    type: Literal["eliminate"] = "eliminate"
    target: PeerId
    reason: Reason = ""


class VerdictPayload(_Payload):
    """A peer's signed verdict. The site bans ``guilty`` once a majority of the step's group signed a
    verdict naming the same ``guilty`` peer. ``accuser`` is null for faults everyone sees on the board."""

    type: Literal["verdict"] = "verdict"
    guilty: PeerId
    accuser: PeerId | None = None
    accused: PeerId
    kind: FaultKind
    evidence: list[Hex64] = Field(default_factory=list, max_length=64)
    reason: Reason = ""


class ValidationPayload(_Payload):
    """Every peer's end-of-checks report for the step (ours: it doubles as the step's last barrier).

    A validator names its ``target`` and whether the recalculation matched (``ok``); others send
    ``target = null``. ``accusations`` are the digests of the accusations this peer raised in the step
    (so a receiver knows it has seen them all); ``silent`` the peers this one saw miss a deadline.
    """

    type: Literal["validation"] = "validation"
    target: PeerId | None = None
    target_step: int | None = Field(default=None, ge=0)
    ok: bool | None = None
    accusations: list[Hex64] = Field(default_factory=list, max_length=64)
    silent: list[PeerId] = Field(default_factory=list, max_length=MAX_GROUP)


class ProbationPayload(_Payload):
    """A probation validator's report on the ``candidate`` it was drawn for (the envelope's step is the
    probation step): ``ok`` is whether its recomputation of the candidate's gradient matched. The site
    stores at most one per (sender, candidate, step), accepts it only from the candidate's drawn validator
    (:func:`btard_wire.randomness.draw_probation_panels`) and decides with
    :func:`btard_wire.probation.probation_decision`; it is not relayed to the group."""

    type: Literal["probation"] = "probation"
    candidate: PeerId
    ok: bool
    reason: Reason = ""


Payload = Annotated[
    CommitPayload | AggResultPayload | MprngCommitPayload | MprngRevealPayload | ScalarsPayload | AccusePayload | EliminatePayload | VerdictPayload | ValidationPayload | ProbationPayload,
    Field(discriminator="type"),
]
_adapter: TypeAdapter = TypeAdapter(Payload)
PAYLOAD_TYPES = {m.model_fields["type"].default: m for m in (
    CommitPayload, AggResultPayload, MprngCommitPayload, MprngRevealPayload, ScalarsPayload, AccusePayload,
    EliminatePayload, VerdictPayload, ValidationPayload, ProbationPayload)}
assert set(PAYLOAD_TYPES) == set(BROADCAST_PHASES), "every broadcast phase has exactly one payload schema"


def parse_payload(phase: str, payload: Any):
    """Validate an envelope payload for ``phase``; raises :class:`ProtocolError` on anything else."""
    if phase not in PAYLOAD_TYPES:
        raise ProtocolError(f"unknown phase {phase!r}")
    if not isinstance(payload, dict):
        raise ProtocolError("payload must be a JSON object")
    if payload.get("type") != phase:
        raise ProtocolError(f"payload type {payload.get('type')!r} does not match phase {phase!r}")
    return validate(_adapter, payload, what=f"{phase} payload", where="payload")


def payload_dict(model: _Payload) -> dict[str, Any]:
    """The JSON-ready dict of a payload (enums as their values) for :func:`~btard_wire.envelope.sign_envelope`."""
    return model.model_dump(mode="json", exclude_none=False)


def encode_inline_tensor(data: bytes) -> str:
    if len(data) > 4 * MAX_INLINE_FLOATS:
        raise ProtocolError(f"inline tensor of {len(data) // 4} floats exceeds {MAX_INLINE_FLOATS}")
    return b64e(data)


def decode_inline_tensor(text: str | None) -> bytes:
    if text is None:
        raise ProtocolError("accusation carries no inline tensor")
    data = b64d(text, what="inline tensor")
    if len(data) % 4:
        raise ProtocolError("inline tensor length is not a multiple of 4 bytes")
    return data


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
