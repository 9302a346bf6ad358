"""Computations that peers in one process may share: a :class:`Memo` the driver injects.

The simulator (and the in-memory swarm builder) hands one :class:`Memo` to every peer it runs: they
then hash and decode each all-gathered aggregate once, draw each step's projection ``z`` once, run each
fixed-point check and aggregate bound once and concatenate each step's aggregates once. Every entry is
a pure function of its key (content-addressed public data, or an immutable object the entry itself
holds, so its ``id`` cannot be reused), so sharing cannot change what a peer computes. A peer given no
memo keeps a private one (it still reuses its own ``z`` within a step) and shares nothing: the core has
no module-global state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from btard_wire.errors import ProtocolError

from .kernels import decode_tensor, sha256_hex
from .mprng import projection_slice


class Memo:
    """Bounded caches of pure computations (see the module docstring)."""

    def __init__(self, *, decoded: int = 4096, fixed_point: int = 64, projections: int = 4,
                 decoded_bytes: int = 512 << 20):
        self._decoded: dict[int, tuple[bytes, int, str, torch.Tensor | None, ProtocolError | None]] = {}
        # every entry keeps its bytes alive: bound their total too (16 peers x 10M parameters would
        # hold ~11 GB in 4096 entries before the entry bound cleared them)
        self._decoded_bytes = decoded_bytes
        self._decoded_size = 0
        self._fixed_point: dict[tuple, Any] = {}
        self._z: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._whole: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        self._limits = (decoded, fixed_point, projections)

    def decode(self, data: bytes, numel: int) -> tuple[str, torch.Tensor | None, ProtocolError | None]:
        """``(sha256, tensor or None, error or None)`` of raw float32 ``data``, once per bytes object
        (every receiver in one process gets the same immutable object). The tensor is shared read-only."""
        hit = self._decoded.get(id(data))
        if hit is not None and hit[0] is data and hit[1] == numel:
            return hit[2], hit[3], hit[4]
        digest = sha256_hex(data)
        try:
            tensor, error = decode_tensor(data, numel), None
        except ProtocolError as exc:
            tensor, error = None, exc
        if len(self._decoded) > self._limits[0] or self._decoded_size + len(data) > self._decoded_bytes:
            self._decoded.clear()
            self._decoded_size = 0
        self._decoded[id(data)] = (data, numel, digest, tensor, error)
        self._decoded_size += len(data)
        return digest, tensor, error

    def fixed_point(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` (a tuple of envelope digests and parameters): the fixed-point
        check's totals and tolerances, and the aggregate bound's verdicts and scales (``Checks``)."""
        hit = self._fixed_point.get(key)
        if hit is None:
            hit = compute()
            if len(self._fixed_point) > self._limits[1]:
                self._fixed_point.clear()
            self._fixed_point[key] = hit
        return hit

    def whole(self, digests: tuple[str, ...], concat: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``concat()`` (the step's whole aggregate ``concat(a_j)``) once per tuple of the parts' SHA-256
        digests, in part order: each caller's parts are float32 tensors whose bytes hash to those digests,
        so the content is the same for every caller. The last ``projections`` entries are kept (one whole
        vector each). Shared: callers must not modify it."""
        return _lru(self._whole, digests, concat, self._limits[2])

    def _z_entry(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        return _lru(self._z, key, make, self._limits[2])

    def projection_slice(self, r: bytes, numel: int, a0: int, a1: int) -> torch.Tensor:
        """:func:`.mprng.projection_slice` ``z[a0:a1]`` (float32), kept for the last few keys; a view of
        the whole float32 ``z`` when that is held already. Shared: callers must not modify it."""
        whole = self._z.get(("f32", r, numel, 0, numel))
        if whole is not None:
            return whole[a0:a1]
        return self._z_entry(("f32", r, numel, a0, a1), lambda: projection_slice(r, numel, a0, a1))

    def projection(self, r: bytes, numel: int) -> torch.Tensor:
        """The whole ``z`` of ``(r, numel)`` as **float32** (:meth:`projection_slice` of ``[0, numel)``): the
        values of :func:`.mprng.projection`, which widens them exactly to float64; the core's kernels take
        either dtype and widen chunk by chunk, so no full-size float64 copy is made. Shared: callers must
        not modify it."""
        return self.projection_slice(r, numel, 0, numel)


def _lru(cache: OrderedDict, key, make: Callable[[], torch.Tensor], limit: int) -> torch.Tensor:
    """``cache[key]``, made by ``make()`` on a miss; the ``limit`` most recently used entries are kept."""
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = make()
        while len(cache) > limit:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit
