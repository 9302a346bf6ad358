"""Training tasks by name: model + data + optimizer config, deterministic by seed.

Tasks are plugins found through the entry-point group ``btard_swarm.tasks`` (see :mod:`.registry`);
the built-in ones register the same way.

    task = get_task("mnist5k-mlp")
    model = task.build_model(seed=0)
    g = compute_gradient(task, model, seed=public_seed, batch_size=32)   # flat float32
"""

from __future__ import annotations

from .base import Task, derived_seed, seeded_init
from .builtin import DigitsMLP, FashionCNN, Mnist5kMLP
from .datasets import DatasetMissing, fashion_available
from .flat import (
    apply_flat_update,
    batch_gradient,
    compute_gradient,
    flatten_grads,
    flatten_params,
    load_flat_params,
    num_params,
    param_slices,
    set_flat_grads,
)
from .optim import (
    TaskOptimizer,
    UndoPoint,
    load_optimizer_state_vector,
    lr_factor,
    optimizer_state_numel,
    optimizer_state_vector,
)
from .registry import (
    ENTRY_POINT_GROUP,
    TASKS,
    TaskRegistry,
    TaskUnavailable,
    UnknownTask,
    discover,
    get_task,
    load_run_task,
    run_task_extra,
    task_entry,
)

# TASKS: name -> Task subclass, every installed task (entry points read on access); one instance, registry.py's

__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "DatasetMissing",
    "DigitsMLP",
    "FashionCNN",
    "Mnist5kMLP",
    "Task",
    "TaskOptimizer",
    "TaskRegistry",
    "TaskUnavailable",
    "UndoPoint",
    "UnknownTask",
    "apply_flat_update",
    "batch_gradient",
    "compute_gradient",
    "derived_seed",
    "discover",
    "fashion_available",
    "flatten_grads",
    "flatten_params",
    "get_task",
    "load_flat_params",
    "load_optimizer_state_vector",
    "load_run_task",
    "lr_factor",
    "num_params",
    "optimizer_state_numel",
    "optimizer_state_vector",
    "param_slices",
    "run_task_extra",
    "seeded_init",
    "set_flat_grads",
    "task_entry",
]
