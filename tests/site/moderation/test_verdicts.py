"""moderation.services.consider_verdict: a strict majority of signed verdicts bans."""

from __future__ import annotations

import pytest
from live import event_routing as routes
from moderation import services as moderation
from moderation.models import Ban
from runs import services as runs
from runs.models import Peer

from tests.factories import make_peer
from tests.site.helpers import verdict

pytestmark = pytest.mark.django_db


def test_a_strict_majority_of_signed_verdicts_bans_the_peer_and_its_account(run, events):
    peers = [make_peer(run=run, seed=f"v{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    guilty_peer, _ = peers[3]
    second_key, _ = make_peer(run=run, user=guilty_peer.user, seed="v3-other", role="candidate")
    for n, (peer, identity) in enumerate(peers[:3]):
        entry = runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty_peer.peer_id))
        ban = moderation.consider_verdict(entry=entry)
        # 1 and 2 of 4 are not a strict majority; 3 of 4 is
        assert (ban is not None) == (n == 2)
    assert ban.user == guilty_peer.user and ban.evidence["signers"] == 3
    assert ban.evidence_kind == "part_mismatch" and len(ban.evidence["verdicts"]) == 3
    assert set(Peer.objects.filter(user=guilty_peer.user).values_list("role", flat=True)) == {"banned"}
    guilty_peer.user.volunteer.refresh_from_db()
    assert guilty_peer.user.volunteer.is_banned and second_key.pk
    banned = [e for e in events() if e.type == "peer_banned"]
    assert len(banned) == 1 and routes.bans_group() in routes.live_groups(banned[0])


def test_repeated_verdicts_from_one_peer_count_once(run):
    peers = [make_peer(run=run, seed=f"r{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    (peer, identity), guilty = peers[0], peers[3][0]
    entry = runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty.peer_id))
    assert moderation.consider_verdict(entry=entry) is None
    for _ in range(2):  # the same sender's later verdicts on the same peer are refused at the door (F6)
        with pytest.raises(runs.Rejected) as refused:
            runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty.peer_id))
        assert refused.value.code == "duplicate"
    assert not Ban.objects.exists()
