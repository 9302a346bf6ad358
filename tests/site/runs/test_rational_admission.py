"""Rational attackers against admission (security review, finding 10; issue 12, invariant 9), through the
real site services on the database: probation voiding (a member that is not a candidate's assigned
validator fails it, accuses it; the validator's own ``probation`` report beside its step report) and key grinding (a key chosen, or a moment to join chosen, once the
randomness of the probation draw is known). The rules are ``btard_wire.board.probation_voided`` and
``probation_drawable`` and ``probation_report_refused``; docs/threat-model.md, "Protocol"."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from runs import services as runs
from runs.models import Peer, Run, StepRecord

from btard_wire.control import StepReport
from btard_wire.randomness import mprng_commitment
from tests.factories import make_peer
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db



def _members(run, n=3):
    return [make_peer(run=run, seed=f"adm{i}") for i in range(n)]


def _post(peer, identity, run, phase, payload):
    return runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase=phase,
                                                            payload=payload))


def _finish_step(run, members, candidates=()):
    step = Run.objects.get(pk=run.pk).current_step
    for peer, _ in members:
        runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="applied", samples=8))
    for cand in candidates:
        runs.record_step_report(peer=cand, report=StepReport(step=step, outcome="probation", samples=8))
    runs.close_step(run=Run.objects.get(pk=run.pk), force=True)


def _start(run):
    return runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))


def _step_with_a_candidate(run):
    members = _members(run)
    cand, _ = make_peer(run=run, seed="newcomer", role="candidate", probation_required=3)
    Peer.objects.filter(pk=cand.pk).update(joined_at=Peer.objects.get(pk=cand.pk).joined_at - timedelta(hours=1))
    record = _start(run)
    (info,) = record.candidates
    return members, cand, info["validator"]


def _post_maybe_refused(peer, identity, run, phase, payload):
    try:
        return _post(peer, identity, run, phase, payload)
    except runs.Rejected:
        return None


def test_a_member_that_is_not_the_candidates_validator_cannot_void_its_probation_step(run):
    members, cand, validator = _step_with_a_candidate(run)
    other, ident = next((p, i) for p, i in members if p.peer_id != validator)
    step = Run.objects.get(pk=run.pk).current_step
    # a failed probation report (refused: not its candidate), an accusation and a failed validation naming it
    _post_maybe_refused(other, ident, run, "probation", {"candidate": cand.peer_id, "ok": False, "reason": "lie"})
    accusation = _post(other, ident, run, "accuse", {"accused": cand.peer_id, "kind": "part_mismatch",
                                                     "reason": "fabricated"})
    _post(other, ident, run, "validation", {"target": cand.peer_id, "target_step": step, "ok": False,
                                            "accusations": [accusation.digest]})
    _finish_step(run, members, [cand])
    cand.refresh_from_db()
    assert cand.probation_done == 1


def test_the_assigned_validators_failed_probation_report_voids_the_step_and_is_no_equivocation(run):
    members, cand, validator = _step_with_a_candidate(run)
    peer, ident = next((p, i) for p, i in members if p.peer_id == validator)
    _post(peer, ident, run, "validation", {})  # its own step report first, as the worker does
    _post(peer, ident, run, "probation", {"candidate": cand.peer_id, "ok": False, "reason": "mismatch"})
    _finish_step(run, members, [cand])
    cand.refresh_from_db()
    peer.refresh_from_db()
    assert cand.probation_done == 0 and peer.role != "banned"


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
    _finish_step(run, members)
    record = _start(run)  # step 1
    assert [c["peer_id"] for c in record.candidates] == [early.peer_id]
    StepRecord.objects.filter(pk=record.pk).update(started_at=Peer.objects.get(pk=late.pk).joined_at
                                                   + timedelta(seconds=1))
    _full_mprng(run, members, 1)
    _finish_step(run, members, [early])
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
