"""Writes for runs: joining, heartbeats, group formation, the broadcast board, step reports and the
step loop. Keyword-only, atomic, one typed event per call (emitted on commit).

The site is the membership authority of the protocol (docs: btard-protocol.md, "Setting"): it fixes the
group of every step, relays and stores the signed broadcasts, and never sees a tensor.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from admission.policies import get_policy
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from live.bus import emit
from live.events import (
    BroadcastRecorded,
    ExclusionsEnded,
    GroupFormed,
    HousekeepingDone,
    PeerJoined,
    PeerReachability,
    PeersAdmitted,
    PeersPromoted,
    PeerStatusChanged,
    PhaseClosed,
    StepAdvanced,
    StepReported,
)

from btard_wire import BOARD_PHASES, BROADCAST_PHASES
from btard_wire import board as board_rules
from btard_wire.control import (
    CLOSE_BANNED,
    CLOSE_NO_RUN,
    CLOSE_REASONS,
    KEY_BAN_ADVICE,
    Heartbeat,
    Hello,
    StepReport,
)
from btard_wire.envelope import Envelope, b64d, peer_id_from_public_key, verify_envelope
from btard_wire.errors import CodedError, ProtocolError
from btard_wire.payloads import parse_payload
from btard_wire.randomness import (
    draw_probation_validators,
    genesis_randomness,
    group_order,
    skipped_randomness,
)
from btard_wire.randomness import probation_seed as _probation_seed

from .deadlines import effective_deadlines
from .models import BroadcastLog, Peer, Run, StepRecord, StepReportRecord

log = logging.getLogger(__name__)


class Rejected(CodedError):
    """A worker message the site refuses; nothing changed. ``code`` is stable, ``message`` for humans."""


class JoinRefused(CodedError):
    """The worker cannot join; the socket closes with ``close_code`` (also ``code``)."""

    def __init__(self, close_code: int, reason: str):
        super().__init__(close_code, reason)
        self.close_code = close_code
        self.reason = reason


def probation_seed(run: Run, step: int, peer_id: str) -> int:
    """The public seed a candidate computes its probation gradient on at ``step``."""
    return _probation_seed(run=run.id, seed=run.seed, step=step, peer=peer_id)


# --- joining ----------------------------------------------------------------------------------
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
    from moderation.models import Ban
    from moderation.selectors import is_peer_id_banned
    from volunteers.services import volunteer_for

    try:
        peer_id = peer_id_from_public_key(b64d(hello.public_key, what="public key"))
    except ProtocolError as exc:
        raise Rejected("bad_key", str(exc)) from None
    from organiser.gate import check_worker_version, refusal_for_run

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
    peer.online = True
    peer.status = "waiting_for_group"
    peer.status_detail = ""
    peer.last_heartbeat = now
    peer.save()
    emit(PeerJoined(run_id=run.id, peer_id=peer.peer_id, username=token.user.username, role=peer.role))
    return JoinResult(peer=peer, run=run, role=peer.role,
                      probation_left=max(0, peer.probation_required - peer.probation_done))


@transaction.atomic
def record_heartbeat(*, peer: Peer, heartbeat: Heartbeat) -> bool:
    """Store the heartbeat; returns whether the peer's status (or online state) changed.

    A steady heartbeat is one UPDATE; ``PeerStatusChanged`` is emitted only on a change.
    """
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # a heartbeat is not worth a WAL flush
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
    now = timezone.now()
    status = heartbeat.status.value
    detail = heartbeat.detail if status == "error" else heartbeat.detail[:200]
    if Peer.objects.filter(pk=peer.pk, status=status, status_detail=detail, online=True).update(last_heartbeat=now):
        return False
    Peer.objects.filter(pk=peer.pk).update(last_heartbeat=now, status=status, status_detail=detail, online=True)
    emit(PeerStatusChanged(run_id=peer.run_id, peer_ids=[peer.peer_id], online=True, status=status,
                           detail=detail))
    return True


@transaction.atomic
def disconnect_peer(*, peer: Peer) -> None:
    """The worker's socket closed: the peer is offline and leaves the group at the next step."""
    Peer.objects.filter(pk=peer.pk).update(online=False)
    emit(PeerStatusChanged(run_id=peer.run_id, peer_ids=[peer.peer_id], online=False, status="offline"))


@transaction.atomic
def mark_stale_peers_offline(*, run: Run, now=None) -> list[str]:
    """Peers whose last heartbeat is older than ``HEARTBEAT_TIMEOUT_SECONDS`` go offline."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.HEARTBEAT_TIMEOUT_SECONDS)
    stale = Peer.objects.filter(run=run, online=True).filter(Q(last_heartbeat__lt=cutoff) | Q(last_heartbeat=None))
    ids = list(stale.values_list("peer_id", flat=True))
    if ids:
        Peer.objects.filter(run=run, peer_id__in=ids).update(online=False, status="offline",
                                                             status_detail="missed heartbeats")
        emit(PeerStatusChanged(run_id=run.id, peer_ids=ids, online=False, status="offline",
                               detail="missed heartbeats"))
    return ids


# --- admission ----------------------------------------------------------------------------------
@transaction.atomic
def admit_waiting_peers(*, run: Run) -> list[str]:
    """At a step boundary, move waiting peers into probation as far as the run's policy allows."""
    run = Run.objects.select_for_update().get(pk=run.pk)
    policy = get_policy(run.admission_policy)
    admitted = []
    now = timezone.now()
    for peer in run.peers.filter(role="waiting", online=True).order_by("joined_at", "id"):
        if run.peers.filter(user_id=peer.user_id, role="candidate").exists():
            continue  # one probation slot per account at a time: the others' keys go first (F8)
        active = run.peers.filter(role="active").count()
        if not policy.may_admit_candidate(
                run, active_count=active, candidate_count=run.peers.filter(role="candidate").count(),
                admitted_in_window=run.peers.filter(admitted_at__gte=policy.window_start(run)).count()):
            break
        peer.role, peer.admitted_at = "candidate", now
        peer.save(update_fields=["role", "admitted_at"])
        admitted.append(peer.peer_id)
    if admitted:
        emit(PeersAdmitted(run_id=run.id, peer_ids=admitted))
    return admitted


@transaction.atomic
def promote_candidates(*, run: Run) -> list[str]:
    """Candidates that finished their validated probation steps become active."""
    policy = get_policy(run.admission_policy)
    promoted = []
    now = timezone.now()
    for peer in run.peers.select_for_update().filter(role="candidate"):
        if policy.ready_to_promote(run, peer):
            peer.role, peer.promoted_at = "active", now
            peer.save(update_fields=["role", "promoted_at"])
            promoted.append(peer.peer_id)
    if promoted:
        emit(PeersPromoted(run_id=run.id, peer_ids=promoted))
    return promoted


# --- the step loop --------------------------------------------------------------------------------
def _eligible(run: Run, step: int):
    return (run.peers.filter(role="active", online=True)
            .filter(Q(excluded_until_step=None) | Q(excluded_until_step__lte=step)))


def _step_randomness(run: Run, step: int) -> bytes:
    """The randomness the site draws step ``step``'s group order and probation validators from: the
    previous step's MPRNG output on the board, or the run's public chain when that step had none."""
    return board_randomness(run=run, step=step - 1) or skipped_randomness(
        genesis_randomness(str(run.id), run.seed), str(run.id), step)


def _choose_members(run: Run, step: int) -> list[Peer]:
    """The step's group in its order: a random subset when more peers are eligible than fit (so every
    active peer takes part over time), shuffled with the previous step's randomness (nobody chooses its
    part by choosing its key)."""
    eligible = {p.peer_id: p for p in _eligible(run, step)}
    order = group_order(_step_randomness(run, step), list(eligible), size=run.peers_per_group)
    return [eligible[pid] for pid in order]


def _end_exclusions_if_stalled(run: Run, step: int) -> bool:
    """An ELIMINATE benches a pair until its epoch ends, and epochs are counted in steps. When the benched
    peers are what keeps the run from reaching ``min_peers``, no step would ever run and the epoch would
    never end: bring them back now (their reputation hit and the staff case stay). True if that makes the
    group possible."""
    online_active = run.peers.filter(role="active", online=True)
    benched = list(online_active.filter(excluded_until_step__gt=step))
    if not benched or online_active.count() < max(1, run.min_peers):
        return False
    Peer.objects.filter(pk__in=[p.pk for p in benched]).update(excluded_until_step=None)
    emit(ExclusionsEnded(run_id=run.id, step=step, peer_ids=sorted(p.peer_id for p in benched)))
    log.info("run %s step %s: ended the ELIMINATE exclusions of %d peers early (too few peers otherwise)",
             run.id, step, len(benched))
    return True


@transaction.atomic
def start_step_if_ready(*, run: Run, now: datetime | None = None) -> StepRecord | None:
    """Form the group of the run's current step when none is in progress and enough active peers are
    online; push it to members and candidates. ``now`` (default: the current time) starts the step's
    deadline. Returns the new step record or ``None``."""
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.state != "open" or run.step_in_progress:
        return None
    step = run.current_step
    if _eligible(run, step).count() < max(1, run.min_peers) and not _end_exclusions_if_stalled(run, step):
        return None  # cheap early exit: joins call this on every hello
    members = _choose_members(run, step)
    if len(members) < max(1, run.min_peers):
        return None
    ids = [p.peer_id for p in members]
    # Validation by recalculation (paper sec. 3.3): the validators of this step and their targets are
    # drawn from this step's MPRNG output r_t, revealed during the step, so nobody (the site included)
    # knows them now; ``step_validators`` computes them from the board once the reveals are in.
    validators: dict[str, str] = {}
    # each candidate's probation validator: drawn from the previous step's r (no candidate knew it when
    # it chose its key; finding 10), from the run's public chain when that step had none
    waiting = list(run.peers.filter(role="candidate", online=True).order_by("peer_id"))
    r_prev = _step_randomness(run, step)
    checks = draw_probation_validators(r_prev, members=ids, candidates=[c.peer_id for c in waiting])
    candidates = []
    for cand in waiting:
        info = cand.peer_info().model_dump()
        info.update(seed=probation_seed(run, step, cand.peer_id), validator=checks[cand.peer_id],
                    probation_left=max(0, cand.probation_required - cand.probation_done))
        candidates.append(info)
    now = now or timezone.now()
    timeouts = effective_deadlines(run)  # the organiser's values, raised when the swarm is slower
    deadline = now + timedelta(seconds=timeouts.step_timeout)
    record = StepRecord.objects.create(run=run, step=step, members=ids, validators=validators,
                                       candidates=candidates, deadline=deadline)
    run.step_in_progress, run.step_started_at, run.step_deadline = True, now, deadline
    run.save(update_fields=["step_in_progress", "step_started_at", "step_deadline"])
    emit(GroupFormed(run_id=run.id, step=step, peers=[p.peer_info() for p in members], validators=validators,
                     candidates=candidates,
                     deadlines={"step": deadline.timestamp(), "phase_timeout": timeouts.phase_timeout},
                     state_donors=[p.peer_info() for p in members[:3]]))
    return record


def _board_senders(run: Run, step: int, phase: str, record: StepRecord) -> list[str]:
    """The members whose ``phase`` broadcast of ``step`` is on the board (a closed phase: its senders)."""
    closed = (record.closed_phases or {}).get(phase)
    if closed is not None:
        return [p for p in closed if p in record.members]
    stored = set(BroadcastLog.objects.filter(run=run, step=step, phase=phase)
                 .values_list("sender_peer_id", flat=True))
    return [p for p in record.members if p in stored]


def _board_mprng(run: Run, step: int, record: StepRecord) -> dict[str, dict[str, str]]:
    """``{"mprng_commit": {sender: H(x)}, "mprng_reveal": {sender: x}}`` of the members' stored broadcasts."""
    mprng: dict[str, dict[str, str]] = {phase: {} for phase in ("mprng_commit", "mprng_reveal")}
    members = {phase: set(_board_senders(run, step, phase, record)) for phase in mprng}
    for sender, phase, envelope in BroadcastLog.objects.filter(run=run, step=step, phase__in=list(mprng)) \
            .order_by("pk").values_list("sender_peer_id", "phase", "envelope"):
        value = (envelope.get("payload") or {}).get("hash" if phase == "mprng_commit" else "value")
        if sender in members[phase] and isinstance(value, str):
            mprng[phase].setdefault(sender, value)
    return mprng


def board_randomness(*, run: Run, step: int) -> bytes | None:
    """``r_step`` as every peer computed it from the board (None: no such step, or its MPRNG failed)."""
    record = StepRecord.objects.filter(run=run, step=step).first()
    if record is None:
        return None
    mprng = _board_mprng(run, step, record)
    return board_rules.mprng_output(run=str(run.id), step=step,
                                    members=[p for p in record.members if p in mprng["mprng_commit"]],
                                    commitments=mprng["mprng_commit"], reveals=mprng["mprng_reveal"])


def step_validators(*, run: Run, step: int) -> dict[str, str]:
    """The validators of ``step`` and their targets (contributors of ``step - 1``), computed from the board
    with the rule every peer runs (:func:`btard_wire.board.validator_assignment`): drawn from the step's own
    MPRNG output, so empty until every member's reveal is stored (or when the step has none)."""
    record = StepRecord.objects.filter(run=run, step=step).first()
    previous = StepRecord.objects.filter(run=run, step=step - 1).first()
    if record is None or previous is None or run.validators_per_step <= 0:
        return {}
    mprng = _board_mprng(run, step, record)
    targets = board_rules.checkable_targets(
        contributors=_board_senders(run, step - 1, "commit", previous),
        scalars_senders=_board_senders(run, step - 1, "scalars", previous))
    return board_rules.validator_assignment(run=str(run.id), step=step, group=record.members,
                                            commitments=mprng["mprng_commit"], reveals=mprng["mprng_reveal"],
                                            prev_contributors=targets, m=run.validators_per_step)


def _check_sender_limits(run: Run, record: StepRecord, envelope: Envelope) -> None:
    """One sender's share of a step's board is bounded in messages per phase and in bytes (F6)."""
    import json

    limit = board_rules.sender_message_limit(envelope.phase, board_phases=BOARD_PHASES,
                                             group_size=len(record.members))
    mine = BroadcastLog.objects.filter(run=run, step=record.step, sender_peer_id=envelope.sender)
    if mine.filter(phase=envelope.phase).count() >= limit:
        raise Rejected("limit", f"{envelope.sender[:8]} already posted {limit} {envelope.phase} message(s) at step "
                                f"{record.step}, the most one sender may")
    named_key = {"eliminate": "target", "verdict": "guilty"}.get(envelope.phase)
    if named_key is not None:  # one per (sender, named peer, step): one moderation case each at most
        named = envelope.payload.get(named_key)
        for earlier in mine.filter(phase=envelope.phase).values_list("envelope", flat=True):
            if (earlier.get("payload") or {}).get(named_key) == named:
                raise Rejected("duplicate", f"{envelope.sender[:8]} already posted a {envelope.phase} naming "
                                            f"{str(named)[:8]} at step {record.step}")
    size = len(json.dumps(envelope.model_dump(mode="json")))
    used = sum(len(json.dumps(e)) for e in mine.values_list("envelope", flat=True))
    if used + size > board_rules.MAX_SENDER_BYTES_PER_STEP:
        raise Rejected("limit", f"{envelope.sender[:8]} would post more than "
                                f"{board_rules.MAX_SENDER_BYTES_PER_STEP} bytes at step {record.step}")


def _check_special_payload(envelope: Envelope, record: StepRecord) -> None:
    try:  # every phase's payload is checked against its schema before it is stored or relayed (F6)
        payload = parse_payload(envelope.phase, envelope.payload)
    except ProtocolError as exc:
        raise Rejected("payload", str(exc)) from None
    if envelope.phase not in ("verdict", "eliminate"):
        return
    named = payload.target if envelope.phase == "eliminate" else payload.guilty
    if named not in record.members:
        raise Rejected("payload", f"{envelope.phase} names {named[:8]}, who is not in the group of step "
                                  f"{record.step}")
    if envelope.phase == "eliminate" and named == envelope.sender:
        raise Rejected("payload", "a peer cannot eliminate itself")


@transaction.atomic
def accept_broadcast(*, peer: Peer, envelope: Envelope) -> BroadcastLog:
    """Verify, store and relay a signed broadcast of ``peer``.

    Raises :class:`Rejected` with code ``sender``, ``signature``, ``wrong_run``, ``phase``, ``stale_step``,
    ``not_in_group``, ``banned``, ``payload`` or ``replay``; a rejected broadcast changes nothing.
    """
    if envelope.sender != peer.peer_id:
        raise Rejected("sender", "envelope sender is not the peer of this connection")
    try:
        verify_envelope(envelope, peer.public_key)
    except ProtocolError as exc:
        raise Rejected("signature", str(exc)) from None
    except (ValueError, RecursionError):  # NaN/Infinity or absurd nesting: no canonical bytes to check (F11)
        raise Rejected("payload", "the payload is not canonical JSON (NaN, Infinity or too deeply nested)") from None
    run = Run.objects.get(pk=peer.run_id)
    if envelope.run != str(run.id):
        raise Rejected("wrong_run", f"envelope is for run {envelope.run!r}, this connection is in run {run.id}")
    if envelope.phase not in BROADCAST_PHASES:
        raise Rejected("phase", f"unknown phase {envelope.phase!r}; known: {', '.join(BROADCAST_PHASES)}")
    allowed = {run.current_step}
    if envelope.phase in ("verdict", "accuse", "validation") or not run.step_in_progress:
        allowed.add(run.current_step - 1)  # late verdicts and stragglers of the step just closed
    if envelope.step not in allowed:
        raise Rejected("stale_step", f"step {envelope.step} is not the current step {run.current_step}")
    if Peer.objects.filter(pk=peer.pk, role="banned").exists():
        raise Rejected("banned", "this peer is banned")
    record = StepRecord.objects.filter(run=run, step=envelope.step).first()
    # members only: a candidate listens to the step's board but cannot post on it (F3)
    if record is None or not board_rules.may_post(sender=envelope.sender, members=record.members):
        raise Rejected("not_in_group", f"{envelope.sender[:8]} is not a member of the group of step {envelope.step}")
    _check_special_payload(envelope, record)
    if BroadcastLog.objects.filter(run=run, sender_peer_id=envelope.sender, nonce=envelope.nonce).exists():
        raise Rejected("replay", f"replayed message (nonce {envelope.nonce[:8]}) from {envelope.sender[:8]}")
    _check_sender_limits(run, record, envelope)
    try:
        with transaction.atomic():
            entry = BroadcastLog.objects.create(run=run, step=envelope.step, phase=envelope.phase, sender=peer,
                                                sender_peer_id=envelope.sender, nonce=envelope.nonce,
                                                digest=envelope.digest(), envelope=envelope.model_dump(mode="json"))
    except IntegrityError:  # a concurrent copy of the same message won the race
        raise Rejected("replay", f"replayed message (nonce {envelope.nonce[:8]})") from None
    if envelope.phase in BOARD_PHASES:
        # Serialised with request_phase_close by the step's row (taken after the insert, which already
        # holds the run's key lock: the same order as close_step, run then step). A phase the site closed
        # takes no more messages, so every peer's view of who posted in time is the site's.
        closed = StepRecord.objects.select_for_update().values_list("closed_phases", flat=True).get(pk=record.pk)
        if envelope.phase in (closed or {}):
            raise Rejected("phase_closed", f"{envelope.phase} of step {envelope.step} was closed at its deadline "
                                           f"before this message arrived; the group continues without it")
    emit(BroadcastRecorded(run_id=run.id, step=envelope.step, envelope=envelope, recipients=record.recipients()))
    return entry


@transaction.atomic
def request_phase_close(*, peer: Peer, step: int, phase: str) -> PhaseClosed | None:
    """``peer``'s deadline for board ``phase`` of ``step`` passed. Once a majority of the step's group
    that is still online asked, the phase closes: the peers whose broadcast of it is stored are its senders, later broadcasts
    of it are refused, and the group is told (:class:`PhaseClosed`). Asking again after the close sends
    the same answer again. Raises :class:`Rejected` for a step not in progress or a stranger."""
    if phase not in BOARD_PHASES:
        raise Rejected("phase", f"{phase!r} is not a phase the site closes; those are: {', '.join(BOARD_PHASES)}")
    run = Run.objects.get(pk=peer.run_id)
    if not run.step_in_progress or step != run.current_step:
        raise Rejected("stale_step", f"step {step} is not in progress (current step {run.current_step})")
    record = StepRecord.objects.select_for_update().get(run=run, step=step)
    if peer.peer_id not in record.members:
        raise Rejected("not_in_group", f"{peer.peer_id[:8]} is not in the group of step {step}")
    closed = dict(record.closed_phases or {})
    just_closed = phase not in closed
    if not just_closed:
        senders = closed[phase]
    else:
        requests = dict(record.close_requests or {})
        asked = sorted(set(requests.get(phase, [])) | {peer.peer_id})
        requests[phase] = asked
        record.close_requests = requests
        # a majority of the members still here: a crashed peer's socket is gone, and it cannot ask
        present = Peer.objects.filter(run=run, peer_id__in=record.members, online=True).exclude(role="banned")
        if not board_rules.close_quorum(asked=asked, members=record.members,
                                        online=present.values_list("peer_id", flat=True)):
            record.save(update_fields=["close_requests"])
            return None
        senders = sorted(set(BroadcastLog.objects.filter(run=run, step=step, phase=phase)
                             .values_list("sender_peer_id", flat=True)) & set(record.recipients()))
        closed[phase] = senders
        record.closed_phases = closed
        record.save(update_fields=["close_requests", "closed_phases"])
    late = [p for p in record.members if p not in senders]
    if just_closed:
        log.info("run %s step %s: %s closed at the group's deadline; late: %s", run.id, step, phase,
                 [p[:8] for p in late] or "nobody")
    return emit(PhaseClosed(run_id=run.id, step=step, phase=phase, senders=senders, late=late,
                            recipients=record.recipients()))


def board_envelopes(*, peer: Peer, step: int, phase: str, senders: list[str]) -> list[dict]:
    """The stored broadcasts of ``phase`` at ``step`` (of ``senders`` if given) for a member of that step."""
    record = StepRecord.objects.filter(run_id=peer.run_id, step=step).first()
    if record is None or peer.peer_id not in record.recipients():
        raise Rejected("not_in_group", f"{peer.peer_id[:8]} is not in the group of step {step}")
    from django.core.cache import cache

    # bounded and rate-limited (F6): a few answers per peer, step and phase, each at most a step's board
    key = f"board-req:{peer.run_id}:{peer.peer_id}:{step}:{phase}"
    cache.add(key, 0, timeout=3600)
    if cache.incr(key) > board_rules.BOARD_REQUESTS_PER_PHASE:
        raise Rejected("rate_limited", f"at most {board_rules.BOARD_REQUESTS_PER_PHASE} board requests per step "
                                       f"and phase; {phase} of step {step} was already sent that often")
    rows = BroadcastLog.objects.filter(run_id=peer.run_id, step=step, phase=phase)
    if senders:
        rows = rows.filter(sender_peer_id__in=senders)
    out, size = [], 0
    for env in rows.order_by("pk").values_list("envelope", flat=True)[:max(1, len(record.recipients()))]:
        size += len(str(env))
        if out and size > board_rules.MAX_BOARD_RESPONSE_BYTES:
            break
        out.append(env)
    return out


# A step report is a self-claim: the site stores and shows only bounded, finite values (docs/threat-model.md,
# "Site"). Credit comes from the batch size the site knows (``samples_per_peer``), never from the claim.
MAX_REPORTED_LOSS = 1e9
MAX_SAMPLE_CLAIM_FACTOR = 1000


def samples_per_peer(run: Run, group_size: int) -> int:
    """The samples one peer's gradient covers at a step of ``group_size`` members, as the site knows it:
    ``ceil(global_batch / group size)`` when the run fixes a global batch, else the run's batch size."""
    global_batch = (run.extra or {}).get("global_batch")
    if isinstance(global_batch, int) and not isinstance(global_batch, bool) and global_batch > 0:
        return -(-global_batch // max(1, group_size))
    return int(run.batch_size)


def _check_report_bounds(run: Run, record: StepRecord, report: StepReport) -> None:
    import math

    limit = samples_per_peer(run, len(record.members)) * MAX_SAMPLE_CLAIM_FACTOR
    if report.samples > limit:
        raise Rejected("samples", f"samples={report.samples} is more than this run's peers can compute in a step "
                                  f"(at most {limit}); the site credits its own batch size anyway")
    for name in ("loss", "accuracy"):
        value = getattr(report, name)
        if value is not None and (not math.isfinite(value) or abs(value) > MAX_REPORTED_LOSS):
            raise Rejected(name, f"{name} must be a finite number of magnitude at most {MAX_REPORTED_LOSS:g}")


@transaction.atomic
def record_step_report(*, peer: Peer, report: StepReport) -> StepReportRecord:
    """Store the end-of-step report of a group member or candidate. Raises :class:`Rejected`."""
    run = Run.objects.get(pk=peer.run_id)
    current = run.step_in_progress and report.step == run.current_step
    # A step closes when its members reported; a candidate (who first downloads the state) may report
    # its probation step just after that, and still gets the step counted.
    late_candidate = not current and report.step == run.current_step - 1 and peer.role == "candidate"
    if not current and not late_candidate:
        raise Rejected("stale_step", f"report for step {report.step}, but the current step is {run.current_step}"
                                     f"{'' if run.step_in_progress else ' (not started)'}")
    record = StepRecord.objects.get(run=run, step=report.step)
    if peer.peer_id not in record.recipients():
        raise Rejected("not_in_group", f"{peer.peer_id[:8]} is not in the group of step {report.step}")
    _check_report_bounds(run, record, report)
    try:
        with transaction.atomic():
            entry = StepReportRecord.objects.create(
                step_record=record, peer=peer, outcome=report.outcome, loss=report.loss, accuracy=report.accuracy,
                samples=report.samples,
                details={"banned": report.banned, "eliminated": report.eliminated, "missing": report.missing,
                         **({"state_sha256": report.state_sha256} if report.state_sha256 else {})})
    except IntegrityError:
        raise Rejected("duplicate", f"a report for step {report.step} was already received") from None
    if late_candidate and record.finished_at is not None:
        _credit_probation(run=run, record=record, peer=peer)
    reported = record.reports.count()
    emit(StepReported(run_id=run.id, step=record.step, peer_id=peer.peer_id, reported=reported,
                      expected=len(record.recipients())))
    return entry


def _credit_probation(*, run: Run, record: StepRecord, peer: Peer) -> bool:
    """Count a candidate's probation step that was reported after its step closed (unless accused)."""
    from volunteers.services import _apply_reputation

    if peer.peer_id in _accused_in_step(run, record.step):
        return False
    Peer.objects.filter(pk=peer.pk).update(probation_done=F("probation_done") + 1)
    _apply_reputation(peer.user_id, kind="probation_step", run=run, step=record.step)
    return True


def step_complete(record: StepRecord) -> bool:
    reported = set(record.reports.values_list("peer__peer_id", flat=True))
    return set(record.members) <= reported


def _accused_in_step(run: Run, step: int) -> set[str]:
    names = set()
    for env in BroadcastLog.objects.filter(run=run, step=step, phase__in=("accuse", "verdict", "eliminate",
                                                                        "validation")).values_list("envelope", flat=True):
        payload = env.get("payload") or {}
        if env.get("phase") == "validation" and payload.get("ok", True):
            continue
        for key in ("guilty", "accused", "target"):
            if isinstance(payload.get(key), str):
                names.add(payload[key])
    return names


@transaction.atomic
def close_step(*, run: Run, force: bool = False, now=None) -> StepRecord | None:
    """Close the current step when every member reported or its deadline passed (``force`` closes it
    anyway), record metrics, credit contribution and reputation, charge missed deadlines, advance.

    Returns the closed record or ``None`` when the step is still running.
    """
    from moderation.services import open_timeout_case_quietly
    from volunteers.services import apply_missed_deadline_quietly, credit_step

    now = now or timezone.now()
    run = Run.objects.select_for_update().get(pk=run.pk)
    if not run.step_in_progress:
        return None
    record = StepRecord.objects.select_for_update().get(run=run, step=run.current_step)
    if not force and not step_complete(record) and now < record.deadline:
        return None
    reports = {r.peer.peer_id: r for r in record.reports.select_related("peer")}
    member_reports = [reports[pid] for pid in record.members if pid in reports]
    applied = [r for r in member_reports if r.outcome == "applied"]
    outcome = "applied" if applied and len(applied) * 2 > len(member_reports) else "dropped"
    # The public curve is the median of the members' claims (one liar cannot move it far), and only finite
    # values count; credit is the site's own batch size per applied member, never the claimed count.
    losses = [r.loss for r in member_reports if r.loss is not None and math.isfinite(r.loss)]
    accs = [r.accuracy for r in member_reports if r.accuracy is not None and math.isfinite(r.accuracy)]
    record.loss = statistics.median(losses) if losses else None
    record.accuracy = statistics.median(accs) if accs else None
    per_peer = samples_per_peer(run, len(record.members))
    credited = {r.pk: min(max(0, r.samples), per_peer) for r in applied}
    record.samples = sum(credited.values()) if outcome == "applied" else 0
    record.outcome, record.finished_at = outcome, now
    record.save()

    peers = {p.peer_id: p for p in run.peers.filter(peer_id__in=record.recipients())}
    accused = _accused_in_step(run, record.step)
    samples_by_user: dict[int, int] = {}
    validated: list[int] = []
    probation: list[int] = []
    if outcome == "applied":
        for r in applied:
            p = peers[r.peer.peer_id]
            if p.role == "banned":
                continue
            samples_by_user[p.user_id] = samples_by_user.get(p.user_id, 0) + credited[r.pk]
            validated.append(p.user_id)
    for cand in record.candidates:
        p = peers.get(cand["peer_id"])
        r = reports.get(cand["peer_id"])
        if p is None or r is None or p.role != "candidate" or p.peer_id in accused:
            continue
        Peer.objects.filter(pk=p.pk).update(probation_done=F("probation_done") + 1)
        probation.append(p.user_id)
    credit_step(run=run, step=record.step, samples_by_user=samples_by_user, validated_user_ids=validated,
                probation_user_ids=probation, quiet=True)
    # silence as the group saw it (docs/protocol.md, "Silence"): a majority of the member reports list it;
    # the count is of consecutive steps, so a step the member spoke in resets it (btard_wire.board)
    silent = board_rules.reported_silent({pid: (r.details or {}).get("missing", []) for pid, r in reports.items()},
                                         members=record.members)
    for pid in record.members:
        p = peers.get(pid)
        if p is None or p.role == "banned":
            continue
        count = board_rules.next_silence_count(p.silent_steps, silent=pid in silent)
        if count != p.silent_steps:
            Peer.objects.filter(pk=p.pk).update(silent_steps=count)
    # the step's validators, as every peer drew them from r_t (empty when the step had no r_t)
    record.validators = step_validators(run=run, step=record.step)
    StepRecord.objects.filter(pk=record.pk).update(validators=record.validators)
    missing = [pid for pid in record.members if pid not in reports]
    for pid in record.members:
        p = peers.get(pid)
        if p is None:
            continue
        if pid in reports:
            if p.missed_deadlines:
                Peer.objects.filter(pk=p.pk).update(missed_deadlines=0)
            continue
        p.missed_deadlines += 1
        Peer.objects.filter(pk=p.pk).update(missed_deadlines=p.missed_deadlines)
        apply_missed_deadline_quietly(user_id=p.user_id, run=run, step=record.step)
        if p.missed_deadlines >= run.missed_deadlines_for_case:
            open_timeout_case_quietly(run=run, peer=p, step=record.step)
            Peer.objects.filter(pk=p.pk).update(missed_deadlines=0)
    run.current_step += 1
    run.step_in_progress = False
    run.save(update_fields=["current_step", "step_in_progress"])
    emit(StepAdvanced(run_id=run.id, finished_step=record.step, step=run.current_step, outcome=outcome,
                      loss=record.loss, accuracy=record.accuracy, samples=record.samples, missing=missing))
    return record


@transaction.atomic
def expire_broadcasts(*, now=None) -> int:
    """Delete broadcast logs older than their run's retention. Evidence of bans and cases is copied
    into the ban or case, so it survives."""
    now = now or timezone.now()
    deleted = 0
    for run in Run.objects.all():
        cutoff = now - timedelta(hours=run.broadcast_retention_hours)
        count, _ = BroadcastLog.objects.filter(run=run, created_at__lt=cutoff).delete()
        deleted += count
    emit(HousekeepingDone(task="expire_broadcasts", count=deleted))
    return deleted


@transaction.atomic
def drop_unclosable_step(*, run: Run, now=None) -> StepRecord | None:
    """The overdue step of ``run`` could not be closed (a fault of the site, not of a peer): record it as
    dropped, credit nothing and advance, so one bad step never halts the run (F1). ``None`` while the
    step is not overdue yet."""
    now = now or timezone.now()
    run = Run.objects.select_for_update().get(pk=run.pk)
    if not run.step_in_progress:
        return None
    record = StepRecord.objects.select_for_update().get(run=run, step=run.current_step)
    if now < record.deadline:
        return None
    record.outcome, record.finished_at, record.samples = "dropped", now, 0
    record.save(update_fields=["outcome", "finished_at", "samples"])
    run.current_step += 1
    run.step_in_progress = False
    run.save(update_fields=["current_step", "step_in_progress"])
    emit(StepAdvanced(run_id=run.id, finished_step=record.step, step=run.current_step, outcome="dropped",
                      loss=None, accuracy=None, samples=0, missing=[]))
    return record


def tick_run(*, run: Run) -> None:
    """Drive one run forward: stale peers offline, overdue step closed (and peers silent too often
    banned), admissions, promotions, next group. Each part is its own service (and event); safe to call
    often and concurrently."""
    from moderation.services import ban_silent_peers

    from btard_site.retry import is_transient

    mark_stale_peers_offline(run=run)
    try:
        closed = close_step(run=run)
    except Exception as exc:
        if is_transient(exc):
            raise  # retried by the caller
        log.exception("run %s: closing step %s failed; it is dropped once overdue", run.pk, run.current_step)
        closed = None
        drop_unclosable_step(run=run)
    if closed is not None:
        ban_silent_peers(run=run)
    admit_waiting_peers(run=run)
    promote_candidates(run=run)
    start_step_if_ready(run=run)


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
