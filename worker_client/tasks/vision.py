"""``fashion-resnet``: a ResNet-style CNN with GroupNorm on Fashion-MNIST (Debian's dataset-fashion-mnist).

Four stages of one basic residual block each (widths 32, 64, 128, 256; strides 1, 2, 2, 2), GroupNorm
instead of BatchNorm so that the model has no running statistics (every honest peer's state is exactly
its parameters), global average pooling and a linear classifier: 1.2M parameters. Trained with LAMB,
warm-up and cosine decay, gradients clipped by global norm.
"""

from __future__ import annotations

import functools
import hashlib
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from . import datasets
from .base import Task

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: int, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), _norm(widths[0]),
                                  nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


class FashionResNet(Task):
    """Fashion-MNIST, a 1.2M-parameter ResNet-10-style CNN with GroupNorm, LAMB."""

    name = "fashion-resnet"
    num_classes = 10
    input_shape = (1, 28, 28)
    widths: ClassVar[tuple[int, ...]] = (32, 64, 128, 256)
    blocks: ClassVar[int] = 1
    lr = 0.01
    optimizer = "lamb"
    weight_decay = 0.01
    warmup_steps = 20
    total_steps = 2000
    min_lr_ratio = 0.05
    max_grad_norm = 1.0
    default_batch_size = 32

    def _load(self):
        x_tr, y_tr, x_te, y_te = datasets.load_fashion_mnist()
        return (torch.from_numpy(x_tr).contiguous(), torch.from_numpy(y_tr).contiguous(),
                torch.from_numpy(x_te).contiguous(), torch.from_numpy(y_te).contiguous())

    def _make_model(self) -> nn.Module:
        return ResNet(self.widths, self.blocks, self.num_classes)

    @functools.cache  # noqa: B019 - one task object per run
    def data_sha256(self) -> str:
        """SHA-256 over the four Fashion-MNIST files as installed (name, then bytes, in a fixed order)."""
        h = hashlib.sha256()
        for stem in FASHION_FILES:
            path = datasets._fashion_file(stem)
            h.update(path.name.encode() + b"\0")
            h.update(path.read_bytes())
        return h.hexdigest()

    def data_source(self) -> str:
        return f"{datasets.FASHION_DIR} from dataset-fashion-mnist"

    def data_install_hint(self) -> str:
        return "run `apt-get install dataset-fashion-mnist` (the version the run was made with)"

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batch_size: int = 500) -> float:
        return super().evaluate(model, batch_size=batch_size)
