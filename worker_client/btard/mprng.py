"""Shared randomness: the MPRNG commit/reveal round and everything derived from its output.

Paper Sec. 3.2 (MPRNG): each peer commits to ``H(x_i)`` for a fresh 256-bit ``x_i``, then reveals
``x_i`` once every commitment is in; ``r_t = H(x_1 | ... | x_n)`` in group order. As long as one peer
is honest nobody can bias ``r_t``. A withheld or mismatching reveal is publicly provable.

From ``r`` we derive (domain-separated SHA-256, all **(ours)** in the details):

- the public batch seed of peer i at step t, ``seed_i_t = H(r_{t-1} | run | t | i)`` (Sec. 3.3);
- the random projection ``z ~ N(0, I)`` of step t from ``r_t`` (Sec. 3.2, verification);
- the validators of step t and their targets (step t-1 contributors) from ``r_{t-1}`` (Sec. 3.3).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import torch

from .crypto import ProtocolError

GENESIS_DOMAIN = b"btard-genesis"


def _h(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.digest()


def genesis_randomness(run: str, seed: int = 0) -> bytes:
    """``r_{-1}`` of a run: public, fixed by the run's name and seed."""
    return _h(GENESIS_DOMAIN, run.encode(), str(seed).encode())


def skipped_randomness(r_prev: bytes, run: str, step: int) -> bytes:
    """``r_t`` for a step whose MPRNG did not complete (aborted step): a public hash chain, so the next
    step's seeds are still fixed and known to all **(ours)**."""
    return _h(b"btard-skip", r_prev, run.encode(), str(step).encode())


@functools.lru_cache(maxsize=4096)
def mprng_commitment(x: bytes, *, run: str, step: int, sender: str) -> str:
    """``H(x_i)`` bound to the run, step and sender so nobody can copy another peer's commitment."""
    if len(x) != 32:
        raise ProtocolError("an MPRNG secret is 32 bytes")
    return _h(b"btard-mprng", run.encode(), str(step).encode(), sender.encode(), x).hex()


def combine_reveals(values_in_group_order: list[bytes]) -> bytes:
    """``r_t = H(x_1 | ... | x_n)`` over the revealed secrets in group order."""
    return _h(b"btard-r", *values_in_group_order)


@functools.lru_cache(maxsize=4096)
def batch_seed(r_prev: bytes, run: str, step: int, peer: str) -> int:
    """``seed_i_t = H(r_{t-1} | run | t | i)`` as a non-negative 63-bit integer."""
    digest = _h(b"btard-seed", r_prev, run.encode(), str(step).encode(), peer.encode())
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _torch_seed(r: bytes, domain: bytes) -> int:
    return int.from_bytes(_h(domain, r)[:8], "little") & ((1 << 63) - 1)


_Z_CACHE: OrderedDict[tuple[bytes, int], torch.Tensor] = OrderedDict()
_Z_CACHE_SIZE = 4


def projection(r: bytes, numel: int) -> torch.Tensor:
    """``z ~ N(0, I)`` of length ``numel`` (float64), a pure function of ``r``.

    Cached (the simulator runs many peers in one process; every peer derives the same ``z``). The
    returned tensor is shared: callers must not modify it."""
    key = (r, numel)
    z = _Z_CACHE.get(key)
    if z is None:
        gen = torch.Generator().manual_seed(_torch_seed(r, b"btard-z"))
        z = torch.randn(numel, generator=gen, dtype=torch.float32).to(torch.float64)
        _Z_CACHE[key] = z
        while len(_Z_CACHE) > _Z_CACHE_SIZE:
            _Z_CACHE.popitem(last=False)
    else:
        _Z_CACHE.move_to_end(key)
    return z


def select_validators(r_prev: bytes, group: list[str], prev_contributors: list[str],
                      m: int) -> dict[str, str]:
    """Validators of step t and their targets, drawn from ``r_{t-1}`` (Sec. 3.3).

    Up to ``m`` validators are drawn from the group; each gets a distinct target among the previous
    step's contributors that are still in the group, never itself. Returns ``{validator: target}``
    (empty when there is nothing to validate)."""
    return dict(_select_validators(r_prev, tuple(group), tuple(prev_contributors), m))


@functools.lru_cache(maxsize=64)
def _select_validators(r_prev: bytes, group: tuple[str, ...], prev_contributors: tuple[str, ...],
                       m: int) -> tuple[tuple[str, str], ...]:
    members = set(group)
    candidates = [p for p in prev_contributors if p in members]
    if m <= 0 or not candidates or len(group) < 2:
        return ()
    gen = torch.Generator().manual_seed(_torch_seed(r_prev, b"btard-validators"))
    order = [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]
    targets_order = [candidates[i] for i in torch.randperm(len(candidates), generator=gen).tolist()]
    out: dict[str, str] = {}
    used: set[str] = set()
    for v in order:
        if len(out) >= m:
            break
        target = next((t for t in targets_order if t != v and t not in used), None)
        if target is None:
            continue
        out[v] = target
        used.add(target)
    return tuple(out.items())
