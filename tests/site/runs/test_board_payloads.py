"""The site reads the peers' own payload models (btard_wire.payloads): what a peer could not sign, it refuses."""

from __future__ import annotations

import pytest
from runs import services as runs
from runs.models import BroadcastLog

from btard_wire.payloads import FaultKind
from tests.factories import make_peer
from tests.site.helpers import verdict

pytestmark = pytest.mark.django_db


def _group(run, n=4):
    run.peers_per_group = max(run.peers_per_group, n)
    run.save(update_fields=["peers_per_group"])
    peers = [make_peer(run=run, seed=f"wire-{i}") for i in range(n)]
    assert runs.start_step_if_ready(run=run) is not None
    run.refresh_from_db()
    return peers


def test_the_site_refuses_a_verdict_whose_kind_is_not_a_fault_kind_and_stores_nothing(run):
    (accuser, identity), (guilty, _) = _group(run)[:2]
    with pytest.raises(runs.Rejected) as info:
        runs.accept_broadcast(peer=accuser, envelope=verdict(identity, run, guilty=guilty.peer_id,
                                                             kind="bad_commitment"))
    assert info.value.code == "payload"
    assert str(info.value).startswith("invalid verdict payload: verdict.kind: Input should be ")
    assert not BroadcastLog.objects.filter(run=run).exists()


def test_the_site_accepts_every_fault_kind_the_peers_sign(run):
    kinds = list(FaultKind)
    (accuser, identity), *others = _group(run, n=len(kinds) + 1)  # one verdict per named peer and sender
    for kind, (guilty, _) in zip(kinds, others, strict=True):
        entry = runs.accept_broadcast(peer=accuser, envelope=verdict(identity, run, guilty=guilty.peer_id,
                                                                     kind=kind.value))
        assert entry.envelope["payload"]["kind"] == kind.value
