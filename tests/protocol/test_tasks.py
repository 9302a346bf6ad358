"""Tasks: deterministic models and batches by seed, trainability, bit-exact gradient recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker_client.tasks import (
    TASKS,
    DatasetMissing,
    apply_flat_update,
    compute_gradient,
    datasets,
    fashion_available,
    flatten_grads,
    flatten_params,
    get_task,
    load_flat_params,
    num_params,
    param_slices,
    set_flat_grads,
)

FAST_TASKS = ["digits-mlp", "mnist5k-mlp"]


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _task_or_skip(name):
    if name == "fashion-cnn" and not fashion_available():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    return get_task(name)


def test_registry_lists_the_builtin_tasks_and_rejects_unknown_names():
    assert {"digits-mlp", "mnist5k-mlp", "fashion-cnn"} <= set(TASKS)
    with pytest.raises(ValueError, match="unknown task 'cifar'"):
        get_task("cifar")


@pytest.mark.parametrize("name, train, test, features", [
    ("digits-mlp", 1497, 300, (64,)),
    ("mnist5k-mlp", 4000, 1000, (784,)),
    ("fashion-cnn", 60000, 10000, (1, 28, 28)),
])
def test_each_task_has_its_fixed_split_and_inputs_scaled_to_unit_range(name, train, test, features):
    task = _task_or_skip(name)
    assert (task.train_size, task.test_size, task.num_classes) == (train, test, 10)
    x_test, y_test = task.test_set()
    assert tuple(x_test.shape[1:]) == features and x_test.dtype == torch.float32
    assert 0.0 <= float(x_test.min()) and float(x_test.max()) <= 1.0
    assert set(y_test.unique().tolist()) == set(range(10))  # the split is shuffled, not by class


def test_mnist5k_is_parsed_once_into_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BTARD_CACHE_DIR", str(tmp_path))
    datasets.load_mnist5k_split.cache_clear()
    try:
        first = datasets.load_mnist5k_split()
        assert (tmp_path / "mnist5k.npz").exists()
        datasets.load_mnist5k_split.cache_clear()
        second = datasets.load_mnist5k_split()  # now read from the cached npz
        for a, b in zip(first, second):
            assert np.array_equal(a, b)
    finally:
        datasets.load_mnist5k_split.cache_clear()


def test_fashion_cnn_tells_the_user_how_to_install_a_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_DIR", tmp_path)
    datasets.load_fashion_mnist.cache_clear()
    try:
        with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist"):
            get_task("fashion-cnn").test_set()
        assert not fashion_available()
    finally:
        datasets.load_fashion_mnist.cache_clear()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_models_are_deterministic_by_seed_and_leave_the_global_rng_alone(name):
    task = _task_or_skip(name) if name == "fashion-cnn" else get_task(name)
    state = torch.random.get_rng_state()
    a, b, c = task.build_model(7), task.build_model(7), task.build_model(8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(flatten_params(a), flatten_params(b))
    assert not torch.equal(flatten_params(a), flatten_params(c))
    if name == "fashion-cnn":
        assert 15_000 <= num_params(a) <= 25_000


@pytest.mark.parametrize("name", FAST_TASKS)
def test_batches_are_a_deterministic_function_of_the_public_seed(name):
    task = get_task(name)
    x1, y1 = task.batch(123, 32)
    x2, y2 = get_task(name).batch(123, 32)
    x3, _ = task.batch(124, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert len(set(task.batch_indices(123, 32).tolist())) == 32  # no repeats inside a batch
    assert task.batch(2**200, 8)[0].shape[0] == 8  # hash-sized seeds are fine
    with pytest.raises(ValueError, match="non-negative"):
        task.batch(-1, 8)


def test_flip_labels_maps_y_to_c_minus_one_minus_y():
    task = get_task("digits-mlp")
    x, y = task.batch(5, 64)
    xf, yf = task.batch(5, 64, flip_labels=True)
    assert torch.equal(x, xf)
    assert torch.equal(yf, 9 - y)


@pytest.mark.parametrize("name", FAST_TASKS)
def test_gradient_recomputation_reproduces_the_gradient_bit_exactly(name):
    task = get_task(name)
    model = task.build_model(0)
    g1 = compute_gradient(task, model, 99, 32)
    g2 = compute_gradient(task, task.build_model(0), 99, 32)
    assert g1.dtype == torch.float32 and g1.shape == (num_params(model),)
    assert torch.equal(g1, g2)
    assert not torch.equal(g1, compute_gradient(task, model, 100, 32))
    assert all(p.grad is None for p in model.parameters())  # .grad is left alone


def test_flat_helpers_round_trip_and_apply_an_sgd_step():
    task = get_task("digits-mlp")
    model = task.build_model(1)
    flat = flatten_params(model)
    slices = param_slices(model)
    assert slices[-1].stop == flat.numel() == num_params(model)
    load_flat_params(model, flat * 2)
    assert torch.equal(flatten_params(model), flat * 2)
    g = torch.arange(flat.numel(), dtype=torch.float32)
    set_flat_grads(model, g)
    assert torch.equal(flatten_grads(model), g)
    load_flat_params(model, flat)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    apply_flat_update(model, g, opt)
    assert torch.allclose(flatten_params(model), flat - 0.5 * g)
    with pytest.raises(ValueError, match="expected"):
        load_flat_params(model, flat[:-1])


def test_digits_mlp_trains_well_above_chance_in_a_few_dozen_steps():
    task = get_task("digits-mlp")
    model = task.build_model(0)
    opt = task.make_optimizer(model.parameters())
    assert opt.defaults["momentum"] == 0.9
    before = task.evaluate(model)
    for step in range(60):
        apply_flat_update(model, compute_gradient(task, model, step, 32), opt)
    after = task.evaluate(model)
    assert before < 0.3 and after > 0.7, (before, after)


def test_mnist5k_mlp_uses_the_calibrated_learning_rate_and_learns():
    task = get_task("mnist5k-mlp")
    assert task.lr == 0.05
    model = task.build_model(0)
    opt = task.make_optimizer(model.parameters())
    for step in range(40):
        apply_flat_update(model, compute_gradient(task, model, step, 32), opt)
    assert task.evaluate(model) > 0.6


def test_another_process_recomputes_the_same_gradient_bit_for_bit():
    """What validation by recalculation relies on: a peer on the same machine gets identical bytes."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from worker_client.btard.tensors import tensor_hash

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from worker_client.tasks import get_task, compute_gradient\n"
        "from worker_client.btard.tensors import tensor_hash\n"
        "t = get_task('mnist5k-mlp'); m = t.build_model(3)\n"
        "print(tensor_hash(compute_gradient(t, m, 2**70 + 5, 32)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=True)
    task = get_task("mnist5k-mlp")
    assert out.stdout.strip() == tensor_hash(compute_gradient(task, task.build_model(3), 2**70 + 5, 32))
