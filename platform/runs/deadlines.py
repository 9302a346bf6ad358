"""Deadlines that follow the measured step time (docs/users.md, "fixed timeouts nobody can guess").

The organiser's ``phase_timeout`` and ``step_timeout`` are floors. Once a run has a few finished steps,
the site measures how long a step takes (from forming the group to the last member's report, over the
recent steps that closed on time) and raises both deadlines when the swarm is slower than the organiser
guessed: a phase gets ``PHASE_FACTOR`` times the median step, a step ``STEP_FACTOR`` times. Deadlines
never drop below what the organiser set, and never rise above ``CAP`` times it, so a run that stalls
cannot stretch its own deadlines without bound. Steps closed by their deadline are left out of the
measurement: they measure the deadline, not the swarm. A step is measured at its median member's report
(btard_wire.board.robust_step_seconds), so a minority reporting just before the deadline cannot inflate
later deadlines, and the step deadline always covers the sum of the phase deadlines
(btard_wire.board.step_deadline), so a peer answering each phase just in time cannot make every step
miss it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from btard_wire import board as board_rules

WINDOW = 20        # recent steps measured
MIN_SAMPLES = 5    # below this, the organiser's values stand
PHASE_FACTOR = 2.0
STEP_FACTOR = 4.0
CAP = 10.0


@dataclass(frozen=True)
class Deadlines:
    phase_timeout: float
    step_timeout: float
    measured_step: float | None  # median seconds per step over the window, None before MIN_SAMPLES
    samples: int
    set_phase_timeout: float
    set_step_timeout: float

    @property
    def raised(self) -> bool:
        return self.phase_timeout > self.set_phase_timeout or self.step_timeout > self.set_step_timeout

    def as_dict(self) -> dict:
        return {"phase_timeout": round(self.phase_timeout, 1), "step_timeout": round(self.step_timeout, 1),
                "measured_step": None if self.measured_step is None else round(self.measured_step, 2),
                "samples": self.samples, "raised": self.raised,
                "set_phase_timeout": self.set_phase_timeout, "set_step_timeout": self.set_step_timeout}


def deadlines_from(durations: list[float], *, phase_timeout: float, step_timeout: float) -> Deadlines:
    """Pure rule: the deadlines for measured step ``durations`` (seconds) and the organiser's floors."""
    durations = [d for d in durations if d >= 0]
    step_timeout = board_rules.step_deadline(phase_timeout=phase_timeout, step_timeout=step_timeout)
    if len(durations) < MIN_SAMPLES:
        return Deadlines(phase_timeout, step_timeout, None, len(durations), phase_timeout, step_timeout)
    median = statistics.median(durations)
    phase = min(max(phase_timeout, PHASE_FACTOR * median), CAP * phase_timeout)
    step = min(max(step_timeout, STEP_FACTOR * median), CAP * step_timeout)
    step = board_rules.step_deadline(phase_timeout=phase, step_timeout=step)
    return Deadlines(phase, step, median, len(durations), phase_timeout, step_timeout)


def recent_step_seconds(run) -> list[float]:
    """Seconds per recent step that closed on time: its median member's report time
    (:func:`btard_wire.board.robust_step_seconds`), the close time for a step without member reports."""
    from .models import StepRecord, StepReportRecord

    records = list(StepRecord.objects.filter(run=run, outcome="applied", finished_at__isnull=False)
                   .order_by("-step").values_list("pk", "started_at", "finished_at", "deadline", "members")[:WINDOW])
    reported: dict[int, dict[str, float]] = {}
    starts = {pk: started for pk, started, *_ in records}
    for step_pk, peer_id, created in StepReportRecord.objects.filter(step_record_id__in=list(starts)) \
            .values_list("step_record_id", "peer__peer_id", "created_at"):
        reported.setdefault(step_pk, {})[peer_id] = (created - starts[step_pk]).total_seconds()
    out = []
    for pk, started, finished, deadline, members in records:
        if finished >= deadline:
            continue
        robust = board_rules.robust_step_seconds(reported.get(pk, {}), members=members or [])
        out.append((finished - started).total_seconds() if robust is None else robust)
    return out


def effective_deadlines(run) -> Deadlines:
    return deadlines_from(recent_step_seconds(run), phase_timeout=run.phase_timeout, step_timeout=run.step_timeout)
