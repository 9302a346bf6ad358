"""A step whose probation panels come from an MPRNG output that left out a committed member's withheld reveal
decides nothing on the site (``btard_wire.probation.reveals_withheld``, ``probation_decision(withheld_reveals=)``):
the withholders saw every other reveal before the close and picked that output among one per accomplice, so
they could have chosen two accomplices to reject an honest newcomer or to pass their own
(docs/threat-model.md, the probation rows). Through the real services: board, phase close, step loop."""

from __future__ import annotations

import os

import pytest
from moderation.models import Ban
from runs import services as runs
from runs.models import Peer, Run, StepRecord

from btard_wire.control import StepReport
from btard_wire.randomness import mprng_commitment
from tests.factories import make_peer
from tests.site.admission.panel import close_with_reports, joined_long_ago, panel_reports
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db


def _post(peer, identity, run, phase, payload):
    return runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase=phase,
                                                            payload=payload))


def _mprng_and_close(run, members, *, withholder=None) -> None:
    """Every member commits; all but ``withholder`` reveal and the others close ``mprng_reveal`` at its
    deadline; every member reports and the step closes; the next step starts (its panels are drawn then)."""
    record = StepRecord.objects.get(run=run, step=Run.objects.get(pk=run.pk).current_step)
    by_id = {p.peer_id: (p, i) for p, i in members}
    secrets = {pid: os.urandom(32) for pid in record.members}
    for pid in record.members:
        _post(*by_id[pid], run, "mprng_commit",
              {"hash": mprng_commitment(secrets[pid], run=str(run.id), step=record.step, sender=pid)})
    for pid in record.members:
        if pid != withholder:
            _post(*by_id[pid], run, "mprng_reveal", {"value": secrets[pid].hex()})
    if withholder is not None:
        for pid in [p for p in record.members if p != withholder]:
            runs.request_phase_close(peer=by_id[pid][0], step=record.step, phase="mprng_reveal")
    for pid in record.members:
        missing = [withholder] if withholder is not None and pid != withholder else []
        runs.record_step_report(peer=by_id[pid][0], report=StepReport(step=record.step, outcome="applied",
                                                                      samples=8, missing=missing))
    runs.close_step(run=Run.objects.get(pk=run.pk), force=True)
    runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))


def _setup(run):
    members = [make_peer(run=run, seed=f"wr{i}") for i in range(4)]
    cands = [make_peer(run=run, seed=f"wr-cand{i}", role="candidate", probation_required=3)[0] for i in range(2)]
    for cand in cands:
        joined_long_ago(cand)
    runs.start_step_if_ready(run=run)  # step 0: drawn from the public chain
    return members, cands


def _entry(run, cand) -> dict:
    record = StepRecord.objects.get(run=run, step=Run.objects.get(pk=run.pk).current_step)
    (entry,) = [c for c in record.candidates if c["peer_id"] == cand.peer_id]
    return entry


def test_two_agreeing_reports_on_panels_from_an_output_with_a_withheld_reveal_decide_nothing(run):
    members, (failed, passed) = _setup(run)
    _mprng_and_close(run, members, withholder=members[0][0].peer_id)  # step 0's r leaves one reveal out
    assert all(_entry(run, c)["withheld_reveals"] and not _entry(run, c)["public_chain"] for c in (failed, passed))
    panel_reports(run, failed.peer_id, members, False, False)  # would reject it
    panel_reports(run, passed.peer_id, members, True, True)  # would credit it
    close_with_reports(run, members, [failed, passed])
    for cand in (failed, passed):
        cand.refresh_from_db()
        assert cand.role == "candidate" and cand.probation_done == 0
    assert not Ban.objects.exists()


def test_the_next_step_drawn_from_a_complete_output_decides_again(run):
    """The same reports on panels from an output with every committed reveal: a credited step and a failed
    one (recorded in the audit log; nobody is banned for it)."""
    members, (failed, passed) = _setup(run)
    _mprng_and_close(run, members, withholder=members[0][0].peer_id)
    close_with_reports(run, members, [failed, passed])  # step 1 (decides nothing anyway)
    runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))
    _mprng_and_close(run, members)  # step 2: every reveal in; step 3 is drawn from it
    assert not any(_entry(run, c)["withheld_reveals"] for c in (failed, passed))
    panel_reports(run, failed.peer_id, members, False, False)
    panel_reports(run, passed.peer_id, members, True, True)
    close_with_reports(run, members, [failed, passed])
    from moderation.models import AuditLog

    assert Peer.objects.get(pk=failed.pk).role == "candidate" and Peer.objects.get(pk=failed.pk).probation_done == 0
    assert list(AuditLog.objects.filter(action="probation_failed").values_list("target", flat=True)) == [failed.peer_id]
    assert Peer.objects.get(pk=passed.pk).probation_done == 1
