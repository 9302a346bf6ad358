"""Deterministic initialisation from the run seed for any module: bit-identical parameters and buffers for
every layer type the tasks use, built twice in one process and in two processes with other thread counts."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.conftest import ROOT
from worker_client.tasks import seeded_init

LAYERS = {
    "linear": lambda: nn.Linear(32, 16),
    "layernorm": lambda: nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)),
    "embedding": lambda: nn.Embedding(64, 16),
    "attention": lambda: nn.MultiheadAttention(32, 4, batch_first=True),
    "transformer": lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
    "batchnorm": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)),
    "groupnorm": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)),
    "conv1d": lambda: nn.Conv1d(4, 8, 5),
    "conv2d": lambda: nn.Conv2d(3, 16, 3, padding=1),
}


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_it_builds_bit_identical_parameters_and_buffers_for_each_layer_type(kind):
    state = torch.random.get_rng_state()
    a, b = seeded_init(LAYERS[kind], 11), seeded_init(LAYERS[kind], 11)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(seeded_init(LAYERS[kind], 12))
    torch.manual_seed(999)  # whatever the caller's global RNG holds, the model is the same
    assert _digest(seeded_init(LAYERS[kind], 11)) == _digest(a)


def test_it_initialises_a_submodule_from_its_own_name_not_from_what_comes_before_it():
    small = seeded_init(lambda: nn.ModuleDict({"head": nn.Linear(4, 4)}), 3)
    bigger = seeded_init(lambda: nn.ModuleDict({"body": nn.Linear(50, 50), "head": nn.Linear(4, 4)}), 3)
    assert torch.equal(small["head"].weight, bigger["head"].weight)


def test_a_task_init_hook_draws_only_from_the_generator_it_is_given():
    def hook(model, gen):
        model.weight.normal_(0.0, 0.02, generator=gen)

    a = seeded_init(lambda: nn.Linear(16, 16), 5, hook)
    torch.manual_seed(1)
    b = seeded_init(lambda: nn.Linear(16, 16), 5, hook)
    assert torch.equal(a.weight, b.weight) and float(a.weight.detach().std()) < 0.05


def test_another_process_with_other_thread_counts_builds_the_same_bits():
    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1]))\n"
        "from tests.tasks.test_init import LAYERS, _digest\n"
        "from worker_client.tasks import seeded_init, get_task\n"
        "print(' '.join(_digest(seeded_init(LAYERS[k], 11)) for k in sorted(LAYERS)))\n"
        "print(_digest(get_task('gpt-char-small').build_model(4)))\n"
        "print(_digest(get_task('fashion-resnet').build_model(4)))\n"
    )
    outs = [subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, timeout=300,
                           cwd=ROOT, check=True).stdout for n in (1, 2)]
    assert outs[0] == outs[1]
    assert outs[0].split("\n")[0].split() == [_digest(seeded_init(LAYERS[k], 11)) for k in sorted(LAYERS)]
