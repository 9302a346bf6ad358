"""An example task plugin for BTARD Swarm: three interleaved spirals in the plane, a small MLP.

Everything a task needs is here: the data (generated from a fixed seed, so every peer holds the same
bytes; a task that reads files would also override ``data_sha256``), the model (any ``nn.Module``; the
worker initialises it deterministically from the run's seed), the optimizer settings and the evaluation.
Installed, it is found by name through its entry point (see this package's ``pyproject.toml``):

    btard-sim --task example-spirals --peers 4 --steps 20
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from worker_client.tasks import Task

__version__ = "0.1.0"


def spirals(n_per_class: int, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` noisy spiral arms, ``n_per_class`` points each: float32 ``[N, 2]`` and int64 labels."""
    rng = np.random.Generator(np.random.PCG64(seed))
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 2 * np.pi / classes, c * 2 * np.pi / classes + 4.0, n_per_class)
        theta = theta + rng.normal(0.0, 0.15, n_per_class)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    order = rng.permutation(len(y))
    return x[order], y[order]


class Spirals(Task):
    """Three spirals, 2-64-64-3 MLP with LayerNorm, AdamW with warm-up and cosine decay."""

    name = "example-spirals"
    num_classes = 3
    lr = 0.01
    optimizer = "adamw"
    weight_decay = 0.01
    warmup_steps = 10
    total_steps = 500
    max_grad_norm = 1.0
    default_batch_size = 32

    def _load(self):
        x, y = spirals(600)
        n_test = 300
        return (torch.from_numpy(x[n_test:]), torch.from_numpy(y[n_test:]),
                torch.from_numpy(x[:n_test]), torch.from_numpy(y[:n_test]))

    def _make_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 64), nn.LayerNorm(64), nn.GELU(),
                             nn.Linear(64, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 3))
