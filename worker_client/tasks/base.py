"""The Task interface: model + data + optimizer config for one training run, deterministic by seed.

A task never touches global RNG state: models are built on the meta device and initialised from a
``torch.Generator`` seeded by the caller; batches are drawn by a numpy ``Generator`` seeded by the
public integer seed of the protocol (BTARD step 1: nobody picks their own data, anyone can recompute).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _init_from_generator(model: nn.Module, gen: torch.Generator) -> None:
    """torch's default Linear/Conv init (uniform +-1/sqrt(fan_in) for weight and bias), drawn from
    ``gen`` instead of the global RNG."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                module.weight.copy_(torch.empty(module.weight.shape).uniform_(-bound, bound, generator=gen))
                if module.bias is not None:
                    module.bias.copy_(torch.empty(module.bias.shape).uniform_(-bound, bound, generator=gen))
        elif list(module.parameters(recurse=False)):
            raise TypeError(f"no generator-based init for {type(module).__name__}")


class Task:
    """Base class; subclasses set the class attributes and implement ``_make_model`` / ``_load``."""

    name: ClassVar[str]
    num_classes: ClassVar[int]
    lr: ClassVar[float]
    momentum: ClassVar[float] = 0.9
    nesterov: ClassVar[bool] = False
    weight_decay: ClassVar[float] = 0.0
    default_batch_size: ClassVar[int] = 32

    def __init__(self) -> None:
        self._data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # --- data -----------------------------------------------------------------------------------
    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(x_train, y_train, x_test, y_test)``: float32 inputs, int64 labels."""
        raise NotImplementedError

    @property
    def data(self):
        if self._data is None:
            self._data = self._load()
        return self._data

    @property
    def train_size(self) -> int:
        return int(self.data[1].shape[0])

    @property
    def test_size(self) -> int:
        return int(self.data[3].shape[0])

    def batch_indices(self, indices_seed: int, batch_size: int) -> np.ndarray:
        """The training indices of the batch for a public seed (distinct within the batch)."""
        if not isinstance(indices_seed, (int, np.integer)) or indices_seed < 0:
            raise ValueError(f"batch seed must be a non-negative integer, got {indices_seed!r}")
        if not (1 <= batch_size <= self.train_size):
            raise ValueError(f"batch_size must be in [1, {self.train_size}], got {batch_size}")
        rng = np.random.Generator(np.random.PCG64(int(indices_seed)))
        return rng.choice(self.train_size, size=batch_size, replace=False)

    def batch(self, indices_seed: int, batch_size: int | None = None, *,
              flip_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``(x, y)`` drawn from the public integer ``indices_seed``; the same seed always
        gives the same batch. ``flip_labels=True`` maps ``y -> C - 1 - y`` (the label-flip attack)."""
        idx = torch.from_numpy(self.batch_indices(indices_seed, batch_size or self.default_batch_size))
        x_train, y_train, _, _ = self.data
        x, y = x_train[idx], y_train[idx]
        if flip_labels:
            y = self.num_classes - 1 - y
        return x, y

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, x_test, y_test = self.data
        return x_test, y_test

    # --- model ----------------------------------------------------------------------------------
    def _make_model(self) -> nn.Module:
        raise NotImplementedError

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same seed always gives the same parameters."""
        with torch.device("meta"):
            model = self._make_model()
        model = model.to_empty(device="cpu")
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed))
        _init_from_generator(model, gen)
        return model

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batch_size: int = 1000) -> float:
        """Top-1 accuracy on the test set, in [0, 1]."""
        was_training = model.training
        model.eval()
        x_test, y_test = self.test_set()
        correct = 0
        for start in range(0, len(y_test), batch_size):
            logits = model(x_test[start:start + batch_size])
            correct += int((logits.argmax(dim=1) == y_test[start:start + batch_size]).sum())
        model.train(was_training)
        return correct / len(y_test)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
