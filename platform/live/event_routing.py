"""Where a live event goes (``live.events`` holds only the schemas): the channel-layer groups of the live
views and worker sockets that hear it, and for a step's events the control message its members' sockets
get (``live.bus`` delivers both, ``live.fanout`` carries the control message).

One table, event type -> groups; a new event type without a row is an error at delivery (and in the
tests), not a silent drop.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from btard_wire.control import PhaseClosed as PhaseClosedMessage
from btard_wire.control import Relay

from . import events as ev


# --- group and cache names -------------------------------------------------------------------------------
def bans_group() -> str:
    return "live.bans"


def run_live_group(run_id: int) -> str:
    return f"live.run.{run_id}"


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


# --- event type -> groups ---------------------------------------------------------------------------------
def _run(event) -> list[str]:
    return [run_live_group(event.run_id)]


def _nowhere(event) -> list[str]:
    return []


def _ban_groups(event: ev.PeerBanned) -> list[str]:
    groups = [bans_group(), runs_group()]
    if event.run_id is not None:
        groups += [run_live_group(event.run_id), run_workers_group(event.run_id)]
    if event.user_id is not None:
        groups.append(user_group(event.user_id))
    return groups


def _unban_groups(event: ev.PeerUnbanned) -> list[str]:
    groups = [bans_group(), runs_group()]
    if event.run_id is not None:
        groups.append(run_live_group(event.run_id))
    return groups


# Moderation cases are shown on the staff pages and in the admin, which have no live socket: a case is
# pushed to the run's dashboard when it opens and nowhere else (no group that no consumer joins).
LIVE_GROUPS: dict[type[BaseModel], Callable[..., list[str]]] = {
    ev.TokenCreated: _nowhere,
    ev.TokenRevoked: lambda e: [token_group(e.token_id)],
    ev.VolunteerSignedUp: _nowhere,
    ev.ReputationChanged: _nowhere,
    ev.PeerJoined: _run,
    ev.PeerStatusChanged: _run,
    ev.GroupFormed: _run,
    ev.BroadcastRecorded: _nowhere,  # workers only (worker_message)
    ev.PhaseClosed: _nowhere,  # workers only (worker_message)
    ev.StepReported: _run,
    ev.StepAdvanced: lambda e: [run_live_group(e.run_id), runs_group()],  # runs_group: the leaderboard
    ev.PeersPromoted: _run,
    ev.PeerReachability: _run,
    ev.ExclusionsEnded: _run,
    ev.PeersAdmitted: _run,
    ev.PeerBanned: _ban_groups,
    ev.PeerUnbanned: _unban_groups,
    ev.CaseOpened: _run,
    ev.CaseResolved: _nowhere,
    ev.HousekeepingDone: _nowhere,
    ev.CheckpointStored: _run,
    ev.RunControlChanged: lambda e: [run_live_group(e.run_id), run_workers_group(e.run_id), runs_group()],
    ev.AnnouncementPosted: lambda e: [run_live_group(e.run_id), run_workers_group(e.run_id)],
}


def live_groups(event: BaseModel) -> list[str]:
    """The channel-layer groups ``event`` is sent to (live views and, for bans and notices, worker sockets)."""
    try:
        route = LIVE_GROUPS[type(event)]
    except KeyError:
        raise TypeError(f"no live route for event {type(event).__name__}; add it to live.event_routing") from None
    return route(event)


# --- event -> the control message of a step's worker sockets ---------------------------------------------
def worker_message(event: BaseModel) -> BaseModel | None:
    """The control message a step's members get for ``event`` (``None``: the event is not for workers'
    step traffic; bans and run notices reach worker sockets through their groups instead)."""
    match event:
        case ev.GroupFormed(group=group):
            return group
        case ev.BroadcastRecorded(envelope=envelope):
            return Relay(envelope=envelope)
        case ev.PhaseClosed(step=step, phase=phase, senders=senders):
            return PhaseClosedMessage(step=step, phase=phase, senders=senders)
    return None


def worker_recipients(event: BaseModel) -> list[str]:
    """The peers whose sockets get :func:`worker_message` of ``event``."""
    match event:
        case ev.GroupFormed():
            return sorted(event.recipients())
        case ev.BroadcastRecorded(recipients=recipients) | ev.PhaseClosed(recipients=recipients):
            return list(recipients)
    return []
