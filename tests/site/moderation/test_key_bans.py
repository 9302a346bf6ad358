"""A fault an honest crash also produces bans the worker key, not the account (docs/users.md #3)."""

from __future__ import annotations

import pytest
from moderation import services as moderation
from moderation.models import Ban, ModerationCase
from runs import services as runs
from runs.models import Peer

from btard_wire.control import CLOSE_BANNED, KEY_BAN_ADVICE, Hello
from btard_wire.envelope import Identity
from tests.factories import UserFactory, make_peer
from tests.site.helpers import verdict

pytestmark = pytest.mark.django_db


def _majority_verdict(run, *, guilty, kind, seed):
    """Form a group of three honest peers plus ``guilty`` and have the three sign ``kind`` against it."""
    accusers = [make_peer(run=run, seed=f"{seed}{i}") for i in range(3)]
    group = [guilty.pk] + [p.pk for p, _ in accusers]
    Peer.objects.exclude(pk__in=group).update(online=False)  # exactly these four form the group
    record = runs.start_step_if_ready(run=run)
    run.refresh_from_db()
    assert record is not None and set(record.members) == {guilty.peer_id} | {p.peer_id for p, _ in accusers}
    ban = None
    for peer, identity in accusers:
        entry = runs.accept_broadcast(peer=peer, envelope=verdict(identity, run, guilty=guilty.peer_id, kind=kind))
        ban = moderation.consider_verdict(entry=entry) or ban
    runs.close_step(run=run, force=True)
    return ban


def _hello(identity):
    return Hello(public_key=identity.public_key_b64, p2p_id="QmPeer", p2p_addrs=["/ip4/127.0.0.1/tcp/1"])


def test_a_withheld_reveal_bans_the_key_and_opens_a_case_but_the_account_goes_on(run, events):
    from volunteers import services as volunteers

    crashed, _ = make_peer(run=run, seed="crash")
    other_key, _ = make_peer(run=run, user=crashed.user, seed="crash-laptop")
    ban = _majority_verdict(run, guilty=crashed, kind="withheld_reveal", seed="w")
    assert ban is not None and ban.scope == "key"
    crashed.refresh_from_db()
    other_key.refresh_from_db()
    crashed.user.volunteer.refresh_from_db()
    assert crashed.role == "banned" and other_key.role == "active" and not crashed.user.volunteer.is_banned
    assert Ban.objects.filter(peer_id=other_key.peer_id).count() == 0
    (case,) = ModerationCase.objects.filter(kind="crash")
    assert list(case.peers.all()) == [crashed] and case.evidence["ban"] == ban.id
    banned = [e for e in events() if e.type == "peer_banned"]
    assert [e.scope for e in banned] == ["key"]

    # the same key is refused with advice; a new key of the same account joins on probation
    token = volunteers.create_worker_token(user=crashed.user, name="again").token
    with pytest.raises(runs.JoinRefused) as refused:
        runs.join_run(token=token, hello=_hello(Identity.from_seed(b"crash")))
    assert refused.value.close_code == CLOSE_BANNED and refused.value.reason == KEY_BAN_ADVICE and "--new-key" in KEY_BAN_ADVICE
    joined = runs.join_run(token=token, hello=_hello(Identity.from_seed(b"crash-new-key")))
    assert joined.peer.user == crashed.user and joined.peer.role in {"waiting", "candidate"}


def test_the_third_crash_like_ban_of_an_account_bans_the_account(run):
    user = UserFactory()
    scopes = []
    for i in range(moderation.KEY_BANS_BEFORE_ACCOUNT + 1):
        peer, _ = make_peer(run=run, user=user, seed=f"again{i}")
        scopes.append(_majority_verdict(run, guilty=peer, kind="withheld_reveal", seed=f"a{i}-").scope)
    assert scopes == ["key"] * moderation.KEY_BANS_BEFORE_ACCOUNT + ["account"]
    user.volunteer.refresh_from_db()
    assert user.volunteer.is_banned


def test_a_provable_cheat_still_bans_the_account_at_once(run):
    liar, _ = make_peer(run=run, seed="liar")
    ban = _majority_verdict(run, guilty=liar, kind="part_mismatch", seed="c")
    liar.user.volunteer.refresh_from_db()
    assert ban.scope == "account" and liar.user.volunteer.is_banned
    assert not ModerationCase.objects.filter(kind="crash").exists()


def test_staff_can_widen_a_key_ban_to_the_account_from_the_crash_case(run, carol):
    crashed, _ = make_peer(run=run, seed="widen")
    key_ban = _majority_verdict(run, guilty=crashed, kind="withheld_reveal", seed="s")
    case = ModerationCase.objects.get(kind="crash")
    widened = moderation.confirm_case_ban(case=case, peer=crashed, actor=carol, reason="aborts on purpose")
    crashed.user.volunteer.refresh_from_db()
    assert widened.pk == key_ban.pk and widened.scope == "account" and crashed.user.volunteer.is_banned
    assert Ban.objects.filter(lifted_at=None).count() == 1


def test_lifting_a_key_ban_sends_only_that_key_back_to_probation(run, carol):
    crashed, _ = make_peer(run=run, seed="lift")
    ban = _majority_verdict(run, guilty=crashed, kind="withheld_reveal", seed="l")
    moderation.unban(ban=ban, actor=carol, reason="it was a power cut")
    crashed.refresh_from_db()
    assert crashed.role == "waiting" and crashed.probation_required >= 1
