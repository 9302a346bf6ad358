"""runs.services.reports: step reports and the probation credit of a late candidate report."""

from __future__ import annotations

import pytest
from runs import services as runs

from btard_wire.control import StepReport
from tests.factories import make_peer
from tests.site.admission.panel import panel_reports

pytestmark = pytest.mark.django_db
# The site does not name two validators per candidate yet (requested in /work/notes/requests.md: the patch
# /work/notes/A-probation-panels.patch for runs.services.steps/reports/board and site_limits). Strict, so the
# mark must go when the site holds the rule.
PENDING = pytest.mark.xfail(strict=True, reason="the site does not draw probation panels / settle_probation yet")


def test_a_duplicate_or_stale_report_is_rejected(run, group):
    peer, _ = group[0]
    runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied"))
    with pytest.raises(runs.Rejected, match="already"):
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied"))
    with pytest.raises(runs.Rejected) as info:
        runs.record_step_report(peer=peer, report=StepReport(step=3, outcome="applied"))
    assert info.value.code == "stale_step"


@PENDING
def test_a_candidate_reporting_just_after_its_step_closed_still_gets_the_probation_step(run, group):
    cand, _ = make_peer(run=run, seed="slow-cand", role="candidate", probation_required=1)
    runs.close_step(run=run, force=True)
    runs.start_step_if_ready(run=run)
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
