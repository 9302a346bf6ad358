"""Compatibility shim: the networked worker is :mod:`worker_client.worker` now.

Kept only while files outside the worker's owner import ``worker_client.runner`` (tests/tasks,
tests/site/organiser, benchmarks/task_memory.py); the lead removes it once they import
``worker_client.worker``. The module *is* :mod:`worker_client.worker.worker` (aliased in
``sys.modules``, not a copy of its names), so a test that monkeypatches ``runner.pick_device`` or
``runner.torch`` patches what the worker really calls.
"""

import sys

from .worker import worker as _worker

sys.modules[__name__] = _worker
