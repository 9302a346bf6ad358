"""runs.services.reports: step reports and the probation credit of a late candidate report."""

from __future__ import annotations

import pytest
from runs import services as runs

from btard_wire.control import StepReport
from tests.factories import make_peer
from tests.site.admission.panel import joined_long_ago, panel_reports, step_drawn_from_randomness

pytestmark = pytest.mark.django_db


def test_a_duplicate_or_stale_report_is_rejected(run, group):
    peer, _ = group[0]
    runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied"))
    with pytest.raises(runs.Rejected, match="already"):
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied"))
    with pytest.raises(runs.Rejected) as info:
        runs.record_step_report(peer=peer, report=StepReport(step=3, outcome="applied"))
    assert info.value.code == "stale_step"


def test_a_candidate_reporting_just_after_its_step_closed_still_gets_the_probation_step(run, group):
    cand, _ = make_peer(run=run, seed="slow-cand", role="candidate", probation_required=1)
    joined_long_ago(cand)
    step_drawn_from_randomness(run, group)  # step 1, its panel drawn from step 0's MPRNG output
    panel_reports(run, cand.peer_id, group, True, True)  # both validators of its panel passed it
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=1, outcome="applied", samples=8))
    runs.close_step(run=run)  # the members are done; the candidate is still downloading the state
    runs.record_step_report(peer=cand, report=StepReport(step=1, outcome="probation", samples=8))
    cand.refresh_from_db()
    assert cand.probation_done == 1
    assert runs.promote_candidates(run=run) == [cand.peer_id]
    outsider, _ = make_peer(run=run, seed="not-a-candidate", role="candidate")
    with pytest.raises(runs.Rejected):
        runs.record_step_report(peer=outsider, report=StepReport(step=1, outcome="probation"))
