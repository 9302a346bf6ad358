"""The task's model and optimizer on this worker, with flat snapshots by step for recalculation (Sec. 3.3)."""

from __future__ import annotations

import threading

import torch

from ..tasks import (
    UndoPoint,
    apply_flat_update,
    batch_gradient,
    flatten_params,
    load_flat_params,
    load_optimizer_state_vector,
    optimizer_state_numel,
    optimizer_state_vector,
)

KEEP_STATES = 4  # model states kept for validation of earlier steps


class ModelState:
    """The task's model and optimizer, plus flat snapshots by step for recalculation (Sec. 3.3).

    The flat *state* a newcomer downloads is ``concat(params, optimizer state)`` (momentum buffers for
    SGD; Adam moments and the update counter, which drives the schedule, for AdamW/LAMB: see
    ``tasks.optim.optimizer_state_vector``): with both, its next update is bit-identical to the peers it joins.
    """

    def __init__(self, task, *, seed: int, lr: float, device: str):
        self.task = task
        self.device = device
        self.model = task.build_model(seed=seed)
        self.optimizer = task.make_optimizer(self.model.parameters())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.numel = sum(p.numel() for p in self.model.parameters())
        self.state_numel = self.numel + optimizer_state_numel(self.optimizer)  # what a newcomer downloads
        self.snapshots: dict[int, torch.Tensor] = {}
        self._undo: tuple[int, UndoPoint] | None = None  # (step, the state before its update), last applied
        self.loaded_at: int | None = None  # the step whose state was last downloaded from donors
        self.step = 0
        self._scratch = task.build_model(seed=seed)
        # Gradients run in worker threads (asyncio.to_thread) and share the scratch model: a validator's
        # recalculation and its own gradient would otherwise overwrite each other's weights mid-backward.
        self._scratch_lock = threading.Lock()

    def params(self) -> torch.Tensor:
        return flatten_params(self.model).clone()

    def snapshot(self, step: int) -> None:
        self.step = step
        self.snapshots[step] = self.params()
        for old in [s for s in self.snapshots if s < step - KEEP_STATES]:
            del self.snapshots[old]

    def momentum(self) -> torch.Tensor:
        bufs = []
        for p in self.model.parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            bufs.append(torch.zeros(p.numel()) if buf is None else buf.detach().reshape(-1).float().cpu())
        return torch.cat(bufs)

    def full_state(self) -> torch.Tensor:
        return torch.cat([self.params(), optimizer_state_vector(self.optimizer)])

    def load_full_state(self, flat: torch.Tensor, step: int) -> None:
        if flat.numel() != self.state_numel:
            raise ValueError(f"state has {flat.numel()} values, expected {self.state_numel}")
        load_flat_params(self.model, flat[: self.numel])
        load_optimizer_state_vector(self.optimizer, flat[self.numel:])
        self._undo = None
        self.loaded_at = step
        self.snapshot(step)

    def gradient(self, model_ref: int, seed: int, batch_size: int, flip_labels: bool = False
                 ) -> tuple[torch.Tensor, float]:
        """Flat float32 gradient (and loss) of the model state of step ``model_ref`` on batch ``seed``."""
        flat = self.snapshots.get(model_ref)
        if flat is None:
            raise KeyError(f"no model state for step {model_ref}")
        with self._scratch_lock:
            return self._gradient_locked(flat, seed, batch_size, flip_labels)

    def _gradient_locked(self, flat: torch.Tensor, seed: int, batch_size: int, flip_labels: bool
                         ) -> tuple[torch.Tensor, float]:
        model = self._scratch
        load_flat_params(model, flat)
        params = list(model.parameters())
        x, y = self.task.batch(seed, batch_size, flip_labels=flip_labels)
        if self.device != "cpu":
            model.to(self.device)
            x, y = x.to(self.device), y.to(self.device)
            params = list(model.parameters())
        g, loss = batch_gradient(self.task, model, x, y, params)  # in micro-batches when the task accumulates
        g = g.cpu()
        if self.device != "cpu":
            model.to("cpu")
        return g, float(loss.detach())

    def apply(self, update: torch.Tensor, next_step: int) -> None:
        self._undo = (next_step - 1, UndoPoint(list(self.model.parameters()), self.optimizer,
                                               before=self.snapshots.get(self.step) if self.step == next_step - 1
                                               else None))
        apply_flat_update(self.model, update, self.optimizer)
        self.snapshot(next_step)

    def revert(self, step: int) -> bool:
        """Undo step ``step``'s update if it is the last one applied (the next step's recalculation ban
        caught one of its contributors); True when something was undone. The snapshot of ``step + 1``
        stays: validators of the next step recompute gradients of the state the step ran on."""
        if self._undo is None or self._undo[0] != step:
            return False
        self._undo[1].restore(list(self.model.parameters()), self.optimizer)
        self._undo = None
        return True
