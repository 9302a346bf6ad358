"""Limits the site and the worker must agree on: what a worker accepts from the site, so the site never sends more.

The control-plane schema (:mod:`btard_wire.control`) says what a message looks like; these say which
values a volunteer's worker can act on without crashing, allocating without bound or busy-looping.
The worker enforces them (:mod:`worker_client.site_limits`: a run outside them is refused with a
sentence, a message outside them dropped with a warning, a deadline clamped); the site keeps what it
stores and sends inside them (run settings, groups, texts). Torch-free, like the rest of the package.
"""

from __future__ import annotations

# --- steps, seeds, deadlines -------------------------------------------------------------------------------
MAX_STEP = 2**53  # JSON-safe integers; beyond that a step number is nonsense
SEED_RANGE = (-(2**63), 2**63)  # [low, high): what torch.manual_seed and numpy's PCG64 accept
MIN_PHASE_TIMEOUT, MAX_PHASE_TIMEOUT = 0.5, 600.0  # seconds; the data plane's waits stop at 600 s
MAX_DEADLINES = 32  # entries of Group.deadlines

# --- groups -------------------------------------------------------------------------------------------------
MAX_PEERS = 1024  # members of one group (the site's peers_per_group is far below)
MAX_CANDIDATES = 256  # probation candidates named in one group
MAX_DONORS = 64  # state donors named in one group
MAX_ADDRS, MAX_ADDR_CHARS = 16, 256  # announced multiaddrs per peer, characters per multiaddr
MAX_ID_CHARS = 128  # peer ids, public keys, p2p ids
MAX_PROBATION_LEFT = 10**6

# --- texts shown to the volunteer ---------------------------------------------------------------------------
MAX_TEXT = 2000  # ban reasons, error messages, notices
MAX_CODE_CHARS = 64  # error codes
MAX_RUN_NAME_CHARS, MAX_TASK_CHARS = 200, 100

# --- run settings (RunInfo) ---------------------------------------------------------------------------------
MAX_EXTRA_BYTES = 64 * 1024  # the run's ``extra`` as JSON
MAX_BATCH_SIZE = 2**20
MAX_PROBATION_STEPS = 10**6
MAX_CHECKPOINT_EVERY = 2**31 - 1
MAX_LR = 1e6  # and > 0
MAX_TAU = 1e12  # and >= 0

__all__ = [
    "MAX_ADDRS", "MAX_ADDR_CHARS", "MAX_BATCH_SIZE", "MAX_CANDIDATES", "MAX_CHECKPOINT_EVERY", "MAX_CODE_CHARS",
    "MAX_DEADLINES", "MAX_DONORS", "MAX_EXTRA_BYTES", "MAX_ID_CHARS", "MAX_LR", "MAX_PEERS", "MAX_PHASE_TIMEOUT",
    "MAX_PROBATION_LEFT", "MAX_PROBATION_STEPS", "MAX_RUN_NAME_CHARS", "MAX_STEP", "MAX_TASK_CHARS", "MAX_TAU",
    "MAX_TEXT", "MIN_PHASE_TIMEOUT", "SEED_RANGE",
]
