"""Validators of step t and their targets (contributors of step t-1) are drawn from r_t, revealed
during step t after every aggregation result is fixed, never at the start of the step (Sec. 3.3)."""

from __future__ import annotations

from btard_wire.randomness import draw_validators
from worker_client.btard import protocol as P

from ._swarm import Swarm


def test_no_peer_knows_the_validators_when_a_step_begins():
    swarm = Swarm(n=5, params=P.ProtocolParams(validators=2))
    swarm.step()
    contexts = swarm.contexts()
    for p, ctx in contexts.items():
        actions = swarm.peers[p].begin_step(ctx)
        assert swarm.peers[p].role == "contributor"
        assert not [a for a in actions if isinstance(a, P.ComputeGradient) and a.purpose == "validate"]
        assert swarm.peers[p]._s.validators == {}


def test_a_validator_asks_for_its_recalculation_only_once_r_t_is_known():
    swarm = Swarm(n=6, params=P.ProtocolParams(validators=2))
    requested: list[tuple[str, P.ComputeGradient, bytes | None]] = []
    inner = swarm.memory.gradient_fn

    def spy(batch):
        requested.extend((peer, req, swarm.peers[peer]._s.r) for peer, req in batch)
        return inner(batch)

    swarm.memory.gradient_fn = spy
    swarm.run(4)
    validate = [(peer, req, r) for peer, req, r in requested if req.purpose == "validate"]
    assert len(validate) == 2 * 3  # m per step from step 1 on
    assert all(r is not None for _, _, r in validate)
    for peer, req, r in validate:
        step = req.step + 1
        results = swarm.history[step]
        checked = swarm.history[req.step][peer].record.contributors
        expected = draw_validators(results[peer].r, group=list(results), targets=checked, m=2)
        assert expected[peer] == req.peer  # the target drawn from that step's own r_t
        assert results[peer].role == "validator"


def test_a_recalculation_still_convicts_a_gradient_attacker_drawn_from_r_t():
    swarm = Swarm(n=5, attack="sign_flip", byzantine=(2,), attack_start=1, params=P.ProtocolParams(validators=2))
    for _ in range(12):
        swarm.step()
        if swarm.ids[2] in swarm.board.banned:
            break
    assert swarm.board.banned[swarm.ids[2]].kind == "recalc"
    assert set(swarm.board.banned) == {swarm.ids[2]}
