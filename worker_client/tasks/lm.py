"""``gpt-char``: a GPT-style decoder trained as a byte-level language model on a pinned text corpus.

The corpus is the source of the Python 3.11 standard library as Debian ships it (packages
``libpython3.11-minimal`` and ``libpython3.11-stdlib``, files ``/usr/lib/python3.11/*.py``): every file
of that directory that ends in ``.py`` and is not a link, sorted by name, each preceded by a
``# file: NAME`` line. About 4.7 MB of English prose in docstrings and comments and Python code,
present on every machine with Debian's Python 3.11. Its SHA-256 is what a run records
(``extra.data_sha256``, see :func:`~.registry.run_task_extra`); a peer whose copy differs (another
package version, an edited file) is refused with the command that installs the pinned one.

The first 90% of the bytes train, the last 10% are held out; :meth:`GptChar.metrics` reports the
held-out loss (nats per byte), perplexity and bits per byte. ``gpt-char`` has 10.8M parameters
(6 layers, d=384, 6 heads, context 128, vocabulary 256); ``gpt-char-small`` (2 layers, d=128) is the
same code for tests and integration runs.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import Task
from .datasets import DatasetMissing

CORPUS_DIR = Path(os.environ.get("BTARD_LM_CORPUS_DIR", "/usr/lib/python3.11"))
CORPUS_PACKAGES = "libpython3.11-minimal libpython3.11-stdlib"
CORPUS_PINNED = "libpython3.11-minimal=3.11.2-6+deb12u6 libpython3.11-stdlib=3.11.2-6+deb12u6"
HELD_OUT = 0.1


def corpus_files(directory: Path | None = None) -> list[Path]:
    directory = CORPUS_DIR if directory is None else directory
    if not directory.is_dir():
        raise DatasetMissing(f"the gpt-char corpus {directory} is missing: run `apt-get install {CORPUS_PACKAGES}`")
    files = sorted(p for p in directory.iterdir() if p.suffix == ".py" and p.is_file() and not p.is_symlink())
    if not files:
        raise DatasetMissing(f"no .py files in {directory}: run `apt-get install {CORPUS_PACKAGES}`")
    return files


@functools.cache
def _load_corpus(directory: str) -> tuple[bytes, str]:
    parts = []
    for path in corpus_files(Path(directory)):
        parts.append(f"# file: {path.name}\n".encode())
        parts.append(path.read_bytes())
        parts.append(b"\n")
    data = b"".join(parts)
    return data, hashlib.sha256(data).hexdigest()


def load_corpus() -> tuple[bytes, str]:
    """The corpus bytes and their SHA-256 (read once per process)."""
    return _load_corpus(str(CORPUS_DIR))


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token + learned position embeddings, pre-LayerNorm blocks, final LayerNorm, head tied to the
    token embedding. No dropout (every peer's forward pass must be a function of the seed only)."""

    def __init__(self, *, vocab: int, ctx: int, layers: int, d: int, heads: int):
        super().__init__()
        self.ctx = ctx
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.t()


class GptChar(Task):
    """A 10.8M-parameter GPT on the bytes of Debian's Python 3.11 standard library (see module doc)."""

    name = "gpt-char"
    num_classes = 256
    ctx: ClassVar[int] = 128
    layers: ClassVar[int] = 6
    d_model: ClassVar[int] = 384
    heads: ClassVar[int] = 6
    eval_windows: ClassVar[int] = 256  # held-out windows of ctx + 1 bytes for metrics()
    lr = 1e-3
    optimizer = "adamw"
    betas = (0.9, 0.99)
    weight_decay = 0.1
    warmup_steps = 100
    total_steps = 5000
    min_lr_ratio = 0.1
    max_grad_norm = 1.0
    default_batch_size = 32
    micro_batch = 16

    # --- data -----------------------------------------------------------------------------------
    def _load(self):
        data, _ = load_corpus()
        arr = np.frombuffer(data, dtype=np.uint8)
        cut = int(len(arr) * (1 - HELD_OUT))
        return arr[:cut], arr[cut:]

    @property
    def train_size(self) -> int:
        """Number of window start positions in the training split."""
        return int(len(self.data[0]) - self.ctx - 1)

    @property
    def test_size(self) -> int:
        return int(self._test_windows().shape[0])

    def data_sha256(self) -> str:
        return load_corpus()[1]

    def data_source(self) -> str:
        return f"{CORPUS_DIR}/*.py from {CORPUS_PACKAGES}"

    def data_install_hint(self) -> str:
        return f"install the versions the run was made with, e.g. `apt-get install {CORPUS_PINNED}`"

    def _windows(self, arr: np.ndarray, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        w = arr[starts[:, None] + np.arange(self.ctx + 1)[None, :]].astype(np.int64)
        w = torch.from_numpy(w)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def batch(self, indices_seed: int, batch_size: int | None = None, *,
              flip_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` windows of ``ctx`` bytes at positions drawn from the public seed; the target is
        the input shifted by one byte. ``flip_labels`` maps every target byte ``y -> 255 - y``."""
        starts = self.batch_indices(indices_seed, batch_size or self.default_batch_size)
        x, y = self._windows(self.data[0], starts)
        if flip_labels:
            y = self.num_classes - 1 - y
        return x, y

    @functools.cache  # noqa: B019 - one task object per run
    def _test_windows(self) -> np.ndarray:
        test = self.data[1]
        n = min(self.eval_windows, (len(test) - 1) // (self.ctx + 1))
        stride = (len(test) - self.ctx - 1) // max(1, n)
        return np.arange(n) * stride

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._windows(self.data[1], self._test_windows())

    # --- model ----------------------------------------------------------------------------------
    def _make_model(self) -> nn.Module:
        return GPT(vocab=self.num_classes, ctx=self.ctx, layers=self.layers, d=self.d_model, heads=self.heads)

    def init_weights(self, model: nn.Module, gen: torch.Generator) -> None:
        """GPT-2's scheme: N(0, 0.02) weights and embeddings, zero biases, the residual projections
        scaled by 1/sqrt(2 * layers); LayerNorms keep their ones and zeros."""
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                p.copy_(torch.empty(p.shape).normal_(0.0, std, generator=gen))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def metrics(self, model: nn.Module, *, batch_size: int = 32) -> dict[str, float]:
        """Held-out next-byte loss (nats), perplexity, bits per byte and top-1 accuracy."""
        was_training = model.training
        model.eval()
        x, y = self.test_set()
        nll, correct, count = 0.0, 0, 0
        for start in range(0, len(y), batch_size):
            xs, ys = x[start:start + batch_size], y[start:start + batch_size]
            logits = model(xs)
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1), reduction="sum"))
            correct += int((logits.argmax(dim=-1) == ys).sum())
            count += ys.numel()
        model.train(was_training)
        loss = nll / count
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2),
                "accuracy": correct / count}

    def evaluate(self, model: nn.Module, *, batch_size: int = 32) -> float:
        """Held-out next-byte top-1 accuracy, in [0, 1] (what btard-sim and the worker's reports plot)."""
        return self.metrics(model, batch_size=batch_size)["accuracy"]


class GptCharSmall(GptChar):
    """The same task at test size: 2 layers, d=128, 4 heads, context 64 (0.4M parameters)."""

    name = "gpt-char-small"
    ctx = 64
    layers = 2
    d_model = 128
    heads = 4
    eval_windows = 64
    lr = 2e-3
    warmup_steps = 10
    total_steps = 1000
    micro_batch = 0
