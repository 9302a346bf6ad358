"""Control-plane messages between ``btard-worker`` and the site's ``/ws/worker/`` websocket.

The site is the membership authority and bulletin board: it never sees tensors. Every message is
JSON with a ``type`` discriminator and the protocol version ``v``. Protocol broadcasts travel inside
``broadcast`` messages as signed :class:`~btard_wire.envelope.Envelope` objects; the site checks
their signature against the sender's registered key, rejects replays, stores them and relays them to
the step's group unchanged.

Refusals: the site *accepts* the websocket and closes it at once with one of the close codes below
and a human-readable reason (close frames carry both; a refusal before accept would only show the
worker an HTTP 403). ``GET /api/worker/check`` with the same ``Authorization: Bearer`` header answers
200, or 401 (missing/unknown token) / 403 (revoked/banned) with ``{"ok": false, "code": 4004,
"reason": "token revoked: ..."}``, for tools that want to ask before connecting.

After ``hello`` the site answers ``welcome`` with the role: ``active``, ``candidate`` (probation:
the peer appears in ``Group.candidates`` with its seed and validator) or ``waiting`` (the admission
limits are full; the peer is admitted at a later step boundary and then appears as a candidate).
``Group`` goes to the step's members and candidates; a ``broadcast`` is verified, stored and relayed
unchanged as ``relay`` to the other members and candidates of its step (not back to its sender).
Every rejected message gets an ``error`` with a stable ``code`` (``malformed``, ``schema``,
``version``, ``too_large``, ``hello_first``, ``sender``, ``signature``, ``wrong_run``, ``phase``,
``stale_step``, ``not_in_group``, ``payload``, ``replay``, ``duplicate``, ``banned``, ``internal``) and
changes nothing. A ban closes the banned account's sockets with ``CLOSE_BANNED`` after a ``ban``
notice; the other workers of the run get the ``ban`` notice. Revoking a token closes its socket with
``CLOSE_REVOKED_TOKEN``; a second connection with the same token closes the first with
``CLOSE_REPLACED``.

Close codes used by the site when it refuses or ends a worker connection (4000-4999 is the range the
websocket spec leaves to applications):
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from . import BOARD_PHASES, PROTOCOL_VERSION
from .envelope import Envelope
from .errors import ControlError
from .json import parse_model

# --- close codes -------------------------------------------------------------------------------
CLOSE_NO_TOKEN = 4001  # no Authorization: Bearer header
CLOSE_BAD_TOKEN = 4003  # unknown token
CLOSE_REVOKED_TOKEN = 4004  # token revoked by its owner
CLOSE_BANNED = 4005  # the account or the peer key is banned
CLOSE_NO_RUN = 4006  # no active run to join
CLOSE_PROTOCOL_VERSION = 4007  # worker speaks an unsupported protocol version
CLOSE_REPLACED = 4008  # another connection with the same token took over
CLOSE_RUN_FINISHED = 4009  # the organisers finished the run this worker was in

CLOSE_REASONS = {
    CLOSE_NO_TOKEN: "missing token: pass --token (Authorization: Bearer <token>)",
    CLOSE_BAD_TOKEN: "token not recognised: create one on your /tokens/ page",
    CLOSE_REVOKED_TOKEN: "token revoked: create a new one on your /tokens/ page",
    CLOSE_BANNED: "banned: see the ban list (/bans/) for the reason and evidence",
    CLOSE_NO_RUN: "no run is accepting workers right now",
    CLOSE_PROTOCOL_VERSION: "protocol version not supported: upgrade btard-worker",
    CLOSE_REPLACED: "another worker connected with the same token",
    CLOSE_RUN_FINISHED: "the run finished: thank you! See the run page for the results",
}
# Codes after which retrying cannot help: the worker exits with a message instead of reconnecting.
# What to do when other peers cannot dial this worker (doctor and the worker's start-up check say it).
REACHABILITY_ADVICE = ("open the TCP port of --host-maddr in your firewall/router (port forwarding), "
                       "announce your public address with --announce-maddr /ip4/<public ip>/tcp/<port>, "
                       "or run on a machine with a public IP")

# A fault an honest crash also produces (a withheld reveal, silence) bans the worker key, not the account.
KEY_BAN_ADVICE = ("this worker key is banned, your account is not: start again with a new key "
                  "(btard-worker --new-key; a new probation, your reputation is kept)")

FATAL_CLOSE_CODES = {CLOSE_NO_TOKEN, CLOSE_BAD_TOKEN, CLOSE_REVOKED_TOKEN, CLOSE_BANNED,
                     CLOSE_PROTOCOL_VERSION, CLOSE_RUN_FINISHED}

MAX_CONTROL_MESSAGE_BYTES = 256 * 1024


class Status(str, Enum):
    training = "training"
    aggregating = "aggregating"
    validating = "validating"
    downloading_state = "downloading_state"
    waiting_for_group = "waiting_for_group"
    error = "error"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION


# --- worker -> site ----------------------------------------------------------------------------
class Hello(_Msg):
    """First message after the socket opens: who I am and where other peers can reach me."""

    type: Literal["hello"] = "hello"
    public_key: str = Field(min_length=40, max_length=64, description="base64 raw Ed25519 public key")
    p2p_id: str = Field(default="", max_length=128, description="hivemind PeerID (base58)")
    p2p_addrs: list[str] = Field(default_factory=list, max_length=16)
    device: str = Field(default="cpu", max_length=64)
    client_version: str = Field(default="", max_length=32)
    run_id: int | None = None
    # proof of key possession: base64 Ed25519 signature of hello_proof_bytes(challenge nonce, public_key)
    proof: str = Field(default="", max_length=128)


class Heartbeat(_Msg):
    type: Literal["heartbeat"] = "heartbeat"
    status: Status
    detail: str = Field(default="", max_length=500)
    step: int | None = Field(default=None, ge=0)
    bytes_sent: int = Field(default=0, ge=0)
    bytes_received: int = Field(default=0, ge=0)


class Broadcast(_Msg):
    """A signed protocol message for the step's group (commitments, distances, MPRNG, accusations...)."""

    type: Literal["broadcast"] = "broadcast"
    envelope: Envelope


class StepReport(_Msg):
    """The end of a step as this peer saw it; the site advances the run when the group has reported."""

    type: Literal["step_report"] = "step_report"
    step: int = Field(ge=0)
    outcome: Literal["applied", "dropped", "probation"]
    loss: float | None = None
    accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    samples: int = Field(default=0, ge=0)
    banned: list[str] = Field(default_factory=list, max_length=64)
    eliminated: list[list[str]] = Field(default_factory=list, max_length=64)
    missing: list[str] = Field(default_factory=list, max_length=64)
    # at checkpoint steps: sha256 of the model state as safetensors bytes (worker_client.checkpoint)
    state_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ReachabilityRequest(_Msg):
    """``btard-worker doctor``: ask the site to have an active peer dial this address."""

    type: Literal["reachability_request"] = "reachability_request"
    p2p_id: str = Field(max_length=128)
    p2p_addrs: list[str] = Field(max_length=16)


class ReachabilityResult(_Msg):
    type: Literal["reachability_result"] = "reachability_result"
    request_id: str = Field(max_length=64)
    reachable: bool
    detail: str = Field(default="", max_length=500)


# Broadcast phases whose deadline the site decides (the bulletin board is the only view every peer
# shares): peers ask to close one at their own deadline; once a majority of the step's group asked, the
# site fixes who had posted and tells everyone, so no two honest peers act on different senders.
BoardPhase = Literal[BOARD_PHASES]


class PhaseCloseRequest(_Msg):
    """This peer's deadline for ``phase`` of ``step`` passed while it still waits for broadcasts."""

    type: Literal["phase_close"] = "phase_close"
    step: int = Field(ge=0)
    phase: BoardPhase


class BoardRequest(_Msg):
    """Send me again the stored broadcasts of ``phase`` at ``step`` (a relay went missing)."""

    type: Literal["board_request"] = "board_request"
    step: int = Field(ge=0)
    phase: BoardPhase
    senders: list[str] = Field(default_factory=list, max_length=256)


WorkerMessage = Annotated[
    Union[Hello, Heartbeat, Broadcast, StepReport, ReachabilityRequest, ReachabilityResult, PhaseCloseRequest,
          BoardRequest],
    Field(discriminator="type"),
]


# --- site -> worker ----------------------------------------------------------------------------
class PeerInfo(BaseModel):
    peer_id: str
    public_key: str
    p2p_id: str = ""
    p2p_addrs: list[str] = Field(default_factory=list)


class RunInfo(BaseModel):
    id: int
    name: str
    task: str
    aggregator: str = "btard"
    tau: float = 1.0
    peers_per_group: int = 16
    validators_per_step: int = 2  # m >= 2, as the protocol core and the site default
    probation_steps: int = 5
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0
    phase_timeout: float = 30.0
    checkpoint_every: int = 0  # > 0: after every such step the group reports its state hash, one member uploads
    extra: dict[str, Any] = Field(default_factory=dict)


class Welcome(_Msg):
    type: Literal["welcome"] = "welcome"
    peer_id: str
    role: Literal["candidate", "active", "waiting"]
    run: RunInfo
    step: int
    probation_steps_left: int = 0


class Group(_Msg):
    """The group of a step, fixed by the site at the step boundary.

    ``validators`` is empty from this site: the peers draw the step's validators and their targets from
    the step's own MPRNG output ``r_t`` (``btard_wire.board.validator_assignment``; docs/protocol.md,
    Sec. 3.3). A worker ignores it; the field stays so older sites' messages still parse.
    ``candidates`` lists probation peers with the seed they compute on and the active peer
    that validates them.
    """

    type: Literal["group"] = "group"
    step: int
    peers: list[PeerInfo]
    validators: dict[str, str] = Field(default_factory=dict)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    deadlines: dict[str, float] = Field(default_factory=dict)
    state_donors: list[PeerInfo] = Field(default_factory=list)


class Relay(_Msg):
    """A broadcast another peer posted, relayed unchanged (the site stored it first)."""

    type: Literal["relay"] = "relay"
    envelope: Envelope


class BanNotice(_Msg):
    type: Literal["ban"] = "ban"
    peer_id: str
    step: int | None = None
    reason: str
    scope: Literal["account", "key"] = "account"  # "key": only that worker key is banned


class ErrorMessage(_Msg):
    """The site rejected a message; nothing changed. ``code`` is stable, ``message`` is for humans."""

    type: Literal["error"] = "error"
    code: str
    message: str
    # for a refused ``broadcast``: the refused envelope's step and digest, so its sender can tell which of
    # its messages the board does not hold (a validation report must not list it)
    step: int | None = None
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ReachabilityCheck(_Msg):
    """Site -> active peer: dial this address and report back."""

    type: Literal["reachability_check"] = "reachability_check"
    request_id: str
    p2p_id: str
    p2p_addrs: list[str]


class PhaseClosed(_Msg):
    """The site closed ``phase`` of ``step``: ``senders`` are exactly the peers whose broadcast of that
    phase it had stored; later ones are refused. Everyone else in the phase is late."""

    type: Literal["phase_closed"] = "phase_closed"
    step: int = Field(ge=0)
    phase: BoardPhase
    senders: list[str] = Field(default_factory=list, max_length=256)


class Challenge(_Msg):
    """Site -> worker, first message after accept: ``hello`` must carry ``proof``, the signature of
    :func:`hello_proof_bytes` over this nonce with the key it announces (proof of key possession)."""

    type: Literal["challenge"] = "challenge"
    nonce: str = Field(min_length=16, max_length=128)


def hello_proof_bytes(nonce: str, public_key_b64: str) -> bytes:
    return f"btard-hello|v{PROTOCOL_VERSION}|{nonce}|{public_key_b64}".encode()


def hello_proof(identity, nonce: str) -> str:
    """The ``Hello.proof`` of ``identity`` (a :class:`btard_wire.envelope.Identity`) for the site's nonce."""
    from .envelope import b64e

    return b64e(identity.sign(hello_proof_bytes(nonce, identity.public_key_b64)))


def hello_proof_valid(*, nonce: str, public_key_b64: str, proof: str) -> bool:
    """Whether ``proof`` is the signature of the key ``public_key_b64`` over ``nonce``."""
    from cryptography.exceptions import InvalidSignature

    from .envelope import b64d, load_public_key
    from .errors import ProtocolError

    try:
        load_public_key(public_key_b64).verify(b64d(proof, what="proof"), hello_proof_bytes(nonce, public_key_b64))
    except (InvalidSignature, ProtocolError, ValueError):
        return False
    return True


class RunNotice(_Msg):
    """The organisers changed the run or posted an announcement: show ``message`` to the volunteer.
    ``kind``: ``paused`` (no new steps until resumed; stay connected), ``resumed``, ``finished`` (the
    socket then closes with ``CLOSE_RUN_FINISHED``), ``min_version`` (older workers are refused at their
    next connection) or ``announcement``."""

    type: Literal["run_notice"] = "run_notice"
    run_id: int
    kind: Literal["paused", "resumed", "finished", "min_version", "announcement"]
    message: str = Field(max_length=1000)


SiteMessage = Annotated[
    Union[Welcome, Group, Relay, BanNotice, ErrorMessage, ReachabilityCheck, ReachabilityResult, PhaseClosed,
          RunNotice, Challenge],
    Field(discriminator="type"),
]

_worker_adapter: TypeAdapter = TypeAdapter(WorkerMessage)
_site_adapter: TypeAdapter = TypeAdapter(SiteMessage)


def _parse(adapter: TypeAdapter, data: str | bytes, max_bytes: int):
    return parse_model(adapter, data, max_bytes=max_bytes, what="message", error=ControlError)


def parse_worker_message(data: str | bytes, *, max_bytes: int = MAX_CONTROL_MESSAGE_BYTES):
    return _parse(_worker_adapter, data, max_bytes)


def parse_site_message(data: str | bytes, *, max_bytes: int = 4 * MAX_CONTROL_MESSAGE_BYTES):
    return _parse(_site_adapter, data, max_bytes)
