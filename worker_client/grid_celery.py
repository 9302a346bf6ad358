"""Grids that outgrow one machine: ``btard-experiments`` cells as Celery tasks on a Redis broker.

The default stays local processes (:func:`worker_client.experiments.run_grid` with a process pool).
With ``--broker redis://HOST:6379/DB`` the driver sends every cell not yet in
``results/<grid>.jsonl`` as one task to the queue (``--queue``, default ``btard-grid``), and appends
each result to that file as it comes back, exactly as the local pool does; an interrupted grid
resumes the same way (the file decides what is missing). On each machine that should run cells:

    btard-experiments worker --broker redis://HOST:6379/DB --concurrency 2

(one process per core, one torch thread each). Results travel through the same Redis (the result
backend) and are deleted once the driver has written them. Task ids are derived from the grid and
the cell's key, so a resumed driver first collects results that finished while it was away
(``result_expires``: a week) and sends again only the cells without one; a cell whose worker dies
is delivered again (late acknowledgement). Messages are JSON only (no pickle): a cell is its
dataclass fields, a result the ``btard-sim`` summary.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict

DEFAULT_QUEUE = "btard-grid"
TASK_NAME = "btard_experiments.run_cell"


def make_app(broker: str, *, backend: str | None = None):
    """The Celery app of the grid runner (driver and workers build the same one from the broker URL)."""
    from celery import Celery

    # not the current app: a process that also loads the site (the test suite) keeps its shared tasks on the
    # site's app
    app = Celery("btard_experiments", broker=broker, backend=backend or broker, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        result_expires=7 * 24 * 3600, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        # a cell takes seconds to minutes; redeliver one whose worker vanished after an hour, not sooner
        broker_transport_options={"visibility_timeout": 3600},
    )
    app.task(name=TASK_NAME)(run_cell_task)
    return app


def run_cell_task(cell: dict) -> dict:
    """The task: one cell, given as its dataclass fields (JSON), returned as its result row."""
    from .experiments import Cell, _run_cell

    return _run_cell(Cell(**cell))


def task_id(grid: str, key: str) -> str:
    return "btard-grid-" + hashlib.sha256(f"{grid}\n{key}".encode()).hexdigest()[:32]


def run_cells(grid: str, cells: Iterable, *, broker: str, queue: str = DEFAULT_QUEUE,
              on_result: Callable[[object, dict], None], on_failure: Callable[[object, str], None],
              poll: float = 1.0, timeout: float | None = None) -> None:
    """Send ``cells`` to ``queue`` and call ``on_result(cell, row)`` / ``on_failure(cell, why)`` as
    each one finishes (in completion order). ``timeout``: give up waiting after that many seconds
    (the cells still pending stay queued; the next run collects or resends them)."""
    app = make_app(broker)
    pending = {}
    for cell in cells:
        tid = task_id(grid, cell.key)
        result = app.AsyncResult(tid)
        if result.state != "SUCCESS":  # not finished while a previous driver was away: (re)send it
            result = app.send_task(TASK_NAME, args=[asdict(cell)], task_id=tid, queue=queue)
        pending[tid] = (cell, result)
    started = time.monotonic()
    while pending:
        for tid, (cell, result) in list(pending.items()):
            state = result.state
            if state == "SUCCESS":
                row = result.get(timeout=30)
                del pending[tid]
                if row.get("key") != cell.key:
                    on_failure(cell, f"the worker returned the row of another cell ({row.get('key')!r})")
                else:
                    on_result(cell, row)
                result.forget()
            elif state == "FAILURE":
                del pending[tid]
                on_failure(cell, str(result.result))
                result.forget()
        if pending:
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"{len(pending)} cells of grid {grid!r} still pending on queue {queue!r}")
            time.sleep(poll)


def start_worker(*, broker: str, queue: str = DEFAULT_QUEUE, concurrency: int | None = None,
                 pool: str = "prefork", loglevel: str = "INFO") -> None:
    """``btard-experiments worker``: run cells from ``queue`` until stopped (Ctrl-C)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app = make_app(broker)
    argv = ["worker", "-Q", queue, "-P", pool, "-c", str(concurrency or os.cpu_count() or 1),
            "--loglevel", loglevel, "-n", f"btard-grid-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
            "--max-tasks-per-child", "50"]
    print(f"btard-experiments worker: queue {queue!r} on {_redact(broker)}", file=sys.stderr)
    app.worker_main(argv)


def _redact(url: str) -> str:
    """The broker URL without a password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
