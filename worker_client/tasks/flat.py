"""Flat float32 views of a model's parameters and gradients (BTARD step 2: one vector, n parts)."""

from __future__ import annotations

import torch
from torch import nn


def _params(model_or_params) -> list[torch.Tensor]:
    if isinstance(model_or_params, nn.Module):
        return list(model_or_params.parameters())
    return list(model_or_params)


def num_params(model_or_params) -> int:
    return sum(p.numel() for p in _params(model_or_params))


def param_slices(model_or_params) -> list[slice]:
    """The slice of the flat vector that holds each parameter tensor, in ``parameters()`` order."""
    out, start = [], 0
    for p in _params(model_or_params):
        out.append(slice(start, start + p.numel()))
        start += p.numel()
    return out


def flatten_params(model_or_params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).to(torch.float32) for p in _params(model_or_params)])


def flatten_grads(model_or_params) -> torch.Tensor:
    """Concatenated ``.grad`` of every parameter as float32 (zeros where a grad is missing)."""
    return torch.cat([
        (p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros(p.numel())).to(torch.float32)
        for p in _params(model_or_params)
    ])


def _check_size(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat vector has shape {tuple(flat.shape)}, expected ({total},)")


def load_flat_params(model_or_params, flat: torch.Tensor) -> None:
    """Overwrite the parameters with the values of ``flat``."""
    params = _params(model_or_params)
    _check_size(params, flat)
    with torch.no_grad():
        for p, sl in zip(params, param_slices(params)):
            p.copy_(flat[sl].view_as(p))


def set_flat_grads(model_or_params, flat: torch.Tensor) -> None:
    """Set every parameter's ``.grad`` from ``flat``."""
    params = _params(model_or_params)
    _check_size(params, flat)
    for p, sl in zip(params, param_slices(params)):
        p.grad = flat[sl].detach().view_as(p).to(p.dtype).clone()


def apply_flat_update(model_or_params, flat_grad: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """BTARD step 9: ``x_{t+1} = optimizer.step(aggregated gradient)``."""
    set_flat_grads(model_or_params, flat_grad)
    optimizer.step()


def batch_gradient(task, model: nn.Module, x, y, params: list[torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat float32 gradient of ``task.loss`` on ``(x, y)`` and the loss, on the model's device.

    With ``task.micro_batch`` set and smaller than the batch, the batch is processed in chunks of that
    many samples (gradient accumulation: a peer's share of a large global batch fits in memory); each
    chunk's loss is weighted by its share of the batch, so the result is the gradient of the batch mean.
    Leaves ``.grad`` untouched (``torch.autograd.grad``)."""
    params = list(model.parameters()) if params is None else params
    n = len(y)
    micro = int(getattr(task, "micro_batch", 0) or 0)
    if micro <= 0 or micro >= n:
        loss = task.loss(model, x, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g.reshape(-1) if g is not None else torch.zeros(p.numel(), device=p.device))
                          .to(torch.float32) for g, p in zip(grads, params)])
        return flat, loss.detach()
    flat = None
    total = None
    for start in range(0, n, micro):
        xs, ys = x[start:start + micro], y[start:start + micro]
        loss = task.loss(model, xs, ys) * (len(ys) / n)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        part = torch.cat([(g.reshape(-1) if g is not None else torch.zeros(p.numel(), device=p.device))
                          .to(torch.float32) for g, p in zip(grads, params)])
        flat = part if flat is None else flat.add_(part)
        total = loss.detach() if total is None else total + loss.detach()
    return flat, total


def compute_gradient(task, model: nn.Module, seed: int, batch_size: int | None = None, *,
                     flip_labels: bool = False) -> torch.Tensor:
    """The flat float32 gradient of ``task.loss`` on the batch of public ``seed``.

    Leaves ``.grad`` untouched (uses ``torch.autograd.grad``), so any peer can recompute another
    peer's gradient: on the same machine and thread count the result is bit-exact."""
    x, y = task.batch(seed, batch_size, flip_labels=flip_labels)
    return batch_gradient(task, model, x, y)[0]
