"""``probation`` reports on the site's board: only the candidate's drawn validator, one per (sender, candidate,
step), stored and never relayed; the probation decision reads them (btard_wire.board.probation_voided). The
validator's own step ``validation`` report is a different message, so reporting a cheating candidate is not
equivocation (the honest validator used to be banned for it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from moderation.models import Ban
from runs import services as runs
from runs.models import BroadcastLog, Peer, Run

from btard_wire.control import StepReport
from tests.factories import make_peer
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db


def _setup(run):
    members = [make_peer(run=run, seed=f"pv{i}") for i in range(3)]
    cand, _ = make_peer(run=run, seed="pv-cand", role="candidate", probation_required=3)
    Peer.objects.filter(pk=cand.pk).update(joined_at=Peer.objects.get(pk=cand.pk).joined_at - timedelta(hours=1))
    record = runs.start_step_if_ready(run=run)
    (info,) = record.candidates
    by_id = {p.peer_id: (p, i) for p, i in members}
    return members, cand, by_id[info["validator"]], [v for k, v in by_id.items() if k != info["validator"]]


def _post(peer, identity, run, phase, payload):
    return runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase=phase,
                                                            payload=payload))


def _finish(run, members, cand):
    for peer, _ in members:
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied", samples=8))
    runs.record_step_report(peer=cand, report=StepReport(step=0, outcome="probation", samples=8))
    runs.close_step(run=Run.objects.get(pk=run.pk), force=True)


def test_the_validators_failed_probation_report_voids_the_step_and_bans_nobody(run, events):
    members, cand, (validator, ident), _ = _setup(run)
    _post(validator, ident, run, "validation", {"target": None, "target_step": 0, "ok": True})  # its own report
    _post(validator, ident, run, "probation", {"candidate": cand.peer_id, "ok": False, "reason": "mismatch"})
    stored = [e for e in events() if e.type == "broadcast_recorded" and e.envelope.phase == "probation"]
    assert len(stored) == 1 and stored[0].recipients == []  # stored, never relayed
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert cand.probation_done == 0
    assert not Ban.objects.exists()


def test_a_passed_probation_report_counts_the_step(run):
    members, cand, (validator, ident), _ = _setup(run)
    _post(validator, ident, run, "probation", {"candidate": cand.peer_id, "ok": True})
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert cand.probation_done == 1


def test_a_probation_report_from_another_member_is_refused_and_voids_nothing(run):
    members, cand, _, others = _setup(run)
    peer, ident = others[0]
    with pytest.raises(runs.Rejected) as info:
        _post(peer, ident, run, "probation", {"candidate": cand.peer_id, "ok": False})
    assert info.value.code == "not_validator"
    assert not BroadcastLog.objects.filter(phase="probation").exists()
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert cand.probation_done == 1


def test_a_second_probation_report_is_a_refused_duplicate_not_an_equivocation(run):
    _, cand, (validator, ident), _ = _setup(run)
    _post(validator, ident, run, "probation", {"candidate": cand.peer_id, "ok": True})
    with pytest.raises(runs.Rejected) as info:
        _post(validator, ident, run, "probation", {"candidate": cand.peer_id, "ok": False})
    assert info.value.code == "duplicate"
    assert not Ban.objects.exists() and BroadcastLog.objects.filter(phase="probation").count() == 1


def test_a_probation_report_on_a_peer_that_is_no_candidate_is_refused(run):
    _, _, (validator, ident), others = _setup(run)
    with pytest.raises(runs.Rejected) as info:
        _post(validator, ident, run, "probation", {"candidate": others[0][0].peer_id, "ok": False})
    assert info.value.code == "payload"
