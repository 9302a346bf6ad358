"""moderation.services: a ban's scope is btard_wire.board.ban_scope (the third crash-like key ban of an
account is the first account ban, counting earlier bans only), and verdict majorities count accounts,
not keys."""

from __future__ import annotations

import pytest
from moderation.models import Ban
from runs import services as runs
from runs.models import Run

from tests.factories import BanFactory, UserFactory, make_peer
from tests.site.helpers import verdict

pytestmark = pytest.mark.django_db


def _group(run, specs):
    Run.objects.filter(pk=run.pk).update(peers_per_group=8, min_peers=2)
    peers = [make_peer(run=run, user=user, seed=seed) for seed, user in specs]
    record = runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))
    assert sorted(record.members) == sorted(p.peer_id for p, _ in peers)
    return peers


def test_a_later_verdict_does_not_widen_a_second_crash_like_key_ban_to_the_account(run):
    owner = UserFactory()
    earlier_peer, _ = make_peer(run=run, user=owner, seed="old-key", role="banned")
    BanFactory(run=run, user=owner, peer_id=earlier_peer.peer_id, scope="key", evidence_kind="silence")
    *voters, (guilty, _) = _group(run, [(f"v{i}", None) for i in range(4)] + [("crashy", owner)])
    run = Run.objects.get(pk=run.pk)
    for peer, ident in voters:  # the majority (3 of 5) bans; the fourth verdict decides nothing again
        runs.post_broadcast(peer=peer, envelope=verdict(ident, run, guilty=guilty.peer_id, kind="withheld_reveal"))
    ban = Ban.objects.get(peer_id=guilty.peer_id, lifted_at=None)
    assert ban.scope == "key"
    owner.volunteer.refresh_from_db()
    assert not owner.volunteer.is_banned


def test_the_third_crash_like_key_ban_counts_only_the_earlier_ones(run):
    owner = UserFactory()
    for i in range(2):
        old, _ = make_peer(run=run, user=owner, seed=f"old{i}", role="banned")
        BanFactory(run=run, user=owner, peer_id=old.peer_id, scope="key", evidence_kind="silence")
    *voters, (guilty, _) = _group(run, [(f"w{i}", None) for i in range(2)] + [("third", owner)])
    run = Run.objects.get(pk=run.pk)
    for peer, ident in voters:
        runs.post_broadcast(peer=peer, envelope=verdict(ident, run, guilty=guilty.peer_id, kind="withheld_reveal"))
    assert Ban.objects.get(peer_id=guilty.peer_id, lifted_at=None).scope == "account"


def test_one_account_holding_several_keys_of_a_step_is_one_voice_in_a_verdict_majority(run):
    sybil = UserFactory()
    peers = _group(run, [("s0", sybil), ("s1", sybil), ("s2", sybil), ("honest", None), ("victim", None)])
    (s0, i0), (s1, i1), (s2, i2), (honest, ih), (victim, _) = peers
    run = Run.objects.get(pk=run.pk)
    for peer, ident in ((s0, i0), (s1, i1), (s2, i2)):  # 3 of 5 keys, but 1 of 3 accounts
        runs.post_broadcast(peer=peer, envelope=verdict(ident, run, guilty=victim.peer_id))
    assert not Ban.objects.filter(peer_id=victim.peer_id).exists()
    runs.post_broadcast(peer=honest, envelope=verdict(ih, run, guilty=victim.peer_id))  # 2 of 3 accounts
    assert Ban.objects.filter(peer_id=victim.peer_id, lifted_at=None).exists()
