"""The step's bulletin board: signed broadcasts accepted (and judged: verdicts, ELIMINATE), phases the
group closes, board requests, log expiry. Keyword-only, atomic, one typed event per call."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from live.bus import emit
from live.events import (
    BroadcastRecorded,
    HousekeepingDone,
    PhaseClosed,
)
from moderation.services import consider_verdict, elimination_allowed, record_elimination

from btard_wire import BOARD_PHASES, BROADCAST_PHASES
from btard_wire import board as board_rules
from btard_wire.envelope import Envelope, verify_envelope
from btard_wire.errors import ProtocolError
from btard_wire.payloads import parse_payload
from btard_wire.probation import panel_of

from ..models import BroadcastLog, Peer, Run, StepRecord
from ..selectors import board_envelopes
from .errors import Rejected

log = logging.getLogger(__name__)


def _check_sender_limits(run: Run, record: StepRecord, envelope: Envelope) -> None:
    """One sender's share of a step's board is bounded in messages per phase and in bytes (F6)."""
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


class Equivocation(Rejected):
    """A second, different signed message in a single-message slot ``(step, phase, sender)``: refused, and
    itself proof of equivocation (btard_wire.board.slot_conflict). The refusal stores nothing; the public
    callers ban the sender afterwards, in their own transaction, with both messages as evidence."""

    def __init__(self, *, peer: Peer, step: int, phase: str, first: dict, first_digest: str, second: Envelope):
        super().__init__("equivocation", f"{peer.peer_id[:8]} already posted a different signed {phase} message "
                                         f"at step {step}: two signatures on one slot are equivocation")
        self.peer, self.step, self.phase = peer, step, phase
        self.first, self.first_digest, self.second = first, first_digest, second


@transaction.atomic
def _ban_equivocator(exc: Equivocation) -> None:
    from moderation.services import ban_for_fault

    peer = Peer.objects.select_related("run", "user").get(pk=exc.peer.pk)
    second_digest = exc.second.digest()
    ban_for_fault(peer=peer, step=exc.step, evidence_kind="equivocation",
                  reason=f"equivocation: two different signed {exc.phase} messages in one slot of step {exc.step}",
                  evidence={"digests": [exc.first_digest, second_digest],
                            "envelopes": [exc.first, exc.second.model_dump(mode="json")]})


def _peer_of(run: Run, peer_id: str) -> Peer:
    return Peer.objects.select_related("run").get(run=run, peer_id=peer_id)


def _check_decisive(run: Run, record: StepRecord, envelope: Envelope) -> None:
    """The board rules that fix what decides a step (btard_wire.board; the in-memory board applies the
    same): one message per single-message slot, no accusation or ELIMINATE once the sender reported or
    validation closed, a validation report lists only stored accusations and all of its sender's own."""
    step_log = BroadcastLog.objects.filter(run=run, step=record.step)
    sender = envelope.sender
    digest = envelope.digest()
    if envelope.phase in BOARD_PHASES:
        first = step_log.filter(phase=envelope.phase, sender_peer_id=sender).order_by("id").first()
        if board_rules.slot_conflict(phase=envelope.phase, board_phases=BOARD_PHASES,
                                     stored_digest=None if first is None else first.digest, digest=digest):
            raise Equivocation(peer=first.sender, step=record.step, phase=envelope.phase, first=first.envelope,
                               first_digest=first.digest, second=envelope)
    if envelope.phase in ("accuse", "eliminate"):
        reporters = set(step_log.filter(phase="validation").values_list("sender_peer_id", flat=True))
        closed = "validation" in (record.closed_phases or {}) or set(record.members) <= reporters
        why = board_rules.moderation_refused(
            phase=envelope.phase, sender_reported=sender in reporters, validation_closed=closed,
            sender_posted_scalars=step_log.filter(phase="scalars", sender_peer_id=sender).exists())
        if why is not None:
            raise Rejected("too_late", why)
    elif envelope.phase == "validation":
        listed = list((envelope.payload or {}).get("accusations") or [])
        moderation = step_log.filter(phase__in=("accuse", "eliminate"))
        phantom = board_rules.unheld_listed(listed, stored=set(moderation.values_list("digest", flat=True)))
        if phantom:
            raise Rejected("unheld_digest", f"the report lists {len(phantom)} accusation digest(s) the board does "
                                            f"not hold at step {record.step} (first {phantom[0][:12]})")
        own = moderation.filter(sender_peer_id=sender).order_by("id").values_list("digest", flat=True)
        unlisted = board_rules.unlisted_own(own, listed=listed)
        if unlisted:
            raise Rejected("unlisted_own", f"the report leaves out {len(unlisted)} of the sender's own accusations "
                                           f"or ELIMINATEs at step {record.step}; it must list all of them")


def _check_elimination_rate(run: Run, record: StepRecord, envelope: Envelope) -> None:
    """ELIMINATE is free (no evidence), so it is rate-limited per account and epoch (finding 9)."""
    if envelope.phase == "eliminate" and not elimination_allowed(peer=_peer_of(run, envelope.sender),
                                                                   step=record.step):
        raise Rejected("eliminate_limit", f"the account of {envelope.sender[:8]} already used its "
                                          f"{board_rules.ELIMINATE_LIMIT} ELIMINATE(s) of this epoch; ELIMINATE "
                                          f"is rate-limited per account and epoch")


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


def _check_probation_report(run: Run, record: StepRecord, envelope: Envelope) -> None:
    """A ``probation`` report comes only from the candidate's drawn probation validator of that step, at most
    one per (sender, candidate, step) (btard_wire.board.probation_report_refused); a second one is refused
    as a duplicate (it is not a board slot, so not equivocation: the validator's own ``validation`` report is
    a different message)."""
    if envelope.phase != "probation":
        return
    candidate = (envelope.payload or {}).get("candidate")
    validators = {c.get("peer_id"): panel_of(c) for c in record.candidates}
    reported = [(e.get("payload") or {}).get("candidate") for e in BroadcastLog.objects.filter(
        run=run, step=record.step, phase="probation", sender_peer_id=envelope.sender).values_list("envelope",
                                                                                                flat=True)]
    why = board_rules.probation_report_refused(sender=envelope.sender, candidate=candidate, validators=validators,
                                               reported=reported)
    if why is not None:
        code = ("payload" if candidate not in validators else
                "not_validator" if envelope.sender not in validators[candidate] else "duplicate")
        raise Rejected(code, why)


def accept_broadcast(*, peer: Peer, envelope: Envelope) -> BroadcastLog:
    """Verify, store and relay a signed broadcast of ``peer``.

    Raises :class:`Rejected` with code ``sender``, ``signature``, ``wrong_run``, ``phase``, ``stale_step``,
    ``not_in_group``, ``banned``, ``payload``, ``replay`` (a byte-identical resend: harmless), ``too_late``,
    ``unheld_digest``, ``unlisted_own``, ``limit`` or ``duplicate``; a rejected broadcast changes nothing.
    ``equivocation`` (:class:`Equivocation`, a second different message in a single-message slot) stores
    nothing either, but bans the sender with both digests as evidence.
    """
    try:
        return _accept_broadcast(peer=peer, envelope=envelope)
    except Equivocation as exc:
        _ban_equivocator(exc)
        raise


@transaction.atomic
def _accept_broadcast(*, peer: Peer, envelope: Envelope) -> BroadcastLog:
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
    if envelope.phase in ("verdict", "accuse", "validation", "probation") or not run.step_in_progress:
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
    _check_probation_report(run, record, envelope)
    _check_decisive(run, record, envelope)
    _check_sender_limits(run, record, envelope)
    _check_elimination_rate(run, record, envelope)
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
    # a probation report is for the site's probation decision only: stored, never relayed
    recipients = [] if envelope.phase == "probation" else record.recipients()
    emit(BroadcastRecorded(run_id=run.id, step=envelope.step, envelope=envelope, recipients=recipients))
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


def post_broadcast(*, peer: Peer, envelope: Envelope) -> BroadcastLog:
    """A worker's broadcast: accepted (:func:`accept_broadcast`), then judged in the same transaction (a
    verdict may complete a majority and ban, an ELIMINATE benches a pair), so a retry on a transient lock
    redoes both or neither. Raises :class:`Rejected` as :func:`accept_broadcast` does (an equivocation is
    refused and its sender banned, in a transaction of its own)."""
    try:
        return _post_broadcast(peer=peer, envelope=envelope)
    except Equivocation as exc:
        _ban_equivocator(exc)
        raise


@transaction.atomic
def _post_broadcast(*, peer: Peer, envelope: Envelope) -> BroadcastLog:
    entry = _accept_broadcast(peer=peer, envelope=envelope)
    if entry.phase == "verdict":
        consider_verdict(entry=entry)
    elif entry.phase == "eliminate":
        record_elimination(entry=entry)
    return entry


def board_request(*, peer: Peer, step: int, phase: str, senders: list[str]) -> list[dict]:
    """The stored broadcasts of ``phase`` at ``step`` (of ``senders`` if given) for a member of that step."""
    record = StepRecord.objects.filter(run_id=peer.run_id, step=step).first()
    if record is None or peer.peer_id not in record.recipients():
        raise Rejected("not_in_group", f"{peer.peer_id[:8]} is not in the group of step {step}")
    # bounded and rate-limited (F6): a few answers per peer, step and phase, each at most a step's board
    key = f"board-req:{peer.run_id}:{peer.peer_id}:{step}:{phase}"
    cache.add(key, 0, timeout=3600)
    if cache.incr(key) > board_rules.BOARD_REQUESTS_PER_PHASE:
        raise Rejected("rate_limited", f"at most {board_rules.BOARD_REQUESTS_PER_PHASE} board requests per step "
                                       f"and phase; {phase} of step {step} was already sent that often")
    return board_envelopes(record=record, phase=phase, senders=senders)


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
