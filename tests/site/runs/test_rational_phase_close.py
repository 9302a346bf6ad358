"""Phase-close rushing (security review, finding 11; issue 12, invariant 7) through the real site services:
a coalition that asks the site to close every board phase the moment it posted its own message. A
strict majority of the members still online must ask (``btard_wire.board.close_quorum``), so a minority
of ``b`` never closes a phase alone, and a close needs the deadlines of ``majority - b`` honest members to
have passed: that is the measured bound (docs/threat-model.md, "Protocol"), not a fix."""

from __future__ import annotations

import pytest
from runs import services as runs
from runs.models import Run, StepRecord

from btard_wire.board import majority
from tests.factories import RunFactory, make_peer
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db

N, RUSHERS = 7, 3


@pytest.fixture
def step(db):
    run = RunFactory(name="rush", peers_per_group=N, min_peers=N)
    peers = [make_peer(run=run, seed=f"rush{i}") for i in range(N)]
    record = runs.start_step_if_ready(run=run)
    order = {p: i for i, p in enumerate(record.members)}
    peers.sort(key=lambda pi: order[pi[0].peer_id])
    return run, peers[:RUSHERS], peers[RUSHERS:]


def _commit(run, peer, identity):
    runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase="commit"))


def test_rushers_alone_never_close_a_phase_and_a_close_needs_majority_minus_b_honest_deadlines(step):
    run, rushers, honest = step
    for peer, identity in rushers:
        _commit(run, peer, identity)
    for _ in range(3):  # asking again changes nothing
        for peer, _identity in rushers:
            assert runs.request_phase_close(peer=peer, step=0, phase="commit") is None
    assert StepRecord.objects.get(run=run, step=0).closed_phases == {}
    need = majority(N) - RUSHERS  # honest deadlines the coalition still needs
    fast = honest[:need]
    for i, (peer, identity) in enumerate(fast):
        _commit(run, peer, identity)
        closed = runs.request_phase_close(peer=peer, step=0, phase="commit")
        assert (closed is None) is (i < need - 1)
    # the bound: the phase closed at the need-th honest deadline; the slower honest members are late
    # for this phase of this step (silent once, never banned for it: silence counts consecutive steps)
    senders = {p.peer_id for p, _ in rushers + fast}
    assert set(closed.senders) == senders
    assert set(closed.late) == {p.peer_id for p, _ in honest[need:]}
