"""The one event schema behind every live view (schemas only).

Every service emits exactly one of these events after its transaction commits (``live.bus.emit``). Where
an event goes is :mod:`live.event_routing` (live-view groups, and the ``btard_wire.control`` message of a
step's worker sockets); browsers get the fragment the page's app renders for it (``live.fragments``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from btard_wire.control import Group
from btard_wire.envelope import Envelope

EVENT_VERSION = 1


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = EVENT_VERSION


class TokenCreated(_Event):
    type: Literal["token_created"] = "token_created"
    token_id: int
    user_id: int
    prefix: str


class TokenRevoked(_Event):
    type: Literal["token_revoked"] = "token_revoked"
    token_id: int
    user_id: int
    prefix: str


class VolunteerSignedUp(_Event):
    type: Literal["volunteer_signed_up"] = "volunteer_signed_up"
    user_id: int
    username: str


class ReputationChanged(_Event):
    type: Literal["reputation_changed"] = "reputation_changed"
    user_ids: list[int]


class PeerJoined(_Event):
    type: Literal["peer_joined"] = "peer_joined"
    run_id: int
    peer_id: str
    username: str
    role: str


class PeerStatusChanged(_Event):
    type: Literal["peer_status_changed"] = "peer_status_changed"
    run_id: int
    peer_ids: list[str]
    online: bool
    status: str = ""
    detail: str = ""


class GroupFormed(_Event):
    """The group of a step; ``group`` is the worker's ``Group`` message its members and candidates get."""

    type: Literal["group_formed"] = "group_formed"
    run_id: int
    group: Group

    @property
    def step(self) -> int:
        return self.group.step

    def recipients(self) -> set[str]:
        return {p.peer_id for p in self.group.peers} | {c["peer_id"] for c in self.group.candidates}


class BroadcastRecorded(_Event):
    """A stored broadcast; becomes a ``Relay`` for every recipient except its sender."""

    type: Literal["broadcast_recorded"] = "broadcast_recorded"
    run_id: int
    step: int
    envelope: Envelope
    recipients: list[str]


class PhaseClosed(_Event):
    """A majority of the step's group passed its deadline for a board phase; ``senders`` posted in time."""

    type: Literal["phase_closed"] = "phase_closed"
    run_id: int
    step: int
    phase: str
    senders: list[str]
    late: list[str]
    recipients: list[str]


class StepReported(_Event):
    type: Literal["step_reported"] = "step_reported"
    run_id: int
    step: int
    peer_id: str
    reported: int
    expected: int


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


class PeersPromoted(_Event):
    type: Literal["peers_promoted"] = "peers_promoted"
    run_id: int
    peer_ids: list[str]


class PeerReachability(_Event):
    """Another active peer tried to dial this peer's announced address (worker start-up or doctor)."""

    type: Literal["peer_reachability"] = "peer_reachability"
    run_id: int
    peer_id: str
    reachable: bool
    detail: str


class ExclusionsEnded(_Event):
    """Peers benched by an ELIMINATE came back before their epoch ended, because without them the run
    could not form a group (the epoch is counted in steps, so it would never have ended)."""

    type: Literal["exclusions_ended"] = "exclusions_ended"
    run_id: int
    step: int
    peer_ids: list[str]


class PeersAdmitted(_Event):
    type: Literal["peers_admitted"] = "peers_admitted"
    run_id: int
    peer_ids: list[str]


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


class PeerUnbanned(_Event):
    type: Literal["peer_unbanned"] = "peer_unbanned"
    ban_id: int
    run_id: int | None
    peer_id: str
    username: str
    reason: str


class CaseOpened(_Event):
    type: Literal["case_opened"] = "case_opened"
    case_id: int
    run_id: int
    kind: str
    peer_ids: list[str]


class CaseResolved(_Event):
    type: Literal["case_resolved"] = "case_resolved"
    case_id: int
    run_id: int
    action: str
    reason: str


class HousekeepingDone(_Event):
    """Periodic tasks (stale peers, reputation recompute, log expiry) report what they changed."""

    type: Literal["housekeeping_done"] = "housekeeping_done"
    task: str
    count: int


class CheckpointStored(_Event):
    """A worker's checkpoint upload was confirmed by the group's state hashes and stored."""

    type: Literal["checkpoint_stored"] = "checkpoint_stored"
    run_id: int
    step: int
    sha256: str
    size: int
    peer_id: str


class RunControlChanged(_Event):
    """An organiser created, paused, resumed or finished a run, or set its minimum worker version. The
    run page updates; the run's workers get a ``RunNotice`` (and a finished run closes their sockets)."""

    type: Literal["run_control_changed"] = "run_control_changed"
    run_id: int
    action: Literal["created", "paused", "resumed", "finished", "min_version"]
    state: str
    min_worker_version: str = ""
    message: str = ""


class AnnouncementPosted(_Event):
    """An organiser's announcement: on the run page and in every worker's terminal (``RunNotice``)."""

    type: Literal["announcement_posted"] = "announcement_posted"
    run_id: int
    announcement_id: int
    text: str



LiveEvent = Annotated[
    AnnouncementPosted | RunControlChanged | CheckpointStored | PhaseClosed | ExclusionsEnded | PeerReachability | TokenCreated | TokenRevoked | VolunteerSignedUp | ReputationChanged | PeerJoined | PeerStatusChanged | GroupFormed | BroadcastRecorded | StepReported | StepAdvanced | PeersPromoted | PeersAdmitted | PeerBanned | PeerUnbanned | CaseOpened | CaseResolved | HousekeepingDone,
    Field(discriminator="type"),
]
event_adapter: TypeAdapter = TypeAdapter(LiveEvent)


def parse_event(data: dict) -> _Event:
    return event_adapter.validate_python(data)
