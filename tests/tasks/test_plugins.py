"""Tasks as plugins: discovery through the entry-point group, the example plugin installed and run through
btard-sim, and the refusals a worker gives for a missing or mismatched task package or data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT
from worker_client.tasks import (
    Task,
    TaskUnavailable,
    discover,
    get_task,
    load_run_task,
    registry,
    run_task_extra,
)

EXAMPLE = ROOT / "examples" / "task-plugin"


def _run(task: str, **extra):
    return SimpleNamespace(task=task, extra=extra, name="r")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The example plugin pip-installed into a temporary target (no index, no build isolation)."""
    target = tmp_path_factory.mktemp("plugin")
    source = tmp_path_factory.mktemp("plugin-src") / "task-plugin"  # the build leaves nothing in the checkout
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


@pytest.fixture
def plugin_on_path(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    yield plugin_dir
    sys.modules.pop("btard_example_task", None)


def test_it_declares_the_builtin_tasks_in_pyproject_exactly_as_the_registry_lists_them():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["btard_swarm.tasks"]
    assert declared == registry.BUILTIN_ENTRY_POINTS
    entries = discover()
    assert {"digits-mlp", "mnist5k-mlp", "fashion-cnn"} <= set(entries)
    assert entries["digits-mlp"].package == "btard-swarm"


def test_it_finds_an_installed_plugin_by_name_with_its_package_and_version(plugin_on_path):
    entry = discover()["example-spirals"]
    assert (entry.package, entry.version) == ("btard-example-task", "0.1.0")
    task = get_task("example-spirals")
    assert isinstance(task, Task) and task.train_size == 1500 and task.test_size == 300
    assert run_task_extra("example-spirals") == {"task_package": "btard-example-task", "task_version": "0.1.0"}
    assert load_run_task(_run("example-spirals", task_package="btard-example-task", task_version="0.1.0")).name \
        == "example-spirals"


def test_it_refuses_another_version_of_the_plugin_naming_the_pip_install(plugin_on_path):
    with pytest.raises(TaskUnavailable, match=r"btard-example-task 0\.2\.0, but version 0\.1\.0 is installed "
                                              r"here: pip install 'btard-example-task==0\.2\.0'"):
        load_run_task(_run("example-spirals", task_package="btard-example-task", task_version="0.2.0"))


def test_it_refuses_a_task_whose_package_is_not_installed_with_the_command_the_run_names():
    with pytest.raises(TaskUnavailable, match=r"from the package btard-example-task 0\.1\.0, which is not "
                                              r"installed here: pip install 'btard-example-task==0\.1\.0'"):
        load_run_task(_run("example-spirals", task_package="btard-example-task", task_version="0.1.0"))
    with pytest.raises(TaskUnavailable, match="pip install git\\+https://example.org/t.git"):
        load_run_task(_run("example-spirals", task_package="btard-example-task",
                           task_install="pip install git+https://example.org/t.git"))
    with pytest.raises(TaskUnavailable, match="no installed package provides"):
        load_run_task(_run("example-spirals"))


def test_it_refuses_a_task_that_another_package_provides():
    with pytest.raises(TaskUnavailable, match="from the package someone-else, but here it comes from btard-swarm"):
        load_run_task(_run("digits-mlp", task_package="someone-else", task_version="1.0"))


def test_it_refuses_two_packages_registering_one_task_name(monkeypatch):
    fake = metadata.EntryPoint(name="digits-mlp", value="elsewhere:Digits", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [fake])
    with pytest.raises(TaskUnavailable, match="registered by two packages"):
        get_task("digits-mlp")


class PinnedData(Task):
    name = "pinned-data"
    num_classes = 2
    lr = 0.1

    def data_sha256(self):
        return "ab" * 32

    def data_source(self):
        return "/nowhere/data.bin"

    def data_install_hint(self):
        return "apt-get install pinned-data=1.0"


def test_it_refuses_data_with_other_bytes_than_the_run_recorded(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN_ENTRY_POINTS, "pinned-data", "tests.tasks.test_plugins:PinnedData")
    assert load_run_task(_run("pinned-data", data_sha256="ab" * 32)).name == "pinned-data"
    with pytest.raises(TaskUnavailable, match=r"SHA-256 cdcdcdcd.*/nowhere/data\.bin.*abababab.*"
                                              r"apt-get install pinned-data=1\.0"):
        load_run_task(_run("pinned-data", data_sha256="cd" * 32))


def test_it_runs_the_installed_plugin_through_btard_sim(plugin_dir, tmp_path):
    out = tmp_path / "sim.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "worker_client.sim", "--task", "example-spirals", "--peers", "4",
                           "--steps", "3", "--eval-every", "0", "--no-progress", "--json", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["applied_steps"] == 3 and result["honest_banned"] == 0
    assert 0.0 <= result["final_accuracy"] <= 1.0


def test_a_worker_is_refused_with_the_install_sentence_when_the_run_task_is_missing():
    import asyncio

    from btard_wire.control import RunInfo, Welcome
    from btard_wire.envelope import Identity
    from worker_client.worker import EXIT_REFUSED, Worker, WorkerConfig

    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"no-task")))
    run = RunInfo(id=1, name="lm", task="example-spirals",
                  extra={"task_package": "btard-example-task", "task_version": "0.1.0"})
    asyncio.run(worker._on_welcome(Welcome(peer_id=worker.identity.peer_id, role="active", run=run, step=0)))
    assert worker.exit_code == EXIT_REFUSED
    assert "pip install 'btard-example-task==0.1.0'" in worker.exit_message
    assert worker.run_info is None and worker.state is None  # nothing was set up for the run


def test_a_pinned_version_without_a_package_name_still_names_the_installed_package():
    with pytest.raises(TaskUnavailable, match=r"with btard-swarm 9\.9, but version .* is installed here: "
                                              r"pip install 'btard-swarm==9\.9'"):
        load_run_task(_run("digits-mlp", task_version="9.9"))
