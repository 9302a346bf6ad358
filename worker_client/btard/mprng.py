"""Shared randomness, the torch part: the random projection ``z`` of a step (paper Sec. 3.2).

The MPRNG hashes (commitments, ``r_t``, the genesis and skip chains, batch seeds) and the one validator
draw live in the torch-free :mod:`btard_wire.randomness`, so the site computes them too; they are
re-exported here for the core's imports. ``z ~ N(0, I)`` of step t is drawn from ``r_t``.
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


def _torch_seed(r: bytes, domain: bytes) -> int:
    return int.from_bytes(_h(domain, r)[:8], "little") & ((1 << 63) - 1)


def projection(r: bytes, numel: int) -> torch.Tensor:
    """``z ~ N(0, I)`` of length ``numel`` (float64), a pure function of ``r`` (no cache here: a peer's
    :class:`~.memo.Memo` keeps the ones it reuses, shared between the peers of one process)."""
    gen = torch.Generator().manual_seed(_torch_seed(r, b"btard-z"))
    return torch.randn(numel, generator=gen, dtype=torch.float32).to(torch.float64)


def select_validators(r: bytes, group: list[str], prev_contributors: list[str], m: int) -> dict[str, str]:
    """The validators of a step and their targets among ``prev_contributors``, drawn from ``r`` (the
    step's own MPRNG output ``r_t``): :func:`btard_wire.randomness.draw_validators`."""
    return draw_validators(r, group=group, targets=prev_contributors, m=m)
