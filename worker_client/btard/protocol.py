"""The protocol core's public entry point: import the core's names from here.

The core is split by concern (``docs/protocol.md``, "Core layout"); this module re-exports the names
drivers, behaviours, tests and benchmarks use, so they need not know which module holds what:

- :mod:`.peer`: :class:`BtardPeer` (driver API, deadlines, board store, ``_advance``), :class:`EnvelopeVerifier`,
  :data:`PHASE_ORDER`;
- :mod:`.state`: :class:`ProtocolParams`, :class:`StepContext`, :class:`StepRecord`, :class:`StepResult`,
  :class:`Ban`, :class:`Stage`, :class:`StepState` and the hooks' read-only :class:`StepView`;
- :mod:`.actions`: :class:`Action`, :class:`PostEnvelope`, :class:`SendTensor`, :class:`ComputeGradient`,
  :class:`FetchTensor`, :class:`Finish`;
- :mod:`.checks` (:class:`Checks`) and :mod:`.court` (:class:`Court`): the collaborators each step owns;
- :mod:`.kernels`: part bounds, the float64 reductions, :func:`recalc_mismatch`, :func:`decode_tensor`;
- :mod:`.memo`: :class:`Memo`, the computations a simulator's peers share (injected).
"""

from __future__ import annotations

from btard_wire import BOARD_PHASES, PROTOCOL_VERSION

from .actions import TENSOR_KINDS, Action, ComputeGradient, FetchTensor, Finish, PostEnvelope, SendTensor
from .checks import Checks
from .court import Court
from .kernels import (
    decode_tensor,
    distances_to,
    part_bounds,
    part_sums,
    per_part_scalars_and_distances,
    recalc_mismatch,
    rows_scalars_and_norms,
    sha256_hex,
)
from .memo import Memo
from .peer import PHASE_ORDER, SINGLE_PHASES, BtardPeer, EnvelopeVerifier
from .state import Ban, ProtocolParams, Stage, StepContext, StepRecord, StepResult, StepState, StepView

__all__ = [
    "BOARD_PHASES",
    "PHASE_ORDER",
    "PROTOCOL_VERSION",
    "SINGLE_PHASES",
    "TENSOR_KINDS",
    "Action",
    "Ban",
    "BtardPeer",
    "Checks",
    "ComputeGradient",
    "Court",
    "EnvelopeVerifier",
    "FetchTensor",
    "Finish",
    "Memo",
    "PostEnvelope",
    "ProtocolParams",
    "SendTensor",
    "Stage",
    "StepContext",
    "StepRecord",
    "StepResult",
    "StepState",
    "StepView",
    "decode_tensor",
    "distances_to",
    "part_bounds",
    "part_sums",
    "per_part_scalars_and_distances",
    "recalc_mismatch",
    "rows_scalars_and_norms",
    "sha256_hex",
]
