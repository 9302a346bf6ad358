"""Tasks are plugins: any installed package exposes one through the entry-point group ``btard_swarm.tasks``.

    [project.entry-points."btard_swarm.tasks"]
    my-task = "my_package.tasks:MyTask"          # a Task subclass

The built-in tasks register the same way in this project's own ``pyproject.toml``. A run names its task,
and may pin the package that provides it (``extra``: ``task_package``, ``task_version``, optionally
``task_install``, the command its page shows) and the bytes of its data (``data_sha256``). A worker
that lacks the package, has another version of it, or holds other data is refused by
:func:`load_run_task` with a sentence that names the package and the command that fixes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module, metadata

from btard_wire.registry import Registry, UnknownName

ENTRY_POINT_GROUP = "btard_swarm.tasks"
PROJECT = "btard-swarm"

# The built-in tasks, exactly as pyproject.toml declares them under [project.entry-points."btard_swarm.tasks"]
# (a test keeps the two equal). They are also found from here when the installed metadata is older than
# the checkout (an editable install made before an entry point was added).
BUILTIN_ENTRY_POINTS: dict[str, str] = {
    "digits-mlp": "worker_client.tasks.builtin:DigitsMLP",
    "mnist5k-mlp": "worker_client.tasks.builtin:Mnist5kMLP",
    "fashion-cnn": "worker_client.tasks.builtin:FashionCNN",
    "fashion-resnet": "worker_client.tasks.vision:FashionResNet",
    "gpt-char": "worker_client.tasks.lm:GptChar",
    "gpt-char-small": "worker_client.tasks.lm:GptCharSmall",
}


class TaskUnavailable(ValueError):
    """This machine cannot train the task a run names; the message says what to install."""


class UnknownTask(UnknownName, TaskUnavailable):
    """No installed package provides a task of that name: the registries' one unknown-name error
    (a ``KeyError``, code ``unknown_name``) that is also a :class:`TaskUnavailable`."""


@dataclass(frozen=True)
class TaskEntry:
    """One registered task: its name, where it is (``module:attr``) and the distribution that ships it."""

    name: str
    value: str
    package: str
    version: str

    def load(self):
        module, _, attr = self.value.partition(":")
        obj = import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_version() -> str:
    try:
        return metadata.version(PROJECT)
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def discover() -> dict[str, TaskEntry]:
    """Every task installed on this machine, by name (read afresh on every call: a package installed
    since start-up is found). Two packages registering one name is an error that names both."""
    found: dict[str, TaskEntry] = {}
    version = _project_version()
    for name, value in BUILTIN_ENTRY_POINTS.items():
        found[name] = TaskEntry(name, value, PROJECT, version)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        entry = TaskEntry(ep.name, ep.value, package, dist.version if dist is not None else "?")
        old = found.get(ep.name)
        if old is not None and old.value != entry.value:
            raise TaskUnavailable(
                f"task {ep.name!r} is registered by two packages, {old.package} {old.version} ({old.value}) and "
                f"{entry.package} {entry.version} ({entry.value}): uninstall one of them (pip uninstall ...)")
        found[ep.name] = entry
    return found


def task_entry(name: str) -> TaskEntry:
    """The installed entry of task ``name``; :class:`UnknownTask` (listing the known names) otherwise."""
    entries = discover()
    try:
        return entries[name]
    except (KeyError, TypeError):
        raise UnknownTask("task", name, sorted(entries)) from None


def task_class(name: str):
    from .base import Task

    entry = task_entry(name)
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskUnavailable(f"the entry point {name!r} of {entry.package} ({entry.value}) is not a Task subclass")
    return cls


def get_task(name: str, **kw):
    """An instance of the task registered as ``name``; :class:`TaskUnavailable` (a ValueError) otherwise."""
    return task_class(name)(**kw)


def install_command(package: str, version: str | None, install: str | None = None) -> str:
    if install:
        return install
    return f"pip install '{package}=={version}'" if version else f"pip install '{package}'"


def run_task_extra(name: str, task=None) -> dict[str, str]:
    """What a run records about its task (for the run's ``extra``): the package and version that provide
    it and, for a task whose data is pinned, the SHA-256 of that data."""
    entry = task_entry(name)
    out = {"task_package": entry.package, "task_version": entry.version}
    task = task if task is not None else get_task(name)
    digest = task.data_sha256()
    if digest:
        out["data_sha256"] = digest
    return out


def load_run_task(run):
    """The task ``run`` (a RunInfo) names, checked against what the run records: the providing package
    and its version (``extra.task_package`` / ``task_version``) and the data hash (``extra.data_sha256``).

    Raises :class:`TaskUnavailable` with the sentence a volunteer needs: which package, which version,
    and the ``pip install`` the run's page shows."""
    extra = run.extra or {}
    package, version = extra.get("task_package"), extra.get("task_version")
    install = install_command(package, version, extra.get("task_install")) if package else None
    entries = discover()
    entry = entries.get(run.task)
    if entry is None:
        if package:
            raise TaskUnavailable(
                f"this run trains the task {run.task!r} from the package {package}"
                f"{' ' + str(version) if version else ''}, which is not installed here: {install}")
        raise TaskUnavailable(f"this run trains the task {run.task!r}, which no installed package provides "
                              f"(known here: {', '.join(sorted(entries))}); the run's page says what to install")
    if package and _normalise(package) != _normalise(entry.package):
        raise TaskUnavailable(
            f"this run trains the task {run.task!r} from the package {package}, but here it comes from "
            f"{entry.package} {entry.version}: uninstall that one, then {install}")
    if version and str(version) != entry.version:
        install = install_command(package or entry.package, str(version), extra.get("task_install"))
        raise TaskUnavailable(
            f"this run trains the task {run.task!r} with {entry.package} {version}, but version {entry.version} "
            f"is installed here: {install}")
    task = get_task(run.task)
    wanted = extra.get("data_sha256")
    if wanted:
        have = task.data_sha256()
        if have != wanted:
            raise TaskUnavailable(
                f"this run trains {run.task!r} on data with SHA-256 {str(wanted)[:16]}..., but this machine's "
                f"copy ({task.data_source()}) has {'no pinned hash' if not have else str(have)[:16] + '...'}: "
                f"{task.data_install_hint()}")
    return task


class TaskRegistry(Registry):
    """``TASKS``: every installed task by name -> its :class:`~.base.Task` subclass, the entry points read
    afresh on every access. A task registers through the entry-point group (see the module docstring),
    not with :meth:`register`; an unknown name raises :class:`UnknownTask`."""

    def __init__(self, kind: str = "task"):
        super().__init__(kind)

    def _entries(self) -> Mapping[str, TaskEntry]:
        return discover()

    def __getitem__(self, name: str):
        return task_class(name)

    def register(self, name=None, item=None):
        raise TypeError(f"tasks register through the entry-point group {ENTRY_POINT_GROUP!r} (or "
                        "BUILTIN_ENTRY_POINTS for this project's own), not TASKS.register")

    def __setitem__(self, name, item):
        self.register(name, item)


TaskMapping = TaskRegistry  # the old name (worker_client.tasks builds TASKS = TaskMapping())
TASKS = TaskRegistry()
