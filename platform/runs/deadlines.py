"""Deadlines that follow the measured step time (docs/users.md, "fixed timeouts nobody can guess").

The organiser's ``phase_timeout`` and ``step_timeout`` are floors. Once a run has a few finished steps,
the site measures how long a step takes (from forming the group to the last member's report, over the
recent steps that closed on time) and raises both deadlines when the swarm is slower than the organiser
guessed: a phase gets ``PHASE_FACTOR`` times the median step, a step ``STEP_FACTOR`` times. Deadlines
never drop below what the organiser set, and never rise above ``CAP`` times it, so a run that stalls
cannot stretch its own deadlines without bound. Steps closed by their deadline are left out of the
measurement: they measure the deadline, not the swarm.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

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
    if len(durations) < MIN_SAMPLES:
        return Deadlines(phase_timeout, step_timeout, None, len(durations), phase_timeout, step_timeout)
    median = statistics.median(durations)
    phase = min(max(phase_timeout, PHASE_FACTOR * median), CAP * phase_timeout)
    step = min(max(step_timeout, STEP_FACTOR * median), CAP * step_timeout)
    return Deadlines(phase, step, median, len(durations), phase_timeout, step_timeout)


def recent_step_seconds(run) -> list[float]:
    from .models import StepRecord

    records = (StepRecord.objects.filter(run=run, outcome="applied", finished_at__isnull=False)
               .order_by("-step").values_list("started_at", "finished_at", "deadline")[:WINDOW])
    return [(finished - started).total_seconds() for started, finished, deadline in records if finished < deadline]


def effective_deadlines(run) -> Deadlines:
    return deadlines_from(recent_step_seconds(run), phase_timeout=run.phase_timeout, step_timeout=run.step_timeout)
