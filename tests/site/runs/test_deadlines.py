"""Deadlines follow the measured step time (docs/users.md #6), never below what the organiser set."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from runs import services as runs
from runs.deadlines import CAP, MIN_SAMPLES, PHASE_FACTOR, STEP_FACTOR, deadlines_from, effective_deadlines
from runs.models import StepRecord

from btard_wire.board import step_deadline
from tests.factories import StepRecordFactory, make_peer

SET_STEP = step_deadline(phase_timeout=30.0, step_timeout=120.0)  # the step deadline covers the phases


def test_the_organisers_values_stand_until_enough_steps_have_finished():
    d = deadlines_from([50.0] * (MIN_SAMPLES - 1), phase_timeout=30.0, step_timeout=120.0)
    assert (d.phase_timeout, d.step_timeout, d.measured_step, d.raised) == (30.0, SET_STEP, None, False)


def test_a_fast_swarm_keeps_the_set_deadlines_as_floors():
    d = deadlines_from([1.0, 1.2, 0.9, 1.1, 1.0], phase_timeout=30.0, step_timeout=120.0)
    assert (d.phase_timeout, d.step_timeout) == (30.0, SET_STEP) and d.measured_step == 1.0 and not d.raised


def test_a_slow_swarm_raises_both_deadlines_from_the_median_step():
    d = deadlines_from([40.0, 41.0, 39.0, 40.0, 400.0], phase_timeout=30.0, step_timeout=120.0)
    assert d.measured_step == 40.0  # one outlier does not move the median
    assert d.phase_timeout == PHASE_FACTOR * 40.0 and d.raised
    assert d.step_timeout == step_deadline(phase_timeout=PHASE_FACTOR * 40.0, step_timeout=STEP_FACTOR * 40.0)


def test_deadlines_are_capped_at_a_multiple_of_the_set_values():
    d = deadlines_from([10_000.0] * 6, phase_timeout=30.0, step_timeout=120.0)
    assert (d.phase_timeout, d.step_timeout) == (CAP * 30.0, step_deadline(phase_timeout=CAP * 30.0,
                                                                          step_timeout=CAP * SET_STEP))


def _finished_steps(run, seconds: float, n: int, *, late: bool = False):
    now = timezone.now()
    for i in range(n):
        start = now - timedelta(seconds=1000 - i)
        deadline = start + timedelta(seconds=seconds / 2 if late else seconds * 10)
        rec = StepRecordFactory(run=run, step=100 + i, deadline=deadline, finished_at=start + timedelta(seconds=seconds))
        StepRecord.objects.filter(pk=rec.pk).update(started_at=start)


@pytest.mark.django_db
def test_the_site_measures_steps_that_closed_on_time_only(run):
    _finished_steps(run, 50.0, MIN_SAMPLES, late=True)  # closed by their deadline: they measure the deadline
    assert effective_deadlines(run).measured_step is None
    StepRecord.objects.all().delete()
    _finished_steps(run, 50.0, MIN_SAMPLES)
    d = effective_deadlines(run)
    assert d.samples == MIN_SAMPLES and abs(d.measured_step - 50.0) < 1e-6


@pytest.mark.django_db
def test_a_new_group_carries_the_raised_deadlines_and_the_dashboard_shows_them(run, events, client):
    _finished_steps(run, 50.0, MIN_SAMPLES)
    for i in range(2):
        make_peer(run=run, seed=f"d{i}")
    now = timezone.now()
    record = runs.start_step_if_ready(run=run, now=now)
    assert record is not None
    formed = events()[-1]
    assert formed.type == "group_formed"
    assert formed.group.deadlines["phase_timeout"] == pytest.approx(PHASE_FACTOR * 50.0)
    assert (record.deadline - now).total_seconds() == pytest.approx(
        step_deadline(phase_timeout=PHASE_FACTOR * 50.0, step_timeout=STEP_FACTOR * 50.0))
    html = client.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "phase timeout 100.0 s" in html and "raised from the set" in html
