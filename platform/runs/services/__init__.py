"""Writes for runs, one module per sub-domain (keyword-only, atomic, one typed event per call, emitted on
commit):

- :mod:`.membership`: joining, heartbeats, disconnects, stale peers, reachability checks;
- :mod:`.steps`: group formation, closing a step, the run's tick;
- :mod:`.board`: the step's bulletin board (broadcasts and their judgement, phase closes, board requests);
- :mod:`.reports`: end-of-step reports and probation credit.

Reads are in :mod:`runs.selectors`, admission writes in :mod:`admission.services`. The names below are
re-exported so ``from runs import services`` keeps working.
"""

from admission.services import admit_waiting_peers, promote_candidates

from ..selectors import board_randomness, step_complete, step_validators
from .board import (
    accept_broadcast,
    board_request,
    expire_broadcasts,
    post_broadcast,
    request_phase_close,
)
from .errors import JoinRefused, Rejected
from .membership import (
    JoinResult,
    disconnect_peer,
    join_run,
    mark_stale_peers_offline,
    reachability_word,
    record_heartbeat,
    record_reachability,
)
from .reports import MAX_REPORTED_LOSS, MAX_SAMPLE_CLAIM_FACTOR, record_step_report, samples_per_peer
from .steps import close_step, drop_unclosable_step, probation_seed, start_step_if_ready, tick_run

__all__ = [
    "MAX_REPORTED_LOSS", "MAX_SAMPLE_CLAIM_FACTOR", "JoinRefused", "JoinResult", "Rejected", "accept_broadcast",
    "admit_waiting_peers", "board_randomness", "board_request", "close_step", "disconnect_peer",
    "drop_unclosable_step", "expire_broadcasts", "join_run", "mark_stale_peers_offline", "post_broadcast",
    "probation_seed", "promote_candidates", "reachability_word", "record_heartbeat", "record_reachability",
    "record_step_report", "request_phase_close", "samples_per_peer", "start_step_if_ready", "step_complete",
    "step_validators", "tick_run",
]
