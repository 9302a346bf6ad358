"""moderation.selectors: active bans, open cases, the verdicts a step's members signed."""

from __future__ import annotations

import pytest
from django.utils import timezone
from moderation import selectors
from runs.models import BroadcastLog

from tests.factories import BanFactory, ModerationCaseFactory, PeerFactory, StepRecordFactory
from tests.site.helpers import verdict

pytestmark = pytest.mark.django_db


def test_it_counts_only_bans_that_were_not_lifted(run):
    banned, lifted, clean = (PeerFactory(run=run, seed=s) for s in ("banned", "lifted", "clean"))
    ban = BanFactory(run_peer=banned)
    BanFactory(run_peer=lifted, lifted_at=timezone.now(), lift_reason="honest after all")
    assert selectors.is_peer_id_banned(banned.peer_id)
    assert not selectors.is_peer_id_banned(lifted.peer_id) and not selectors.is_peer_id_banned(clean.peer_id)
    assert list(selectors.active_bans(run=run)) == [ban]
    assert selectors.ban_row(ban)["scope"] == "account"


def test_it_lists_open_cases_and_not_resolved_ones(run):
    peer = PeerFactory(run=run, seed="cased")
    case = ModerationCaseFactory(run=run, peers=[peer])
    ModerationCaseFactory(run=run, peers=[peer], status="cleared")
    assert list(selectors.open_cases()) == [case]
    assert list(case.peers.all()) == [peer]


def test_it_counts_one_verdict_per_member_and_none_from_outside_the_group(run):
    members = [PeerFactory(run=run, seed=f"m{i}") for i in range(3)]
    outsider = PeerFactory(run=run, seed="outsider")
    StepRecordFactory(run=run, step=0, members=[p.peer_id for p in members], outcome="", finished_at=None)
    guilty = members[2].peer_id
    for sender in (members[0], members[0], members[1], outsider):
        env = verdict(sender.identity, run, guilty=guilty, step=0)
        BroadcastLog.objects.create(run=run, step=0, phase="verdict", sender=sender, sender_peer_id=sender.peer_id,
                                    nonce=env.nonce, digest=env.digest(), envelope=env.model_dump(mode="json"))
    signed, group_size = selectors.verdict_majority(run=run, step=0, guilty=guilty)
    assert group_size == 3
    assert sorted(e["sender"] for e in signed) == sorted([members[0].peer_id, members[1].peer_id])
    assert selectors.step_members(run, 0) == [p.peer_id for p in members]
