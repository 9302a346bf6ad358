"""runs.services.membership: joining (role by the admission policy), heartbeats, stale peers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from moderation import services as moderation
from runs import services as runs
from runs.models import Peer
from volunteers import services as volunteers

from btard_wire.control import (
    CLOSE_BANNED,
    CLOSE_NO_RUN,
    Heartbeat,
)
from btard_wire.envelope import Identity
from tests.factories import make_peer
from tests.site.helpers import hello_for, types

pytestmark = pytest.mark.django_db


def test_founders_join_active_and_later_peers_start_as_candidates(run, alice, bob, events):
    t_alice = volunteers.create_worker_token(user=alice, name="a").token
    t_bob = volunteers.create_worker_token(user=bob, name="b").token
    first = runs.join_run(token=t_alice, hello=hello_for(Identity.from_seed(b"a")))
    assert first.role == "active"
    second = runs.join_run(token=t_bob, hello=hello_for(Identity.from_seed(b"b")))
    assert second.role == "active"
    assert runs.start_step_if_ready(run=run) is not None
    late = runs.join_run(token=t_bob, hello=hello_for(Identity.from_seed(b"b2")))
    assert late.role == "candidate" and late.probation_left == run.probation_steps
    assert types(events).count("peer_joined") == 3


def test_a_new_key_of_the_same_account_is_a_new_peer_that_keeps_the_account_reputation(run, alice):
    token = volunteers.create_worker_token(user=alice, name="a").token
    runs.join_run(token=token, hello=hello_for(Identity.from_seed(b"a1")))
    volunteers.adjust_reputation(user_ids=[alice.id], kind="staff", delta=50.0)
    type(run).objects.filter(pk=run.pk).update(current_step=10)
    again = runs.join_run(token=token, hello=hello_for(Identity.from_seed(b"a2")))
    assert Peer.objects.filter(user=alice).count() == 2
    assert again.role == "candidate"
    # 50 reputation = two steps off the probation of 2, floored at the policy minimum of 1
    assert again.probation_left == 1
    alice.volunteer.refresh_from_db()
    assert alice.volunteer.reputation == 50.0


def test_joining_without_an_open_run_is_refused(alice):
    token = volunteers.create_worker_token(user=alice, name="a").token
    with pytest.raises(runs.JoinRefused) as info:
        runs.join_run(token=token, hello=hello_for(Identity.from_seed(b"a")))
    assert info.value.close_code == CLOSE_NO_RUN


def test_a_banned_key_cannot_join_again(run, alice, bob):
    peer, identity = make_peer(run=run, user=bob)
    moderation.ban_peer(peer=peer, reason="lied", evidence_kind="bad_commitment", evidence={}, source="verdict")
    token = volunteers.create_worker_token(user=alice, name="a").token
    with pytest.raises(runs.JoinRefused) as info:
        runs.join_run(token=token, hello=hello_for(identity))
    assert info.value.close_code == CLOSE_BANNED


def test_heartbeats_emit_an_event_only_when_the_status_changes(run, alice, events):
    peer, _ = make_peer(run=run, user=alice, status="training")
    assert runs.record_heartbeat(peer=peer, heartbeat=Heartbeat(status="training")) is False
    assert runs.record_heartbeat(peer=peer, heartbeat=Heartbeat(status="error", detail="CUDA OOM")) is True
    peer.refresh_from_db()
    assert (peer.status, peer.status_detail) == ("error", "CUDA OOM")
    assert types(events) == ["peer_status_changed"]


def test_stale_peers_are_marked_offline(run, alice, bob, events, settings):
    settings.HEARTBEAT_TIMEOUT_SECONDS = 30
    fresh, _ = make_peer(run=run, user=alice)
    stale, _ = make_peer(run=run, user=bob)
    Peer.objects.filter(pk=stale.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    assert runs.mark_stale_peers_offline(run=run) == [stale.peer_id]
    assert list(Peer.objects.filter(online=True).values_list("pk", flat=True)) == [fresh.pk]
    assert types(events) == ["peer_status_changed"]
