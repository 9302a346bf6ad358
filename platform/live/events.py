"""The one event schema behind every live view.

Every service emits exactly one of these events after its transaction commits (:func:`emit`). The same
pydantic object becomes an htmx fragment for browsers (``live.consumers.LiveConsumer`` renders the page's
partial) and a control-plane message for workers (``live.consumers.WorkerConsumer`` turns it into a
``btard_wire.control`` message). ``groups()`` names the channel-layer groups an event goes to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from btard_wire.control import PeerInfo
from btard_wire.envelope import Envelope

EVENT_VERSION = 1


def bans_group() -> str:
    return "live.bans"


def run_live_group(run_id: int) -> str:
    return f"live.run.{run_id}"


def moderation_group() -> str:
    return "live.moderation"


def runs_group() -> str:
    """Pages about every run at once (leaderboard, network status)."""
    return "live.runs"


def run_workers_group(run_id: int) -> str:
    return f"workers.run.{run_id}"


def token_group(token_id: int) -> str:
    return f"workers.token.{token_id}"


def user_group(user_id: int) -> str:
    return f"workers.user.{user_id}"


def peer_channel_key(peer_id: str, run_id: int) -> str:
    """Cache key holding the channel name of a peer's live worker socket in one run (written only once
    its join succeeded: a refused ``hello`` cannot redirect another peer's traffic)."""
    return f"peer-channel:{int(run_id)}:{peer_id}"


def peer_group(peer_id: str, run_id: int) -> str:
    """The one worker socket of a peer in a run (joined after ``hello``): groups and relays go here."""
    return f"workers.peer.{int(run_id)}.{peer_id}"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = EVENT_VERSION

    def groups(self) -> list[str]:  # pragma: no cover - every event overrides
        raise NotImplementedError


class TokenCreated(_Event):
    type: Literal["token_created"] = "token_created"
    token_id: int
    user_id: int
    prefix: str

    def groups(self) -> list[str]:
        return []


class TokenRevoked(_Event):
    type: Literal["token_revoked"] = "token_revoked"
    token_id: int
    user_id: int
    prefix: str

    def groups(self) -> list[str]:
        return [token_group(self.token_id)]


class VolunteerSignedUp(_Event):
    type: Literal["volunteer_signed_up"] = "volunteer_signed_up"
    user_id: int
    username: str

    def groups(self) -> list[str]:
        return []


class ReputationChanged(_Event):
    type: Literal["reputation_changed"] = "reputation_changed"
    user_ids: list[int]

    def groups(self) -> list[str]:
        return []


class PeerJoined(_Event):
    type: Literal["peer_joined"] = "peer_joined"
    run_id: int
    peer_id: str
    username: str
    role: str

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class PeerStatusChanged(_Event):
    type: Literal["peer_status_changed"] = "peer_status_changed"
    run_id: int
    peer_ids: list[str]
    online: bool
    status: str = ""
    detail: str = ""

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class GroupFormed(_Event):
    """Becomes the worker's ``Group`` message; members and candidates receive it."""

    type: Literal["group_formed"] = "group_formed"
    run_id: int
    step: int
    peers: list[PeerInfo]
    validators: dict[str, str] = Field(default_factory=dict)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    deadlines: dict[str, float] = Field(default_factory=dict)
    state_donors: list[PeerInfo] = Field(default_factory=list)

    def recipients(self) -> set[str]:
        return {p.peer_id for p in self.peers} | {c["peer_id"] for c in self.candidates}

    def worker_message(self):
        from btard_wire.control import Group

        return Group(step=self.step, peers=self.peers, validators=self.validators, candidates=self.candidates,
                     deadlines=self.deadlines, state_donors=self.state_donors)

    def worker_recipients(self) -> list[str]:
        return sorted(self.recipients())

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class BroadcastRecorded(_Event):
    """A stored broadcast; becomes a ``Relay`` for every recipient except its sender."""

    type: Literal["broadcast_recorded"] = "broadcast_recorded"
    run_id: int
    step: int
    envelope: Envelope
    recipients: list[str]

    def worker_message(self):
        from btard_wire.control import Relay

        return Relay(envelope=self.envelope)

    def worker_recipients(self) -> list[str]:
        return list(self.recipients)

    def groups(self) -> list[str]:
        return []


class PhaseClosed(_Event):
    """A majority of the step's group passed its deadline for a board phase; ``senders`` posted in time."""

    type: Literal["phase_closed"] = "phase_closed"
    run_id: int
    step: int
    phase: str
    senders: list[str]
    late: list[str]
    recipients: list[str]

    def worker_message(self):
        from btard_wire.control import PhaseClosed as PhaseClosedMessage

        return PhaseClosedMessage(step=self.step, phase=self.phase, senders=self.senders)

    def worker_recipients(self) -> list[str]:
        return list(self.recipients)

    def groups(self) -> list[str]:
        return []


class StepReported(_Event):
    type: Literal["step_reported"] = "step_reported"
    run_id: int
    step: int
    peer_id: str
    reported: int
    expected: int

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class StepAdvanced(_Event):
    type: Literal["step_advanced"] = "step_advanced"
    run_id: int
    finished_step: int
    step: int
    outcome: str
    loss: float | None = None
    accuracy: float | None = None
    samples: int = 0
    missing: list[str] = Field(default_factory=list)

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id), runs_group()]  # runs_group: the leaderboard


class PeersPromoted(_Event):
    type: Literal["peers_promoted"] = "peers_promoted"
    run_id: int
    peer_ids: list[str]

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class PeerReachability(_Event):
    """Another active peer tried to dial this peer's announced address (worker start-up or doctor)."""

    type: Literal["peer_reachability"] = "peer_reachability"
    run_id: int
    peer_id: str
    reachable: bool
    detail: str

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class ExclusionsEnded(_Event):
    """Peers benched by an ELIMINATE came back before their epoch ended, because without them the run
    could not form a group (the epoch is counted in steps, so it would never have ended)."""

    type: Literal["exclusions_ended"] = "exclusions_ended"
    run_id: int
    step: int
    peer_ids: list[str]

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class PeersAdmitted(_Event):
    type: Literal["peers_admitted"] = "peers_admitted"
    run_id: int
    peer_ids: list[str]

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class PeerBanned(_Event):
    """A ban: the ban list and dashboards update, the run's workers get ``BanNotice``, the banned
    account's sockets close with ``CLOSE_BANNED``."""

    type: Literal["peer_banned"] = "peer_banned"
    ban_id: int
    run_id: int | None
    run_name: str = ""
    step: int | None
    peer_id: str
    user_id: int | None
    username: str
    reason: str
    evidence_kind: str
    source: str
    created: datetime
    scope: Literal["account", "key"] = "account"  # "key": only this worker key, the account may go on

    def groups(self) -> list[str]:
        groups = [bans_group(), runs_group()]
        if self.run_id is not None:
            groups += [run_live_group(self.run_id), run_workers_group(self.run_id)]
        if self.user_id is not None:
            groups.append(user_group(self.user_id))
        return groups


class PeerUnbanned(_Event):
    type: Literal["peer_unbanned"] = "peer_unbanned"
    ban_id: int
    run_id: int | None
    peer_id: str
    username: str
    reason: str

    def groups(self) -> list[str]:
        groups = [bans_group(), runs_group()]
        if self.run_id is not None:
            groups.append(run_live_group(self.run_id))
        return groups


class CaseOpened(_Event):
    type: Literal["case_opened"] = "case_opened"
    case_id: int
    run_id: int
    kind: str
    peer_ids: list[str]

    def groups(self) -> list[str]:
        return [moderation_group(), run_live_group(self.run_id)]


class CaseResolved(_Event):
    type: Literal["case_resolved"] = "case_resolved"
    case_id: int
    run_id: int
    action: str
    reason: str

    def groups(self) -> list[str]:
        return [moderation_group()]


class HousekeepingDone(_Event):
    """Periodic tasks (stale peers, reputation recompute, log expiry) report what they changed."""

    type: Literal["housekeeping_done"] = "housekeeping_done"
    task: str
    count: int

    def groups(self) -> list[str]:
        return []


class CheckpointStored(_Event):
    """A worker's checkpoint upload was confirmed by the group's state hashes and stored."""

    type: Literal["checkpoint_stored"] = "checkpoint_stored"
    run_id: int
    step: int
    sha256: str
    size: int
    peer_id: str

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id)]


class RunControlChanged(_Event):
    """An organiser created, paused, resumed or finished a run, or set its minimum worker version. The
    run page updates; the run's workers get a ``RunNotice`` (and a finished run closes their sockets)."""

    type: Literal["run_control_changed"] = "run_control_changed"
    run_id: int
    action: Literal["created", "paused", "resumed", "finished", "min_version"]
    state: str
    min_worker_version: str = ""
    message: str = ""

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id), run_workers_group(self.run_id), runs_group()]


class AnnouncementPosted(_Event):
    """An organiser's announcement: on the run page and in every worker's terminal (``RunNotice``)."""

    type: Literal["announcement_posted"] = "announcement_posted"
    run_id: int
    announcement_id: int
    text: str

    def groups(self) -> list[str]:
        return [run_live_group(self.run_id), run_workers_group(self.run_id)]


LiveEvent = Annotated[
    AnnouncementPosted | RunControlChanged | CheckpointStored | PhaseClosed | ExclusionsEnded | PeerReachability | TokenCreated | TokenRevoked | VolunteerSignedUp | ReputationChanged | PeerJoined | PeerStatusChanged | GroupFormed | BroadcastRecorded | StepReported | StepAdvanced | PeersPromoted | PeersAdmitted | PeerBanned | PeerUnbanned | CaseOpened | CaseResolved | HousekeepingDone,
    Field(discriminator="type"),
]
event_adapter: TypeAdapter = TypeAdapter(LiveEvent)


def parse_event(data: dict) -> _Event:
    return event_adapter.validate_python(data)
