"""Membership of a run: joining (role by the admission policy), heartbeats, disconnects, stale peers,
reachability checks. Keyword-only, atomic, one typed event per call (emitted on commit)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from admission.policies import get_policy
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from live.bus import emit
from live.events import (
    PeerJoined,
    PeerReachability,
    PeerStatusChanged,
)
from moderation.models import Ban
from moderation.selectors import is_peer_id_banned
from organiser.gate import check_worker_version, refusal_for_run
from volunteers.services import volunteer_for

from btard_wire.control import (
    CLOSE_BANNED,
    CLOSE_NO_RUN,
    CLOSE_REASONS,
    KEY_BAN_ADVICE,
    Heartbeat,
    Hello,
)
from btard_wire.envelope import b64d, peer_id_from_public_key
from btard_wire.errors import ProtocolError

from ..models import Peer, Run, StepRecord
from ..selectors import LEFT_STEP_GRACE_SECONDS
from .errors import JoinRefused, Rejected

log = logging.getLogger(__name__)


@dataclass
class JoinResult:
    peer: Peer
    run: Run
    role: str
    probation_left: int


def _open_run(run_id: int | None) -> Run | None:
    runs = Run.objects.filter(state="open")
    if run_id is not None:
        runs = runs.filter(pk=run_id)
    return runs.order_by("-created_at").first()

@transaction.atomic
def join_run(*, token, hello: Hello) -> JoinResult:
    """Register (or update) the peer of ``hello.public_key`` in the run and decide its role.

    Raises :class:`JoinRefused` (no run, banned key or account) or :class:`Rejected` (bad key, key
    registered to another account).
    """
    try:
        peer_id = peer_id_from_public_key(b64d(hello.public_key, what="public key"))
    except ProtocolError as exc:
        raise Rejected("bad_key", str(exc)) from None
    run = _open_run(hello.run_id)
    if run is None:
        raise refusal_for_run(hello.run_id) or JoinRefused(CLOSE_NO_RUN, CLOSE_REASONS[CLOSE_NO_RUN])
    check_worker_version(run=run, client_version=hello.client_version)
    run = Run.objects.select_for_update().get(pk=run.pk)  # serialises admission decisions per run
    volunteer = volunteer_for(token.user)
    if volunteer.is_banned:
        raise JoinRefused(CLOSE_BANNED, CLOSE_REASONS[CLOSE_BANNED])
    if is_peer_id_banned(peer_id):
        key_only = not Ban.objects.filter(peer_id=peer_id, lifted_at=None, scope="account").exists()
        raise JoinRefused(CLOSE_BANNED, KEY_BAN_ADVICE if key_only else CLOSE_REASONS[CLOSE_BANNED])
    now = timezone.now()
    peer = Peer.objects.filter(run=run, peer_id=peer_id).first()
    # a key belongs to the first account that used it, in every run (the hello proved possession)
    if Peer.objects.filter(peer_id=peer_id).exclude(user_id=token.user_id).exists():
        raise Rejected("key_taken", "this worker key is registered to another account; use a new key")
    if peer is not None and peer.role == "banned":
        raise JoinRefused(CLOSE_BANNED, CLOSE_REASONS[CLOSE_BANNED])
    if peer is None:
        # Sybil limits per account (F8): a few keys per run, and one founder
        mine = run.peers.filter(user=token.user).exclude(role="banned")
        if mine.count() >= settings.MAX_KEYS_PER_ACCOUNT_PER_RUN:
            raise Rejected("key_limit", f"an account may use at most {settings.MAX_KEYS_PER_ACCOUNT_PER_RUN} "
                                        f"worker keys in a run; reuse one of your keys")
        peer = Peer(run=run, user=token.user, peer_id=peer_id, public_key=hello.public_key)
        policy = get_policy(run.admission_policy)
        active = run.peers.filter(role="active").count()
        probation = policy.probation_steps(run, reputation=volunteer.reputation)
        founder = policy.founders_active(run, active_count=active) and not mine.filter(role="active").exists()
        if probation == 0 or founder:
            peer.role, peer.admitted_at, peer.promoted_at = "active", now, now
        elif not mine.filter(role="candidate").exists() and policy.may_admit_candidate(
                run, active_count=active, candidate_count=run.peers.filter(role="candidate").count(),
                admitted_in_window=run.peers.filter(admitted_at__gte=policy.window_start(run)).count()):
            peer.role, peer.admitted_at = "candidate", now  # one probation slot per account at a time (F8)
            peer.probation_required = probation
        else:
            peer.role = "waiting"
            peer.probation_required = probation
    peer.token = token
    peer.p2p_id = hello.p2p_id
    peer.p2p_addrs = list(hello.p2p_addrs)
    peer.device = hello.device
    peer.client_version = hello.client_version
    _note_rejoin_during_step(run, peer, now)
    if peer.pk is None or not peer.online:  # (re)joined: its catch-up silence may be excused (close_step)
        peer.rejoined_step = run.current_step
    peer.online = True
    peer.left_at = None
    peer.status = "waiting_for_group"
    peer.status_detail = ""
    peer.last_heartbeat = now
    peer.save()
    emit(PeerJoined(run_id=run.id, peer_id=peer.peer_id, username=token.user.username, role=peer.role))
    return JoinResult(peer=peer, run=run, role=peer.role,
                      probation_left=max(0, peer.probation_required - peer.probation_done))


def _note_rejoin_during_step(run: Run, peer: Peer, now) -> None:
    """A member of the step in progress that was away longer than the grace and joins again holds none of the
    step's state (a restarted worker): it left the step, which then closes without its report
    (``selectors.step_complete``). Shorter gaps are reconnects that carry on with the step."""
    if peer.pk is None or peer.online or peer.left_at is None or not run.step_in_progress:
        return
    if (now - peer.left_at).total_seconds() < LEFT_STEP_GRACE_SECONDS:
        return
    record = StepRecord.objects.filter(run=run, step=run.current_step).first()
    if record is not None and peer.peer_id in record.members and peer.peer_id not in (record.left or []) \
            and not record.reports.filter(peer=peer).exists():
        StepRecord.objects.filter(pk=record.pk).update(left=[*(record.left or []), peer.peer_id])


@transaction.atomic
def record_heartbeat(*, peer: Peer, heartbeat: Heartbeat) -> bool:
    """Store the heartbeat; returns whether the peer's status (or online state) changed.

    A steady heartbeat is one UPDATE; ``PeerStatusChanged`` is emitted only on a change.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # a heartbeat is not worth a WAL flush
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
    now = timezone.now()
    status = heartbeat.status.value
    detail = heartbeat.detail if status == "error" else heartbeat.detail[:200]
    if Peer.objects.filter(pk=peer.pk, status=status, status_detail=detail, online=True).update(last_heartbeat=now):
        return False
    Peer.objects.filter(pk=peer.pk).update(last_heartbeat=now, status=status, status_detail=detail, online=True,
                                           left_at=None)
    emit(PeerStatusChanged(run_id=peer.run_id, peer_ids=[peer.peer_id], online=True, status=status,
                           detail=detail))
    return True


@transaction.atomic
def disconnect_peer(*, peer: Peer) -> None:
    """The worker's socket closed: the peer is offline and leaves the group at the next step."""
    Peer.objects.filter(pk=peer.pk, online=True).update(online=False, left_at=timezone.now())
    emit(PeerStatusChanged(run_id=peer.run_id, peer_ids=[peer.peer_id], online=False, status="offline"))


@transaction.atomic
def mark_stale_peers_offline(*, run: Run, now=None) -> list[str]:
    """Peers whose last heartbeat is older than ``HEARTBEAT_TIMEOUT_SECONDS`` go offline."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.HEARTBEAT_TIMEOUT_SECONDS)
    stale = Peer.objects.filter(run=run, online=True).filter(Q(last_heartbeat__lt=cutoff) | Q(last_heartbeat=None))
    ids = list(stale.values_list("peer_id", flat=True))
    if ids:
        Peer.objects.filter(run=run, peer_id__in=ids).update(online=False, status="offline", left_at=now,
                                                             status_detail="missed heartbeats")
        emit(PeerStatusChanged(run_id=run.id, peer_ids=ids, online=False, status="offline",
                               detail="missed heartbeats"))
    return ids


def reachability_word(*, reachable: bool, detail: str) -> str:
    """What the site says of a reachability check: ``reachable``, ``timeout``, ``refused`` or
    ``unreachable`` (a fixed vocabulary: the helper's own error text is never shown or forwarded)."""
    if reachable:
        return "reachable"
    text = (detail or "").lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "refused" in text:
        return "refused"
    return "unreachable"


def record_reachability(*, peer_pk: int, reachable: bool, detail: str) -> Peer | None:
    """Store the result of another peer dialling ``peer_pk``'s address; the dashboard lists it."""
    peer = Peer.objects.filter(pk=peer_pk).first()
    if peer is None:
        return None
    peer.reachable, peer.reachability_detail = bool(reachable), (detail or "")[:500]
    peer.reachability_checked_at = timezone.now()
    peer.save(update_fields=["reachable", "reachability_detail", "reachability_checked_at"])
    emit(PeerReachability(run_id=peer.run_id, peer_id=peer.peer_id, reachable=peer.reachable,
                          detail=peer.reachability_detail))
    return peer
