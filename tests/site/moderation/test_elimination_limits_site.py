"""ELIMINATE limits on the site: per account and epoch (btard_wire.board.elimination_rate_ok), repeat
eliminators escalated to staff (escalated), and un-benching that returns targets, never eliminators
(unbench)."""

from __future__ import annotations

import pytest
from moderation.models import ModerationCase
from runs import services as runs
from runs.models import BroadcastLog, Peer, Run

from tests.factories import UserFactory, make_peer
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db


def _eliminate(peer, identity, run, target):
    run = Run.objects.get(pk=run.pk)
    return runs.post_broadcast(peer=peer, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))


def _next_step(run):
    runs.close_step(run=run, force=True)
    return runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))


def test_it_refuses_an_accounts_second_elimination_in_one_epoch(run):
    Run.objects.filter(pk=run.pk).update(epoch_steps=1000, min_peers=2, peers_per_group=8)
    user = UserFactory()
    (a1, i1), (a2, i2) = make_peer(run=run, user=user, seed="acct1"), make_peer(run=run, user=user, seed="acct2")
    others = [make_peer(run=run, seed=f"o{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    _eliminate(a1, i1, run, others[0][0])
    with pytest.raises(runs.Rejected) as info:  # the same account's other key: still that account's epoch
        _eliminate(a2, i2, run, others[1][0])
    assert info.value.code == "eliminate_limit"
    assert BroadcastLog.objects.filter(phase="eliminate").count() == 1
    assert Peer.objects.get(pk=others[1][0].pk).excluded_until_step is None


def test_it_allows_the_account_an_elimination_again_in_the_next_epoch(run):
    Run.objects.filter(pk=run.pk).update(epoch_steps=1, min_peers=2, peers_per_group=8)
    peers = [make_peer(run=run, seed=f"n{i}") for i in range(5)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, _), (c, _) = peers[0], peers[1], peers[2]
    _eliminate(a, ia, run, b)
    record = _next_step(run)
    assert record is not None and record.step == 1 and a.peer_id in record.members
    assert _eliminate(a, ia, run, c).phase == "eliminate"


def test_it_escalates_a_repeat_eliminator_to_staff(run):
    Run.objects.filter(pk=run.pk).update(epoch_steps=1, min_peers=2, peers_per_group=8)
    peers = [make_peer(run=run, seed=f"x{i}") for i in range(5)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, _), (c, _) = peers[0], peers[1], peers[2]
    _eliminate(a, ia, run, b)
    assert not ModerationCase.objects.filter(kind="escalated").exists()
    _next_step(run)
    _eliminate(a, ia, run, c)
    case = ModerationCase.objects.get(kind="escalated")
    assert list(case.peers.values_list("peer_id", flat=True)) == [a.peer_id] and case.status == "open"
    assert [p["eliminator"] for p in case.evidence["pairs"]] == [a.peer_id, a.peer_id]


def test_it_brings_back_the_target_not_the_eliminator_when_the_run_would_stall(run, events):
    Run.objects.filter(pk=run.pk).update(epoch_steps=1000, min_peers=3, peers_per_group=8)
    peers = [make_peer(run=run, seed=f"u{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, _) = peers[0], peers[1]
    _eliminate(a, ia, run, b)
    record = _next_step(run)
    assert record is not None
    assert b.peer_id in record.members and a.peer_id not in record.members
    assert Peer.objects.get(pk=a.pk).excluded_until_step == 1000
    assert [e.peer_ids for e in events() if e.type == "exclusions_ended"] == [[b.peer_id]]


def test_it_keeps_an_eliminator_that_could_strike_again_benched_even_if_the_run_then_waits(run, monkeypatch):
    from runs.services import steps

    monkeypatch.setattr(steps, "elimination_allowed", lambda **kw: True)  # its account has ELIMINATEs left
    Run.objects.filter(pk=run.pk).update(epoch_steps=1000, min_peers=3, peers_per_group=8)
    peers = [make_peer(run=run, seed=f"w{i}") for i in range(3)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, _) = peers[0], peers[1]
    _eliminate(a, ia, run, b)
    assert _next_step(run) is None  # two would be needed back; only the target may return
    assert Peer.objects.get(pk=a.pk).excluded_until_step == 1000


def test_a_spent_eliminator_comes_back_after_the_target_when_the_run_would_stall_for_good(run, events):
    """The soak's stall: every online peer benched, the epoch (counted in steps) never ends. An eliminator
    whose account used its ELIMINATEs of the epoch cannot strike again, so it comes back after the target."""
    Run.objects.filter(pk=run.pk).update(epoch_steps=1000, min_peers=3, peers_per_group=8)
    peers = [make_peer(run=run, seed=f"s{i}") for i in range(3)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, _) = peers[0], peers[1]
    _eliminate(a, ia, run, b)
    record = _next_step(run)
    assert record is not None and {a.peer_id, b.peer_id} <= set(record.members)
    assert [sorted(e.peer_ids) for e in events() if e.type == "exclusions_ended"] == [sorted([a.peer_id, b.peer_id])]
