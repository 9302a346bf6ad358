"""runs.services.steps: group formation, closing a step, benched peers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from runs import services as runs
from runs.models import Peer
from volunteers.models import ReputationEvent

from btard_wire.control import StepReport
from btard_wire.randomness import genesis_randomness, group_order, skipped_randomness
from tests.factories import make_peer
from tests.site.helpers import types

pytestmark = pytest.mark.django_db


def test_it_forms_a_deterministic_group_with_validators_and_candidates(run, events):
    peers = [make_peer(run=run, seed=f"p{i}")[0] for i in range(3)]
    cand, _ = make_peer(run=run, seed="cand", role="candidate", probation_required=2)
    record = runs.start_step_if_ready(run=run)
    assert sorted(record.members) == sorted(p.peer_id for p in peers)
    # in the order of the run's public chain at step 0 (later: the previous step's r), not by key
    r = skipped_randomness(genesis_randomness(str(run.id), run.seed), str(run.id), 0)
    assert record.members == group_order(r, record.members)
    assert [c["peer_id"] for c in record.candidates] == [cand.peer_id]
    assert record.candidates[0]["validator"] in record.members
    assert record.candidates[0]["seed"] == runs.probation_seed(run, 0, cand.peer_id)
    assert runs.start_step_if_ready(run=run) is None  # one step at a time
    formed = events()[-1]
    assert formed.type == "group_formed" and formed.recipients() == set(record.members) | {cand.peer_id}


def test_no_group_forms_below_min_peers_and_offline_peers_are_left_out(run):
    make_peer(run=run, seed="p0")
    make_peer(run=run, seed="p1", online=False)
    assert runs.start_step_if_ready(run=run) is None


def test_it_assigns_no_validators_when_it_forms_a_group(run):
    """Validators are drawn from the step's own r_t, revealed during the step: not knowable at the start
    (runs.step_validators computes them from the board; tests/site/runs/test_validator_draw.py)."""
    peers = [make_peer(run=run, seed=f"p{i}")[0] for i in range(4)]
    runs.start_step_if_ready(run=run)
    for p in peers:
        runs.record_step_report(peer=p, report=StepReport(step=0, outcome="applied", loss=1.0, samples=32))
    runs.close_step(run=run)
    record = runs.start_step_if_ready(run=run)
    assert record.validators == {}
    assert runs.step_validators(run=run, step=1) == {}  # no reveal on the board yet


def test_a_step_closes_when_every_member_reported_and_credits_contribution(run, group, events):
    for peer, _ in group:
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied", loss=2.0, accuracy=0.5,
                                                             samples=32))
    record = runs.close_step(run=run)
    run.refresh_from_db()
    assert run.current_step == 1 and not run.step_in_progress
    assert (record.outcome, record.loss, record.accuracy, record.samples) == ("applied", 2.0, 0.5, 96)
    for peer, _ in group:
        peer.user.volunteer.refresh_from_db()
        assert peer.user.volunteer.contribution_samples == 32 and peer.user.volunteer.reputation == 1.0
    assert types(events)[-1] == "step_advanced"


def test_a_step_waits_for_reports_until_its_deadline_then_charges_the_silent(run, group, events):
    (p0, _), (p1, _), (silent, _) = group
    for peer in (p0, p1):
        runs.record_step_report(peer=peer, report=StepReport(step=0, outcome="applied", samples=8))
    assert runs.close_step(run=run) is None
    deadline = type(run).objects.get(pk=run.pk).step_deadline  # covers the sum of the phase deadlines
    record = runs.close_step(run=run, now=deadline + timedelta(seconds=1))
    assert record.outcome == "applied" and events()[-1].missing == [silent.peer_id]
    assert ReputationEvent.objects.get(kind="missed_deadline").user == silent.user


def test_benched_peers_come_back_early_when_the_run_would_stall_without_them(run, events):
    type(run).objects.filter(pk=run.pk).update(min_peers=3, epoch_steps=1000)
    peers = [make_peer(run=run, seed=f"st{i}")[0] for i in range(3)]
    Peer.objects.filter(pk__in=[peers[0].pk, peers[1].pk]).update(excluded_until_step=1000)  # an ELIMINATE pair
    record = runs.start_step_if_ready(run=run)
    assert record is not None and sorted(record.members) == sorted(p.peer_id for p in peers)
    ended = [e for e in events() if e.type == "exclusions_ended"]
    assert len(ended) == 1 and ended[0].peer_ids == sorted([peers[0].peer_id, peers[1].peer_id])
    assert not Peer.objects.filter(excluded_until_step__isnull=False).exists()


def test_benched_peers_stay_out_when_the_others_are_enough(run, events):
    type(run).objects.filter(pk=run.pk).update(min_peers=2, epoch_steps=1000)
    peers = [make_peer(run=run, seed=f"ok{i}")[0] for i in range(4)]
    Peer.objects.filter(pk__in=[peers[0].pk, peers[1].pk]).update(excluded_until_step=1000)
    record = runs.start_step_if_ready(run=run)
    assert sorted(record.members) == sorted([peers[2].peer_id, peers[3].peer_id])
    assert not [e for e in events() if e.type == "exclusions_ended"]


def test_a_run_too_small_even_with_its_benched_peers_waits_and_keeps_them_benched(run):
    type(run).objects.filter(pk=run.pk).update(min_peers=4, epoch_steps=1000)
    peers = [make_peer(run=run, seed=f"sm{i}")[0] for i in range(3)]
    Peer.objects.filter(pk=peers[0].pk).update(excluded_until_step=1000)
    assert runs.start_step_if_ready(run=run) is None
    assert Peer.objects.get(pk=peers[0].pk).excluded_until_step == 1000
