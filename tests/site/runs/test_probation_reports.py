"""``probation`` reports on the site's board: only a validator of the candidate's drawn panel (two per
candidate), one per (sender, candidate, step), stored and never relayed; the probation decision reads them
(admission.services.settle_probation, btard_wire.probation.probation_decision): the step counts only when
both validators passed the candidate, the candidate's key is banned only when both failed it. The
validator's own step ``validation`` report is a different message, so reporting a cheating candidate is not
equivocation (the honest validator used to be banned for it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from moderation.models import Ban
from runs import services as runs
from runs.models import BroadcastLog, Peer, Run

from tests.factories import make_peer
from tests.site.admission.panel import close_with_reports, panel, report, step_drawn_from_randomness
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db


def _setup(run):
    members = [make_peer(run=run, seed=f"pv{i}") for i in range(3)]
    cand, _ = make_peer(run=run, seed="pv-cand", role="candidate", probation_required=3)
    Peer.objects.filter(pk=cand.pk).update(joined_at=Peer.objects.get(pk=cand.pk).joined_at - timedelta(hours=1))
    runs.start_step_if_ready(run=run)
    step_drawn_from_randomness(run, members)  # step 1: panels from step 0's MPRNG output
    validators = panel(run, cand.peer_id, members)
    others = [m for m in members if m[0].peer_id not in {v[0].peer_id for v in validators}]
    return members, cand, validators, others


def _post(peer, identity, run, phase, payload):
    return runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase=phase,
                                                            payload=payload))


def _finish(run, members, cand):
    close_with_reports(run, members, [cand])


def test_the_step_draws_two_distinct_validators_of_the_group_for_a_candidate(run):
    _, _, validators, others = _setup(run)
    assert len({v[0].peer_id for v in validators}) == 2 and len(others) == 1


def test_one_validators_failed_probation_report_voids_the_step_and_bans_nobody(run, events):
    members, cand, validators, _ = _setup(run)
    validator, ident = validators[0]
    _post(validator, ident, run, "validation", {"target": None, "target_step": 1, "ok": True})  # its own report
    report(run, validators[0], cand.peer_id, False, "mismatch")
    stored = [e for e in events() if e.type == "broadcast_recorded" and e.envelope.phase == "probation"]
    assert len(stored) == 1 and stored[0].recipients == []  # stored, never relayed
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert cand.probation_done == 0 and cand.role == "candidate"
    assert not Ban.objects.exists()


def test_both_validators_passing_reports_count_the_step(run):
    members, cand, validators, _ = _setup(run)
    for v in validators:
        report(run, v, cand.peer_id, True)
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert cand.probation_done == 1


def test_both_validators_failing_reports_earn_nothing_go_to_the_audit_log_and_ban_nobody(run):
    """Two agreeing failures could be two accomplices failing an honest newcomer (the site cannot
    recompute to tell): the step earns nothing and staff see it in the audit log; no ban."""
    from moderation.models import AuditLog

    members, cand, validators, _ = _setup(run)
    for v in validators:
        report(run, v, cand.peer_id, False, "the gradient differs")
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert not Ban.objects.exists()
    assert cand.role == "candidate" and cand.probation_done == 0
    (entry,) = AuditLog.objects.filter(action="probation_failed")
    assert entry.target == cand.peer_id and entry.details["run"] == run.id
    assert sorted(entry.details["validators"]) == sorted(v[0].peer_id for v in validators)
    assert all(p.role == "active" for p, _ in members)


def test_a_step_drawn_from_the_public_chain_decides_nothing_even_on_two_agreeing_reports(run):
    """Step 0's panels come from the run's public chain, known before any key was chosen (a grinder could
    choose its panel, or steer an honest newcomer's): two failing reports there reject nobody, two passing
    ones credit nothing."""
    members = [make_peer(run=run, seed=f"pc{i}") for i in range(3)]
    cands = [make_peer(run=run, seed=f"pc-cand{i}", role="candidate", probation_required=3)[0] for i in range(2)]
    record = runs.start_step_if_ready(run=run)
    assert all(c["public_chain"] for c in record.candidates)
    for cand, ok in zip(cands, (False, True), strict=True):
        for v in panel(run, cand.peer_id, members):
            report(run, v, cand.peer_id, ok)
    close_with_reports(run, members, cands)
    for cand in cands:
        cand.refresh_from_db()
        assert cand.role == "candidate" and cand.probation_done == 0
    assert not Ban.objects.exists()


def test_a_probation_report_from_a_member_outside_the_panel_is_refused_and_voids_nothing(run):
    members, cand, validators, others = _setup(run)
    peer, ident = others[0]
    with pytest.raises(runs.Rejected) as info:
        _post(peer, ident, run, "probation", {"candidate": cand.peer_id, "ok": False})
    assert info.value.code == "not_validator"
    assert not BroadcastLog.objects.filter(phase="probation").exists()
    for v in validators:
        report(run, v, cand.peer_id, True)
    _finish(run, members, cand)
    cand.refresh_from_db()
    assert cand.probation_done == 1


def test_a_second_probation_report_is_a_refused_duplicate_not_an_equivocation(run):
    _, cand, validators, _ = _setup(run)
    report(run, validators[0], cand.peer_id, True)
    with pytest.raises(runs.Rejected) as info:
        report(run, validators[0], cand.peer_id, False)
    assert info.value.code == "duplicate"
    assert not Ban.objects.exists() and BroadcastLog.objects.filter(phase="probation").count() == 1


def test_a_probation_report_on_a_peer_that_is_no_candidate_is_refused(run):
    _, _, validators, others = _setup(run)
    with pytest.raises(runs.Rejected) as info:
        report(run, validators[0], others[0][0].peer_id, False)
    assert info.value.code == "payload"
