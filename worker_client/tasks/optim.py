"""The optimizers tasks choose (SGD with momentum, AdamW, LAMB) with warm-up + cosine decay and gradient
clipping by global norm, and their state as one flat float32 vector (what newcomers download).

Every honest peer applies the same aggregated gradient to the same state, so all of this is
deterministic: the learning-rate factor depends only on the number of updates applied so far (kept in the
optimizer's state and sent to newcomers with it), the clipping norm is computed in float64 in parameter
order.

LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning", Algorithm 2), per parameter tensor
``x`` with Adam moments ``m, v`` at update ``t``::

    r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    u = r + wd * x
    x <- x - lr_t * (||x|| / ||u||) * u          (trust ratio 1 when either norm is 0)

AdamW (Loshchilov & Hutter): ``x <- x * (1 - lr_t * wd) - lr_t * r``. Weight decay applies to tensors of
two or more dimensions only (not to biases and normalisation gains), as is usual for both.
"""

from __future__ import annotations

import math

import torch

from .flat import flatten_params, load_flat_params

KINDS = ("sgd", "adamw", "lamb")


def lr_factor(step: int, *, warmup_steps: int = 0, total_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base learning rate for update number ``step`` (1-based): linear warm-up
    over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps`` (held there after);
    ``total_steps = 0``: constant after the warm-up."""
    if warmup_steps > 0 and step <= warmup_steps:
        return step / warmup_steps
    if total_steps <= 0:
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TaskOptimizer(torch.optim.Optimizer):
    """SGD with momentum, AdamW or LAMB (``kind``), scheduled and clipped inside :meth:`step`."""

    def __init__(self, params, *, kind: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 warmup_steps: int = 0, total_steps: int = 0, min_lr_ratio: float = 0.0,
                 max_grad_norm: float = 0.0):
        if kind not in KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; use one of {', '.join(KINDS)}")
        if lr < 0 or weight_decay < 0 or max_grad_norm < 0 or warmup_steps < 0 or total_steps < 0:
            raise ValueError("lr, weight_decay, max_grad_norm, warmup_steps and total_steps must be >= 0")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "betas": tuple(betas), "eps": eps, "warmup_steps": int(warmup_steps),
                    "total_steps": int(total_steps), "min_lr_ratio": min_lr_ratio, "max_grad_norm": max_grad_norm}
        super().__init__(params, defaults)
        self.kind = kind
        for group in self.param_groups:
            group.setdefault("step", 0)

    def scheduled_lr(self, group: dict, step: int) -> float:
        return group["lr"] * lr_factor(step, warmup_steps=group["warmup_steps"], total_steps=group["total_steps"],
                                       min_lr_ratio=group["min_lr_ratio"])

    @staticmethod
    def global_norm(grads: list[torch.Tensor]) -> float:
        """sqrt(sum of squares) of all gradients, accumulated in float64 in parameter order."""
        total = 0.0
        for g in grads:
            total += float(g.detach().double().pow(2).sum())
        return math.sqrt(total)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            group["step"] += 1
            t = group["step"]
            lr = self.scheduled_lr(group, t)
            coef = 1.0
            if group["max_grad_norm"] > 0:
                norm = self.global_norm([p.grad for p in params])
                coef = min(1.0, group["max_grad_norm"] / (norm + 1e-6))
            b1, b2 = group["betas"]
            for p in params:
                g = p.grad if coef == 1.0 else p.grad * coef
                wd = group["weight_decay"] if p.dim() >= 2 else 0.0
                state = self.state[p]
                if self.kind == "sgd":
                    if wd:
                        g = g.add(p, alpha=wd)
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(g)
                    d = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                    p.add_(d, alpha=-lr)
                    continue
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
                if self.kind == "adamw":
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(r, alpha=-lr)
                else:  # lamb
                    u = r.add(p, alpha=wd) if wd else r
                    w_norm, u_norm = float(p.norm()), float(u.norm())
                    trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                    p.add_(u, alpha=-lr * trust)
        return loss


# --- the optimizer state as a flat vector ---------------------------------------------------------------

def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _layout(optimizer: torch.optim.Optimizer) -> tuple[list[str], bool]:
    """(per-parameter state keys, whether the update counters follow)."""
    if isinstance(optimizer, TaskOptimizer):
        if optimizer.kind == "sgd":
            return ["momentum_buffer"], True
        return ["exp_avg", "exp_avg_sq"], True
    if isinstance(optimizer, torch.optim.SGD):
        return ["momentum_buffer"], False  # the built-in tasks: params + momentum, as always
    raise TypeError(f"the state of {type(optimizer).__name__} cannot be sent to newcomers: use "
                    f"Task.optimizer = 'sgd' | 'adamw' | 'lamb'")


def optimizer_state_numel(optimizer: torch.optim.Optimizer) -> int:
    keys, counters = _layout(optimizer)
    return len(keys) * sum(p.numel() for p in _params(optimizer)) + (len(optimizer.param_groups) if counters else 0)


def optimizer_state_vector(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """``[key 1 of every parameter][key 2 ...][update counter of each group]`` as float32 on the CPU;
    zeros where a state is not created yet (identical to a fresh state)."""
    keys, counters = _layout(optimizer)
    parts = []
    for key in keys:
        for p in _params(optimizer):
            buf = optimizer.state.get(p, {}).get(key)
            parts.append(torch.zeros(p.numel()) if buf is None else buf.detach().reshape(-1).float().cpu())
    if counters:
        parts.append(torch.tensor([float(g["step"]) for g in optimizer.param_groups], dtype=torch.float32))
    return torch.cat(parts) if parts else torch.zeros(0)


def load_optimizer_state_vector(optimizer: torch.optim.Optimizer, flat: torch.Tensor) -> None:
    """The inverse of :func:`optimizer_state_vector`."""
    keys, counters = _layout(optimizer)
    expected = optimizer_state_numel(optimizer)
    if flat.dim() != 1 or flat.numel() != expected:
        raise ValueError(f"optimizer state has shape {tuple(flat.shape)}, expected ({expected},)")
    start = 0
    for key in keys:
        for p in _params(optimizer):
            n = p.numel()
            optimizer.state[p][key] = flat[start:start + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
            start += n
    if counters:
        for group, value in zip(optimizer.param_groups, flat[start:].tolist()):
            if value < 0 or value != int(value):
                raise ValueError(f"optimizer update counter {value} is not a whole number >= 0")
            group["step"] = int(value)


# --- undoing one update ------------------------------------------------------------------------------

class UndoPoint:
    """The parameters and the optimizer state (moments, update counter) before one update: restoring
    it puts the model and the optimizer back bit for bit, so the next update is the one that would have
    come without it (BTARD: a recalculation ban undoes the step its attacker was aggregated in)."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, *,
                 before: torch.Tensor | None = None):
        # ``before``: the flat parameters as they are now, a snapshot the caller already keeps and never
        # changes (the worker's ``snapshots``, the simulator's ``Models.states``): no second copy per step
        self.params = flatten_params(params).clone() if before is None else before
        self.optimizer_state = optimizer_state_vector(optimizer).clone()

    def restore(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        load_flat_params(params, self.params)
        load_optimizer_state_vector(optimizer, self.optimizer_state)
