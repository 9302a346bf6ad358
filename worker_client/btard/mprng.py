"""Shared randomness, the torch part: the random projection ``z`` of a step (paper Sec. 3.2).

The MPRNG hashes (commitments, ``r_t``, the genesis and skip chains, batch seeds) and the one validator
draw live in the torch-free :mod:`btard_wire.randomness`, so the site computes them too; they are
re-exported here for the core's imports. ``z ~ N(0, I)`` of step t is drawn from ``r_t``, block by block.
"""

from __future__ import annotations

import torch

from btard_wire.randomness import (  # noqa: F401 - re-exported for the core
    GENESIS_DOMAIN,
    _h,
    batch_seed,
    combine_reveals,
    draw_validators,
    genesis_randomness,
    mprng_commitment,
    skipped_randomness,
)

# z is drawn in blocks of this many values: block k comes from its own generator, seeded with
# H("btard-z-block", r, k) (a counter-based scheme: any block is drawn without drawing the ones before
# it), so a part's slice costs its own length and every peer and validator draws the same values.
# Every block is drawn whole (torch's vectorised normal sampler treats a short tail differently) and
# cut afterwards: a slice never depends on how it was asked for.
Z_BLOCK = 1 << 16


def _generator(r: bytes, k: int) -> torch.Generator:
    return torch.Generator().manual_seed(
        int.from_bytes(_h(b"btard-z-block", r, k.to_bytes(8, "little"))[:8], "little") & ((1 << 63) - 1))


def projection_slice(r: bytes, numel: int, a0: int, a1: int) -> torch.Tensor:
    """``z[a0:a1]`` of the step's projection ``z ~ N(0, I)`` of length ``numel`` (float32, a new
    tensor), drawing only the blocks of :data:`Z_BLOCK` values that overlap ``[a0, a1)``; whole blocks
    are drawn straight into the result."""
    if not 0 <= a0 <= a1 <= numel:
        raise ValueError(f"projection slice [{a0}, {a1}) outside [0, {numel})")
    out = torch.empty(a1 - a0, dtype=torch.float32)
    k = a0 // Z_BLOCK
    while k * Z_BLOCK < a1:
        b0 = k * Z_BLOCK
        lo, hi = max(a0, b0), min(a1, b0 + Z_BLOCK)
        if lo == b0 and hi == b0 + Z_BLOCK:
            torch.randn(Z_BLOCK, generator=_generator(r, k), out=out[lo - a0:hi - a0])
        else:
            out[lo - a0:hi - a0] = torch.randn(Z_BLOCK, generator=_generator(r, k))[lo - b0:hi - b0]
        k += 1
    return out


def projection(r: bytes, numel: int) -> torch.Tensor:
    """``z ~ N(0, I)`` of length ``numel`` (float64: float32 draws, exactly widened), a pure function of
    ``r``: :func:`projection_slice` of the whole range. No cache here: a peer's :class:`~.memo.Memo`
    keeps the ones it reuses, shared between the peers of one process."""
    return projection_slice(r, numel, 0, numel).to(torch.float64)


def select_validators(r: bytes, group: list[str], prev_contributors: list[str], m: int) -> dict[str, str]:
    """The validators of a step and their targets among ``prev_contributors``, drawn from ``r`` (the
    step's own MPRNG output ``r_t``): :func:`btard_wire.randomness.draw_validators`."""
    return draw_validators(r, group=group, targets=prev_contributors, m=m)
