"""The float64 reductions of the step (scalars, distances) give the direct formula's values when they run
in chunks (large models), whatever the part sizes and however the aggregate is passed."""

from __future__ import annotations

import pytest
import torch

from worker_client.btard import kernels as P


@pytest.fixture
def chunked(monkeypatch):
    monkeypatch.setattr(P, "_CHUNKED_ABOVE", 100)
    monkeypatch.setattr(P, "_CHUNK", 7)  # chunks that straddle part boundaries


def direct(z, g, a, n):
    diff = g.double() - a.double()
    s, d = [], []
    for lo, hi in P.part_bounds(g.numel(), n):
        s.append(float((z[lo:hi] * diff[lo:hi]).sum()))
        d.append(float(diff[lo:hi].norm()))
    return s, d


@pytest.mark.parametrize("numel,n", [(1001, 4), (1000, 16), (333, 5)])
def test_chunked_scalars_and_distances_match_the_direct_formula(chunked, numel, n):
    gen = torch.Generator().manual_seed(numel)
    g, a = torch.randn(numel, generator=gen), torch.randn(numel, generator=gen)
    z = torch.randn(numel, generator=gen, dtype=torch.float64)
    want_s, want_d = direct(z, g, a, n)
    parts = [a[lo:hi].clone() for lo, hi in P.part_bounds(numel, n)]
    for given in (a, parts):
        got_s, got_d = P.per_part_scalars_and_distances(z, g, given, n)
        assert got_s == pytest.approx(want_s, rel=1e-12, abs=1e-12)
        assert got_d == pytest.approx(want_d, rel=1e-12)


def test_chunked_distances_and_row_checks_match_the_direct_formula(chunked):
    gen = torch.Generator().manual_seed(3)
    x, a = torch.randn(5, 301, generator=gen), torch.randn(301, generator=gen)
    z = torch.randn(301, generator=gen, dtype=torch.float64)
    diff = x.double() - a.double()
    assert P.distances_to(x, a).tolist() == pytest.approx(diff.norm(dim=1).tolist(), rel=1e-12)
    assert float(P.distances_to(x[0], a)) == pytest.approx(float(diff[0].norm()), rel=1e-12)
    scalars, norms = P.rows_scalars_and_norms(list(x), a, z)
    assert scalars.tolist() == pytest.approx((diff @ z).tolist(), rel=1e-12, abs=1e-12)
    assert norms.tolist() == pytest.approx(diff.norm(dim=1).tolist(), rel=1e-12)


def test_huge_finite_values_do_not_overflow_in_chunks(chunked):
    big = torch.full((500,), 3e38)
    assert float(P.distances_to(big, -big)) == pytest.approx(2 * float(big[0]) * 500 ** 0.5, rel=1e-12)
