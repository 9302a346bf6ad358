"""moderation.services.record_elimination: ELIMINATE benches a pair and opens a case."""

from __future__ import annotations

import pytest
from moderation import services as moderation
from moderation.models import ModerationCase
from runs import services as runs
from runs.models import Peer
from volunteers.models import ReputationEvent

from tests.factories import make_peer
from tests.site.helpers import envelope, types

pytestmark = pytest.mark.django_db


def test_an_elimination_benches_both_peers_for_the_epoch_and_opens_a_case(run, group, events):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id,
                                                   "reason": "never sent my part"}))
    case = moderation.record_elimination(entry=entry)
    assert set(case.peers.values_list("peer_id", flat=True)) == {sender.peer_id, target.peer_id}
    assert case.evidence["eliminate"]["signature"] == entry.envelope["signature"]
    assert set(Peer.objects.filter(pk__in=[sender.pk, target.pk]).values_list("excluded_until_step", flat=True)) \
        == {run.epoch_steps}
    assert ReputationEvent.objects.filter(kind="eliminated").count() == 2
    assert types(events)[-1] == "case_opened"


def test_only_the_first_elimination_naming_a_peer_removes_a_pair(run, events):
    peers = [make_peer(run=run, seed=f"e{i}") for i in range(4)]
    runs.start_step_if_ready(run=run)
    (a, ia), (b, ib), (c, _), _ = peers
    first = moderation.record_elimination(entry=runs.accept_broadcast(peer=a, envelope=envelope(
        ia, run, phase="eliminate", payload={"type": "eliminate", "target": c.peer_id})))
    second = moderation.record_elimination(entry=runs.accept_broadcast(peer=b, envelope=envelope(
        ib, run, phase="eliminate", payload={"type": "eliminate", "target": c.peer_id})))
    assert first.evidence["removed_pair"] and not second.evidence["removed_pair"]
    b.refresh_from_db()
    assert b.excluded_until_step is None  # still in the group
    assert ModerationCase.objects.count() == 2
