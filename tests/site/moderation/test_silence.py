"""moderation.services.ban_silent_peers with runs.services.steps.close_step: silence bans."""

from __future__ import annotations

import pytest
from moderation.models import Ban
from runs import services as runs

from btard_wire.control import StepReport

pytestmark = pytest.mark.django_db


def test_a_peer_reported_silent_by_a_majority_in_three_steps_is_banned(run, group, events):
    (p0, _), (p1, _), (quiet, _) = group
    for step in range(3):
        if step:
            runs.start_step_if_ready(run=run)
        for peer in (p0, p1):
            runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="dropped",
                                                                 missing=[quiet.peer_id]))
        runs.record_step_report(peer=quiet, report=StepReport(step=step, outcome="dropped"))
        runs.tick_run(run=run)
    ban = Ban.objects.get()
    assert (ban.peer_id, ban.evidence_kind, ban.source) == (quiet.peer_id, "silence", "verdict")


def test_silence_counts_consecutive_steps_so_a_step_the_peer_spoke_in_resets_it(run, group, events):
    (p0, _), (p1, _), (quiet, _) = group
    for step, (silent, count) in enumerate(zip([True, True, False, True, True], [1, 2, 0, 1, 2])):
        if step:
            runs.start_step_if_ready(run=run)
        for peer in (p0, p1):
            runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="dropped",
                                                                 missing=[quiet.peer_id] if silent else []))
        runs.record_step_report(peer=quiet, report=StepReport(step=step, outcome="dropped"))
        runs.tick_run(run=run)
        quiet.refresh_from_db()
        assert quiet.silent_steps == count
    assert not Ban.objects.exists()  # five steps, four of them silent, never three in a row
