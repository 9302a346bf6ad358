"""The scale-following CenteredClip tau (``ProtocolParams.tau_rule = "spread"``, ``worker_client.btard.tau``):
a pure function of the part's published distances that a coalition cannot inflate, the same value for
the aggregator and every checker, and what it buys against colluders that a fixed tau does not."""

from __future__ import annotations

import math

import pytest
import torch

from tests.protocol._swarm import Swarm
from worker_client.btard import attacks
from worker_client.btard import protocol as P
from worker_client.btard.aggregators import clip_weights
from worker_client.btard.kernels import distances_to
from worker_client.btard.tau import TAU_RULES, centered_clip_part, majority_distance, part_tau

pytestmark = pytest.mark.usefixtures("one_thread")

SPREAD = P.ProtocolParams(tau_rule="spread", tau_spread=0.5)
HONEST, BYZANTINE, DIM, SIGMA = 9, 7, 2000, 0.002  # 7 of 16, honest distances about SIGMA sqrt(DIM) = 0.09
# what the coalition may raise tau_j to, over the tau of the same part with 16 honest rows
INFLATION_BOUND = 2.0


def _honest(seed: int, rows: int = HONEST) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, DIM, generator=gen) * SIGMA + 0.01


def _attacks(h: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """7 colluding rows, as rational attackers who know the honest rows would send them."""
    gen = torch.Generator().manual_seed(seed + 1000)
    mean, std = h.mean(0), h.std(0)
    u = torch.randn(DIM, generator=gen)
    u /= u.norm()
    spread = float((h - mean).norm(dim=1).median())
    out = {}
    for scale in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0, 1e4):  # one far point, every distance
        out[f"far x{scale:g}"] = (mean + scale * spread * u).repeat(BYZANTINE, 1)
    for z in (0.5, 1.0, 1.5, 3.0, 10.0):  # ALIE: mean - z std, coordinate-wise
        out[f"alie z={z:g}"] = (mean - z * std).repeat(BYZANTINE, 1)
    out["sign flip x10"] = (-10 * mean).repeat(BYZANTINE, 1)
    out["spread far apart"] = mean + 20 * spread * torch.randn(BYZANTINE, DIM, generator=gen) / math.sqrt(DIM)
    out["at the honest mean"] = mean.repeat(BYZANTINE, 1)
    out["copies of the farthest honest row"] = h[int((h - mean).norm(dim=1).argmax())].repeat(BYZANTINE, 1)
    return out


def test_the_rules_are_registered_by_name_and_params_refuse_others():
    assert set(TAU_RULES) == {"fixed", "spread"}
    with pytest.raises(ValueError, match="unknown tau rule 'median'.*fixed, spread"):
        P.ProtocolParams(tau_rule="median")
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="tau_spread"):
            P.ProtocolParams(tau_rule="spread", tau_spread=bad)
    assert part_tau(P.ProtocolParams(tau=0.3, tau_rule="fixed"), [5.0, 7.0]) == 0.3  # the distances do not matter


def test_spread_tau_lies_between_honest_distances_whatever_a_minority_posts():
    """The majority-th smallest distance is at most the largest honest one and at least the (m - b)-th
    smallest honest one, for any b < c / 2 distances the coalition controls."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        honest = (torch.rand(HONEST, generator=gen) * 2 + 0.5).tolist()
        kind = trial % 4
        if kind == 0:
            byz = [1e12] * BYZANTINE
        elif kind == 1:
            byz = [0.0] * BYZANTINE
        elif kind == 2:
            byz = (torch.rand(BYZANTINE, generator=gen) * 10).tolist()
        else:
            byz = [max(honest)] * BYZANTINE
        tau = part_tau(SPREAD, honest + byz)
        c, m = HONEST + BYZANTINE, (HONEST + BYZANTINE) // 2 + 1
        ranked = sorted(honest)
        assert SPREAD.tau_spread * ranked[m - BYZANTINE - 1] <= tau <= SPREAD.tau_spread * ranked[m - 1], (trial, c)
    assert majority_distance([]) == 0.0 and part_tau(SPREAD, [0.0, 0.0, 1.0]) == SPREAD.tau  # a majority at a_j


def test_a_coalition_cannot_raise_spread_tau_beyond_twice_its_honest_value():
    """7 of 16 colluders, every placement in :func:`_attacks` and a search over the distance of one
    far point: tau_j of the joint fixed point stays within INFLATION_BOUND x the tau of 16 honest rows."""
    for seed in range(3):
        h = _honest(seed)
        _, clean_tau = centered_clip_part(torch.cat([h, _honest(seed + 50, BYZANTINE)]), SPREAD)
        worst, worst_name = 0.0, ""
        for name, byz in _attacks(h, seed).items():
            _, tau = centered_clip_part(torch.cat([h, byz]), SPREAD)
            if tau > worst:
                worst, worst_name = tau, name
        assert worst <= INFLATION_BOUND * clean_tau, (seed, worst_name, worst / clean_tau)
        assert worst > 1.2 * clean_tau  # the bound is not vacuous: moving a_j does lengthen honest distances


def test_under_the_spread_rule_colluders_move_a_part_by_about_the_honest_spread_not_by_tau():
    """With a fixed tau far above the honest distances (tau 1 against ~0.09), 7 colluders move the part by
    about 7/9 tau; with the spread rule by about the geometric median's 1.24 honest distances."""
    h = _honest(1)
    mean = h.mean(0)
    spread = float((h - mean).norm(dim=1).median())
    fixed = P.ProtocolParams(tau=1.0, tau_rule="fixed")
    worst = {"fixed": 0.0, "spread": 0.0}
    for byz in _attacks(h, 1).values():
        x = torch.cat([h, byz])
        for label, params in (("fixed", fixed), ("spread", SPREAD)):
            res, _ = centered_clip_part(x, params)
            worst[label] = max(worst[label], float((res.v - mean).norm()))
    assert worst["spread"] <= 1.5 * spread, worst
    assert worst["fixed"] >= 0.7, worst  # ~7/9 of tau 1


@pytest.mark.parametrize("rule", ["fixed", "spread"])
def test_the_published_distances_give_back_the_tau_of_the_aggregate(rule):
    """The aggregator's tau is the rule's value for the distances it publishes, and the fixed point holds
    along a random z as the check computes it (same weights, well inside its tolerance)."""
    params = P.ProtocolParams(tau=1.0, tau_rule=rule, tau_spread=0.5)
    gen = torch.Generator().manual_seed(5)
    for seed in range(3):
        h = _honest(seed)
        for name, byz in list(_attacks(h, seed).items())[::3]:
            x = torch.cat([h, byz])
            res, tau = centered_clip_part(x, params)
            d = res.distances.to(torch.float64)
            assert part_tau(params, d.tolist()) == pytest.approx(tau, rel=1e-7), name
            z = torch.randn(DIM, generator=gen, dtype=torch.float64)
            s = (x.to(torch.float64) - res.v.to(torch.float64)) @ z
            w = clip_weights(d, part_tau(params, d.tolist()))
            tol = params.fixed_point_sigmas * (len(d) * params.cc_eps + params.fixed_point_rtol * float(
                (w * (d + float(res.v.norm()))).sum()))
            assert abs(float((w * s).sum())) <= 0.1 * tol, name


class FixedTauAggregator(attacks.Byzantine):
    """An aggregator that ignores the run's tau rule (CenteredClip with the fixed tau): every other peer's
    fixed-point check uses the rule's tau, so it is caught (``bad_aggregate``)."""

    name = "fixed_tau_aggregator"

    def hook_aggregate(self, x, s):
        if not self.active(s.ctx.step):
            return super().hook_aggregate(x, s)
        res, _ = centered_clip_part(x, P.ProtocolParams(tau=self.params.tau, tau_rule="fixed"))
        return res.v, distances_to(x, res.v).tolist()


def test_every_peer_checks_the_fixed_point_with_the_rule_s_tau(monkeypatch):
    monkeypatch.setitem(attacks.ATTACKS, FixedTauAggregator.name, FixedTauAggregator)
    params = P.ProtocolParams(tau=1.0, tau_rule="spread", tau_spread=0.5, validators=1)
    swarm = Swarm(n=5, numel=400, attack="fixed_tau_aggregator", byzantine=(1,), attack_start=1, params=params)
    attacker = swarm.ids[1]
    swarm.run(3)
    assert set(swarm.board.banned) == {attacker}
    assert swarm.board.banned[attacker].kind == "bad_aggregate"
    first = swarm.history[0]
    assert {first[p].outcome for p in swarm.honest} == {"applied"}  # before the attack: honest and passing


def test_honest_steps_apply_under_the_spread_rule_and_all_peers_agree():
    params = P.ProtocolParams(tau=1.0, tau_rule="spread", tau_spread=0.5, validators=2)
    swarm = Swarm(n=7, numel=700, params=params)
    swarm.run(4)
    assert not swarm.board.banned and not swarm.board.eliminated
    for results in swarm.history:
        assert {r.outcome for r in results.values()} == {"applied"}
        updates = [r.update for r in results.values()]
        assert all(torch.equal(u, updates[0]) for u in updates)


@pytest.mark.parametrize("attack", ["sign_flip", "alie", "absorber"])
def test_attackers_are_banned_and_no_honest_peer_under_the_spread_rule(attack):
    params = P.ProtocolParams(tau=1.0, tau_rule="spread", tau_spread=0.5, validators=2)
    swarm = Swarm(n=7, numel=700, attack=attack, byzantine=(2, 5), attack_start=1, params=params)
    swarm.run(12)
    attackers = {swarm.ids[2], swarm.ids[5]}
    assert set(swarm.board.banned) == attackers, (attack, swarm.board.banned)
