"""Every baseline rule and every shared attack against an independent implementation.

The references below are plain numpy, written from the papers' definitions and sharing no code with
``worker_client.btard.aggregators`` or ``.attacks``. The inputs are built to repeat values the way
colluders do: every attacker row is the same vector, and half of the coordinates are rounded so that
order statistics tie. Values pinned from ByzFL's documentation examples (EPFL's reference library,
https://byzfl.epfl.ch, version 0.0.11) close the file; when the ``byzfl`` package is importable
(``pip install --no-deps byzfl``: its aggregators and attacks need only numpy, scipy and torch), the
last test also compares against it directly.
"""

from __future__ import annotations

import importlib.util
import itertools
import statistics
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worker_client.btard.aggregators import AGGREGATORS, bucketing
from worker_client.btard.attacks import Collusion, make_peer

CASES = 150  # random inputs per rule (each with repeated rows and tied coordinates)


# --------------------------------------------------------------------------------------------------
# references from the definitions


def ref_mean(x):
    return x.mean(axis=0)


def ref_median(x):
    return np.median(x, axis=0)  # the average of the two middle values for even n


def ref_trimmed_mean(x, f):
    """Yin et al. (2018): per coordinate, drop the f largest and the f smallest values."""
    n = x.shape[0]
    return np.sort(x, axis=0)[f:n - f].mean(axis=0)


def _sq_dist(x):
    return np.array([[float(((a - b) ** 2).sum()) for b in x] for a in x])


def ref_krum_scores(x, f, k=None):
    """Blanchard et al. (2017): the sum of squared distances to the n - f - 2 nearest others."""
    n = x.shape[0]
    k = n - f - 2 if k is None else k
    d = _sq_dist(x)
    return np.array([sorted(d[i, j] for j in range(n) if j != i)[:k] for i in range(n)]).sum(axis=1)


def ref_krum_candidates(x, f):
    """Every input with the smallest score: Krum may return any of them."""
    s = ref_krum_scores(x, f)
    best = s.min()
    return [x[i] for i in range(len(x)) if s[i] <= best + 1e-9 * (1 + abs(best))]


def ref_multi_krum(x, f, m):
    s = ref_krum_scores(x, f)
    return x[np.argsort(s, kind="stable")[:m]].mean(axis=0)


def ref_bulyan(x, f):
    """El Mhamdi et al. (2018): theta = n - 2f inputs chosen one by one by Krum on those left; then per
    coordinate the beta = n - 4f chosen values nearest their median (equal distances: lower value)."""
    n = x.shape[0]
    remaining, chosen = list(range(n)), []
    while len(chosen) < n - 2 * f:
        r = len(remaining)
        k = min(max(1, r - f - 2), r - 1)
        sub = x[remaining]
        scores = ref_krum_scores(sub, f, k=k) if r > 1 else np.zeros(1)
        winner = remaining[int(np.argmin(scores))]
        chosen.append(winner)
        remaining.remove(winner)
    sel = x[chosen]
    beta = n - 4 * f
    out = []
    for column in sel.T:
        med = float(np.median(column))
        nearest = sorted(column.tolist(), key=lambda v: (abs(v - med), v))[:beta]
        out.append(sum(nearest) / beta)
    return np.array(out)


def ref_geometric_median(x, iters=3000):
    """Weiszfeld in float64 to convergence, from the mean (the point minimising sum ||x_k - v||)."""
    v = x.mean(axis=0)
    for _ in range(iters):
        d = np.maximum(np.linalg.norm(x - v, axis=1), 1e-12)
        v = (x / d[:, None]).sum(axis=0) / (1 / d).sum()
    return v


def ref_centered_clip(x, tau, iters=3000):
    """Karimireddy et al. (2021): v <- v + mean_k (x_k - v) min(1, tau / ||x_k - v||), from the median."""
    v = np.median(x, axis=0)
    for _ in range(iters):
        diff = x - v
        norm = np.linalg.norm(diff, axis=1)
        w = np.where(norm > 0, np.minimum(1.0, tau / np.maximum(norm, 1e-300)), 1.0)
        v = v + (diff * w[:, None]).mean(axis=0)
    return v


def ref_nnm(x, f):
    """Allouah et al. (2023): every input replaced by the mean of its n - f nearest (itself included)."""
    n = x.shape[0]
    d = _sq_dist(x)
    return np.array([x[sorted(range(n), key=lambda j: (d[i, j], j))[:n - f]].mean(axis=0) for i in range(n)])


def ref_bucketing(x, s, perm):
    """Karimireddy, He and Jaggi (2022): the means of consecutive buckets of s shuffled inputs."""
    xs = x[perm]
    return np.array([xs[i:i + s].mean(axis=0) for i in range(0, len(xs), s)])


# --------------------------------------------------------------------------------------------------
# inputs with repeated values


def _inputs(rng, n, b, d=6):
    """n rows: n - b honest draws, then b identical attacker rows. Coordinates 0..d/2-1 are rounded to
    one decimal (ties in every order statistic); the rest stay continuous, so that distinct rows are
    at distinct distances and Krum's choice is defined."""
    honest = rng.normal(size=(n - b, d))
    honest[:, : d // 2] = np.round(honest[:, : d // 2], 1)
    if b:
        attacker = np.round(rng.normal(scale=rng.choice([0.5, 3.0, 30.0]), size=d), 1)
        if rng.random() < 0.5:  # or an attacker that copies an honest value in some coordinates
            attacker[: d // 2] = honest[0, : d // 2]
        x = np.vstack([honest, np.repeat(attacker[None], b, axis=0)])
    else:
        x = honest
    return x[rng.permutation(n)].astype(np.float32).astype(np.float64)


def _run(name, x, **params):
    return AGGREGATORS[name](torch.tensor(x, dtype=torch.float32), **params).double().numpy()


SHAPES = [(7, 1), (9, 1), (11, 2), (12, 2), (16, 3), (16, 7), (15, 3), (10, 0)]


def _cases(seed, need):
    rng = np.random.default_rng(seed)
    for _ in range(CASES):
        n, b = SHAPES[rng.integers(len(SHAPES))]
        if need(n, b):
            yield _inputs(rng, n, b), b


# --------------------------------------------------------------------------------------------------
# the rules


def test_mean_median_and_trimmed_mean_match_the_definitions_with_ties():
    for x, b in _cases(1, lambda n, b: n > 2 * b):
        np.testing.assert_allclose(_run("mean", x), ref_mean(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_run("median", x), ref_median(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_run("trimmed_mean", x, f=b), ref_trimmed_mean(x, b), rtol=1e-6, atol=1e-6)


def test_krum_returns_one_of_the_best_scored_inputs_and_multi_krum_their_mean():
    for x, b in _cases(2, lambda n, b: n >= 2 * b + 3):
        got = _run("krum", x, f=b)
        assert any(np.allclose(got, c, atol=1e-6) for c in ref_krum_candidates(x, b))
        m = x.shape[0] - b
        np.testing.assert_allclose(_run("multi_krum", x, f=b, m=m), ref_multi_krum(x, b, m), rtol=1e-5, atol=1e-5)


def test_bulyan_matches_the_definition_when_attackers_repeat_one_vector():
    checked = 0
    for x, b in _cases(3, lambda n, b: n >= 4 * b + 3):
        np.testing.assert_allclose(_run("bulyan", x, f=b), ref_bulyan(x, b), rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 30


def test_bulyan_on_the_issues_minimal_case():
    x = np.array([[-1.0], [-1.0], [0.0], [0.5], [3.0], [100.0], [-100.0]])
    assert ref_bulyan(x, 1)[0] == pytest.approx(-1 / 6)
    assert _run("bulyan", x, f=1)[0] == pytest.approx(-1 / 6)


def test_geometric_median_and_centered_clip_reach_the_reference_fixed_points():
    for x, _ in itertools.islice(_cases(4, lambda n, b: True), 40):
        spread = float(np.linalg.norm(x - x.mean(axis=0), axis=1).max())
        gm = AGGREGATORS["geometric_median"](torch.tensor(x, dtype=torch.float32), eps=1e-8, max_iters=5000)
        np.testing.assert_allclose(gm.double().numpy(), ref_geometric_median(x), atol=2e-3 * spread)
        for tau in (0.3, 3.0):
            cc = _run("centered_clip", x, tau=tau, eps=1e-9, max_iters=5000)
            np.testing.assert_allclose(cc, ref_centered_clip(x, tau), atol=1e-3 * max(spread, tau))


def test_pre_aggregation_matches_the_definitions():
    for x, b in _cases(5, lambda n, b: n > 2 * b):
        np.testing.assert_allclose(AGGREGATORS["nnm+median"](torch.tensor(x, dtype=torch.float32), f=b)
                                   .double().numpy(), ref_median(ref_nnm(x, b)), rtol=1e-5, atol=1e-5)
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(11)).numpy()
        got = bucketing(torch.tensor(x, dtype=torch.float32), s=2, seed=11).double().numpy()
        np.testing.assert_allclose(got, ref_bucketing(x, 2, perm), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_run("bucketing+median", x, s=2, seed=11), ref_median(ref_bucketing(x, 2, perm)),
                                   rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# the shared attacks


def _attackers(name, n, b, honest, **params):
    """b colluding peers of behaviour ``name`` in a group of n, knowing the honest rows."""
    from btard_wire.envelope import Identity

    ids = [Identity.from_seed(f"crosscheck:{i}".encode()) for i in range(n)]
    group = [i.peer_id for i in ids]
    collusion = Collusion(members=set(group[:b]), seed=0)
    collusion.step = 0
    collusion.honest = {p: torch.tensor(g, dtype=torch.float32) for p, g in zip(group[b:], honest)}
    peers = [make_peer(name, ident, collusion=collusion, **params) for ident in ids[:b]]
    step = SimpleNamespace(ctx=SimpleNamespace(step=0, group=group, run="x"), bounds=[(0, honest.shape[1])])
    return peers, step


def _z(n, b):
    """ALIE's z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - b (Baruch et al., 2019), via scipy when
    it is installed (an implementation of Phi^-1 independent of the attack's)."""
    q = (n - (n // 2 + 1 - b)) / n
    try:
        from scipy.special import ndtri
    except ImportError:  # pragma: no cover
        return statistics.NormalDist().inv_cdf(q)
    return float(ndtri(q))


def test_alie_ipm_and_sign_flip_match_their_definitions_with_repeated_honest_values():
    rng = np.random.default_rng(6)
    for _ in range(CASES):
        n, b = SHAPES[rng.integers(len(SHAPES) - 1)]
        honest = np.round(rng.normal(size=(n - b, 5)), 1).astype(np.float32).astype(np.float64)
        honest[1] = honest[0]  # two honest peers with the same gradient
        own = torch.tensor(honest[0], dtype=torch.float32)
        peers, step = _attackers("alie", n, b, honest)
        expected = honest.mean(axis=0) - _z(n, b) * honest.std(axis=0, ddof=1)
        for peer in peers:
            np.testing.assert_allclose(peer.hook_corrupt_gradient(own.clone(), step).double().numpy(), expected,
                                       rtol=1e-5, atol=1e-5)
        peers, step = _attackers("ipm", n, b, honest, eps=0.5)
        np.testing.assert_allclose(peers[0].hook_corrupt_gradient(own.clone(), step).double().numpy(),
                                   -0.5 * honest.mean(axis=0), rtol=1e-5, atol=1e-6)
        peers, step = _attackers("sign_flip", n, b, honest, scale=3.0)
        np.testing.assert_allclose(peers[0].hook_corrupt_gradient(own.clone(), step).double().numpy(),
                                   -3.0 * honest[0], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# ByzFL: its documented examples, and the library itself when installed

DOC_X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


def test_the_values_of_byzfls_documentation_examples():
    x = torch.tensor(DOC_X)
    assert AGGREGATORS["mean"](x).tolist() == [4.0, 5.0, 6.0]                  # byzfl.Average()
    assert AGGREGATORS["median"](x).tolist() == [4.0, 5.0, 6.0]                # byzfl.Median()
    assert AGGREGATORS["trimmed_mean"](x, f=1).tolist() == [4.0, 5.0, 6.0]     # byzfl.TrMean(1)
    from worker_client.btard.aggregators import nnm

    assert nnm(x, f=1).tolist() == [[2.5, 3.5, 4.5], [2.5, 3.5, 4.5], [5.5, 6.5, 7.5]]  # byzfl.NNM(1)
    # byzfl.SignFlipping(): -mean; byzfl.InnerProductManipulation(2.0): -2 * mean
    honest = np.array(DOC_X)
    peers, step = _attackers("ipm", 4, 1, honest, eps=2.0)
    assert peers[0].hook_corrupt_gradient(torch.zeros(3), step).tolist() == [-8.0, -10.0, -12.0]
    peers, step = _attackers("ipm", 4, 1, honest, eps=1.0)
    assert peers[0].hook_corrupt_gradient(torch.zeros(3), step).tolist() == [-4.0, -5.0, -6.0]
    # byzfl.ALittleIsEnough(tau) sends mean + tau * std (ddof 1); ours is that with tau = -z
    peers, step = _attackers("alie", 4, 1, honest, z_max=1.5)
    assert peers[0].hook_corrupt_gradient(torch.zeros(3), step).tolist() == [-0.5, 0.5, 1.5]


def _load_byzfl():
    """byzfl's aggregators and attacks without its package __init__ (which imports torchvision)."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("byzfl is not installed (pip install --no-deps byzfl)")
    if "byzfl" not in sys.modules:
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    try:
        from byzfl.aggregators import aggregators, preaggregators
        from byzfl.attacks import attacks
    except ImportError as exc:
        pytest.skip(f"byzfl does not import without its optional dependencies: {exc}")
    return aggregators, preaggregators, attacks


def test_rules_and_attacks_agree_with_byzfl_once_settings_are_matched():
    agg, pre, att = _load_byzfl()
    rng = np.random.default_rng(7)
    for _ in range(CASES):
        n, b = SHAPES[rng.integers(len(SHAPES))]
        x = _inputs(rng, n, b)
        t = torch.tensor(x, dtype=torch.float32)
        close = {"rtol": 1e-5, "atol": 1e-5}
        np.testing.assert_allclose(_run("mean", x), agg.Average()(x), **close)
        np.testing.assert_allclose(_run("median", x), agg.Median()(x), **close)
        if n > 2 * b:
            np.testing.assert_allclose(_run("trimmed_mean", x, f=b), agg.TrMean(b)(x), **close)
            np.testing.assert_allclose(AGGREGATORS["nnm+median"](t, f=b).double().numpy(),
                                       agg.Median()(pre.NNM(b)(x)), **close)
        # ByzFL's Krum scores with the n - f - 1 nearest; ours (Blanchard et al.) with n - f - 2
        if n >= 2 * (b + 1) + 3:
            got = _run("krum", x, f=b + 1)
            assert np.allclose(got, agg.Krum(b)(x), atol=1e-6) or any(
                np.allclose(got, c, atol=1e-6) for c in ref_krum_candidates(x, b + 1))
        bb = max(b, 1)
        honest = x[: n - bb]
        z = _z(n, bb)
        peers, s = _attackers("alie", n, bb, honest)
        np.testing.assert_allclose(peers[0].hook_corrupt_gradient(torch.zeros(6), s).double().numpy(),
                                   att.ALittleIsEnough(tau=-z)(honest), **close)
        peers, s = _attackers("ipm", n, bb, honest, eps=0.1)
        np.testing.assert_allclose(peers[0].hook_corrupt_gradient(torch.zeros(6), s).double().numpy(),
                                   att.InnerProductManipulation(tau=0.1)(honest), **close)
        np.testing.assert_allclose(-honest.mean(axis=0), att.SignFlipping()(honest), **close)
