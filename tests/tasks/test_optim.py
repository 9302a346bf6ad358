"""Optimizers: LAMB against its definition, AdamW and SGD against torch's, the warm-up + cosine schedule,
clipping by global norm, gradient accumulation, and the optimizer state a newcomer downloads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worker_client.tasks import (
    TaskOptimizer,
    UndoPoint,
    apply_flat_update,
    batch_gradient,
    compute_gradient,
    get_task,
    load_optimizer_state_vector,
    lr_factor,
    optimizer_state_numel,
    optimizer_state_vector,
)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


def _grads(step: int, params) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def test_lamb_follows_its_definition_with_trust_ratio_and_decoupled_weight_decay_on_matrices_only():
    params = _params()
    ref = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(r) for r in ref]
    v = [torch.zeros_like(r) for r in ref]
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-6, 0.1
    opt = TaskOptimizer(params, kind="lamb", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for t in range(1, 5):
        grads = _grads(t, params)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):  # You et al. 2019, Algorithm 2 (LAMB), phi = identity
            g = g.double()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            r = (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
            u = r + (wd if ref[i].dim() >= 2 else 0.0) * ref[i]
            trust = float(ref[i].norm() / u.norm())
            ref[i] = ref[i] - lr * trust * u
    for p, r in zip(params, ref):
        assert torch.allclose(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_adamw_and_sgd_match_torch_on_the_same_gradients():
    for kind, torch_opt in [
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)),
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ]:
        ours_p = [_params()[0]]  # matrices only: torch decays every tensor, ours decays matrices
        theirs_p = [_params()[0]]
        ours = TaskOptimizer(ours_p, kind=kind, lr=0.01 if kind == "adamw" else 0.1, betas=(0.9, 0.99),
                             weight_decay=0.1, momentum=0.9, nesterov=True)
        theirs = torch_opt(theirs_p)
        for t in range(1, 6):
            g = _grads(t, ours_p)[0]
            ours_p[0].grad, theirs_p[0].grad = g.clone(), g.clone()
            ours.step()
            theirs.step()
        assert torch.allclose(ours_p[0], theirs_p[0], rtol=1e-5, atol=1e-7), kind


def test_the_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    kw = {"warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1}
    assert [lr_factor(s, **kw) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert lr_factor(60, **kw) == pytest.approx(0.55)  # half way: (1 + floor) / 2
    assert lr_factor(110, **kw) == pytest.approx(0.1) and lr_factor(10_000, **kw) == pytest.approx(0.1)
    assert lr_factor(500, warmup_steps=0, total_steps=0) == 1.0
    p = nn.Parameter(torch.zeros(3))
    opt = TaskOptimizer([p], kind="sgd", lr=1.0, momentum=0.0, warmup_steps=4)
    for expected in (-0.25, -0.75, -1.5, -2.5, -3.5):  # steps of 1/4, 2/4, 3/4, 1, 1
        p.grad = torch.ones(3)
        opt.step()
        assert float(p.detach()[0]) == pytest.approx(expected)


def test_clipping_scales_the_aggregated_gradient_to_the_global_norm_and_leaves_small_ones_alone():
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3))
    opt = TaskOptimizer([a, b], kind="sgd", lr=1.0, momentum=0.0, max_grad_norm=1.0)
    a.grad, b.grad = torch.full((4,), 3.0), torch.full((3,), 4.0)  # global norm sqrt(36 + 48)
    opt.step()
    moved = torch.cat([a.detach(), b.detach()])
    assert float(moved.norm()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(moved / moved.norm(), -torch.cat([a.grad, b.grad]) / math.sqrt(84))
    a.grad, b.grad = torch.full((4,), 0.1), torch.zeros(3)
    before = a.detach().clone()
    opt.step()
    assert torch.allclose(a.detach(), before - 0.1)


@pytest.mark.parametrize("kind", ["sgd", "adamw", "lamb"])
def test_an_optimizer_state_loaded_from_its_vector_makes_the_next_update_bit_identical(kind):
    params = _params()
    opt = TaskOptimizer(params, kind=kind, lr=0.01, weight_decay=0.01, warmup_steps=3, total_steps=20,
                        max_grad_norm=1.0)
    for t in range(1, 4):
        for p, g in zip(params, _grads(t, params)):
            p.grad = g
        opt.step()
    vec = optimizer_state_vector(opt)
    assert vec.numel() == optimizer_state_numel(opt) and vec[-1] == 3.0  # the update counter travels
    fresh = [p.detach().clone().requires_grad_() for p in params]
    other = TaskOptimizer(fresh, kind=kind, lr=0.01, weight_decay=0.01, warmup_steps=3, total_steps=20,
                          max_grad_norm=1.0)
    load_optimizer_state_vector(other, vec)
    for ps, o in ((params, opt), (fresh, other)):
        for p, g in zip(ps, _grads(9, ps)):
            p.grad = g
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(params, fresh))
    with pytest.raises(ValueError, match="expected"):
        load_optimizer_state_vector(other, vec[:-1])


@pytest.mark.parametrize("kind", ["sgd", "adamw", "lamb"])
def test_undoing_an_update_makes_the_next_update_the_one_that_would_have_come_without_it(kind):
    def build():
        ps = _params()
        return ps, TaskOptimizer(ps, kind=kind, lr=0.01, weight_decay=0.01, warmup_steps=3, total_steps=20,
                                 max_grad_norm=1.0)

    def update(ps, o, t):
        for p, g in zip(ps, _grads(t, ps)):
            p.grad = g
        o.step()

    params, opt = build()
    plain, plain_opt = build()
    for t in (1, 2):
        update(params, opt, t)
        update(plain, plain_opt, t)
    point = UndoPoint(params, opt)
    update(params, opt, 3)  # the update a recalculation ban undoes
    assert not all(torch.equal(p, q) for p, q in zip(params, plain))
    point.restore(params, opt)
    assert all(torch.equal(p, q) for p, q in zip(params, plain))
    assert torch.equal(optimizer_state_vector(opt), optimizer_state_vector(plain_opt))  # counter included
    update(params, opt, 4)
    update(plain, plain_opt, 4)
    assert all(torch.equal(p, q) for p, q in zip(params, plain))


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch():
    task = get_task("gpt-char-small")
    model = task.build_model(0)
    x, y = task.batch(3, 8)
    whole, loss = batch_gradient(task, model, x, y)
    task.micro_batch = 3  # chunks of 3, 3 and 2 samples
    try:
        parts, loss_parts = batch_gradient(task, model, x, y)
    finally:
        del task.micro_batch
    assert torch.allclose(parts, whole, rtol=1e-4, atol=1e-6)
    assert float(loss_parts) == pytest.approx(float(loss), rel=1e-5)


def test_the_new_tasks_choose_their_optimizers():
    for name, kind in [("gpt-char", "adamw"), ("gpt-char-small", "adamw"), ("fashion-resnet", "lamb")]:
        task = get_task(name)
        opt = task.make_optimizer([nn.Parameter(torch.zeros(2, 2))])
        assert isinstance(opt, TaskOptimizer) and opt.kind == kind
        assert task.max_grad_norm > 0 and task.warmup_steps > 0 and task.total_steps > task.warmup_steps
    assert get_task("gpt-char").micro_batch == 16  # a peer's 32 windows in two chunks
    assert type(get_task("digits-mlp").make_optimizer([nn.Parameter(torch.zeros(2))])) is torch.optim.SGD


def test_a_newcomer_downloads_the_group_optimizer_state_and_its_next_update_is_bit_identical():
    from worker_client.worker import ModelState

    task = get_task("gpt-char-small")
    donor = ModelState(task, seed=3, lr=2e-3, device="cpu")
    donor.snapshot(0)
    for step in range(2):
        g, _ = donor.gradient(step, seed=step, batch_size=4)
        donor.apply(g, step + 1)
    assert donor.state_numel == 3 * donor.numel + 1  # params, Adam's two moments, the update counter
    newcomer = ModelState(task, seed=99, lr=2e-3, device="cpu")
    newcomer.load_full_state(donor.full_state(), step=2)
    assert torch.equal(optimizer_state_vector(newcomer.optimizer), optimizer_state_vector(donor.optimizer))
    assert newcomer.optimizer.param_groups[0]["step"] == 2
    update, _ = donor.gradient(2, seed=7, batch_size=4)
    donor.apply(update, 3)
    newcomer.apply(update, 3)
    assert torch.equal(newcomer.params(), donor.params())
    with pytest.raises(ValueError, match="expected"):
        newcomer.load_full_state(donor.full_state()[:-1], step=3)


def test_a_worker_undoes_only_its_last_applied_step_and_keeps_that_step_s_snapshot():
    from worker_client.worker import ModelState

    task = get_task("gpt-char-small")
    peer = ModelState(task, seed=3, lr=2e-3, device="cpu")
    peer.snapshot(0)
    g0, _ = peer.gradient(0, seed=0, batch_size=4)
    peer.apply(g0, 1)
    before, opt_before = peer.params(), optimizer_state_vector(peer.optimizer)
    g1, _ = peer.gradient(1, seed=1, batch_size=4)
    peer.apply(g1, 2)
    assert not peer.revert(0)  # step 0 is not the last applied step
    assert peer.revert(1)
    assert torch.equal(peer.params(), before)
    assert torch.equal(optimizer_state_vector(peer.optimizer), opt_before)
    assert not peer.revert(1)  # once
    assert 2 in peer.snapshots  # validators of step 2 recompute gradients of the state step 2 ran on
    newcomer = ModelState(task, seed=99, lr=2e-3, device="cpu")
    newcomer.load_full_state(peer.full_state(), step=2)
    assert newcomer.loaded_at == 2 and not newcomer.revert(1)  # it cannot: it never applied step 1


def test_an_adamw_task_trains_through_the_flat_update_path():
    task = get_task("gpt-char-small")
    model = task.build_model(0)
    opt = task.make_optimizer(model.parameters())
    before = task.metrics(model)["loss"]
    for step in range(30):
        apply_flat_update(model, compute_gradient(task, model, step, 16), opt)
    assert task.metrics(model)["loss"] < before - 1.0
