"""Aggregation rules against their definitions, robustness to outliers, and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from worker_client.btard import aggregators as agg
from worker_client.btard.aggregators import (
    AGGREGATORS,
    bulyan,
    bulyan_selection,
    centered_clip,
    centered_clip_residual,
    centered_clip_with_info,
    clip_weights,
    geometric_median,
    krum,
    krum_scores,
    make_aggregator,
    mean,
    median,
    multi_krum,
    pairwise_sq_distances,
    trimmed_mean,
)

# parameters that make every registered rule valid on n=16 inputs with up to 3 attackers
PARAMS = {
    "mean": {}, "median": {}, "trimmed_mean": {"f": 3}, "krum": {"f": 3},
    "multi_krum": {"f": 3, "m": 10}, "bulyan": {"f": 3}, "geometric_median": {},
    "centered_clip": {"tau": 1.0},
    "nnm+krum": {"f": 3}, "nnm+median": {"f": 3}, "nnm+centered_clip": {"f": 3, "tau": 1.0},
    # 16 inputs in buckets of 2 leave 8 rows, too few for Krum with f=3 (needs 9): buckets of 1 here
    "bucketing+krum": {"f": 3, "s": 1}, "bucketing+median": {"s": 2}, "bucketing+centered_clip": {"s": 2, "tau": 1.0},
}


def _honest_and_outliers(n=16, b=3, d=200, seed=0, scale=1000.0):
    gen = torch.Generator().manual_seed(seed)
    honest_center = torch.randn(d, generator=gen)
    x = honest_center + 0.1 * torch.randn(n, d, generator=gen)
    honest_mean = x[b:].mean(dim=0)
    x[:b] = -scale * honest_center  # a colluding sign-flip style attack
    return x, honest_mean


def _exact_cc(x, tau, iters, init="median"):
    """The textbook CenteredClip iteration in float64 with n x d temporaries (reference)."""
    xd = x.double()
    v = xd.quantile(0.5, dim=0) if init == "median" else xd.mean(dim=0)
    for _ in range(iters):
        dist = (xd - v).norm(dim=1)
        w = torch.where(dist > 0, torch.clamp(tau / dist, max=1.0), torch.ones_like(dist))
        v = v + ((xd - v) * w[:, None]).mean(dim=0)
    return v


def test_registry_holds_every_rule_by_name():
    assert set(AGGREGATORS) == set(PARAMS)
    assert AGGREGATORS["centered_clip"] is centered_clip


def test_mean_is_the_plain_average():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])
    assert torch.equal(mean(x), torch.tensor([3.0, 3.0]))


def test_median_takes_the_middle_value_and_averages_the_two_middle_ones_for_even_n():
    x = torch.tensor([[1.0, 9.0, -1.0], [5.0, 2.0, 0.0], [3.0, 4.0, 7.0]])
    assert torch.equal(median(x), torch.tensor([3.0, 4.0, 0.0]))
    even = torch.tensor([[1.0, 10.0], [4.0, 2.0], [2.0, 30.0], [3.0, 20.0]])
    assert torch.equal(median(even), torch.tensor([2.5, 15.0]))


def test_trimmed_mean_drops_f_values_on_each_side_per_coordinate():
    x = torch.tensor([[1.0, 100.0], [2.0, 0.0], [3.0, 3.0], [4.0, 5.0], [100.0, -50.0]])
    assert torch.allclose(trimmed_mean(x, f=1), torch.tensor([3.0, (0.0 + 3.0 + 5.0) / 3]))
    assert torch.equal(trimmed_mean(x, f=2), torch.tensor([3.0, 3.0]))
    assert torch.allclose(trimmed_mean(x, f=0), x.mean(dim=0))
    # f = b, not a fraction of n: 7 of 16 trimmed per side leave the two middle values
    y = torch.arange(16.0)[:, None]
    assert torch.equal(trimmed_mean(y, f=7), torch.tensor([7.5]))


def test_krum_picks_the_input_in_the_middle_of_the_cluster():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0],
                      [50.0, 50.0], [-40.0, 60.0]])
    # n=7, f=2 -> 3 nearest neighbours; the origin is at distance 1 from four points
    assert torch.equal(krum(x, f=2), torch.tensor([0.0, 0.0]))
    scores = krum_scores(x, f=2)
    assert scores[0] == pytest.approx(3.0)
    assert scores[1] == pytest.approx(1.0 + 2.0 + 2.0)


def test_multi_krum_averages_the_m_best_scored_inputs():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0],
                      [50.0, 50.0], [-40.0, 60.0]])
    assert torch.allclose(multi_krum(x, f=2, m=5), torch.zeros(2), atol=1e-6)
    assert torch.equal(multi_krum(x, f=2, m=1), krum(x, f=2))


def test_bulyan_on_seven_inputs_with_one_attacker_matches_the_hand_computation():
    x = torch.tensor([[1.0, 10.0], [2.0, 11.0], [3.0, 12.0], [4.0, 13.0], [5.0, 14.0],
                      [6.0, 15.0], [1000.0, -1000.0]])
    # n=7, f=1: theta = 5 inputs chosen by repeated Krum, then per coordinate the n-4f = 3 values
    # nearest the median of the selection are averaged.
    selected = bulyan_selection(x, f=1)
    assert len(selected) == 5 and 6 not in selected
    sel = x[sorted(selected)]
    med = sel.median(dim=0).values
    nearest = torch.stack([sel[:, j][(sel[:, j] - med[j]).abs().argsort()[:3]] for j in range(2)], dim=1)
    assert torch.allclose(bulyan(x, f=1), nearest.mean(dim=0))
    # by hand: rounds pick inputs 2, 3, 1, 4, 0 (ties to the lowest index), so the selection holds
    # the first five rows; their median is row 2 and the three nearest values are rows 1..3.
    assert sorted(selected) == [0, 1, 2, 3, 4]
    assert torch.equal(bulyan(x, f=1), torch.tensor([3.0, 12.0]))


def test_bulyan_averages_the_values_nearest_the_median_when_values_repeat():
    # colluders send equal vectors: the three values nearest the median 0 of the selection
    # {-1, -1, 0, 0.5, 3} are 0, 0.5 and one -1 (which one does not matter), not the window {-1, -1, 0}
    x = torch.tensor([[-1.0], [-1.0], [0.0], [0.5], [3.0], [100.0], [-100.0]])
    assert sorted(bulyan_selection(x, f=1)) == [0, 1, 2, 3, 4]
    assert bulyan(x, f=1).item() == pytest.approx(-1.0 / 6.0)


def test_bulyan_breaks_an_equal_distance_tie_towards_the_lower_value():
    # selection {-3, -1, 0, 0.5, 1}: median 0, then 0.5, then -1 and 1 tie for the third place
    x = torch.tensor([[-3.0], [-1.0], [0.0], [0.5], [1.0], [300.0], [-300.0]])
    assert sorted(bulyan_selection(x, f=1)) == [0, 1, 2, 3, 4]
    assert bulyan(x, f=1).item() == pytest.approx((0.0 + 0.5 - 1.0) / 3)


def test_nnm_replaces_every_input_by_the_mean_of_its_n_minus_f_nearest():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    # ByzFL's documented example (NNM(1))
    expected = torch.tensor([[2.5, 3.5, 4.5], [2.5, 3.5, 4.5], [5.5, 6.5, 7.5]])
    assert torch.allclose(agg.nnm(x, f=1), expected)
    assert torch.allclose(agg.nnm(x, f=0), x.mean(dim=0).expand(3, -1))


def test_bucketing_averages_shuffled_buckets_of_s_inputs():
    x = torch.arange(7.0)[:, None] * torch.tensor([[1.0, 10.0]])
    out = agg.bucketing(x, s=2, seed=3)
    assert out.shape == (4, 2)  # 3 full buckets and 1 of a single input
    assert torch.allclose(out.sum(dim=0), x.sum(dim=0) / 2 + out[-1] / 2)  # every input once
    assert torch.equal(out, agg.bucketing(x, s=2, seed=3))
    assert not torch.equal(out, agg.bucketing(x, s=2, seed=4))
    assert torch.equal(agg.bucketing(x, s=7, seed=0), x.mean(dim=0, keepdim=True))


def test_pre_aggregated_rules_run_the_pre_aggregation_then_the_rule():
    x, _ = _honest_and_outliers(n=16, b=3, d=40, seed=2)
    assert torch.equal(AGGREGATORS["nnm+krum"](x, f=3), krum(agg.nnm(x, f=3), f=3))
    assert torch.equal(AGGREGATORS["nnm+median"](x, f=3), median(agg.nnm(x, f=3)))
    assert torch.equal(AGGREGATORS["bucketing+median"](x, s=2, seed=5), median(agg.bucketing(x, s=2, seed=5)))
    assert torch.equal(make_aggregator("bucketing+centered_clip", s=2, seed=1, tau=0.5)(x),
                       centered_clip(agg.bucketing(x, s=2, seed=1), tau=0.5))
    with pytest.raises(ValueError, match="does not take"):
        make_aggregator("nnm+median", s=2)


def test_geometric_median_of_a_symmetric_configuration_is_its_centre():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    assert torch.allclose(geometric_median(x), torch.zeros(2), atol=1e-5)
    # an input sitting exactly on the answer does not divide by zero
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    assert torch.allclose(geometric_median(x, max_iters=500), torch.zeros(2), atol=1e-3)


def test_geometric_median_satisfies_the_weiszfeld_optimality_condition():
    x, _ = _honest_and_outliers(n=9, b=2, d=30)
    v = geometric_median(x, eps=1e-9, max_iters=1000).double()
    diff = x.double() - v
    unit = diff / diff.norm(dim=1, keepdim=True)
    assert unit.sum(dim=0).norm() < 1e-3  # gradient of sum of distances vanishes


@pytest.mark.parametrize("tau", [0.05, 1.0, 10.0])
@pytest.mark.parametrize("init", ["median", "mean"])
def test_centered_clip_follows_the_textbook_iteration(tau, init):
    x, _ = _honest_and_outliers(n=10, b=2, d=50, seed=3)
    res = centered_clip_with_info(x, tau=tau, eps=0, max_iters=30, init=init)
    ref = _exact_cc(x, tau, 30, init=init)
    assert res.iterations == 30
    assert (res.v.double() - ref).norm() <= 1e-5 * (1 + ref.norm())


def test_centered_clip_with_eps_zero_runs_exactly_max_iters():
    x, _ = _honest_and_outliers()
    for iters in (0, 1, 7):
        assert centered_clip_with_info(x, tau=1.0, eps=0.0, max_iters=iters).iterations == iters
    assert torch.equal(centered_clip(x, eps=0.0, max_iters=0), median(x))


def test_centered_clip_reaches_its_fixed_point_and_reports_exact_distances():
    x, _ = _honest_and_outliers(n=16, b=7, d=500, seed=1)
    tau = 1.0
    v, iterations, distances = centered_clip_with_info(x, tau=tau, eps=1e-7, max_iters=1000)
    assert iterations < 1000
    assert torch.allclose(distances, (x.double() - v.double()).norm(dim=1), rtol=1e-6)
    residual = centered_clip_residual(x, v, tau=tau)
    assert residual.norm() < 1e-5 * tau
    # the protocol's check along a random direction z: sum_k clip_k <z, x_k - v> ~ 0
    z = torch.randn(500, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    s = (x.double() - v.double()) @ z
    assert abs(float((clip_weights(distances, tau) * s).sum())) < 1e-4 * float(s.abs().max())


def test_centered_clip_weights_rescale_the_mean():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert torch.allclose(centered_clip(x, tau=1e6, init="mean", weights=[1.0, 0.0, 1.0]), torch.tensor([1.0]))
    assert torch.allclose(centered_clip(x, tau=1e6, init="mean", weights=[0.0, 0.0, 3.0]), torch.tensor([2.0]))


def test_centered_clip_with_a_huge_tau_is_the_mean():
    x, _ = _honest_and_outliers()
    assert torch.allclose(centered_clip(x, tau=1e12), x.mean(dim=0), rtol=1e-5, atol=1e-3)


def test_clip_weights_are_min_one_tau_over_d_and_one_at_zero_distance():
    w = clip_weights(torch.tensor([0.0, 0.5, 2.0, 8.0]), 2.0)
    assert torch.equal(w, torch.tensor([1.0, 1.0, 1.0, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="tau > 0"):
        clip_weights([1.0], 0.0)


def test_gram_matrix_distances_equal_a_brute_force_check():
    gen = torch.Generator().manual_seed(4)
    x = 100.0 + 0.01 * torch.randn(9, 3000, generator=gen)  # large norm, small spread: cancellation
    x[1] = x[0]
    x[5] = -1e4 * x[2]
    got = pairwise_sq_distances(x)
    xd = x.double()
    brute = torch.tensor([[float(((xd[i] - xd[j]) ** 2).sum()) for j in range(9)] for i in range(9)],
                         dtype=torch.float64)
    assert torch.allclose(got, brute, rtol=1e-4, atol=0)
    assert got[0, 1] == 0 and torch.equal(got, got.T)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_robust_rules_stay_near_the_honest_mean_and_mean_does_not(name):
    x, honest_mean = _honest_and_outliers()
    out = make_aggregator(name, **PARAMS[name])(x)
    assert out.shape == honest_mean.shape and out.dtype == torch.float32
    err = float((out - honest_mean).norm())
    honest_spread = float((x[3:] - honest_mean).norm(dim=1).mean())
    if name == "mean":
        assert err > 100 * honest_spread
    else:
        assert err < 1.5 * honest_spread, (name, err, honest_spread)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("bad, message", [
    (torch.zeros(4), "2-D"),
    (torch.zeros(16, 3, dtype=torch.int64), "floating"),
    (torch.zeros(0, 3), "n >= 1"),
])
def test_every_rule_rejects_malformed_input(name, bad, message):
    with pytest.raises(ValueError, match=message):
        AGGREGATORS[name](bad, **PARAMS[name])


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_rule_rejects_nan_and_inf(name, value):
    x, _ = _honest_and_outliers()
    x[5, 7] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        AGGREGATORS[name](x, **PARAMS[name])


def test_overflowing_but_finite_input_is_not_mistaken_for_nan():
    x = torch.full((4, 3), 3e38)
    assert torch.equal(median(x), torch.full((3,), 3e38))


@pytest.mark.parametrize("call, message", [
    (lambda x: krum(x[:8], f=3), r"krum needs n >= 2f\+3, got n=8, f=3"),
    (lambda x: multi_krum(x[:8], f=3, m=2), r"krum needs n >= 2f\+3, got n=8, f=3"),
    (lambda x: bulyan(x, f=4), r"bulyan needs n >= 4f\+3, got n=16, f=4"),
    (lambda x: multi_krum(x, f=3, m=17), r"multi_krum needs 1 <= m <= n"),
    (lambda x: trimmed_mean(x, f=8), r"trimmed_mean needs n > 2f, got n=16, f=8"),
    (lambda x: trimmed_mean(x, f=0.2), r"trimmed_mean needs an integer f >= 0"),
    (lambda x: bulyan(x[:10], f=2), r"bulyan needs n >= 4f\+3, got n=10, f=2"),
    (lambda x: agg.nnm(x, f=8), r"nnm needs n > 2f, got n=16, f=8"),
    (lambda x: agg.bucketing(x, s=0), r"bucketing needs an integer bucket size s >= 1"),
    (lambda x: AGGREGATORS["bucketing+krum"](x, f=3, s=2),
     r"bucketing\+krum \(on the 8 rows bucketing returned\): krum needs n >= 2f\+3, got n=8, f=3"),
    (lambda x: krum(x, f=-1), r"krum needs an integer f >= 0"),
    (lambda x: centered_clip(x, tau=0.0), r"tau > 0"),
    (lambda x: centered_clip(x, init="zero"), r"unknown init"),
    (lambda x: centered_clip(x, weights=[1.0] * 3), r"weights has 3 entries"),
])
def test_preconditions_raise_a_clear_error(call, message):
    x, _ = _honest_and_outliers()
    with pytest.raises(ValueError, match=message):
        call(x)


def test_make_aggregator_binds_params_and_rejects_unknown_names_and_params():
    x, _ = _honest_and_outliers()
    assert torch.equal(make_aggregator("krum", f=2)(x), krum(x, f=2))
    with pytest.raises(ValueError, match="unknown aggregator 'mode'"):
        make_aggregator("mode")
    with pytest.raises(ValueError, match="does not take"):
        make_aggregator("median", f=3)


def test_aggregators_handle_more_columns_than_one_chunk():
    gen = torch.Generator().manual_seed(2)
    d = agg._CHUNK * 2 + 123
    x = torch.randn(7, d, generator=gen)
    assert torch.allclose(median(x), x.median(dim=0).values)
    assert torch.allclose(trimmed_mean(x, f=1), x.sort(dim=0).values[1:6].mean(dim=0))
    res = centered_clip_with_info(x, tau=5.0, eps=0, max_iters=5)
    ref = _exact_cc(x, 5.0, 5)
    assert (res.v.double() - ref).norm() <= 1e-5 * ref.norm()


@pytest.mark.parametrize("n", range(1, 17))
def test_the_sorting_network_sorts_every_zero_one_input(n):
    # 0-1 principle: a comparator network that sorts all 2^n binary inputs sorts every input
    cols = torch.arange(2 ** n)
    rows = list(((cols[None, :] >> torch.arange(n)[:, None]) & 1).float())
    out = torch.stack(agg._Sorter(n, 2 ** n, torch.float32, tuple(range(n)))(rows))
    assert bool((out[1:] >= out[:-1]).all())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 15, 16, 17, 31, 70])
def test_order_statistic_rules_match_torch_sort_for_any_n(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3001, generator=gen)
    ordered = x.sort(dim=0).values
    assert torch.equal(median(x), (ordered[(n - 1) // 2] + ordered[n // 2]) / 2)
    k = int(0.2 * n)
    assert torch.allclose(trimmed_mean(x, f=k), ordered[k:n - k].mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("n, f", [(7, 1), (11, 2), (16, 3), (20, 4)])
def test_bulyan_averages_the_values_nearest_the_median_of_its_selection(n, f):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 2000, generator=gen)
    x[:f] *= 50.0
    sel = x[sorted(bulyan_selection(x, f=f))]
    med = sel.quantile(0.5, dim=0)
    idx = (sel - med).abs().topk(n - 4 * f, dim=0, largest=False).indices
    assert torch.allclose(bulyan(x, f=f), sel.gather(0, idx).mean(dim=0), atol=1e-6)


def test_centered_clip_from_a_mean_dragged_far_away_still_matches_the_textbook_iteration():
    # the mean start sits ~1e5 honest spreads away (and tau=1 walks back slowly): the iteration
    # re-centres on the way to keep its Gram distances exact
    x, _ = _honest_and_outliers(n=10, b=3, d=300, seed=5, scale=1e6)
    res = centered_clip_with_info(x, tau=1.0, eps=0, max_iters=200, init="mean")
    ref = _exact_cc(x, 1.0, 200, init="mean")
    assert res.iterations == 200
    assert (res.v.double() - ref).norm() <= 1e-4 * float((x[3:].double() - ref).norm(dim=1).mean())


def test_pairwise_distances_stay_exact_when_outliers_drag_the_mean_away():
    x, _ = _honest_and_outliers(n=12, b=4, d=1000, seed=6, scale=1e5)
    got = pairwise_sq_distances(x)
    xd = x.double()
    brute = torch.stack([((xd - xd[i]) ** 2).sum(dim=1) for i in range(12)])
    assert torch.allclose(got, brute, rtol=1e-6, atol=0)


def test_rules_run_single_threaded_and_restore_the_callers_thread_count(monkeypatch):
    seen = []
    original = agg._centered_gram
    monkeypatch.setattr(agg, "_centered_gram", lambda *a, **k: (seen.append(torch.get_num_threads()),
                                                                 original(*a, **k))[1])
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        centered_clip(torch.randn(5, 10))
        assert seen == [1] and torch.get_num_threads() == 2
        monkeypatch.setattr(agg, "AGGREGATOR_THREADS", None)
        centered_clip(torch.randn(5, 10))
        assert seen == [1, 2]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("seed", range(5))
def test_the_sampled_medoid_is_the_row_with_the_smallest_sum_of_exact_distances(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3000, generator=gen) + 5.0  # a common offset: the Gram formula is centred
    x[:4] = torch.randn(4, 3000, generator=gen) * 30  # far outliers
    x64 = x.double()
    assert agg.sample_medoid(x) == int(torch.cdist(x64, x64).sum(dim=1).argmin())
    before = x64.clone()
    agg.sample_medoid(x64)
    assert torch.equal(x64, before)  # a float64 input is not centred in place
