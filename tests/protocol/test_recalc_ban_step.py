"""A ban from the validation of step t-1 (recalculation) does not drop step t (docs/protocol.md step 10).

The recalculation judges a gradient of the previous step; step t's own aggregation passed every check of
its own, so it is applied and whoever the verdict finds guilty (the target, or a false accuser) leaves.
A fault in step t's own messages still drops it (tests/protocol/test_protocol_attacks.py)."""

from __future__ import annotations

import torch

from btard_wire import payloads as M
from worker_client.btard import protocol as P
from worker_client.btard.attacks import FalseAccuse

from ._swarm import Swarm


def _step_until_banned(swarm: Swarm, peer: str, steps: int) -> dict[str, P.StepResult]:
    for _ in range(steps):
        results = swarm.step()
        if peer in swarm.board.banned:
            return results
    raise AssertionError(f"{peer[:8]} was not banned in {steps} steps")


def _same_update(results: dict[str, P.StepResult], peers: list[str]) -> bool:
    first = results[peers[0]].update
    return all(results[p].update is not None and torch.equal(results[p].update, first) for p in peers)


def test_the_step_in_which_a_recalculation_bans_a_gradient_attacker_is_applied_by_every_honest_peer():
    swarm = Swarm(n=5, attack="sign_flip", byzantine=(2,), attack_start=1, params=P.ProtocolParams(validators=2))
    attacker = swarm.ids[2]
    applied_before = swarm.version
    results = _step_until_banned(swarm, attacker, 12)
    assert swarm.board.banned[attacker].kind == "recalc"
    assert set(swarm.board.banned) == {attacker}
    honest = swarm.honest
    assert {results[p].outcome for p in honest} == {"applied"}
    assert _same_update(results, honest)
    assert all(attacker in [b.peer for b in results[p].bans] for p in honest)
    assert swarm.version > applied_before
    # the next step runs without the banned peer, and is applied too
    after = swarm.step()
    assert attacker not in after
    assert {r.outcome for r in after.values()} == {"applied"}


def test_seven_of_sixteen_gradient_attackers_cost_no_step_when_recalculation_bans_them():
    swarm = Swarm(n=16, attack="sign_flip", byzantine=tuple(range(0, 14, 2)), attack_start=1, numel=64,
                  params=P.ProtocolParams(validators=4))
    for _ in range(30):
        swarm.step()
        if swarm.byzantine <= set(swarm.board.banned):
            break
    assert set(swarm.board.banned) == swarm.byzantine
    assert {b.kind for b in swarm.board.banned.values()} == {"recalc"}
    outcomes = [results[p].outcome for results in swarm.history for p in results if p not in swarm.byzantine]
    assert set(outcomes) == {"applied"}


class _FalseRecalc(FalseAccuse):
    """A Byzantine validator that claims its honest target failed the recalculation of step t-1."""

    def hook_extra_accusations(self, s):
        target = s.validators.get(self.peer_id) if s.validators else None
        prev = s.ctx.prev
        if not self.active(s.ctx.step) or target is None or prev is None or target in self.collusion.members:
            return []
        return [M.AccusePayload(accused=target, kind=M.FaultKind.recalc, target_step=prev.step,
                                reason="fabricated: recalculation failed")]


def test_a_false_recalculation_accusation_bans_the_accuser_and_the_step_is_applied():
    swarm = Swarm(n=5, attack="false_accuse", byzantine=(0,), attack_start=1, params=P.ProtocolParams(validators=4))
    liar = swarm.ids[0]
    swarm.peers[liar].__class__ = _FalseRecalc
    results = _step_until_banned(swarm, liar, 12)
    ban = swarm.board.banned[liar]
    assert ban.kind == "false_accusation" and ban.accuser == liar
    assert set(swarm.board.banned) == {liar}
    honest = swarm.honest
    assert {results[p].outcome for p in honest} == {"applied"}
    assert _same_update(results, honest)


def test_a_false_accusation_about_the_step_s_own_messages_still_drops_it():
    swarm = Swarm(n=5, attack="false_accuse", byzantine=(0,), attack_start=0)
    results = swarm.step()
    assert swarm.board.banned[swarm.ids[0]].kind == "false_accusation"
    assert {results[p].outcome for p in swarm.honest} == {"dropped"}
