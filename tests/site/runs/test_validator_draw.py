"""One validator rule everywhere: the site (real services on the database), the simulator's in-memory
swarm and the fake site of the worker tests give the identical assignment for the same board."""

from __future__ import annotations

import asyncio
import random

import pytest
from runs import services as runs
from runs.models import StepRecord

from btard_wire.control import Broadcast, StepReport
from btard_wire.randomness import (
    draw_probation_panels,
    genesis_randomness,
    group_order,
    skipped_randomness,
)
from tests.factories import RunFactory, make_peer
from tests.protocol._swarm import synthetic_gradient
from tests.worker.fakesite import FakeSite
from worker_client.btard import protocol as P
from worker_client.transports.memory import BulletinBoard, MemorySwarm

pytestmark = pytest.mark.django_db

NUMEL = 40
M = 2


class _Swarm:
    """The site's members as in-memory BTARD peers, in the networked worker's mode (board echo,
    board-closed phases), signing envelopes for the site's run."""

    def __init__(self, run, identities):
        self.run_key = str(run.id)
        self.identities = sorted(identities, key=lambda i: i.peer_id)
        self.ids = [i.peer_id for i in self.identities]
        self.keys = {i.peer_id: i.public_key_b64 for i in self.identities}
        params = P.ProtocolParams(tau=1.0, validators=M, board_echo=True)
        rng = random.Random(7)
        entropy = lambda k: rng.getrandbits(8 * k).to_bytes(k, "little")
        self.peers = {i.peer_id: P.BtardPeer(i, params, entropy=entropy) for i in self.identities}
        self.board = BulletinBoard(run=self.run_key, public_keys=self.keys, members=self.ids, keep_log=True)
        self.memory = MemorySwarm(self.peers, self.board, self._gradients, site_closes=True)
        self.r = genesis_randomness(self.run_key, 0)
        self.records = {p: None for p in self.ids}
        self.version = 0

    @staticmethod
    def _gradients(requests):
        return [synthetic_gradient(req.model_ref, req.seed, NUMEL) for _, req in requests]

    def step(self, step: int, group: list[str]) -> dict[str, P.StepResult]:
        self.board.log.clear()
        contexts = {p: P.StepContext(run=self.run_key, step=step, group=group, public_keys=self.keys, r_prev=self.r,
                                     numel=NUMEL, model_ref=self.version, prev=self.records[p]) for p in group}
        results = self.memory.run_step(contexts)
        for p, r in results.items():
            self.records[p] = r.record
        self.r = results[group[0]].r
        self.version += results[group[0]].outcome == "applied"
        return results


def test_the_site_the_memory_board_and_the_fake_site_draw_the_same_validators_as_the_peers():
    run = RunFactory(name="draw", peers_per_group=5, min_peers=5, validators_per_step=M)
    made = [make_peer(run=run, seed=f"draw-{i}") for i in range(5)]
    peers = {peer.peer_id: peer for peer, _ in made}
    swarm = _Swarm(run, [identity for _, identity in made])
    candidate, _ = make_peer(run=run, seed="draw-candidate", role="candidate", probation_required=99)
    fake = FakeSite(group_size=5, validators=M)
    fake.run = fake.run.model_copy(update={"id": run.id})
    seen = []

    def r_prev_of(step: int) -> bytes:
        return swarm.r if step else skipped_randomness(genesis_randomness(str(run.id), run.seed), str(run.id), 0)

    for step in range(5):
        record = runs.start_step_if_ready(run=run)
        assert record is not None and sorted(record.members) == swarm.ids
        # the group order every peer uses: shuffled with the previous step's r (the public chain at step 0)
        assert record.members == group_order(r_prev_of(step), swarm.ids)
        assert record.validators == {}  # nobody can know them when the group forms
        # the candidate's probation panel: drawn from the previous step's r, which the peers hold
        (check,) = record.candidates
        assert check["peer_id"] == candidate.peer_id
        r_prev = r_prev_of(step)
        panel = draw_probation_panels(r_prev, members=record.members, candidates=[candidate.peer_id])
        assert check["validators"] == panel[candidate.peer_id] and len(set(check["validators"])) == 2
        assert check["validator"] == check["validators"][0]
        assert check["public_chain"] is (step == 0)  # step 0 draws from the public chain
        results = swarm.step(step, record.members)
        assert {r.outcome for r in results.values()} == {"applied"}
        drawn = {p: dict(peer._s.validators) for p, peer in swarm.peers.items()}
        peers_view = drawn[swarm.ids[0]]
        assert all(v == peers_view for v in drawn.values())  # every peer drew the same
        roles = {p for p, r in results.items() if r.role == "validator"}
        assert roles == set(peers_view)
        fake.groups[step] = list(record.members)
        for env in swarm.board.log:  # the board's envelopes, replayed into the site and the fake site
            runs.accept_broadcast(peer=peers[env.sender], envelope=env)
            asyncio.run(fake._on_message(env.sender, Broadcast(envelope=env)))

        assert runs.step_validators(run=run, step=step) == peers_view
        assert swarm.board.validators(M) == peers_view
        assert fake.validators_for(step) == peers_view
        for pid in record.members:
            runs.record_step_report(peer=peers[pid], report=StepReport(step=step, outcome="applied", loss=1.0,
                                                                       samples=32))
        closed = runs.close_step(run=run)
        assert StepRecord.objects.get(pk=closed.pk).validators == peers_view  # kept for the history
        seen.append(peers_view)
    assert seen[0] == {}  # step 0 has nothing to validate
    assert all(len(v) == M for v in seen[1:])
    assert len({tuple(sorted(v.items())) for v in seen[1:]}) > 1  # it changes from step to step


@pytest.mark.parametrize("earlier_runs", [0, 1, 2, 3])  # other run ids, other draws
def test_after_a_recalculation_ban_the_site_draws_the_doubled_validators_the_peers_draw(earlier_runs):
    """ProtocolParams.alarm_factor: the step after one with a ban for a wrong recomputation draws twice the
    validators; the site counts the step's verdict majority from its own bans and gets the peers' draw."""
    from moderation.models import Ban
    from runs.services.errors import Rejected

    from worker_client.btard.attacks import Collusion
    from worker_client.btard.attacks import make_peer as make_behaviour

    for i in range(earlier_runs):
        RunFactory(name=f"before-{i}")
    run = RunFactory(name="alarm", peers_per_group=7, min_peers=4, validators_per_step=M)
    made = [make_peer(run=run, seed=f"alarm-{i}") for i in range(7)]
    peers = {peer.peer_id: peer for peer, _ in made}
    swarm = _Swarm(run, [identity for _, identity in made])
    attacker = swarm.ids[3]
    identity = next(i for i in swarm.identities if i.peer_id == attacker)
    swarm.peers[attacker] = make_behaviour("sign_flip", identity, swarm.peers[attacker].params,
                                           collusion=Collusion(members={attacker}, seed=0), attack_start=1)
    swarm.memory.peers[attacker] = swarm.peers[attacker]
    counts = []
    for step in range(40):  # until the step after the ban (the draws depend on the run's id: any number of steps)
        if any(after for after, _ in counts):
            break
        record = runs.start_step_if_ready(run=run)
        assert record is not None
        results = swarm.step(step, record.members)
        for env in swarm.board.log:  # verdicts judged as the site judges them: a majority bans
            try:
                runs.post_broadcast(peer=peers[env.sender], envelope=env)
            except Rejected as exc:  # the attacker's broadcasts after the site banned it, refused as live
                if not (env.sender == attacker and exc.code == "banned"):
                    raise
        honest = [p for p in record.members if p != attacker]
        drawn = {p: dict(swarm.peers[p]._s.validators) for p in honest}
        peers_view = drawn[honest[0]]
        assert all(v == peers_view for v in drawn.values())
        assert runs.step_validators(run=run, step=step) == peers_view
        after_ban = Ban.objects.filter(run=run, step=step - 1, evidence_kind="recalc").exists()
        if step:
            counts.append((after_ban, len(peers_view)))
        for pid in honest:
            runs.record_step_report(peer=peers[pid], report=StepReport(step=step, outcome=results[pid].outcome,
                                                                       loss=1.0, samples=32))
        if attacker in record.members and not Ban.objects.filter(run=run, peer_id=attacker).exists():
            runs.record_step_report(peer=peers[attacker], report=StepReport(step=step, outcome="applied", loss=1.0,
                                                                            samples=32))
        assert runs.close_step(run=run, force=True) is not None
        last = step
    assert Ban.objects.filter(run=run, peer_id=attacker, evidence_kind="recalc").exists()
    assert set(Ban.objects.filter(run=run).values_list("peer_id", flat=True)) == {attacker}
    assert (True, 2 * M) in counts  # the step after the ban drew twice the validators, on the site as well
    assert all(n == (2 * M if after else M) for after, n in counts)
    # a factor the workers refuse (ProtocolParams) leaves the site's record empty instead of failing the close
    assert runs.step_validators(run=run, step=last)
    run.extra = {**(run.extra or {}), "alarm_factor": "often"}
    run.save(update_fields=["extra"])
    assert runs.step_validators(run=run, step=last) == {}
