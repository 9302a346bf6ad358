"""The networked peer: :class:`Worker` drives the protocol core over the site and the data plane.

Lifecycle and the typed inbox in :mod:`.worker` (:mod:`.inbox`), the step in :mod:`.steps`, the state
download in :mod:`.state_sync`, probation in :mod:`.probation`, evidence by hash in :mod:`.evidence`,
reachability in :mod:`.reachability`, the model and its snapshots in :mod:`.model_state`.
"""

from ..exit_codes import EXIT_OK, EXIT_REFUSED, EXIT_STARTUP
from .model_state import ModelState
from .worker import Worker, WorkerConfig, known_behaviours, pick_device, run_key, run_worker

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_STARTUP", "ModelState", "Worker", "WorkerConfig", "known_behaviours",
           "pick_device", "run_key", "run_worker"]
