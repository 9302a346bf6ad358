"""The step loop: group formation, closing a step (metrics, credit, silence, missed deadlines), the
run's tick. Keyword-only, atomic, one typed event per call (emitted on commit).

The site is the membership authority of the protocol (docs: btard-protocol.md, "Setting"): it fixes the
group of every step, relays and stores the signed broadcasts, and never sees a tensor.
"""

from __future__ import annotations

import logging
import math
import statistics
from datetime import datetime, timedelta

from admission.selectors import probation_candidates
from admission.services import admit_waiting_peers, promote_candidates, settle_probation
from btard_site.retry import is_transient
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from live.bus import emit
from live.events import (
    ExclusionsEnded,
    GroupFormed,
    StepAdvanced,
)
from moderation.services import ban_silent_peers, elimination_allowed, open_timeout_case_quietly
from volunteers.services import apply_missed_deadline_quietly, credit_step

from btard_wire import board as board_rules
from btard_wire import probation as probation_rules
from btard_wire.control import Group
from btard_wire.randomness import (
    genesis_randomness,
    group_order,
    skipped_randomness,
)
from btard_wire.randomness import probation_seed as _probation_seed

from ..deadlines import effective_deadlines
from ..models import BroadcastLog, Peer, Run, StepRecord
from ..selectors import (
    board_randomness,
    state_donors,
    step_complete,
    step_validators,
)
from .membership import mark_stale_peers_offline
from .reports import samples_per_peer

log = logging.getLogger(__name__)


def probation_seed(run: Run, step: int, peer_id: str) -> int:
    """The public seed a candidate computes its probation gradient on at ``step``."""
    return _probation_seed(run=run.id, seed=run.seed, step=step, peer=peer_id)

# --- the step loop --------------------------------------------------------------------------------
def _eligible(run: Run, step: int):
    return (run.peers.filter(role="active", online=True)
            .filter(Q(excluded_until_step=None) | Q(excluded_until_step__lte=step)))


def _step_randomness(run: Run, step: int) -> bytes:
    """The randomness the site draws step ``step``'s group order and probation validators from: the
    previous step's MPRNG output on the board, or the run's public chain when that step had none."""
    return board_randomness(run=run, step=step - 1) or skipped_randomness(
        genesis_randomness(str(run.id), run.seed), str(run.id), step)


def _randomness_opened_at(run: Run, step: int) -> float | None:
    """When the MPRNG that made step ``step``'s draw randomness began: the start of step ``step - 1`` if its
    board holds an MPRNG output, else ``None`` (the run's public chain, known to anyone)."""
    if step < 1 or board_randomness(run=run, step=step - 1) is None:
        return None
    started = StepRecord.objects.filter(run=run, step=step - 1).values_list("started_at", flat=True).first()
    return None if started is None else started.timestamp()


def _randomness_withheld(run: Run, step: int) -> bool:
    """Whether step ``step``'s draw randomness (step ``step - 1``'s MPRNG output) left out the reveal of a
    member that committed (``btard_wire.probation.reveals_withheld``): its withholders chose it, so the
    step's probation decides nothing (docs/threat-model.md, the probation residual row)."""
    if step < 1:
        return False
    closed = (StepRecord.objects.filter(run=run, step=step - 1).values_list("closed_phases", flat=True)
              .first() or {}).get("mprng_reveal")
    if closed is None:
        return False
    committed = BroadcastLog.objects.filter(run=run, step=step - 1, phase="mprng_commit") \
        .values_list("sender_peer_id", flat=True)
    return probation_rules.reveals_withheld(committed=list(committed), revealed=closed)


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
    never end: bring back as many as the group needs (their reputation hit and the staff case stay). Targets
    come back first and an eliminator never does before its epoch ends (btard_wire.board.unbench), so
    un-benching cannot be used to strike again; a benched peer of no recorded pair counts as a target. True
    if that makes the group possible."""
    from moderation.selectors import elimination_pairs

    online_active = run.peers.filter(role="active", online=True)
    benched = {p.peer_id: p for p in online_active.filter(excluded_until_step__gt=step)}
    if not benched or online_active.count() < max(1, run.min_peers):
        return False
    needed = max(1, run.min_peers) - (online_active.count() - len(benched))
    size = max(1, run.epoch_steps)
    pairs = [(e, t) for e, t, _ in elimination_pairs(run=run, since_step=(step // size) * size)]
    in_pairs = {p for pair in pairs for p in pair}
    # eliminators that cannot strike again this epoch come back after the targets (btard_wire.board.unbench):
    # else a run whose online peers all eliminated someone stalls for good (the soak's finding)
    rows = {p.peer_id: p for p in run.peers.filter(peer_id__in={e for e, _ in pairs})}
    spent = {e for e, _ in pairs if e in rows and not elimination_allowed(peer=rows[e], step=step)}
    back = [p for p in board_rules.unbench(pairs=pairs, needed=2 * len(pairs), spent=spent)
            if p in benched][:needed]
    back += [p for p in sorted(benched) if p not in in_pairs][: max(0, needed - len(back))]
    if len(back) < needed:
        return False
    Peer.objects.filter(pk__in=[benched[p].pk for p in back]).update(excluded_until_step=None)
    emit(ExclusionsEnded(run_id=run.id, step=step, peer_ids=sorted(back)))
    log.info("run %s step %s: ended the ELIMINATE exclusions of %d peers early (too few peers otherwise)",
             run.id, step, len(back))
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
    # each candidate's probation panel (two validators that must agree, btard_wire.probation): drawn from the
    # previous step's r (no candidate knew it when it chose its key; finding 10), from the run's public chain
    # when that step had none; only keys that joined before the draw's randomness existed
    # (btard_wire.board.probation_drawable), so no candidate grinds its key or its moment to join against a known r
    # (and from an output that left out a withheld reveal it decides nothing: the withholders chose it)
    candidates = probation_candidates(run=run, step=step, members=ids, randomness=_step_randomness(run, step),
                                      randomness_opened_at=_randomness_opened_at(run, step),
                                      withheld_reveals=_randomness_withheld(run, step))
    now = now or timezone.now()
    timeouts = effective_deadlines(run)  # the organiser's values, raised when the swarm is slower
    deadline = now + timedelta(seconds=timeouts.step_timeout)
    record = StepRecord.objects.create(run=run, step=step, members=ids, validators=validators,
                                       candidates=candidates, deadline=deadline)
    run.step_in_progress, run.step_started_at, run.step_deadline = True, now, deadline
    run.save(update_fields=["step_in_progress", "step_started_at", "step_deadline"])
    emit(GroupFormed(run_id=run.id, group=Group(
        step=step, peers=[p.peer_info() for p in members], validators=validators, candidates=candidates,
        deadlines={"step": deadline.timestamp(), "phase_timeout": timeouts.phase_timeout},
        state_donors=[p.peer_info() for p in state_donors(run, step=step, members=members)])))
    return record


@transaction.atomic
def close_step(*, run: Run, force: bool = False, now=None) -> StepRecord | None:
    """Close the current step when it can no longer gain a report (every member reported or left the step:
    ``selectors.step_complete``) or its deadline passed (``force`` closes it anyway), record metrics, credit contribution and reputation, charge missed deadlines, advance.

    Returns the closed record or ``None`` when the step is still running.
    """
    now = now or timezone.now()
    run = Run.objects.select_for_update().get(pk=run.pk)
    if not run.step_in_progress:
        return None
    record = StepRecord.objects.select_for_update().get(run=run, step=run.current_step)
    if not force and now < record.deadline and not step_complete(record, now=now):
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
    samples_by_user: dict[int, int] = {}
    validated: list[int] = []
    if outcome == "applied":
        for r in applied:
            p = peers[r.peer.peer_id]
            if p.role == "banned":
                continue
            samples_by_user[p.user_id] = samples_by_user.get(p.user_id, 0) + credited[r.pk]
            validated.append(p.user_id)
    # the step's probation word: credit on two agreeing passes, rejection on two agreeing failures
    probation = settle_probation(run=run, record=record, reported=set(reports))
    credit_step(run=run, step=record.step, samples_by_user=samples_by_user, validated_user_ids=validated,
                probation_user_ids=probation, quiet=True)
    # silence as the group saw it (docs/protocol.md, "Silence"): a majority of the member reports list it;
    # the count is of consecutive steps, so a step the member spoke in resets it (btard_wire.board)
    silent = board_rules.reported_silent({pid: (r.details or {}).get("missing", []) for pid, r in reports.items()},
                                         members=record.members)
    # a committed member missing from the closed mprng_reveal withheld its reveal: counted over a sliding
    # window that a step it spoke in does not reset (btard_wire.board.next_withheld_steps; SR 14)
    closed_reveals = (record.closed_phases or {}).get("mprng_reveal")
    committed = set(BroadcastLog.objects.filter(run=run, step=record.step, phase="mprng_commit")
                    .values_list("sender_peer_id", flat=True))
    withheld = set() if closed_reveals is None else set(board_rules.reveal_silent(
        members=[pid for pid in record.members if pid in committed], revealed=closed_reveals))
    for pid in record.members:
        p = peers.get(pid)
        if p is None or p.role == "banned":
            continue
        # a restarted worker's catch-up silence is excused once in a while (btard_wire.board.silence_excused)
        rejoined = record.step if pid in (record.left or []) else p.rejoined_step
        excused = pid in silent and board_rules.silence_excused(step=record.step, rejoined_step=rejoined,
                                                                last_excused_step=p.silence_excused_step)
        count = board_rules.next_silence_count(p.silent_steps, silent=pid in silent, excused=excused)
        if excused:
            Peer.objects.filter(pk=p.pk).update(silence_excused_step=record.step)
        if count != p.silent_steps:
            Peer.objects.filter(pk=p.pk).update(silent_steps=count)
        steps = board_rules.next_withheld_steps(p.withheld_reveal_steps or [], step=record.step,
                                                withheld=pid in withheld, excused=excused)
        if steps != (p.withheld_reveal_steps or []):
            Peer.objects.filter(pk=p.pk).update(withheld_reveal_steps=steps)
    # the step's validators, as every peer drew them from r_t (empty when the step had no r_t)
    record.validators = step_validators(run=run, step=record.step)
    StepRecord.objects.filter(pk=record.pk).update(validators=record.validators)
    # lateness is the late sender's (btard_wire.board.late_senders): a report stored after the step deadline
    # is as missing as none
    missing = board_rules.late_senders(
        {pid: (r.created_at - record.started_at).total_seconds() for pid, r in reports.items()},
        expected=record.members, opened_at=0.0, phase_timeout=(record.deadline - record.started_at).total_seconds())
    missing = [pid for pid in record.members if pid in set(missing)]
    for pid in record.members:
        p = peers.get(pid)
        if p is None:
            continue
        if pid not in missing:
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
