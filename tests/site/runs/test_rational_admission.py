"""Rational attackers against admission (security review, finding 10; issue 12, invariant 9), through the
real site services on the database: probation voiding (a member outside a candidate's panel fails it,
accuses it; a validator's own ``probation`` report beside its step report), a lone Byzantine validator of a
candidate's panel of two (it can neither reject an honest newcomer nor promote a bad one: both must agree)
and key grinding (a key chosen, or a moment to join chosen, once the
randomness of the probation draw is known). The rules are ``btard_wire.probation.probation_decision``,
``btard_wire.board.probation_drawable`` and ``probation_report_refused``; docs/threat-model.md, "Protocol"."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from moderation.models import Ban
from runs import services as runs
from runs.models import Peer, Run, StepRecord

from btard_wire.randomness import mprng_commitment
from tests.factories import make_peer
from tests.site.admission.panel import (
    close_with_reports,
    full_mprng,
    panel,
    panel_reports,
    report,
    step_drawn_from_randomness,
)
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db



def _members(run, n=3):
    return [make_peer(run=run, seed=f"adm{i}") for i in range(n)]


def _post(peer, identity, run, phase, payload):
    return runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase=phase,
                                                            payload=payload))


def _start(run):
    return runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))


def _step_with_a_candidate(run, n=3):
    members = _members(run, n)
    cand, _ = make_peer(run=run, seed="newcomer", role="candidate", probation_required=3)
    Peer.objects.filter(pk=cand.pk).update(joined_at=Peer.objects.get(pk=cand.pk).joined_at - timedelta(hours=1))
    _start(run)  # step 0: drawn from the public chain, which decides nothing
    step_drawn_from_randomness(run, members)  # step 1: panels from step 0's MPRNG output
    return members, cand, panel(run, cand.peer_id, members)


def _post_maybe_refused(peer, identity, run, phase, payload):
    try:
        return _post(peer, identity, run, phase, payload)
    except runs.Rejected:
        return None


def test_a_member_outside_the_candidates_panel_cannot_void_its_probation_step(run):
    members, cand, validators = _step_with_a_candidate(run)
    other, ident = next((p, i) for p, i in members if p.peer_id not in {v[0].peer_id for v in validators})
    step = Run.objects.get(pk=run.pk).current_step
    # a failed probation report (refused: not its candidate), an accusation and a failed validation naming it
    _post_maybe_refused(other, ident, run, "probation", {"candidate": cand.peer_id, "ok": False, "reason": "lie"})
    accusation = _post(other, ident, run, "accuse", {"accused": cand.peer_id, "kind": "part_mismatch",
                                                     "reason": "fabricated"})
    _post(other, ident, run, "validation", {"target": cand.peer_id, "target_step": step, "ok": False,
                                            "accusations": [accusation.digest]})
    for v in validators:
        report(run, v, cand.peer_id, True)
    close_with_reports(run, members, [cand])
    cand.refresh_from_db()
    assert cand.probation_done == 1


def test_a_validators_failed_probation_report_beside_its_step_report_is_no_equivocation(run):
    members, cand, validators = _step_with_a_candidate(run)
    peer, ident = validators[0]
    _post(peer, ident, run, "validation", {})  # its own step report first, as the worker does
    report(run, validators[0], cand.peer_id, False, "mismatch")
    close_with_reports(run, members, [cand])
    cand.refresh_from_db()
    peer.refresh_from_db()
    assert cand.probation_done == 0 and peer.role != "banned" and cand.role == "candidate"


# --- a lone Byzantine validator (issue 12, invariant 9: two independent validators must agree) ----------
@pytest.mark.parametrize("byzantine_word", [False, None])  # fails the honest newcomer, or stays silent
def test_a_lone_byzantine_validator_cannot_reject_an_honest_candidate_and_the_next_step_redraws(run,
                                                                                                 byzantine_word):
    members, cand, validators = _step_with_a_candidate(run, n=4)
    byzantine, honest = validators
    if byzantine_word is not None:
        report(run, byzantine, cand.peer_id, byzantine_word, "fabricated mismatch")
    report(run, honest, cand.peer_id, True)
    full_mprng(run, members)
    close_with_reports(run, members, [cand])
    cand.refresh_from_db()
    assert cand.role == "candidate" and cand.probation_done == 0  # delayed, never rejected
    assert not Ban.objects.exists()
    # the next step draws the candidate again, with a panel of its own randomness; with two passes it counts
    record = _start(run)
    assert [c["peer_id"] for c in record.candidates] == [cand.peer_id]
    panel_reports(run, cand.peer_id, members, True, True)
    close_with_reports(run, members, [cand])
    cand.refresh_from_db()
    assert cand.probation_done == 1 and not Ban.objects.exists()


@pytest.mark.parametrize("byzantine_word", [True, None])  # passes its accomplice, or stays silent
def test_a_lone_byzantine_validator_cannot_promote_a_bad_candidate(run, byzantine_word):
    Run.objects.filter(pk=run.pk).update(probation_steps=1)
    members, cand, validators = _step_with_a_candidate(run, n=4)
    Peer.objects.filter(pk=cand.pk).update(probation_required=1)
    byzantine, honest = validators
    if byzantine_word is not None:
        report(run, byzantine, cand.peer_id, byzantine_word)
    report(run, honest, cand.peer_id, False, "the probation gradient differs")
    close_with_reports(run, members, [cand])
    assert runs.promote_candidates(run=Run.objects.get(pk=run.pk)) == []
    cand.refresh_from_db()
    assert cand.role == "candidate" and cand.probation_done == 0
    assert not Ban.objects.exists()  # a disagreement punishes nobody (it cannot tell who lied)


def test_a_byzantine_member_in_every_panel_it_is_drawn_in_delays_an_honest_newcomer_but_never_bans_it(run):
    """One Byzantine member of 4 fails the honest candidate whenever it is in the panel: the candidate
    gets its steps from the panels of two honest members and is promoted, never banned."""
    Run.objects.filter(pk=run.pk).update(probation_steps=3)
    members, cand, _ = _step_with_a_candidate(run, n=4)
    byzantine = members[0][0].peer_id
    steps, honest_panels = 0, 0
    while cand.role == "candidate" and steps < 40:
        if steps:
            _start(run)
        validators = panel(run, cand.peer_id, members)
        honest_panels += byzantine not in {v[0].peer_id for v in validators}
        for v in validators:
            report(run, v, cand.peer_id, v[0].peer_id != byzantine, "" if v[0].peer_id != byzantine else "lie")
        full_mprng(run, members)
        close_with_reports(run, members, [cand])
        runs.promote_candidates(run=Run.objects.get(pk=run.pk))
        cand.refresh_from_db()
        steps += 1
        # a step counts exactly when its panel held two honest members (3 of the 6 pairs: about 6 steps)
        assert cand.probation_done == honest_panels or cand.role == "active"
    assert cand.role == "active" and not Ban.objects.exists() and honest_panels == 3


def test_a_key_that_joined_after_the_draws_randomness_was_known_is_drawn_only_at_a_later_step(run):
    """Step 1's probation validators come from step 0's ``r``: a key that joined after step 0 opened
    (when it could compute that ``r`` by the end of the step's reveals, and grind against it) waits for
    step 2, whose draw uses step 1's ``r``; a key that joined before step 0 opened is drawn at step 1."""
    Run.objects.filter(pk=run.pk).update(probation_steps=3)
    members = _members(run)
    early, _ = make_peer(run=run, seed="early", role="candidate", probation_required=3)
    _start(run)  # step 0
    StepRecord.objects.filter(run=run, step=0).update(started_at=Peer.objects.get(pk=early.pk).joined_at
                                                      + timedelta(seconds=1))
    late, _ = make_peer(run=run, seed="grinder", role="candidate", probation_required=3)
    Peer.objects.filter(pk=late.pk).update(joined_at=StepRecord.objects.get(run=run, step=0).started_at
                                           + timedelta(seconds=1))
    _full_mprng(run, members, 0)
    close_with_reports(run, members)
    record = _start(run)  # step 1
    assert [c["peer_id"] for c in record.candidates] == [early.peer_id]
    StepRecord.objects.filter(pk=record.pk).update(started_at=Peer.objects.get(pk=late.pk).joined_at
                                                   + timedelta(seconds=1))
    _full_mprng(run, members, 1)
    close_with_reports(run, members, [early])
    record = _start(run)  # step 2
    assert sorted(c["peer_id"] for c in record.candidates) == sorted([early.peer_id, late.peer_id])


def _full_mprng(run, members, step):
    secrets = {peer.peer_id: os.urandom(32) for peer, _ in members}
    for peer, identity in members:
        _post(peer, identity, run, "mprng_commit",
              {"hash": mprng_commitment(secrets[peer.peer_id], run=str(run.id), step=step, sender=peer.peer_id)})
    for peer, identity in members:
        _post(peer, identity, run, "mprng_reveal", {"value": secrets[peer.peer_id].hex()})
    from runs.selectors import board_randomness

    assert board_randomness(run=run, step=step) is not None
