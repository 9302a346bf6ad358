"""Builders for the product tests: steps played through the real services."""

from __future__ import annotations

from runs import services as runs

from btard_wire.control import StepReport


def play_step(run, members, *, outcome="applied", claimed_samples=999, loss=1.0, accuracy=None, skip=()):
    """Form the run's next group, have every member (except ``skip``) report ``outcome`` (claiming
    ``claimed_samples``, which credit must ignore), close the step; returns the record."""
    from django.utils import timezone

    run.refresh_from_db()
    record = runs.start_step_if_ready(run=run)
    assert record is not None, "no group formed"
    for peer in members:
        if peer.peer_id in record.members and peer not in skip:
            runs.record_step_report(peer=peer, report=StepReport(step=record.step, outcome=outcome, loss=loss,
                                                                 accuracy=accuracy, samples=claimed_samples))
    return runs.close_step(run=run, now=timezone.now() + __import__("datetime").timedelta(hours=1))
