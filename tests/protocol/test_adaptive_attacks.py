"""Adaptive attacks: the scale search, what each behaviour sends, and BTARD banning them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from btard_wire.envelope import Identity
from worker_client.btard.adaptive_attacks import ADAPTIVE_ATTACKS, search_scale
from worker_client.btard.aggregators import median
from worker_client.btard.attacks import ALIE, ATTACKS, Collusion, make_peer
from worker_client.sim import run_simulation


def _colluders(name, *, n=10, b=3, d=8, seed=0, aggregate=None, **params):
    gen = torch.Generator().manual_seed(seed)
    ids = [Identity.from_seed(f"adaptive:{i}".encode()) for i in range(n)]
    group = [i.peer_id for i in ids]
    collusion = Collusion(members=set(group[:b]), seed=0)
    collusion.step = 0
    honest = {p: torch.randn(d, generator=gen) + 1.0 for p in group}
    collusion.honest = honest
    if aggregate is not None:
        collusion.aggregate = aggregate
    peers = [make_peer(name, ident, collusion=collusion, **params) for ident in ids[:b]]
    step = SimpleNamespace(ctx=SimpleNamespace(step=0, group=group, run="x", prev=None), bounds=[(0, d)])
    return peers, step, collusion, group


def test_the_adaptive_behaviours_are_registered_gradient_attacks():
    assert set(ADAPTIVE_ATTACKS) == {"optimal_alie", "optimal_ipm", "mimic", "free_rider_zeros", "free_rider_stale",
                                     "free_rider_copy", "ride_recalc", "tolerance_ride", "rop", "timed_lowest_chance"}
    assert all(ATTACKS[name].kind == "gradient" for name in ADAPTIVE_ATTACKS)


def test_the_scale_search_climbs_to_the_peak_of_a_single_peaked_damage():
    calls = []

    def damage(x):
        calls.append(x)
        return -(x - 5.3) ** 2

    assert search_scale(damage, evals=24) == pytest.approx(5.3, abs=0.6)
    assert len(calls) == 24
    assert search_scale(lambda x: -abs(x + 2.0), evals=24, candidates=(-1.5,)) == pytest.approx(-2.0, abs=0.6)


@pytest.mark.parametrize("name, published", [("optimal_alie", "alie"), ("optimal_ipm", "ipm")])
def test_an_optimal_attack_hurts_the_rule_in_use_at_least_as_much_as_the_published_one(name, published):
    peers, step, collusion, group = _colluders(name, aggregate=median)
    sent = [p.hook_corrupt_gradient(torch.zeros(8), step) for p in peers]
    assert all(torch.equal(v, sent[0]) for v in sent)  # one search per step, every colluder sends it
    fixed, _, _, _ = _colluders(published, aggregate=median)
    fixed_v = fixed[0].hook_corrupt_gradient(torch.zeros(8), step)
    honest = torch.stack([collusion.honest[p] for p in group[3:]])

    def damage(v):
        return float((median(torch.cat([honest, v.expand(3, -1)])) - honest.mean(dim=0)).norm())

    assert damage(sent[0]) >= damage(fixed_v) - 1e-6
    assert damage(sent[0]) > 0


def test_optimal_alie_without_a_driver_rule_targets_btards_centered_clip():
    peers, step, _, _ = _colluders("optimal_alie")
    v = peers[0].hook_corrupt_gradient(torch.zeros(8), step)
    assert torch.isfinite(v).all() and peers[0].last_scale != 0.0
    assert ALIE.default_z(10, 3) > 0


def test_mimic_and_free_riders_send_what_they_claim():
    peers, step, collusion, group = _colluders("mimic", victim=1)
    honest = sorted(p for p in group if p not in collusion.members)
    assert torch.equal(peers[0].hook_corrupt_gradient(torch.zeros(8), step), collusion.honest[honest[1]])
    peers, step, collusion, group = _colluders("free_rider_zeros")
    assert torch.equal(peers[0].hook_corrupt_gradient(torch.ones(8), step), torch.zeros(8))
    peers, step, collusion, group = _colluders("free_rider_copy")
    assert torch.equal(peers[0].hook_corrupt_gradient(torch.ones(8), step), collusion.honest[group[3]])
    peers, step, _, _ = _colluders("free_rider_stale", delay=2)
    stale = peers[0]
    sent = []
    for t in range(4):
        step.ctx.step = t
        sent.append(stale.hook_corrupt_gradient(torch.full((8,), float(t)), step))
    assert [float(v[0]) for v in sent] == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("attack", ["optimal_alie", "mimic", "free_rider_zeros"])
def test_btard_bans_adaptive_attackers_and_no_honest_peer(attack):
    out = run_simulation(task="digits-mlp", peers=8, byzantine=3, attack=attack, aggregator="btard", steps=12,
                         attack_start=2, seed=0, eval_every=0, tau=0.1)
    assert out["honest_banned"] == 0 and out["byzantine_banned"] == 3


def test_an_optimal_attack_against_the_mean_stays_finite():
    from worker_client.btard.aggregators import mean

    peers, step, _, _ = _colluders("optimal_alie", aggregate=mean, evals=60)
    v = peers[0].hook_corrupt_gradient(torch.zeros(8), step)
    assert torch.isfinite(v).all() and float(v.abs().max()) > 100  # the mean has no bound: it goes far


# --- tolerance riding, relocated orthogonal perturbation, timed attackers ---------------------------
def _riding_swarm(attack, **params):
    from tests.protocol._swarm import Swarm
    from worker_client.btard import protocol as P

    return Swarm(n=8, attack=attack, byzantine=(0, 1, 2), numel=4000,
                 params=P.ProtocolParams(tau=1.0, validators=3), **params)


def test_tolerance_riding_stays_under_every_check_every_step():
    swarm = _riding_swarm("tolerance_ride")
    swarm.run(10)
    assert not swarm.board.banned and not swarm.board.eliminated
    assert all(r.outcome == "applied" for h in swarm.history for r in h.values())
    for p in swarm.byzantine:  # it aggregated its part every step and moved it
        shifts = swarm.peers[p].shifts
        assert len(shifts) == 10 and all(0 < x < 1e-3 for _, x in shifts)


@pytest.mark.parametrize("attack, sigmas, kinds", [("tolerance_ride", 0.2, {"bad_aggregate", "recalc"}),
                                                   ("ride_recalc", 0.1, {"recalc"})])
def test_riding_past_the_tolerances_is_caught(attack, sigmas, kinds):
    swarm = _riding_swarm(attack, sigmas=sigmas)
    swarm.run(10)
    assert set(swarm.board.banned) == swarm.byzantine
    assert {b.kind for b in swarm.board.banned.values()} <= kinds


def test_the_ride_bias_is_the_same_direction_every_step_at_a_fixed_fraction_of_the_tolerance():
    peers, step, collusion, group = _colluders("ride_recalc", d=64)
    step.bounds = [(0, 32), (32, 64)]
    sent = []
    for t in range(2):
        step.ctx.step = t
        g = collusion.honest[group[0]]
        sent.append(peers[0].hook_corrupt_gradient(g.clone(), step) - g)
    rtol = peers[0].params.recalc_rtol / peers[0].sigmas
    for a, b in step.bounds:
        d0, d1 = sent[0][a:b].double(), sent[1][a:b].double()
        assert float(torch.nn.functional.cosine_similarity(d0, d1, dim=0)) > 0.999
        assert float(d0.norm()) > 0.5 * rtol * float(collusion.honest[group[0]][a:b].norm())
        assert float(d0.norm()) < 3 * rtol * (float(collusion.honest[group[0]][a:b].norm()) + 4.0)


def test_rop_sits_on_the_previous_aggregate_perturbed_orthogonally_to_it():
    from worker_client.btard.aggregators import mean

    peers, step, collusion, group = _colluders("rop", d=16, aggregate=mean)
    step.bounds = [(0, 8), (8, 16)]
    honest0 = torch.stack([collusion.honest[p] for p in group[3:]])
    v0 = peers[0].hook_corrupt_gradient(torch.zeros(16), step)
    assert all(torch.equal(p.hook_corrupt_gradient(torch.zeros(16), step), v0) for p in peers)
    # step 1: the previous aggregate is the rule applied to what was sent, and the attack is centred on it
    agg0 = mean(torch.cat([honest0, v0.expand(3, -1)])).double()
    gen = torch.Generator().manual_seed(5)
    collusion.honest = {p: torch.randn(16, generator=gen) + 1.0 for p in group}
    step.ctx.step = 1
    v1 = peers[0].hook_corrupt_gradient(torch.zeros(16), step).double()
    honest1 = torch.stack([collusion.honest[p] for p in group[3:]])
    mean1 = honest1.mean(dim=0).double()
    ref = 0.9 * agg0 + 0.1 * mean1
    z = ALIE.default_z(10, 3)
    for a, b in step.bounds:
        off = v1[a:b] - agg0[a:b]
        assert abs(float(off @ ref[a:b])) < 1e-4 * float(off.norm()) * float(ref[a:b].norm())
        assert float(off.norm()) == pytest.approx(z * float(honest1.std(dim=0)[a:b].norm()), rel=1e-4)


def test_a_timed_attacker_strikes_while_its_chance_is_lowest_and_stops_when_it_rises():
    peers, step, _, group = _colluders("timed_lowest_chance", n=10, b=3)
    timed = peers[0]
    g = torch.zeros(8)
    assert not torch.equal(timed.hook_corrupt_gradient(g, step), g)  # full group: the lowest chance
    step.ctx.step = 1
    step.ctx.group = [p for p in group if p != group[1]]  # an accomplice banned: fewer targets, fewer allies
    assert torch.equal(timed.hook_corrupt_gradient(g, step), g)
    (_, low, struck0), (_, high, struck1) = timed.chances
    assert struck0 and not struck1 and high > low > 0


def test_a_timed_attacker_holds_back_while_a_recalculation_ban_doubles_the_validators():
    peers, step, _, _ = _colluders("timed_lowest_chance", n=10, b=3)
    timed = peers[0]
    assert timed.params.alarm_factor == 2  # the protocol's default
    g = torch.zeros(8)
    assert not torch.equal(timed.hook_corrupt_gradient(g, step), g)  # no ban before: base m, strike
    step.ctx.step = 1
    step.ctx.prev = SimpleNamespace(step=0, recalc_ban=True)  # step 0 banned by recalculation: 2m drawn now
    assert torch.equal(timed.hook_corrupt_gradient(g, step), g)
    step.ctx.step = 2
    step.ctx.prev = SimpleNamespace(step=1, recalc_ban=False)  # back to m: its lowest chance again
    assert not torch.equal(timed.hook_corrupt_gradient(g, step), g)
    (_, low, struck0), (_, alarm, struck1), (_, again, struck2) = timed.chances
    assert struck0 and not struck1 and struck2
    assert again == low and alarm > 1.5 * low  # about twice the chance of being checked


@pytest.mark.parametrize("attack", ["rop", "timed_lowest_chance"])
def test_btard_bans_time_coupled_and_timed_attackers_that_strike_and_no_honest_peer(attack):
    out = run_simulation(task="digits-mlp", peers=8, byzantine=3, attack=attack, aggregator="btard", steps=12,
                         attack_start=2, seed=0, eval_every=0, tau=0.1)
    assert out["honest_banned"] == 0
    if attack == "rop":
        assert out["byzantine_banned"] == 3
    else:  # it strikes until the first ban raises its chance; banned ones struck
        assert 1 <= out["byzantine_banned"] <= 3
