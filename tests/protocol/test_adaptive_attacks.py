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
    step = SimpleNamespace(ctx=SimpleNamespace(step=0, group=group, run="x"), bounds=[(0, d)])
    return peers, step, collusion, group


def test_the_adaptive_behaviours_are_registered_gradient_attacks():
    assert set(ADAPTIVE_ATTACKS) == {"optimal_alie", "optimal_ipm", "mimic", "free_rider_zeros", "free_rider_stale",
                                     "free_rider_copy"}
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
