"""Grid cells on Celery: a real ``btard-experiments worker`` process against the suite's Redis.

Runs only where REDIS_URL is set (CI); it uses its own Redis database and a queue of its own, and
stops the worker it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from worker_client import experiments, grid_celery
from worker_client.experiments import Cell, load_results

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_DB = 13  # not the site's (0) nor the channel layer's


def _private(url: str) -> str:
    base, _, _ = url.rstrip("/").rpartition("/") if url.count("/") > 2 else (url.rstrip("/"), "", "")
    return f"{base}/{PRIVATE_DB}"


def _tiny_grid() -> list[Cell]:
    return [Cell(task="digits-mlp", peers=5, byzantine=b, attack=attack, aggregator=agg, tau=0.25, seed=0,
                 attack_start=1, steps=4)
            for attack, b in (("none", 0), ("sign_flip", 1)) for agg in ("mean", "btard")]


@pytest.fixture
def celery_worker(redis_url):
    broker = _private(redis_url)
    queue = f"btard-grid-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker_client.experiments", "worker", "--broker", broker, "--queue", queue,
         "--concurrency", "1", "--pool", "solo"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield broker, queue
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(180)
def test_a_grid_on_a_celery_worker_gives_the_rows_a_local_run_gives_and_resumes(celery_worker, tmp_path,
                                                                              monkeypatch):
    broker, queue = celery_worker
    monkeypatch.setitem(experiments.GRIDS, "celery-test", _tiny_grid)
    remote = tmp_path / "remote"
    path = experiments.run_grid("celery-test", results_dir=remote, progress=False, broker=broker, queue=queue)
    rows = {r["key"]: r for r in load_results(path)}
    assert set(rows) == {c.key for c in _tiny_grid()}

    for cell in _tiny_grid():  # the simulator is deterministic: the worker computed the same runs
        row, other = experiments._run_cell(cell), rows[cell.key]
        assert other["accuracy_curve"] == row["accuracy_curve"]
        assert other["bans"] == row["bans"]

    def no_send(*args, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("a finished cell was sent again")

    monkeypatch.setattr(grid_celery, "run_cells", no_send)
    before = path.read_text()
    experiments.run_grid("celery-test", results_dir=remote, progress=False, broker=broker, queue=queue)
    assert path.read_text() == before


def test_task_ids_are_fixed_by_grid_and_cell_and_the_broker_password_is_not_logged():
    a, b = _tiny_grid()[:2]
    assert grid_celery.task_id("g", a.key) == grid_celery.task_id("g", a.key)
    assert len({grid_celery.task_id("g", a.key), grid_celery.task_id("g", b.key), grid_celery.task_id("h", a.key)}) == 3
    assert grid_celery._redact("redis://:secret@host:6379/0") == "redis://***@host:6379/0"
    assert _private("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/13"
    assert _private("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379/13"
