"""The site's r_t and validators equal the peers' when a reveal misses the site's close of ``mprng_reveal``:
the late peer is silent (not banned) and r_t combines the reveals the board held at the close
(``btard_wire.board.mprng_output`` with the closed sender set; issue 13, SR finding 14)."""

from __future__ import annotations

import pytest
from runs import services as runs
from runs.models import Peer, StepRecord

from btard_wire.control import StepReport
from tests.factories import RunFactory, make_peer
from tests.site.runs.test_validator_draw import M, _Swarm

pytestmark = pytest.mark.django_db


def test_the_sites_randomness_and_validators_equal_the_peers_when_a_reveal_missed_the_close():
    run = RunFactory(name="late-reveal", peers_per_group=5, min_peers=5, validators_per_step=M)
    made = [make_peer(run=run, seed=f"late-reveal-{i}") for i in range(5)]
    peers = {peer.peer_id: peer for peer, _ in made}
    swarm = _Swarm(run, [identity for _, identity in made])
    for step in range(2):
        record = runs.start_step_if_ready(run=run)
        slow = record.members[-1]
        if step == 1:  # the slow peer's reveal reaches the board after the group's deadline
            swarm.memory.late = lambda sender, env, slow=slow: sender == slow and env.phase == "mprng_reveal"
        results = swarm.step(step, record.members)
        assert {r.outcome for r in results.values()} == {"applied"}
        assert len({r.r for r in results.values()}) == 1
        peers_view = dict(swarm.peers[record.members[0]]._s.validators)
        for env in swarm.board.log:  # what the in-memory board stored, replayed into the site
            runs.accept_broadcast(peer=peers[env.sender], envelope=env)
        if step == 1:
            assert slow not in swarm.board.closed["mprng_reveal"]
            for pid in record.members[:3]:  # a majority of the group passed the reveal deadline
                runs.request_phase_close(peer=peers[pid], step=step, phase="mprng_reveal")
            closed = StepRecord.objects.get(pk=record.pk).closed_phases["mprng_reveal"]
            assert sorted(closed) == sorted(swarm.board.closed["mprng_reveal"])
        assert runs.board_randomness(run=run, step=step) == results[record.members[0]].r
        assert runs.step_validators(run=run, step=step) == peers_view
        for pid in record.members:
            missing = list(results[pid].silent) if step == 1 else []
            runs.record_step_report(peer=peers[pid], report=StepReport(step=step, outcome="applied", loss=1.0,
                                                                       samples=32, missing=missing))
        runs.close_step(run=run)
    assert step == 1 and results[record.members[0]].silent == [slow]
    late = Peer.objects.get(run=run, peer_id=slow)
    assert late.role != "banned" and late.silent_steps == 1
    assert len(peers_view) == M
