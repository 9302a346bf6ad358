"""admission.services.promote_candidates: candidates become active after their probation steps."""

from __future__ import annotations

import pytest
from runs import services as runs

from btard_wire.control import StepReport
from tests.factories import make_peer
from tests.site.helpers import types

pytestmark = pytest.mark.django_db


def test_candidates_are_promoted_after_their_validated_probation_steps(run, group, events):
    cand, _ = make_peer(run=run, seed="cand", role="candidate", probation_required=1)
    runs.close_step(run=run, force=True)
    runs.start_step_if_ready(run=run)
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=1, outcome="applied", samples=8))
    runs.record_step_report(peer=cand, report=StepReport(step=1, outcome="probation", samples=8))
    runs.close_step(run=run)
    assert runs.promote_candidates(run=run) == [cand.peer_id]
    cand.refresh_from_db()
    assert cand.role == "active" and types(events)[-1] == "peers_promoted"
