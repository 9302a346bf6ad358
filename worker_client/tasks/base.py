"""The Task interface: model + data + optimizer config for one training run, deterministic by seed.

A task never touches global RNG state. Models are built by :func:`seeded_init`: any ``nn.Module`` is
constructed under a forked, seeded global RNG and every submodule that has ``reset_parameters`` is
re-initialised by it under a seed derived from the run seed and the submodule's name, so every honest
peer builds bit-identical parameters and buffers (the three original tasks keep their original
generator-based uniform init, ``init_scheme = "uniform-fan-in"``, which the committed results used).
Batches are drawn by a numpy ``Generator`` seeded by the public integer seed of the protocol (BTARD
step 1: nobody picks their own data, anyone can recompute).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
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


def derived_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the submodule ``name`` of a model built from the run seed ``seed``."""
    digest = hashlib.sha256(f"btard-init:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_init(make: Callable[[], nn.Module], seed: int,
                init_weights: Callable[[nn.Module, torch.Generator], None] | None = None) -> nn.Module:
    """Build ``make()`` on the CPU and initialise it deterministically from ``seed``, for any module.

    The module is constructed under ``torch.random.fork_rng`` with a seeded global RNG (so buffers and
    any init done in ``__init__`` are reproducible), then every submodule with ``reset_parameters`` (or
    ``_reset_parameters``, like ``nn.MultiheadAttention``) is re-initialised in ``named_modules()``
    order, each under its own seed from :func:`derived_seed` (the model's init does not depend on which
    modules come before it). ``init_weights(model, generator)`` then applies a task's own scheme, with
    a ``torch.Generator`` seeded from ``seed``. The caller's global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "<construct>"))
        model = make()
        for name, module in model.named_modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                torch.manual_seed(derived_seed(seed, name))
                reset()
    if init_weights is not None:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(derived_seed(seed, "<init_weights>"))
        with torch.no_grad():
            init_weights(model, gen)
    return model


class Task:
    """Base class; subclasses set the class attributes and implement ``_make_model`` / ``_load``."""

    name: ClassVar[str]
    num_classes: ClassVar[int]
    lr: ClassVar[float]
    momentum: ClassVar[float] = 0.9
    nesterov: ClassVar[bool] = False
    weight_decay: ClassVar[float] = 0.0
    default_batch_size: ClassVar[int] = 32
    # optimizer: "sgd" (momentum, nesterov), "adamw" or "lamb" (betas, eps); see .optim
    optimizer: ClassVar[str] = "sgd"
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    eps: ClassVar[float] = 1e-8
    warmup_steps: ClassVar[int] = 0      # linear warm-up over this many applied updates
    total_steps: ClassVar[int] = 0       # cosine decay to min_lr_ratio * lr at this update (0: none)
    min_lr_ratio: ClassVar[float] = 0.0
    max_grad_norm: ClassVar[float] = 0.0  # clip the aggregated gradient to this global norm (0: no clipping)
    # gradient accumulation: a peer's batch is computed in chunks of this many samples (0: all at once)
    micro_batch: ClassVar[int] = 0
    # "reset_parameters": seeded_init (any module); "uniform-fan-in": the original Linear/Conv-only init
    init_scheme: ClassVar[str] = "reset_parameters"

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

    def init_weights(self, model: nn.Module, gen: torch.Generator) -> None:
        """A task's own initialisation on top of the modules' defaults (draw only from ``gen``)."""

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same seed always gives the same parameters and buffers."""
        if self.init_scheme == "uniform-fan-in":
            with torch.device("meta"):
                model = self._make_model()
            model = model.to_empty(device="cpu")
            gen = torch.Generator(device="cpu")
            gen.manual_seed(int(seed))
            _init_from_generator(model, gen)
            return model
        if self.init_scheme != "reset_parameters":
            raise ValueError(f"{self.name}: unknown init_scheme {self.init_scheme!r}")
        return seeded_init(self._make_model, seed, self.init_weights)

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

    # --- pinned data (a run records the hash; a peer with other bytes is refused) ----------------
    def data_sha256(self) -> str | None:
        """SHA-256 of the exact training data, for tasks whose data every peer must hold byte for byte
        (checked against the run's ``extra.data_sha256``); None: not pinned."""
        return None

    def data_source(self) -> str:
        """Where this machine's copy of the data comes from, in words."""
        return "the task's data"

    def data_install_hint(self) -> str:
        """What to run to get the data the run pins."""
        return "install the data the run's page names"

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """The task's optimizer. Plain SGD with momentum and no schedule or clipping is torch's own (the
        original tasks); anything else is :class:`~.optim.TaskOptimizer` (scheduled, clipped in ``step``)."""
        from .optim import TaskOptimizer

        if (self.optimizer == "sgd" and not self.warmup_steps and not self.total_steps
                and not self.max_grad_norm):
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                                   weight_decay=self.weight_decay)
        return TaskOptimizer(params, kind=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                             momentum=self.momentum, nesterov=self.nesterov, betas=self.betas, eps=self.eps,
                             warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                             min_lr_ratio=self.min_lr_ratio, max_grad_norm=self.max_grad_norm)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics for reports: ``accuracy`` at least (language models add loss and perplexity)."""
        return {"accuracy": self.evaluate(model)}

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
