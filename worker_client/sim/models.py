"""The simulator's model states by version, its gradient cache and the non-IID shards."""

from __future__ import annotations

import copy
import importlib
from collections import OrderedDict

import numpy as np
import torch

from ..btard import protocol as P
from ..tasks import batch_gradient, flatten_params, load_flat_params


def _compute_gradient(*args, **kw) -> torch.Tensor:
    # looked up on the package at each call: ``worker_client.sim.compute_gradient`` is the one seam a
    # test replaces to see every gradient the simulator computes (tests/protocol/test_swarm.py)
    return importlib.import_module(__package__).compute_gradient(*args, **kw)


class Models:
    """Model states by version (the protocol's ``model_ref``) and a cache of computed gradients."""

    def __init__(self, task, model, batch_size: int, keep: int = 3, shards: dict[str, np.ndarray] | None = None):
        self.task = task
        self.shards = shards
        self.model = model
        self.scratch = copy.deepcopy(model)
        self.batch_size = batch_size
        self.version = 0
        self.states: OrderedDict[int, torch.Tensor] = OrderedDict({0: flatten_params(model)})
        self.keep = keep
        self.cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.computed = 0

    def bump(self) -> None:
        self.version += 1
        self.states[self.version] = flatten_params(self.model)
        while len(self.states) > self.keep:
            self.states.popitem(last=False)

    def gradient(self, version: int, seed: int, flip: bool, batch_size: int = 0, peer: str = "") -> torch.Tensor:
        batch_size = batch_size or self.batch_size
        key = (version, seed, flip, batch_size, peer if self.shards else "")
        g = self.cache.get(key)
        if g is None:
            if version == self.version:
                model = self.model
            else:
                load_flat_params(self.scratch, self.states[version])
                model = self.scratch
            if self.shards:  # non-IID: the batch of this seed from the batch owner's shard
                g = self._shard_gradient(model, seed, flip, batch_size, self.shards[peer])
            else:
                g = _compute_gradient(self.task, model, seed, batch_size, flip_labels=flip)
            self.computed += 1
            self.cache[key] = g
            while len(self.cache) > 256:
                self.cache.popitem(last=False)
        return g

    def _shard_gradient(self, model, seed: int, flip: bool, batch_size: int, shard: np.ndarray) -> torch.Tensor:
        rng = np.random.Generator(np.random.PCG64(int(seed)))
        idx = torch.from_numpy(shard[rng.choice(len(shard), size=batch_size, replace=len(shard) < batch_size)])
        x_train, y_train, _, _ = self.task.data
        x, y = x_train[idx], y_train[idx]
        if flip:
            y = self.task.num_classes - 1 - y
        return batch_gradient(self.task, model, x, y)[0]

    def batch(self, requests: list[tuple[str, P.ComputeGradient]]) -> list[torch.Tensor]:
        return [self.gradient(req.model_ref, req.seed, req.flip_labels, req.batch_size, req.peer)
                for _, req in requests]


def dirichlet_shards(labels: torch.Tensor, peers: list[str], *, alpha: float, seed: int) -> dict[str, np.ndarray]:
    """Label-skewed shards of the training set (Hsu et al., 2019): for every class, the peers' shares
    are drawn from Dirichlet(alpha, ..., alpha) and that class's samples are dealt out in those
    proportions. Every sample goes to exactly one peer; a peer left with none gets one sample of the
    largest shard. Deterministic in ``seed``, so every peer (and validator) knows every shard."""
    if not alpha > 0:
        raise ValueError(f"non-IID needs a Dirichlet alpha > 0, got {alpha!r}")
    rng = np.random.Generator(np.random.PCG64(int(seed) * 7 + 3))
    y = labels.numpy()
    parts: list[list[np.ndarray]] = [[] for _ in peers]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(len(peers), float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    shards = [np.sort(np.concatenate(p)) for p in parts]
    for k, shard in enumerate(shards):
        if len(shard) == 0:
            big = max(range(len(shards)), key=lambda j: len(shards[j]))
            shards[k], shards[big] = shards[big][:1], shards[big][1:]
    return dict(zip(peers, shards))
