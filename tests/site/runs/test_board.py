"""runs.services.board: signed broadcasts stored and relayed, bad ones refused, old logs expired."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from runs import services as runs
from runs.models import BroadcastLog

from tests.factories import RunFactory, make_peer
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db


def test_it_stores_and_relays_a_signed_broadcast(run, group, events):
    (peer, identity), *_ = group
    entry = runs.accept_broadcast(peer=peer, envelope=envelope(identity, run))
    assert entry.digest == envelope(identity, run, nonce=entry.nonce).digest()
    relayed = events()[-1]
    assert relayed.type == "broadcast_recorded" and set(relayed.recipients) == {p.peer_id for p, _ in group}


@pytest.mark.parametrize("case, code", [
    ("wrong_signer", "sender"), ("tampered", "signature"), ("wrong_run", "wrong_run"), ("phase", "phase"),
    ("future_step", "stale_step"), ("replay", "replay"), ("outsider", "not_in_group"),
    ("bad_verdict", "payload"),
])
def test_it_rejects_bad_broadcasts_without_changing_state(case, code, run, group, events):
    (peer, identity), (other, other_identity), _ = group
    env = envelope(identity, run)
    if case == "wrong_signer":
        env = envelope(other_identity, run)
    elif case == "tampered":
        env = env.model_copy(update={"payload": {"hashes": ["ff" * 32]}})
    elif case == "wrong_run":
        env = envelope(identity, RunFactory(), step=0)
    elif case == "phase":
        env = envelope(identity, run, phase="gossip")
    elif case == "future_step":
        env = envelope(identity, run, step=5)
    elif case == "replay":
        runs.accept_broadcast(peer=peer, envelope=env)
    elif case == "outsider":
        peer, identity = make_peer(run=run, seed="outsider")
        env = envelope(identity, run)
    elif case == "bad_verdict":
        env = envelope(identity, run, phase="verdict", payload={"type": "verdict", "guilty": "nope"})
    before_logs, before_events = BroadcastLog.objects.count(), len(events())
    with pytest.raises(runs.Rejected) as info:
        runs.accept_broadcast(peer=peer, envelope=env)
    assert info.value.code == code
    assert BroadcastLog.objects.count() == before_logs and len(events()) == before_events


def test_old_broadcast_logs_expire_after_the_run_retention(run, group):
    peer, identity = group[0]
    runs.accept_broadcast(peer=peer, envelope=envelope(identity, run))
    assert runs.expire_broadcasts(now=timezone.now() + timedelta(hours=run.broadcast_retention_hours - 1)) == 0
    assert runs.expire_broadcasts(now=timezone.now() + timedelta(hours=run.broadcast_retention_hours + 1)) == 1
