"""admission.services.promote_candidates: candidates become active after their probation steps, each
counted only when both validators of the step's panel passed it (admission.services.settle_probation)."""

from __future__ import annotations

import pytest
from runs import services as runs

from btard_wire.control import StepReport
from tests.factories import make_peer
from tests.site.admission.panel import (
    joined_long_ago,
    panel,
    panel_reports,
    report,
    step_drawn_from_randomness,
)
from tests.site.helpers import types

pytestmark = pytest.mark.django_db


def test_candidates_are_promoted_after_their_validated_probation_steps(run, group, events):
    cand, _ = make_peer(run=run, seed="cand", role="candidate", probation_required=1)
    joined_long_ago(cand)
    step_drawn_from_randomness(run, group)  # step 1, its panel drawn from step 0's MPRNG output
    panel_reports(run, cand.peer_id, group, True, True)
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=1, outcome="applied", samples=8))
    runs.record_step_report(peer=cand, report=StepReport(step=1, outcome="probation", samples=8))
    runs.close_step(run=run)
    assert runs.promote_candidates(run=run) == [cand.peer_id]
    cand.refresh_from_db()
    assert cand.role == "active" and types(events)[-1] == "peers_promoted"


def test_one_passing_report_does_not_promote_a_candidate(run, group):
    cand, _ = make_peer(run=run, seed="cand", role="candidate", probation_required=1)
    joined_long_ago(cand)
    step_drawn_from_randomness(run, group)
    report(run, panel(run, cand.peer_id, group)[0], cand.peer_id, True)  # the second validator stays silent
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=1, outcome="applied", samples=8))
    runs.record_step_report(peer=cand, report=StepReport(step=1, outcome="probation", samples=8))
    runs.close_step(run=run)
    assert runs.promote_candidates(run=run) == []
    cand.refresh_from_db()
    assert cand.role == "candidate" and cand.probation_done == 0
