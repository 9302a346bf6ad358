"""The language-model task (gpt-char, pinned corpus, held-out loss and perplexity) and the ResNet task
(fashion-resnet, GroupNorm, no running statistics)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from worker_client.tasks import (
    DatasetMissing,
    TaskUnavailable,
    compute_gradient,
    fashion_available,
    get_task,
    lm,
    load_run_task,
    num_params,
    run_task_extra,
)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def other_corpus(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("print('hello')\n" * 2000)
    monkeypatch.setattr(lm, "CORPUS_DIR", tmp_path)
    return tmp_path


def _run(task, **extra):
    from types import SimpleNamespace

    return SimpleNamespace(task=task, name="r", extra=extra)


def test_gpt_char_is_a_ten_million_parameter_decoder_and_the_small_one_is_the_same_code():
    big, small = get_task("gpt-char"), get_task("gpt-char-small")
    model = big.build_model(0)
    assert num_params(model) >= 10_000_000
    assert (big.layers, big.d_model, big.heads, big.ctx, big.num_classes) == (6, 384, 6, 128, 256)
    assert type(small.build_model(0)) is type(model) and num_params(small.build_model(0)) < 1_000_000
    assert not list(model.buffers())  # LayerNorm only: no running statistics
    assert float(model.tok.weight.detach().std()) == pytest.approx(0.02, rel=0.05)


def test_the_corpus_is_pinned_by_its_hash_and_the_run_records_it():
    data, digest = lm.load_corpus()
    assert len(data) > 1_000_000 and digest == hashlib.sha256(data).hexdigest()
    extra = run_task_extra("gpt-char-small")
    assert extra["data_sha256"] == digest and extra["task_package"] == "btard-swarm"
    assert load_run_task(_run("gpt-char-small", **extra)).name == "gpt-char-small"


def test_a_peer_whose_corpus_has_other_bytes_is_refused_with_the_install_command(other_corpus):
    _, pinned = lm._load_corpus("/usr/lib/python3.11")
    with pytest.raises(TaskUnavailable, match=r"gpt-char-small.*SHA-256.*this machine's copy.*apt-get install "
                                              r"libpython3\.11-minimal="):
        load_run_task(_run("gpt-char-small", data_sha256=pinned))


def test_a_missing_corpus_says_which_debian_packages_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "CORPUS_DIR", tmp_path / "absent")
    with pytest.raises(DatasetMissing, match="apt-get install libpython3.11-minimal libpython3.11-stdlib"):
        get_task("gpt-char-small").data_sha256()


def test_batches_are_windows_shifted_by_one_byte_drawn_from_the_training_split_only():
    task = get_task("gpt-char-small")
    train, test = task.data
    assert len(test) == pytest.approx(0.1 * (len(train) + len(test)), abs=2)
    x, y = task.batch(123, 8)
    assert x.shape == y.shape == (8, task.ctx) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(task.batch(123, 8)[0], x) and not torch.equal(task.batch(124, 8)[0], x)
    starts = task.batch_indices(123, 8)
    assert (starts + task.ctx + 1 <= len(train)).all()
    assert np.array_equal(train[starts[0]:starts[0] + task.ctx], x[0].numpy())
    assert torch.equal(task.batch(123, 8, flip_labels=True)[1], 255 - y)


def test_held_out_metrics_report_loss_perplexity_and_bits_per_byte():
    task = get_task("gpt-char-small")
    m = task.metrics(task.build_model(0))
    assert m["loss"] == pytest.approx(math.log(256), abs=0.5)  # near uniform at init
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["bits_per_byte"] == pytest.approx(m["loss"] / math.log(2))
    assert task.evaluate(task.build_model(0)) == m["accuracy"]
    assert task.test_size == task.eval_windows


def test_a_language_model_gradient_is_recomputed_bit_for_bit():
    task = get_task("gpt-char-small")
    g1 = compute_gradient(task, task.build_model(1), 2**70 + 3, 8)
    g2 = compute_gradient(task, task.build_model(1), 2**70 + 3, 8)
    assert torch.equal(g1, g2) and torch.isfinite(g1).all()


def _fashion_or_skip():
    if not fashion_available():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    return get_task("fashion-resnet")


def test_fashion_resnet_has_residual_blocks_and_group_norm_and_a_million_parameters():
    from worker_client.tasks.vision import BasicBlock

    model = get_task("fashion-resnet").build_model(0)
    assert num_params(model) >= 1_000_000
    kinds = {type(m) for m in model.modules()}
    assert BasicBlock in kinds and nn.GroupNorm in kinds
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not list(model.buffers())  # nothing but parameters: every honest peer's state is identical
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_fashion_resnet_learns_well_above_chance_with_lamb():
    task = _fashion_or_skip()
    model = task.build_model(0)
    opt = task.make_optimizer(model.parameters())
    from worker_client.tasks import apply_flat_update

    for step in range(25):
        apply_flat_update(model, compute_gradient(task, model, step, 32), opt)
    assert task.evaluate(model) > 0.3
    assert len(task.data_sha256()) == 64


@pytest.mark.parametrize("name, peers, steps", [("gpt-char-small", 4, 2), ("fashion-resnet", 4, 1)])
def test_the_new_tasks_run_through_the_protocol_in_btard_sim(name, peers, steps):
    from worker_client.sim import run_simulation

    if name == "fashion-resnet":
        _fashion_or_skip()
    out = run_simulation(task=name, peers=peers, steps=steps, eval_every=0, threads=1)
    assert out["applied_steps"] == steps and out["honest_disagreements"] == 0 and not out["bans"]
    assert 0.0 <= out["final_accuracy"] <= 1.0
