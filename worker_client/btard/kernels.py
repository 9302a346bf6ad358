"""The protocol core's numeric kernels: part bounds, float64 reductions, the recomputation check.

Pure functions of their arguments (no state, no I/O): every peer computes the same values from the same
float32 data. The chunked reductions keep a float64 buffer in cache instead of allocating full-size float64
temporaries above ``_CHUNKED_ABOVE`` values.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import torch

from .mprng import projection_slice
from .tensors import HashedBytes, bytes_to_tensor
from .tensors import sha256_hex as _sha256_hex

if TYPE_CHECKING:
    from .state import StepRecord


def part_bounds(numel: int, n: int) -> list[tuple[int, int]]:
    """Contiguous split of ``numel`` values into ``n`` parts whose sizes differ by at most one."""
    base, extra = divmod(numel, n)
    out, start = [], 0
    for j in range(n):
        size = base + (1 if j < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def decode_tensor(data: bytes, numel: int) -> torch.Tensor:
    """Raw little-endian float32 bytes -> tensor, after the size check; NaN/inf raise ProtocolError
    (:func:`.tensors.bytes_to_tensor`, positional)."""
    return bytes_to_tensor(data, expected_numel=numel)


def hashed_parts(g: torch.Tensor, bounds: list[tuple[int, int]]) -> list[HashedBytes]:
    """``[tensor_to_hashed_bytes(g[a:b]) for a, b in bounds]`` from one float32 view of ``g``: the same
    bytes and digests (each part's raw little-endian float32 bytes, copied once, and their SHA-256),
    without converting every slice on its own."""
    arr = g.detach().reshape(-1).to(torch.float32).contiguous().cpu().numpy().astype("<f4", copy=False)
    out = []
    for a, b in bounds:
        part = HashedBytes(arr[a:b].data)
        part.sha256 = hashlib.sha256(part).hexdigest()
        out.append(part)
    return out


def part_sums(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of every contiguous part of ``x`` (split as :func:`part_bounds`)."""
    base, extra = divmod(x.numel(), n)
    head = extra * (base + 1)
    f64 = torch.float64
    out = [x[:head].view(extra, base + 1).sum(dim=1, dtype=f64)] if extra else []
    if n - extra:
        out.append(x[head:].view(n - extra, base).sum(dim=1, dtype=f64) if base else torch.zeros(n - extra, dtype=f64))
    return torch.cat(out)


# Above this many values, the float64 reductions below run in chunks of a reused float64 buffer that
# stays in cache, instead of allocating (and page-faulting) full-size float64 temporaries.
_CHUNKED_ABOVE = 1 << 20
_CHUNK = 1 << 16


def _chunked_dot_and_sq(x: torch.Tensor, a: torch.Tensor, z: torch.Tensor | None,
                        buf: torch.Tensor) -> tuple[float, float]:
    """``<z, x - a>`` (0 without ``z``) and ``||x - a||^2`` of 1-D ``x`` and ``a``, in float64 over chunks
    of ``buf`` (``[2, _CHUNK]`` float64: the differences, and ``z`` widened when it is float32)."""
    acc_s = acc_q = 0.0
    m = x.numel()
    wide = z is not None and z.dtype != torch.float64
    for c0 in range(0, m, _CHUNK):
        c1 = min(m, c0 + _CHUNK)
        b = buf[0, : c1 - c0]
        b.copy_(x[c0:c1]).sub_(a[c0:c1])
        if z is not None:
            zc = buf[1, : c1 - c0].copy_(z[c0:c1]) if wide else z[c0:c1]
            acc_s += float(torch.dot(zc, b))
        acc_q += float(torch.dot(b, b))
    return acc_s, acc_q


def _chunk_buffer() -> torch.Tensor:
    return torch.empty(2, _CHUNK, dtype=torch.float64)


def per_part_scalars_and_distances(z: torch.Tensor, g: torch.Tensor, a: torch.Tensor | list[torch.Tensor],
                                   n: int) -> tuple[list[float], list[float]]:
    """``s_j = <z[j], g[j] - a[j]>`` and ``d_j = ||g[j] - a[j]||`` for every part j of full vectors.
    ``a`` is the full aggregate or the list of its n parts (no full-size copy needed)."""
    if g.numel() <= _CHUNKED_ABOVE:
        if isinstance(a, list):
            a = torch.cat(a)
        diff = g.to(torch.float64, copy=True)
        diff -= a  # widened elementwise: no float64 copy of a
        s = part_sums(z * diff, n)
        sq = part_sums(diff.square_(), n)
        return s.tolist(), sq.sqrt().tolist()
    buf = _chunk_buffer()
    scalars, dists = [], []
    for j, (lo, hi) in enumerate(part_bounds(g.numel(), n)):
        s_j, q_j = _chunked_dot_and_sq(g[lo:hi], a[j] if isinstance(a, list) else a[lo:hi], z[lo:hi], buf)
        scalars.append(s_j)
        dists.append(math.sqrt(q_j))
    return scalars, dists


def rows_scalars_and_norms(rows: list[torch.Tensor], a: torch.Tensor, z: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``<z, x_k - a>`` and ``||x_k - a||`` (float64) for every row ``x_k`` of ``rows``."""
    if sum(r.numel() for r in rows) <= _CHUNKED_ABOVE:
        diff = torch.stack(rows).to(torch.float64)
        diff -= a  # widened elementwise: no float64 copy of a
        dots = diff @ z.to(torch.float64)
        return dots, diff.square_().sum(dim=1).sqrt_()
    buf = _chunk_buffer()
    pairs = [_chunked_dot_and_sq(row, a, z, buf) for row in rows]
    return (torch.tensor([p[0] for p in pairs], dtype=torch.float64),
            torch.tensor([p[1] for p in pairs], dtype=torch.float64).sqrt())


def distances_to(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``||x_k - a||`` for every row of ``x`` (float64 throughout: no overflow for any finite float32)."""
    if x.numel() <= _CHUNKED_ABOVE:
        diff = x.to(torch.float64) - a.to(torch.float64)
        return (diff * diff).sum(dim=-1).sqrt()
    buf = _chunk_buffer()
    rows = x.reshape(-1, x.shape[-1])
    sq = torch.tensor([_chunked_dot_and_sq(row, a, None, buf)[1] for row in rows], dtype=torch.float64)
    return sq.sqrt().reshape(x.shape[:-1])


def gradient_mismatch(mine: torch.Tensor, claimed: torch.Tensor, rtol: float) -> str | None:
    """Why ``claimed`` is not the gradient recomputed here (``mine``), or None when it is: finite, of
    ``mine``'s size and ``||mine - claimed|| <= rtol * (||mine|| + 1e-12)`` (float64 norms, chunked above
    ``_CHUNKED_ABOVE`` values). The comparison of a probation candidate's gradient, the same in the
    worker and the simulator."""
    mine, claimed = mine.reshape(-1), claimed.reshape(-1)
    if claimed.numel() != mine.numel():
        return f"claimed gradient has {claimed.numel()} values, expected {mine.numel()}"
    if not math.isfinite(float(claimed.sum())) and not bool(torch.isfinite(claimed).all()):
        return "claimed gradient is not finite"
    if mine.numel() <= _CHUNKED_ABOVE:
        diff = float((mine.double() - claimed.double()).norm())
        ref = float(mine.double().norm())
    else:
        buf = _chunk_buffer()
        diff = math.sqrt(_chunked_dot_and_sq(mine, claimed, None, buf)[1])
        ref = math.sqrt(_chunked_dot_and_sq(mine, torch.zeros(1).expand(mine.numel()), None, buf)[1])
    if not diff <= rtol * (ref + 1e-12):
        return f"recomputed gradient differs by {diff:.3g} (relative tolerance {rtol})"
    return None


def clip_w(d: torch.Tensor, tau: float) -> torch.Tensor:
    """CenteredClip weights ``min(1, tau / d)`` (1 where d == 0), float64."""
    return torch.clamp(tau / d.to(torch.float64), max=1.0)


def sha256_hex(data: bytes) -> str:
    """SHA-256 (hex) of raw bytes; a body the data plane hashed while receiving it
    (:class:`.tensors.HashedBytes`) gives the digest it carries instead of a second pass."""
    return _sha256_hex(data)


def _dist(x: torch.Tensor, a: torch.Tensor) -> float:
    """``||x - a||`` in float64 (the same formula on every peer)."""
    return float(distances_to(x, a))


def _scalar(z: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> float:
    """``<z, x - a>`` in float64 (the same formula on every peer)."""
    return float((z * (x.to(torch.float64) - a.to(torch.float64))).sum())


def recalc_mismatch(g: torch.Tensor, record: StepRecord, target: str, rtol: float, *,
                    z: torch.Tensor | None = None) -> str | None:
    """Compare a recomputed gradient of ``target`` with its public claims of ``record``'s step.

    Checks the target's signed scalars ``s_Tj`` and the aggregators' ``d_Tj`` against the values the
    recomputed gradient gives (Sec. 3.3 with the projection of Sec. 3.2, so the cost does not grow with
    the part size). ``z`` is the step's projection when the caller holds it already. Returns a reason
    string on mismatch, None when everything agrees."""
    if target not in record.scalars:
        return "target sent no scalars"
    bounds = part_bounds(record.numel, len(record.group))
    claimed = record.scalars[target]
    if len(claimed) != len(bounds):
        return "target's scalars have the wrong length"
    g = g.to(torch.float32)
    for p, (a, b) in enumerate(bounds):
        gp, ap = g[a:b], record.aggregate[a:b]
        scale = float(gp.norm()) + float(ap.norm()) + 1e-12
        s = _scalar(z[a:b] if z is not None else projection_slice(record.r, record.numel, a, b), gp, ap)
        if not abs(s - claimed[p]) <= rtol * scale:
            return f"part {p}: s={claimed[p]:.6g} claimed, {s:.6g} recomputed"
        d_claim = record.distances.get(p, {}).get(target)
        if d_claim is not None:
            d = _dist(gp, ap)
            if not abs(d - d_claim) <= rtol * scale:
                return f"part {p}: d={d_claim:.6g} declared, {d:.6g} recomputed"
    return None
