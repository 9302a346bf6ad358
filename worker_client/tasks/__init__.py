"""Training tasks by name: model + data + optimizer config, deterministic by seed.

    task = get_task("mnist5k-mlp")
    model = task.build_model(seed=0)
    g = compute_gradient(task, model, seed=public_seed, batch_size=32)   # flat float32
"""

from __future__ import annotations

from .base import Task
from .builtin import DigitsMLP, FashionCNN, Mnist5kMLP
from .datasets import DatasetMissing, fashion_available
from .flat import (
    apply_flat_update,
    compute_gradient,
    flatten_grads,
    flatten_params,
    load_flat_params,
    num_params,
    param_slices,
    set_flat_grads,
)

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (DigitsMLP, Mnist5kMLP, FashionCNN)}


def get_task(name: str, **kw) -> Task:
    """An instance of the task registered as ``name``; ValueError for an unknown name."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
    return cls(**kw)


__all__ = [
    "TASKS",
    "DatasetMissing",
    "DigitsMLP",
    "FashionCNN",
    "Mnist5kMLP",
    "Task",
    "apply_flat_update",
    "compute_gradient",
    "fashion_available",
    "flatten_grads",
    "flatten_params",
    "get_task",
    "load_flat_params",
    "num_params",
    "param_slices",
    "set_flat_grads",
]
