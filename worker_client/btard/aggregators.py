"""Robust aggregation rules over a stack of n vectors (``[n, d]`` float tensor -> ``[d]``).

Every rule is a plain function ``fn(x, **params)`` with keyword-only parameters, registered by name in
:data:`AGGREGATORS`; :func:`make_aggregator` binds the parameters once for a simulator or a run.
Each rule raises :class:`ValueError` (naming the rule and the condition) when ``x`` is not a 2-D
floating tensor, has no rows, contains NaN/inf, or when its precondition on ``n`` and ``f`` fails.

Speed (CenteredClip is on the protocol's critical path: every aggregator runs it on its part, step 5
of docs/btard-protocol.md):
the iterative rules (CenteredClip, geometric median) never touch ``x`` inside their loops. We centre
the inputs once on the starting point ``v0``, ``y_k = x_k - v0``, and build the ``n x n`` Gram matrix
``G = y y^T`` in one pass over ``x`` (column chunks, float64 accumulation). Every iterate stays of the
form ``v = v0 + y^T c`` with ``c`` in R^n, so distances ``||x_k - v||^2 = G_kk - 2 (G c)_k + c^T G c``
and step norms ``||y^T dc||^2 = dc^T G dc`` cost O(n^2) per iteration. Centring keeps cancellation to
the scale of the spread rather than of ``||x_k||``; if the iterate drifts far from the centre (a mean
start pulled away by outliers) the frame is re-centred on it with a fresh Gram pass. After the loop
one vec-mat builds ``v`` and one more pass computes the reported distances ``||x_k - v||`` from the
differences themselves. Krum/Bulyan take their pairwise distances from an exact (float64) Gram matrix
centred on the mean, with a direct recomputation for near-duplicate pairs. Order statistics (median,
trimmed mean, Bulyan) use a sorting network over rows rather than torch's median along dim 0.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from btard_wire.registry import Registry

__all__ = [
    "AGGREGATORS",
    "PRE_AGGREGATORS",
    "CenteredClipResult",
    "CenteredClipSolver",
    "bucketing",
    "bulyan",
    "centered_clip",
    "centered_clip_residual",
    "centered_clip_with_info",
    "clip_weights",
    "compose",
    "geometric_median",
    "krum",
    "krum_scores",
    "make_aggregator",
    "mean",
    "median",
    "multi_krum",
    "nnm",
    "pairwise_sq_distances",
    "trimmed_mean",
]

# Columns per chunk for the passes over x: a chunk of 16 rows is 4 MiB of float32, cache friendly.
_CHUNK = 1 << 16

# Intra-op threads while a rule runs (None: leave torch's setting). The rules are memory-bound, so a
# second thread buys little on an idle machine, while on a loaded one (volunteers aggregate while
# they train) every OpenMP/MKL region waits for descheduled threads: at load 3-6 on 2 cores we
# measured 5-15x slow-downs at 2 threads against 1 (docs/performance.md, "Aggregators").
AGGREGATOR_THREADS: int | None = 1


@contextlib.contextmanager
def _thread_setting():
    """``AGGREGATOR_THREADS`` intra-op threads inside the block, restoring the caller's setting."""
    wanted = AGGREGATOR_THREADS
    previous = torch.get_num_threads()
    if wanted is None or wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _threads(fn):
    """Run ``fn`` with ``AGGREGATOR_THREADS`` intra-op threads, restoring the caller's setting."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _thread_setting():
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------------
# validation helpers


def _check(x: torch.Tensor, rule: str, *, finite: bool = True) -> tuple[int, int]:
    """Validate the input stack; returns ``(n, d)``. ``finite=False`` leaves the NaN/inf test to the
    caller (a pass over ``x`` that detects them anyway: :func:`_centered_gram` with ``rule``)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{rule} expects a torch.Tensor, got {type(x).__name__}")  # noqa: TRY004
    if x.dim() != 2:
        raise ValueError(f"{rule} expects a 2-D [n, d] tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{rule} expects a floating-point tensor, got {x.dtype}")
    n, d = x.shape
    if n < 1:
        raise ValueError(f"{rule} needs n >= 1 inputs, got n=0")
    # One reduction instead of an n x d boolean temporary: any NaN/inf makes the sum non-finite. A
    # non-finite sum of finite values (overflow) falls back to the exact elementwise check.
    # (A float64 sum would be exact-er but is ~30x slower on CPU.)
    if finite and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{rule}: input contains NaN or inf")
    return n, d


def _check_f(rule: str, f: int) -> None:
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ValueError(f"{rule} needs an integer f >= 0, got f={f!r}")


def _check_weights(rule: str, weights, n: int) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != n:
        raise ValueError(f"{rule}: weights has {w.numel()} entries, expected n={n}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"{rule}: weights must be finite, non-negative and not all zero")
    return w / w.sum()


# The passes of the iterative rules (Gram, combine with distances) take column chunks of about this many
# values in all (512 KiB of float32 per chunk and as much for its buffer: both stay in L2), and at least
# 4096 columns so the per-chunk dispatch stays small.
_PASS_VALUES = 1 << 17


def _pass_width(n: int, d: int) -> int:
    return min(d, max(4096, _PASS_VALUES // max(1, n)))


def _chunks(d: int, size: int | None = None):
    size = size or _CHUNK
    for start in range(0, d, size):
        yield start, min(d, start + size)


# --------------------------------------------------------------------------------------------------
# shared linear algebra


def _centered_gram(x: torch.Tensor, center: torch.Tensor, *, exact: bool = False,
                   rule: str | None = None) -> torch.Tensor:
    """``G = (x - center)(x - center)^T`` as float64 ``[n, n]``, in one pass over ``x`` by chunks.

    Default: float32 products per chunk, float64 across chunks (relative error ~1e-7 of
    ``|y_i||y_j|``), which is enough when ``center`` is near the points that matter. ``exact=True``
    subtracts and multiplies in float64 (~2.5x slower) for centres that may be far from them.
    ``rule``: the caller skipped the NaN/inf test of ``x`` (:func:`_check` with ``finite=False``); a NaN
    or inf anywhere in ``x`` makes the diagonal non-finite, and only then is ``x`` tested (ValueError
    naming ``rule``) before the float64 fallback."""
    n, d = x.shape
    g = torch.zeros(n, n, dtype=torch.float64)
    width = _pass_width(n, d)
    buf = torch.empty(n, width, dtype=torch.float64 if exact else x.dtype)
    # float32 path: each chunk's product goes to its own slot (no per-chunk cast and add), summed in
    # float64 at the end in chunk order (cumsum runs sequentially: the same sum as adding chunk by chunk)
    products = None if exact else torch.empty(-(-d // width), n, n, dtype=x.dtype)
    for k, (a, b) in enumerate(_chunks(d, width)):
        y = buf[:, : b - a]
        if exact:
            y.copy_(x[:, a:b])
            y.sub_(center[a:b])
            g += y @ y.T
        else:
            torch.sub(x[:, a:b], center[a:b], out=y)
            torch.mm(y, y.T, out=products[k])
    if products is not None and len(products):
        g += products.to(torch.float64).cumsum(dim=0)[-1]
    if not exact and not bool(torch.isfinite(g).all()):
        if rule is not None and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{rule}: input contains NaN or inf")
        # float32 products overflowed (finite inputs beyond ~1e19): float64 holds any finite float32
        return _centered_gram(x, center, exact=True)
    return (g + g.T) / 2  # BLAS need not return an exactly symmetric product


def _combine(x: torch.Tensor, center: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``center + (x - center)^T c = (1 - sum c) center + c @ x``: one vec-mat over ``x``."""
    return torch.add(c.to(x.dtype) @ x, center, alpha=1.0 - float(c.sum()))


def _exact_sq_distances(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``||x_k - v||^2`` for every row (float64), from the differences themselves: no cancellation.

    One pass over ``x`` by chunks; float32 differences are exact to 6e-8 of themselves and each
    chunk's sum of squares is accumulated in float64."""
    n, d = x.shape
    out = torch.zeros(n, dtype=torch.float64)
    v = v.to(x.dtype)
    buf = torch.empty(n, min(d, _CHUNK), dtype=x.dtype)
    for a, b in _chunks(d):
        y = buf[:, : b - a]
        torch.sub(x[:, a:b], v[a:b], out=y)
        out += y.mul_(y).sum(dim=1).to(torch.float64)
    return out


# A frame is re-centred on the current iterate when it has drifted this many times (squared) further
# from the centre than from the nearest input: beyond it, distances from the float32 Gram matrix
# would lose more than ~1e-5 relative (cancellation in G_kk - 2 (Gc)_k + c^T G c).
_RECENTER_RATIO = 1e2
_MAX_FRAMES = 4


class _Frame(NamedTuple):
    """A centre of the coefficient iteration and the Gram matrix of the inputs around it."""

    center: torch.Tensor   # [d], x's dtype
    g: np.ndarray          # (x - center)(x - center)^T, float64 [n, n]
    diag: np.ndarray       # its diagonal: ||x_k - center||^2


def _frame(x: torch.Tensor, center: torch.Tensor, *, rule: str | None = None) -> _Frame:
    """The frame centred on ``center``: one Gram pass over ``x`` (``rule``: see :func:`_centered_gram`)."""
    g = _centered_gram(x, center, rule=rule).numpy()
    return _Frame(center, g, np.diagonal(g).copy())


def _frame_sq_distances(frame: _Frame, c: np.ndarray) -> np.ndarray:
    """``||x_k - v||^2`` from the frame's Gram for ``v = center + y^T c`` (clamped at 0)."""
    gc = frame.g @ c
    return np.maximum(frame.diag - 2.0 * gc + float(c @ gc), 0.0)


def _iterate_in_frame(frame: _Frame, c: np.ndarray, step, *, eps: float, iterations: int, max_iters: int,
                      stop, last_frame: bool) -> tuple[np.ndarray, int, bool]:
    """:func:`_iterate_coefficients`' loop in one frame from the coefficients ``c``, counting iterations
    from ``iterations`` up to ``max_iters``. Returns ``(c, iterations, drifted)``; ``drifted``: the
    iterate ``center + y^T c`` moved too far from the centre (never in the ``last_frame``)."""
    g, diag = frame.g, frame.diag
    while iterations < max_iters:
        gc = g @ c
        cgc = float(c @ gc)
        dist2 = np.maximum(diag - 2.0 * gc + cgc, 0.0)
        positive = dist2[dist2 > 0]
        if (not last_frame and positive.size
                and cgc > _RECENTER_RATIO * float(positive.min())):
            return c, iterations, True
        iterations += 1
        new_c = step(c, dist2)
        dc = new_c - c
        c = new_c
        moved2 = float(dc @ g @ dc)
        if (stop(math.sqrt(max(moved2, 0.0)), dist2) if stop is not None
                else eps > 0 and moved2 < eps * eps):
            return c, iterations, False
    return c, iterations, False


def _iterate_coefficients(x: torch.Tensor, center: torch.Tensor, step, *, eps: float,
                          max_iters: int, stop=None, rule: str | None = None
                          ) -> tuple[torch.Tensor, np.ndarray, int]:
    """Run ``c <- step(c, dist2)`` in coefficient space (iterate ``v = center + y^T c``, ``y = x - center``).

    The loop works on n-vectors and the n x n Gram matrix in numpy float64 (a few microseconds per
    iteration, where torch's per-op dispatch would dominate for small parts). Stops when an iteration
    moves ``v`` by less than ``eps`` (never when ``eps == 0``), or, when ``stop`` is given, when
    ``stop(move, dist2)`` is true for the length ``move`` of that iteration's step and the squared
    distances it started from; or after ``max_iters`` iterations in total. Returns ``(center, c,
    iterations)``: the final frame's centre and coefficients, so the caller builds ``v`` in the pass it
    needs anyway (:func:`_combine`, or :func:`_combine_with_distances`). ``rule``: see
    :func:`_centered_gram` (the first frame's Gram pass tests ``x`` for NaN/inf)."""
    n = x.shape[0]
    iterations = 0
    for frame in range(_MAX_FRAMES):
        c, iterations, drifted = _iterate_in_frame(
            _frame(x, center, rule=rule if frame == 0 else None), np.zeros(n), step, eps=eps,
            iterations=iterations, max_iters=max_iters, stop=stop, last_frame=frame + 1 == _MAX_FRAMES)
        if not drifted:
            return center, c, iterations
        center = _combine(x, center, torch.from_numpy(c))
    raise AssertionError("unreachable: the last frame never re-centres")


def _iterate(x: torch.Tensor, center: torch.Tensor, step, *, eps: float,
             max_iters: int, stop=None) -> tuple[torch.Tensor, int]:
    """:func:`_iterate_coefficients`, returning ``(v [d] in x's dtype, iterations)``."""
    center, c, iterations = _iterate_coefficients(x, center, step, eps=eps, max_iters=max_iters, stop=stop)
    return _combine(x, center, torch.from_numpy(c)), iterations


def _combine_with_distances(x: torch.Tensor, center: torch.Tensor, c: np.ndarray, *,
                            center_row: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``v = center + (x - center)^T c`` (x's dtype) and ``||x_k - v||^2`` (float64) in ONE pass over x.

    Each chunk of ``v`` is built and the chunk's differences to it are squared while the chunk is still
    in cache: the distances are those of the returned ``v`` (what an aggregator broadcasts and every
    contributor re-checks to 1e-6). The differences are taken in float64 from the widened chunk (exact
    for float32 inputs) and their norms in float64 (the chunk's float64 copy stays in cache), so every
    distance is the exact one to float64 rounding whatever the data (float32 sums of squares, or torch's
    float32 ``vector_norm``, drifted to 1.25e-6 on real mnist5k-mlp parts: honest aggregators were
    accused of ``wrong_distance``).
    ``center_row``: ``center`` is ``x[center_row]``, so ``v = x^T c'`` with the centre's weight folded
    into ``c'`` (one mat-vec per chunk, no extra add)."""
    n, d = x.shape
    keep = 1.0 - float(c.sum())
    if center_row is not None:
        c = c.copy()
        c[center_row] += keep
        keep = 0.0
    ct = torch.from_numpy(c).to(x.dtype)
    v = torch.empty(d, dtype=x.dtype)
    sq = torch.zeros(n, dtype=torch.float64)
    width = _pass_width(n, d)
    wide = torch.empty(n, width, dtype=torch.float64)
    v_wide = torch.empty(width, dtype=torch.float64)
    for a, b in _chunks(d, width):
        vc = v[a:b]
        torch.mv(x[:, a:b].T, ct, out=vc)
        if keep != 0.0:
            vc.add_(center[a:b], alpha=keep)
        # the chunk and its v widened, subtracted in float64: the difference of two float32 values is
        # exact there (no float32 rounding of x - v), and this is faster than a float32 subtraction
        # followed by a widening copy (one pass over the chunk's float64 buffer fewer)
        y64 = wide[:, : b - a]
        y64.copy_(x[:, a:b])
        y64.sub_(v_wide[: b - a].copy_(vc))
        sq += torch.linalg.vector_norm(y64, dim=1).square_()
    if not bool(torch.isfinite(sq).all()):
        # float32 squares overflowed (finite differences beyond ~1e17): redo them in float64
        sq.zero_()
        for a, b in _chunks(d):
            diff = x[:, a:b].to(torch.float64) - v[a:b].to(torch.float64)
            sq += diff.square_().sum(dim=1)
    return v, sq


@functools.lru_cache(maxsize=64)
def _medoid_columns(d: int, samples: int, blocks: int) -> torch.Tensor:
    """The columns :func:`sample_medoid` reads: ``blocks`` runs of ``samples // blocks`` contiguous
    columns starting at evenly spaced offsets (one index, so the sample is one gather)."""
    width = max(1, samples // blocks)
    starts = torch.linspace(0, d - width, blocks).round().long()
    return (starts[:, None] + torch.arange(width)).flatten()


def sample_medoid(x: torch.Tensor, *, samples: int = 4096, blocks: int = 32) -> int:
    """The row with the smallest sum of distances to the others, measured on ``samples`` coordinates in
    ``blocks`` evenly spaced runs of contiguous columns (float64; contiguous runs read whole cache lines,
    where single scattered columns cost a cache miss each): a cheap start near the majority for an
    iteration that re-centres anyway.

    The pairwise distances come from the Gram matrix of the sample centred on its mean (one small
    float64 product; ``torch.cdist`` on so few rows takes its direct path, ~8x slower at 16 rows). A
    start needs no exactness: any row leads to the same fixed point."""
    d = x.shape[1]
    if d <= samples:
        sub = x.to(torch.float64, copy=True)  # centred in place below
    else:
        sub = x.index_select(1, _medoid_columns(d, samples, blocks)).to(torch.float64)
    sub -= sub.mean(dim=0)
    g = sub @ sub.T
    sq = torch.diagonal(g)
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0).sqrt_()
    return int(dist.sum(dim=1).argmin())


@_threads
def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x`` as an ``[n, n]`` float64 matrix.

    Computed from the Gram matrix of the rows centred on their mean (one pass over ``x``). Pairs whose
    distance is small relative to their norms, where the Gram formula loses digits, are recomputed
    exactly. The diagonal is exactly 0 and the matrix is symmetric.
    """
    _check(x, "pairwise_sq_distances")
    # The mean can sit far from every cluster (outliers pull it), so this Gram matrix is exact.
    g = _centered_gram(x, x.mean(dim=0), exact=True)
    diag = torch.diagonal(g)
    dist = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_min_(0.0)
    scale = diag[:, None] + diag[None, :]
    # float64 products carry ~1e-15 relative error of |y_i|^2 + |y_j|^2; below 1e-9 of that we
    # cannot promise 1e-6 relative accuracy, so recompute those (near-duplicate) pairs directly.
    suspicious = torch.nonzero(torch.triu(dist < 1e-9 * scale, diagonal=1))
    for i, j in suspicious.tolist():
        diff = x[i] - x[j]
        dist[i, j] = dist[j, i] = float((diff * diff).sum(dtype=torch.float64))
    dist.fill_diagonal_(0.0)
    return dist


# --------------------------------------------------------------------------------------------------
# rules


@_threads
def mean(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise average (what a plain all-reduce computes). Tolerates no Byzantine input."""
    _check(x, "mean")
    return x.mean(dim=0)


# Order statistics per coordinate. torch's median/sort along dim 0 of a row-major [n, d] stack run at
# ~0.1-0.2 GB/s on CPU; a sorting network of elementwise min/max over the n rows (vectorised over a
# cache-sized column chunk) is 4-5x faster for the small n of a group, and pruning it to the order
# statistics we need (e.g. only the median) drops the comparators that cannot affect them.
_NETWORK_MAX_N = 64
# 32768 = torch's parallel grain size: each min/max stays on one thread. Larger chunks make every
# comparator an OpenMP region, and on a loaded machine (volunteers train while they aggregate) the
# join waits for a descheduled thread: we measured 15x slow-downs at 2 threads, load 3 on 2 cores.
_NETWORK_CHUNK = 1 << 15


@functools.cache
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on n wires as (low, high) compare-exchanges: the network for the
    next power of two with the comparators touching a wire >= n dropped (those act on +inf padding)."""
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            j = k % p
            while j + k < size:
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
                j += 2 * k
            k //= 2
        p *= 2
    return tuple(pairs)


@functools.cache
def _pruned_network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`_sorting_network` that can influence the wires in ``outputs``."""
    needed = set(outputs)
    kept = []
    for lo, hi in reversed(_sorting_network(n)):
        if lo in needed or hi in needed:
            kept.append((lo, hi))
            needed.update((lo, hi))
    return tuple(reversed(kept))


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


class _Sorter:
    """Order statistics of row chunks by a pruned sorting network, without allocating per chunk.

    Every chunk is copied into an owned ``[n, chunk]`` buffer and the compare-exchanges write into
    one spare row, swapping references: large CPU tensors are malloc'd with mmap, and allocating
    temporaries per comparator costs page faults that dwarf the arithmetic at 11M columns. The
    comparators run in numpy where it has the dtype (1.7x faster than torch here: the per-call
    dispatch dominates a 32k-element min/max); results come back as torch views of the buffer."""

    def __init__(self, n: int, width: int, dtype: torch.dtype, outputs: tuple[int, ...]):
        self.network = _pruned_network(n, outputs)
        self.buf = torch.empty(n + 1, width, dtype=dtype)
        self.numpy = dtype in _NUMPY_DTYPES

    def __call__(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Rows sorted per coordinate far enough that ``result[i]`` holds the i-th smallest value for
        every ``i`` in ``outputs`` (the result aliases the internal buffer until the next call)."""
        width = rows[0].shape[0]
        if self.numpy:
            buf = self.buf.numpy()
            own = [buf[i, :width] for i in range(len(rows) + 1)]
            for dst, src in zip(own, rows):
                np.copyto(dst, src.detach().numpy())
            minimum, maximum = np.minimum, np.maximum
        else:
            own = [self.buf[i, :width] for i in range(len(rows) + 1)]
            for dst, src in zip(own, rows):
                dst.copy_(src)
            minimum, maximum = torch.minimum, torch.maximum
        spare = own.pop()
        for lo, hi in self.network:
            a, b = own[lo], own[hi]
            minimum(a, b, out=spare)
            maximum(a, b, out=b)
            own[lo], spare = spare, a
        return [torch.from_numpy(r) for r in own] if self.numpy else own


def _middle(lo: torch.Tensor, hi: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``(lo + hi) / 2`` into ``out`` without overflow for huge finite values (halving is exact)."""
    torch.mul(lo, 0.5, out=out)
    return out.add_(hi, alpha=0.5)


@_threads
def median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median, the usual definition: the middle value for odd n, the average of the
    two middle values for even n (numpy's ``median``; torch's ``median`` takes the lower one).
    Robust for f < n/2. CenteredClip's ``init="median"`` starts from this point."""
    n, d = _check(x, "median")
    if n == 1:
        return x[0].clone()
    out = torch.empty(d, dtype=x.dtype)
    lo, hi = (n - 1) // 2, n // 2
    if n > _NETWORK_MAX_N:
        for a, b in _chunks(d):
            rows = x[:, a:b].sort(dim=0).values
            _middle(rows[lo], rows[hi], out[a:b])
        return out
    sorter = _Sorter(n, min(d, _NETWORK_CHUNK), x.dtype, tuple(sorted({lo, hi})))
    for a, b in _chunks(d, _NETWORK_CHUNK):
        rows = sorter(list(x[:, a:b]))
        if lo == hi:
            out[a:b] = rows[lo]
        else:
            _middle(rows[lo], rows[hi], out[a:b])
    return out


@_threads
def trimmed_mean(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Per coordinate, drop the ``f`` largest and the ``f`` smallest values and average the other
    ``n - 2f`` (Yin et al., 2018, with the trim set to the number of attackers ``f``). Needs an
    integer ``f`` with ``n > 2f``; ``f = 0`` is the mean."""
    n, d = _check(x, "trimmed_mean")
    _check_f("trimmed_mean", f)
    if not n > 2 * f:
        raise ValueError(f"trimmed_mean needs n > 2f, got n={n}, f={f}")
    k = f
    if k == 0:
        return x.mean(dim=0)
    out = torch.empty(d, dtype=x.dtype)
    if n > _NETWORK_MAX_N:
        for a, b in _chunks(d):
            out[a:b] = x[:, a:b].sort(dim=0).values[k:n - k].mean(dim=0)
        return out
    kept = tuple(range(k, n - k))
    sorter = _Sorter(n, min(d, _NETWORK_CHUNK), x.dtype, kept)
    for a, b in _chunks(d, _NETWORK_CHUNK):
        rows = sorter(list(x[:, a:b]))
        acc = out[a:b]
        acc.copy_(rows[k])
        for i in kept[1:]:
            acc.add_(rows[i])
        acc.div_(len(kept))
    return out


@_threads
def krum_scores(x: torch.Tensor, *, f: int, dist: torch.Tensor | None = None) -> torch.Tensor:
    """Blanchard et al. (2017) Krum score of every input: the sum of its squared distances to its
    ``n - f - 2`` nearest other inputs (float64 ``[n]``). Needs ``n >= 2f + 3``."""
    n, _ = _check(x, "krum")
    _check_f("krum", f)
    if n < 2 * f + 3:
        raise ValueError(f"krum needs n >= 2f+3, got n={n}, f={f}")
    if dist is None:
        dist = pairwise_sq_distances(x)
    return _scores_from_dist(dist, n - f - 2)


def _scores_from_dist(dist: torch.Tensor, k: int) -> torch.Tensor:
    n = dist.shape[0]
    if k <= 0 or n <= 1:
        return torch.zeros(n, dtype=torch.float64)
    # exclude self by pushing the diagonal to +inf before sorting
    d = dist + torch.diag(torch.full((n,), math.inf, dtype=torch.float64))
    return d.sort(dim=1).values[:, :k].sum(dim=1)


@_threads
def krum(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Krum: the input with the smallest Krum score (ties: the lowest index). Needs ``n >= 2f + 3``."""
    scores = krum_scores(x, f=f)
    return x[int(torch.argmin(scores))].clone()


@_threads
def multi_krum(x: torch.Tensor, *, f: int, m: int | None = None) -> torch.Tensor:
    """Multi-Krum: the mean of the ``m`` inputs with the smallest Krum scores (scores computed once;
    ties by lowest index). ``m`` defaults to ``n - f``; needs ``n >= 2f + 3`` and ``1 <= m <= n``."""
    scores = krum_scores(x, f=f)
    n = x.shape[0]
    if m is None:
        m = n - f
    if not isinstance(m, int) or not (1 <= m <= n):
        raise ValueError(f"multi_krum needs 1 <= m <= n, got m={m!r}, n={n}")
    order = torch.sort(scores, stable=True).indices[:m]
    return x[order].mean(dim=0)


@_threads
def bulyan_selection(x: torch.Tensor, *, f: int, dist: torch.Tensor | None = None) -> list[int]:
    """Indices of the ``n - 2f`` inputs Bulyan selects by repeated Krum (El Mhamdi et al., 2018).

    Each round applies Krum to the inputs not selected yet and moves the winner to the selection.
    A round on ``r`` remaining inputs scores with ``max(1, r - f - 2)`` neighbours (at most ``r - 1``),
    since late rounds have fewer than ``f + 3`` candidates left."""
    n, _ = _check(x, "bulyan")
    _check_f("bulyan", f)
    if n < 4 * f + 3:
        raise ValueError(f"bulyan needs n >= 4f+3, got n={n}, f={f}")
    if dist is None:
        dist = pairwise_sq_distances(x)
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < n - 2 * f:
        r = len(remaining)
        k = min(max(1, r - f - 2), r - 1)
        sub = dist[remaining][:, remaining]
        scores = _scores_from_dist(sub, k)
        winner = remaining[int(torch.argmin(scores))]
        selected.append(winner)
        remaining.remove(winner)
    return selected


@_threads
def bulyan(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Bulyan (El Mhamdi et al., 2018): select ``theta = n - 2f`` inputs by repeated Krum, then per
    coordinate average the ``beta = theta - 2f = n - 4f`` selected values nearest to the selection's
    coordinate-wise median (:func:`median`: the average of the two middle values for even theta).

    Values at equal distance from the median are taken lowest value first; equal values (colluders
    all send the same vector) are interchangeable, so a tie among them never changes the result.
    Needs ``n >= 4f + 3``."""
    selected = sorted(bulyan_selection(x, f=f))
    n, d = x.shape
    theta, keep = len(selected), n - 4 * f
    lo, hi = (theta - 1) // 2, theta // 2
    out = torch.empty(d, dtype=x.dtype)
    width = min(d, _NETWORK_CHUNK)
    sorter = _Sorter(theta, width, x.dtype, tuple(range(theta))) if theta <= _NETWORK_MAX_N else None
    for a, b in _chunks(d, _NETWORK_CHUNK):
        chunk = [x[i, a:b] for i in selected]
        if sorter is not None:
            rows = torch.stack(sorter(chunk))
        else:
            rows = torch.stack(chunk).sort(dim=0).values
        # Distances in float64, where the difference of two float32 values and the median (half the
        # sum of two of them) are exact: a float32 rounding must not turn a nearer value into a tie.
        wide = rows.to(torch.float64)
        med = (wide[lo] + wide[hi]) * 0.5
        # On sorted values the distance to the median falls then rises, so a stable sort by distance
        # puts the nearest first and, among equal distances, the lower value first.
        order = (wide - med).abs_().sort(dim=0, stable=True).indices[:keep]
        out[a:b] = rows.gather(0, order).mean(dim=0)
    return out


# --------------------------------------------------------------------------------------------------
# pre-aggregation: [n, d] -> [n', d], then any rule above (registered as "nnm+krum", "bucketing+median", ...)


@_threads
def nnm(x: torch.Tensor, *, f: int) -> torch.Tensor:
    """Nearest-neighbour mixing (Allouah et al., 2023): row i of the result is the average of the
    ``n - f`` inputs nearest to ``x_i`` (itself included; equal distances: lowest index first).
    Returns ``[n, d]``. Needs an integer ``f`` with ``n > 2f``."""
    n, _ = _check(x, "nnm")
    _check_f("nnm", f)
    if not n > 2 * f:
        raise ValueError(f"nnm needs n > 2f, got n={n}, f={f}")
    if f == 0:
        return x.mean(dim=0, keepdim=True).expand(n, -1).clone()
    dist = pairwise_sq_distances(x)
    nearest = torch.sort(dist, dim=1, stable=True).indices[:, : n - f]
    weights = torch.zeros(n, n, dtype=torch.float64)
    weights.scatter_(1, nearest, 1.0 / (n - f))
    return weights.to(x.dtype) @ x


@_threads
def bucketing(x: torch.Tensor, *, s: int = 2, seed: int = 0) -> torch.Tensor:
    """Bucketing (Karimireddy, He and Jaggi, 2022): shuffle the inputs with ``seed``, cut them into
    ``ceil(n / s)`` buckets of ``s`` consecutive inputs (the last one may be smaller) and return each
    bucket's average (``[ceil(n / s), d]``). At most ``f`` buckets hold an attacker, so the rule
    after it is told the same ``f``. Needs an integer ``s >= 1``; ``s = 1`` only shuffles."""
    n, _ = _check(x, "bucketing")
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        raise ValueError(f"bucketing needs an integer bucket size s >= 1, got s={s!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    buckets = [perm[i:i + s] for i in range(0, n, s)]
    return torch.stack([x[b].mean(dim=0) for b in buckets])


PRE_AGGREGATORS: Registry[Callable[..., torch.Tensor]] = Registry(
    "pre-aggregation", {"nnm": nnm, "bucketing": bucketing})


def _keyword_only(fn) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def compose(pre_name: str, rule_name: str) -> Callable[..., torch.Tensor]:
    """The rule ``"<pre>+<rule>"``: pre-aggregation ``pre_name`` then ``rule_name``.

    It takes the keyword-only parameters of both (a name both take, such as ``f``, goes to both);
    a failed precondition of the rule names the composite (its ``n`` counts the rows the
    pre-aggregation returned, e.g. the buckets). ``composite.pre`` and ``composite.rule_name`` say
    what it is made of (the simulator runs a final CenteredClip per part)."""
    pre, rule = PRE_AGGREGATORS[pre_name], AGGREGATORS[rule_name]
    pre_params, rule_params = _keyword_only(pre), _keyword_only(rule)
    name = f"{pre_name}+{rule_name}"

    def composite(x: torch.Tensor, **params) -> torch.Tensor:
        unknown = set(params) - set(pre_params) - set(rule_params)
        if unknown:
            raise TypeError(f"{name} got unexpected parameters {sorted(unknown)}")
        y = pre(x, **{k: v for k, v in params.items() if k in pre_params})
        try:
            return rule(y, **{k: v for k, v in params.items() if k in rule_params})
        except ValueError as exc:
            raise ValueError(f"{name} (on the {y.shape[0]} rows {pre_name} returned): {exc}") from None

    merged = {**rule_params, **pre_params}
    merged = [merged[k] for k in sorted(merged, key=lambda k: merged[k].default is not inspect.Parameter.empty)]
    composite.__signature__ = inspect.Signature(
        [inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD), *merged])
    composite.__name__ = composite.__qualname__ = name
    composite.__doc__ = f"{pre_name} pre-aggregation, then {rule_name}."
    composite.pre = pre
    composite.rule_name = rule_name
    return composite


@_threads
def geometric_median(x: torch.Tensor, *, eps: float = 1e-6, max_iters: int = 100,
                     weights=None) -> torch.Tensor:
    """Geometric median ``argmin_v sum_k w_k ||x_k - v||`` by Weiszfeld iterations from the mean.

    Stops when an iteration moves ``v`` by less than ``eps`` (absolute) or after ``max_iters``
    iterations. Distances are floored at ``max(eps, 1e-12 * spread)`` so an iterate landing on an
    input does not divide by zero. Robust for f < n/2."""
    n, _ = _check(x, "geometric_median")
    if max_iters < 0 or eps < 0:
        raise ValueError(f"geometric_median needs eps >= 0 and max_iters >= 0, got {eps}, {max_iters}")
    p = _check_weights("geometric_median", weights, n)
    if p is None:
        p = torch.full((n,), 1.0 / n, dtype=torch.float64)
    v0 = p.to(x.dtype) @ x
    scale = float(_exact_sq_distances(x, v0).max().sqrt())
    floor = max(eps, 1e-12 * scale, 1e-30)

    pn = p.numpy()

    def step(c, dist2):
        beta = pn / np.maximum(np.sqrt(dist2), floor)
        return beta / beta.sum()

    v, _ = _iterate(x, v0, step, eps=eps, max_iters=max_iters)
    return v


def clip_weights(distances, tau: float) -> torch.Tensor:
    """CenteredClip weights ``min(1, tau / d_k)``, with ``d_k = 0 -> 1`` (float64 tensor)."""
    d = torch.as_tensor(distances, dtype=torch.float64)
    if tau <= 0 or math.isnan(tau):
        raise ValueError(f"clip_weights needs tau > 0, got tau={tau}")
    w = torch.ones_like(d)
    pos = d > 0
    w[pos] = torch.clamp(tau / d[pos], max=1.0)
    return w


class CenteredClipResult(NamedTuple):
    """What :func:`centered_clip_with_info` returns; unpacks as ``v, iterations, distances``."""

    v: torch.Tensor            # [d], dtype of x
    iterations: int            # iterations run (== max_iters when eps == 0)
    distances: torch.Tensor    # [n] float64, ||x_k - v|| computed exactly for the returned v


CENTERED_CLIP_METHODS = ("clip", "irls")


@_threads
def centered_clip_with_info(x: torch.Tensor, *, tau: float = 1.0, eps: float = 1e-6,
                            max_iters: int = 100, init: str = "median",
                            weights=None, method: str = "clip", rtol: float = 0.0) -> CenteredClipResult:
    """CenteredClip (Karimireddy et al., 2021; the BTARD aggregators' rule), to its fixed point.

    The fixed point ``v`` solves ``R(v) = sum_k p_k min(1, tau / ||x_k - v||) (x_k - v) = 0`` with
    ``p_k = 1/n`` (or the normalised ``weights``); it minimises the convex ``sum_k p_k huber_tau(
    ||x_k - v||)``. Two iterations reach it from the coordinate-wise median (``init="median"``) or the
    mean (``init="mean"``), or the input nearest the others on a sample of coordinates (``init=
    "medoid"``, the cheapest; the start changes the path, not the fixed point):

    - ``method="clip"``, the paper's step ``v <- v + R(v)``: moves at most ``tau`` per iteration, so a
      small ``tau`` needs ``distance / tau`` iterations;
    - ``method="irls"``, the weighted mean ``v <- sum_k w_k x_k / sum_k w_k`` with ``w_k = p_k min(1,
      tau / ||x_k - v||)`` (iteratively reweighted least squares, the classic MM algorithm for Huber's
      location estimate: each step decreases the objective, same fixed points), fast for any ``tau``.

    Both stop when the residual ``||R(v)||`` of the iterate falls below ``eps + rtol * sum_k w_k
    ||x_k - v||`` (``rtol`` scales the stop with the spread, as the protocol's fixed-point check does),
    or after exactly ``max_iters`` iterations when ``eps == rtol == 0``. Returns ``(v, iterations,
    distances)`` where ``distances[k] = ||x_k - v||`` is recomputed exactly for the returned ``v``: the
    values an aggregator broadcasts and the ones the fixed-point check uses.

    Raises ValueError on bad input, ``tau <= 0``, ``eps < 0``, ``rtol < 0``, ``max_iters < 0``, an unknown
    init or method.
    """
    pn, v0, row = _centered_clip_start(x, tau=tau, eps=eps, max_iters=max_iters, init=init, weights=weights,
                                       method=method, rtol=rtol)
    step, stop = _centered_clip_iteration(pn, tau=tau, eps=eps, method=method, rtol=rtol)
    center, c, iterations = _iterate_coefficients(
        x, v0, step, eps=eps, max_iters=max_iters,
        stop=stop if (eps > 0 or rtol > 0) else (lambda move, dist2: False), rule="centered_clip")
    v, sq = _combine_with_distances(x, center, c,
                                    center_row=row if init == "medoid" and center is v0 else None)
    return CenteredClipResult(v, iterations, sq.sqrt_())


def _centered_clip_start(x: torch.Tensor, *, tau: float | None, eps: float, max_iters: int, init: str,
                         weights, method: str, rtol: float) -> tuple[np.ndarray, torch.Tensor, int | None]:
    """:func:`centered_clip_with_info`'s checks (``tau`` is not checked when None) and start: returns the
    normalised weights ``p`` (numpy), the start ``v0`` and, for ``init="medoid"``, its row."""
    n, _ = _check(x, "centered_clip", finite=False)  # the first Gram pass tests for NaN/inf
    if tau is not None and not (tau > 0):
        raise ValueError(f"centered_clip needs tau > 0, got tau={tau}")
    if eps < 0 or max_iters < 0 or not (rtol >= 0):
        raise ValueError(f"centered_clip needs eps >= 0, rtol >= 0 and max_iters >= 0, got eps={eps}, "
                         f"rtol={rtol}, max_iters={max_iters}")
    if method not in CENTERED_CLIP_METHODS:
        raise ValueError(f"centered_clip: unknown method {method!r} (expected one of {CENTERED_CLIP_METHODS})")
    p = _check_weights("centered_clip", weights, n)
    if p is None:
        p = torch.full((n,), 1.0 / n, dtype=torch.float64)
    row = None
    if init == "median":
        v0 = median(x)
    elif init == "mean":
        v0 = p.to(x.dtype) @ x
    elif init == "medoid":
        row = sample_medoid(x)
        v0 = x[row]
    else:
        raise ValueError(f"centered_clip: unknown init {init!r} (expected 'median', 'mean' or 'medoid')")
    return p.numpy(), v0, row


def _centered_clip_iteration(pn: np.ndarray, *, tau: float, eps: float, method: str, rtol: float):
    """CenteredClip's ``(step, stop)`` for :func:`_iterate_coefficients` (see :func:`centered_clip_with_info`)."""
    last = {}

    def weights_at(dist2):
        dist = np.sqrt(dist2)
        far = dist > tau  # min(1, tau/d) < 1 exactly there; d = 0 keeps weight 1
        w = pn.copy()
        w[far] *= tau / dist[far]
        last["w"], last["dist"] = w, dist
        return w

    if method == "clip":
        def step(c, dist2):
            # v + sum_k p_k clip_k (y_k - v), written for the coefficients: c (1 - sum w) + w
            w = weights_at(dist2)
            return c * (1.0 - w.sum()) + w
    else:
        def step(c, dist2):
            w = weights_at(dist2)
            return w / w.sum()

    def stop(move, dist2):
        # the residual R at the iterate the step started from: the clip step is R itself, the IRLS
        # step is R / sum w
        w = last["w"]
        residual = move if method == "clip" else move * float(w.sum())
        return residual < eps + rtol * float(w @ last["dist"])

    return step, stop


class CenteredClipSolver:
    """CenteredClip of one stack ``x`` for one ``tau`` after another, paying the start and the Gram pass once.

    The start (``init``) and the Gram matrix around it do not depend on ``tau``: :meth:`solve` runs the
    iteration in coefficient space for a ``tau`` (O(n^2) per iteration, no pass over ``x``), from where
    the previous :meth:`solve` ended, and returns the distances the Gram gives at its fixed point (to
    ~1e-7 relative; they drive a search over ``tau``, ``worker_client.btard.tau``). :meth:`result` builds
    ``v`` and its exact distances in one pass over ``x``, as :func:`centered_clip_with_info` returns them.
    A solve whose iterate drifts re-centres the frame with a fresh Gram pass (as
    :func:`centered_clip_with_info` does), and later solves go on in that frame; ``gram_passes`` counts
    the Gram passes. The parameters are :func:`centered_clip_with_info`'s."""

    def __init__(self, x: torch.Tensor, *, eps: float = 1e-6, max_iters: int = 100, init: str = "median",
                 weights=None, method: str = "clip", rtol: float = 0.0):
        self.x, self.eps, self.max_iters, self.method, self.rtol = x, eps, max_iters, method, rtol
        with _thread_setting():
            self._pn, v0, self._row = _centered_clip_start(x, tau=None, eps=eps, max_iters=max_iters,
                                                           init=init, weights=weights, method=method, rtol=rtol)
            self.frame = _frame(x, v0, rule="centered_clip")
        self.gram_passes = 1
        self.c = np.zeros(x.shape[0])
        self.iterations = 0
        self.tau: float | None = None

    def solve(self, tau: float) -> np.ndarray:
        """Iterate to CenteredClip's fixed point for ``tau`` (the stop of :func:`centered_clip_with_info`)
        and return ``||x_k - v||`` from the Gram at it (float64 [n])."""
        if not (tau > 0):
            raise ValueError(f"centered_clip needs tau > 0, got tau={tau}")
        step, stop = _centered_clip_iteration(self._pn, tau=tau, eps=self.eps, method=self.method, rtol=self.rtol)
        if not (self.eps > 0 or self.rtol > 0):
            stop = lambda move, dist2: False
        iterations = 0
        while True:
            self.c, iterations, drifted = _iterate_in_frame(
                self.frame, self.c, step, eps=self.eps, iterations=iterations, max_iters=self.max_iters,
                stop=stop, last_frame=self.gram_passes >= _MAX_FRAMES)
            if not drifted:
                break
            with _thread_setting():
                center = _combine(self.x, self.frame.center, torch.from_numpy(self.c))
                self.frame = _frame(self.x, center)
            self.gram_passes += 1
            self.c = np.zeros(self.x.shape[0])
            self._row = None
        self.iterations += iterations
        self.tau = tau
        return np.sqrt(_frame_sq_distances(self.frame, self.c))

    def residual(self, tau: float, distances) -> tuple[float, float]:
        """``(||R||, sum_k w_k d_k)`` at the iterate of the last :meth:`solve` for ``tau``, with the weights
        ``w_k = p_k min(1, tau / d_k)`` of the given ``distances`` (the exact ones of :meth:`result`):
        :func:`centered_clip_with_info` stops once ``||R|| < eps + rtol sum_k w_k d_k``. ``R = sum_k w_k
        (x_k - v) = y^T (w - (sum w) c)``, its norm from the Gram."""
        dist = np.asarray(distances, dtype=np.float64)
        far = dist > tau
        w = self._pn.copy()
        w[far] *= tau / dist[far]
        r = w - float(w.sum()) * self.c
        return math.sqrt(max(float(r @ self.frame.g @ r), 0.0)), float(w @ dist)

    def result(self) -> CenteredClipResult:
        """``v`` of the last :meth:`solve` and its exact distances (one pass over ``x``); ``iterations``
        counts those of every solve so far."""
        with _thread_setting():
            v, sq = _combine_with_distances(self.x, self.frame.center, self.c, center_row=self._row)
        return CenteredClipResult(v, self.iterations, sq.sqrt_())


def centered_clip(x: torch.Tensor, *, tau: float = 1.0, eps: float = 1e-6, max_iters: int = 100,
                  init: str = "median", weights=None, method: str = "clip", rtol: float = 0.0) -> torch.Tensor:
    """CenteredClip's result only; see :func:`centered_clip_with_info`."""
    return centered_clip_with_info(x, tau=tau, eps=eps, max_iters=max_iters, init=init,
                                   weights=weights, method=method, rtol=rtol).v


@_threads
def centered_clip_residual(x: torch.Tensor, v: torch.Tensor, *, tau: float,
                           weights=None) -> torch.Tensor:
    """The fixed-point residual ``sum_k p_k min(1, tau/||x_k - v||) (x_k - v)`` (``[d]``, float64).

    Zero at CenteredClip's fixed point; compare its norm to ``tau`` / the spread of the inputs."""
    n, d = _check(x, "centered_clip_residual")
    p = _check_weights("centered_clip_residual", weights, n)
    if p is None:
        p = torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = p * clip_weights(_exact_sq_distances(x, v).sqrt_(), tau)
    out = torch.empty(d, dtype=torch.float64)
    v = v.to(x.dtype)
    for a, b in _chunks(d):
        out[a:b] = w @ (x[:, a:b] - v[a:b]).to(torch.float64)
    return out


# --------------------------------------------------------------------------------------------------
# registry

AGGREGATORS: Registry[Callable[..., torch.Tensor]] = Registry("aggregator", {
    "mean": mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geometric_median": geometric_median,
    "centered_clip": centered_clip,
})
# Pre-aggregation in front of the rules the literature pairs it with (Allouah et al., 2023;
# Karimireddy et al., 2022): "nnm+krum", "bucketing+median", ...
AGGREGATORS.update({f"{pre}+{rule}": compose(pre, rule) for pre in PRE_AGGREGATORS
                    for rule in ("centered_clip", "krum", "median")})


def make_aggregator(name: str, **params) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rule registered as ``name`` with ``params`` bound, as ``agg(x) -> [d]``.

    Raises ValueError for an unknown name or a parameter the rule does not take."""
    fn = AGGREGATORS[name]  # UnknownName (a ValueError) listing the known names
    accepted = {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = set(params) - accepted
    if unknown:
        raise ValueError(f"aggregator {name!r} does not take {sorted(unknown)}; it takes {sorted(accepted)}")
    agg = functools.partial(fn, **params)
    functools.update_wrapper(agg, fn)
    return agg
