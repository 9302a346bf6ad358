"""runs.deadlines and close_step hold the liveness rules of btard_wire.board: the step deadline covers the
sum of the phase deadlines (step_deadline), a minority cannot inflate the adaptive deadlines
(robust_step_seconds), lateness is charged to the late sender (late_senders)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from runs import services as runs
from runs.deadlines import MIN_SAMPLES, effective_deadlines
from runs.models import Run, StepRecord, StepReportRecord
from volunteers.models import ReputationEvent

from btard_wire.board import STEP_PHASES
from btard_wire.control import StepReport
from tests.factories import StepRecordFactory, make_peer

pytestmark = pytest.mark.django_db


def test_it_gives_a_step_at_least_the_sum_of_its_phase_deadlines(run):
    Run.objects.filter(pk=run.pk).update(phase_timeout=30.0, step_timeout=60.0)
    for i in range(2):
        make_peer(run=run, seed=f"sd{i}")
    now = timezone.now()
    record = runs.start_step_if_ready(run=Run.objects.get(pk=run.pk), now=now)
    assert (record.deadline - now).total_seconds() == pytest.approx(len(STEP_PHASES) * 30.0)


def test_it_measures_a_step_at_its_median_members_report_so_a_late_minority_cannot_inflate_deadlines(run):
    peers = [make_peer(run=run, seed=f"rb{i}")[0] for i in range(4)]
    now = timezone.now()
    for i in range(MIN_SAMPLES):
        start = now - timedelta(seconds=5000 - 1000 * i)
        rec = StepRecordFactory(run=run, step=100 + i, members=[p.peer_id for p in peers],
                                deadline=start + timedelta(seconds=900), finished_at=start + timedelta(seconds=800))
        StepRecord.objects.filter(pk=rec.pk).update(started_at=start)
        for j, peer in enumerate(peers):
            report = StepReportRecord.objects.create(step_record=rec, peer=peer, outcome="applied")
            at = start + timedelta(seconds=800 if j == 3 else 10)  # one member reports just before the close
            StepReportRecord.objects.filter(pk=report.pk).update(created_at=at)
    d = effective_deadlines(run)
    assert d.samples == MIN_SAMPLES and d.measured_step == pytest.approx(10.0)
    assert not d.raised


def test_it_charges_a_report_stored_after_the_step_deadline_to_its_sender(run, group, events):
    (p0, _), (p1, _), (late, _) = group
    for peer in (p0, p1, late):
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied", samples=8))
    record = StepRecord.objects.get(run=run, step=0)
    StepReportRecord.objects.filter(step_record=record, peer=late).update(
        created_at=record.deadline + timedelta(seconds=5))
    runs.close_step(run=run, force=True)
    assert events()[-1].missing == [late.peer_id]
    assert list(ReputationEvent.objects.filter(kind="missed_deadline").values_list("user", flat=True)) \
        == [late.user_id]
