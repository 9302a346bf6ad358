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


@pytest.mark.parametrize("numel,n", [(1001, 4), (333, 5)])
def test_float32_projection_gives_the_float64_projections_values(chunked, numel, n):
    """z drawn as float32 is widened exactly: the kernels give bit-identical scalars with either."""
    gen = torch.Generator().manual_seed(numel)
    g, a = torch.randn(numel, generator=gen), torch.randn(numel, generator=gen)
    z32 = torch.randn(numel, generator=gen)
    for unchunked in (False, True):
        if unchunked:
            P._CHUNKED_ABOVE = 1 << 30
        assert (P.per_part_scalars_and_distances(z32, g, a, n)
                == P.per_part_scalars_and_distances(z32.double(), g, a, n))
        rows = [g[:50], a[:50]]
        s32, q32 = P.rows_scalars_and_norms(rows, a[50:100], z32[:50])
        s64, q64 = P.rows_scalars_and_norms(rows, a[50:100], z32[:50].double())
        assert torch.equal(s32, s64) and torch.equal(q32, q64)


def test_projection_slices_are_the_whole_projections_slices_on_every_path():
    """Any slice of z (across block boundaries, drawn alone, through a memo, as a view of a cached
    whole z) holds the whole z's values: every peer and validator projects on the same z."""
    from worker_client.btard.memo import Memo
    from worker_client.btard.mprng import Z_BLOCK, projection, projection_slice

    r, numel = b"\x01" * 32, 2 * Z_BLOCK + 123
    whole = projection(r, numel)
    assert whole.dtype == torch.float64 and whole.numel() == numel
    assert torch.equal(projection_slice(r, numel, 0, numel).double(), whole)
    bounds = [(0, 1), (5, Z_BLOCK), (Z_BLOCK - 3, Z_BLOCK + 3), (Z_BLOCK + 7, numel), (numel, numel)]
    memo = Memo()
    for a0, a1 in bounds:
        assert torch.equal(projection_slice(r, numel, a0, a1).double(), whole[a0:a1])
        assert torch.equal(memo.projection_slice(r, numel, a0, a1).double(), whole[a0:a1])
    memo.projection_slice(r, numel, 0, numel)
    for a0, a1 in bounds:
        assert torch.equal(memo.projection_slice(r, numel, a0, a1).double(), whole[a0:a1])
    assert memo.projection(r, numel).dtype == torch.float32
    assert torch.equal(memo.projection(r, numel).double(), whole)
    assert not torch.equal(projection_slice(b"\x02" * 32, numel, 0, 100), whole[:100].float())
    assert abs(float(whole.mean())) < 0.02 and abs(float(whole.std()) - 1) < 0.02
    with pytest.raises(ValueError):
        projection_slice(r, numel, 0, numel + 1)


def test_the_decode_cache_is_bounded_by_bytes_as_well_as_entries():
    """Each cached decode keeps its bytes alive: a large model's parts must not pile up to the entry
    bound (H5: 16 peers x 10.8M parameters grew ~1 GB a step)."""
    from worker_client.btard.memo import Memo

    memo = Memo(decoded=4096, decoded_bytes=10_000)
    blobs = [torch.full((1000,), float(i)).numpy().tobytes() for i in range(5)]  # 4000 bytes each
    for blob in blobs:
        digest, tensor, error = memo.decode(blob, 1000)
        assert error is None and float(tensor[0]) == float(blobs.index(blob))
    assert memo._decoded_size <= 10_000 and len(memo._decoded) <= 2
    assert memo.decode(blobs[-1], 1000)[0] == digest  # the newest entry is still a hit


@pytest.mark.parametrize("numel", [1000, 300])
def test_gradient_mismatch_accepts_within_the_tolerance_and_names_what_is_wrong(chunked, numel):
    gen = torch.Generator().manual_seed(numel)
    mine = torch.randn(numel, generator=gen)
    assert P.gradient_mismatch(mine, mine.clone(), 1e-3) is None
    near = mine + 1e-5 * torch.randn(numel, generator=gen)
    assert P.gradient_mismatch(mine, near, 1e-3) is None
    far = mine + 0.1 * torch.randn(numel, generator=gen)
    assert "differs by" in P.gradient_mismatch(mine, far, 1e-3)
    direct = float((mine.double() - far.double()).norm())
    assert f"{direct:.3g}" in P.gradient_mismatch(mine, far, 1e-3)
    assert "values, expected" in P.gradient_mismatch(mine, mine[:-1], 1e-3)
    bad = mine.clone()
    bad[3] = float("nan")
    assert P.gradient_mismatch(mine, bad, 1e-3) == "claimed gradient is not finite"
    huge = torch.full((numel,), 3e38)  # finite, but its float32 sum overflows
    assert "differs by" in P.gradient_mismatch(mine, huge, 1e-3)
