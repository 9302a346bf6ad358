"""The protocol core's state: parameters, a step's context, record and result, and a peer's step state.

:class:`StepState` is the private, mutable state a :class:`~.protocol.BtardPeer` keeps for one step;
:class:`StepView` is the read-only view of it that behaviours' ``hook_*`` methods receive. The progress
of a step is a set of :class:`Stage` flags (an enum: a misspelt stage is an AttributeError).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from btard_wire import payloads as M
from btard_wire.envelope import Envelope
from btard_wire.randomness import ALARM_FACTOR, check_alarm_factor

if TYPE_CHECKING:
    from .actions import FetchTensor


@dataclass(frozen=True)
class ProtocolParams:
    """Tunable constants of the protocol. Defaults follow the spec's calibration (mnist5k-mlp, 16 peers).

    ``tau`` acts per part (spec "Calibration") and is a per-task calibration: about the honest per-part
    distance to the aggregate (0.1-0.25 on mnist5k-mlp); the default 1.0 is several times that there,
    which lets a searched ALIE move every part by up to ~tau until the bans (docs/results.md). Tolerances are relative **(ours)**: ``exact_rtol`` for
    values two peers compute from the same float32 data (s, d), ``recalc_rtol`` for a gradient
    recomputed by another peer (different kernels are allowed to differ this much),
    ``fixed_point_rtol`` for the CenteredClip fixed-point test along z.
    """

    tau: float = 1.0
    # how each part's tau is set (worker_client.btard.tau.TAU_RULES): "fixed" (``tau`` everywhere) or
    # "spread" (``tau_spread`` x the majority-th smallest published distance of the part in the step
    # itself, ``tau`` where that is 0); docs/protocol.md, "tau". The default since 2026-12-01: it meets
    # the 1-point target where fixed tau 1 misses (optimal ALIE) and costs nothing in the other columns
    # (docs/results.md, "The decision grid")
    tau_rule: str = "spread"
    tau_spread: float = 0.5
    cc_eps: float = 1e-6
    # CenteredClip runs to the tolerance the fixed-point check uses (IRLS steps: microseconds each in
    # Gram space), so an honest aggregator never stops short of it for any tau; the cap only bounds
    # a pathological input (security review, finding 13)
    cc_max_iters: int = 20_000
    cc_init: str = "medoid"
    cc_method: str = "irls"
    # the aggregator stops at this fraction of the check's relative tolerance (fixed_point_rtol)
    cc_stop_margin: float = 0.1
    validators: int = 2
    # > 0: the samples one step averages over, split evenly across the step's group (each peer computes
    # ceil(global_batch / group size)), so banning or losing peers does not shrink the step's batch, as
    # with hivemind's target batch size. 0: every peer uses the driver's own batch size.
    global_batch: int = 0
    exact_rtol: float = 1e-6
    recalc_rtol: float = 3e-5  # ~6x the largest honest error measured (docs/protocol.md, "Recomputation error")
    # True (the networked worker): this peer's own broadcast of a board phase counts towards that phase's
    # barrier only once the board sent it back (stored). A message that reaches the site after the site
    # closed the phase is refused, so the peer never goes on believing it posted in time (ours).
    board_echo: bool = False
    fixed_point_rtol: float = 1e-5
    fixed_point_sigmas: float = 8.0
    # invariant 3 (security review, finding 2): every aggregate a_j lies within ``aggregate_bound`` times
    # its reference spread of a majority of the contributors, at every step, the first included; else the
    # step is dropped (no ban: a bound, not a proof). 0 turns it off (``checks.Checks.aggregate_bound``).
    aggregate_bound: float = 4.0
    # a part's weight against the step's median part (from the previous step; this without one), at most
    aggregate_bound_spread: float = 4.0
    # a ban for a wrong recomputation in step t proves that step t-1's aggregate took in a gradient that
    # was not the one its seed gives: the peers undo step t-1's update (parameters and optimizer state) if
    # they applied it, besides dropping step t, so no attacked aggregate stays applied once an attacker
    # in it is caught (ours; docs/protocol.md step 9, "Undoing the previous step"). False: keep it.
    revert_on_recalc_ban: bool = True
    # a step that follows a step with a recalculation ban draws ``alarm_factor`` x ``validators``
    # validators: the coalition is attacking now, so its unchecked members face more checks at once
    # (ours; btard_wire.randomness.validators_for_step, docs/protocol.md "More validators after a
    # ban"). 1 turns it off.
    alarm_factor: int = ALARM_FACTOR

    def __post_init__(self) -> None:
        from .tau import TAU_RULES  # (tau imports the aggregators, which need nothing from here)

        if self.tau_rule not in TAU_RULES:
            raise ValueError(f"unknown tau rule {self.tau_rule!r}; known: {', '.join(sorted(TAU_RULES))}")
        if not (isinstance(self.tau_spread, (int, float)) and not isinstance(self.tau_spread, bool)
                and 0 < self.tau_spread < float("inf")):
            raise ValueError(f"tau_spread must be a finite number > 0, not {self.tau_spread!r}")
        check_alarm_factor(self.alarm_factor)
        if not isinstance(self.revert_on_recalc_ban, bool):
            raise ValueError(f"revert_on_recalc_ban must be true or false, not {self.revert_on_recalc_ban!r}")  # noqa: TRY004
        if not (self.tau > 0 and self.tau < float("inf")):
            raise ValueError(f"tau must be a finite number > 0, not {self.tau!r}")
        if isinstance(self.global_batch, bool) or not isinstance(self.global_batch, int) or self.global_batch < 0:
            raise ValueError(f"global_batch must be a whole number of samples >= 0 (0: off), "
                             f"not {self.global_batch!r}")


@dataclass
class StepRecord:
    """The public facts of a finished step that validation at the next step needs (Sec. 3.3)."""

    run: str
    step: int
    r: bytes
    model_ref: Any
    numel: int
    group: list[str]
    contributors: list[str]
    seeds: dict[str, int]
    aggregate: torch.Tensor                   # concat(a_1..a_n), float32
    scalars: dict[str, list[float]]           # contributor -> s_kj for all j
    distances: dict[int, dict[str, float]]    # part -> contributor -> d_kj
    digests: dict[tuple[str, str], str]       # (phase, sender) -> envelope digest (evidence)
    # what the next step's aggregate bound weighs each part with (invariant 3): per part ``(lo, hi, rho)``,
    # rho the majority-th smallest distance to the aggregate per sqrt(value); empty when unknown
    scales: list[tuple[int, int, float]] = field(default_factory=list)
    # and per part ``(lo, hi, sigma_z)``: the part's own spread along z per sqrt(value) (the contributors'
    # majority interval of scalars, which the aggregator cannot move); the next step's second sample of it
    z_scales: list[tuple[int, int, float]] = field(default_factory=list)
    # the step ended with a ban for a wrong recomputation: the next step draws more validators
    # (``ProtocolParams.alarm_factor``)
    recalc_ban: bool = False


@dataclass
class StepContext:
    """What the driver tells a peer at the start of step ``step`` (fixed by the site at the boundary).

    ``group`` is ordered; peer ``group[j]`` aggregates part j. ``r_prev`` is ``r_{t-1}`` (see
    :mod:`.mprng`). ``prev`` is this peer's :class:`StepRecord` of step t-1 (None: nothing to
    validate). ``validators`` may be fixed by the driver (tests, benchmarks); by default they are drawn
    from this step's ``r_t`` once it is revealed (Sec. 3.3).
    ``model_ref`` is an opaque token the driver maps back to the model state of this step.
    """

    run: str
    step: int
    group: list[str]
    public_keys: dict[str, str]
    r_prev: bytes
    numel: int
    model_ref: Any = None
    prev: StepRecord | None = None
    validators: dict[str, str] | None = None


@dataclass(frozen=True)
class Ban:
    peer: str
    kind: str
    reason: str
    evidence: list[str]
    accuser: str | None = None


@dataclass
class StepResult:
    """The end of a step as this peer saw it (the driver reports it to the site)."""

    step: int
    outcome: str                              # "applied" or "dropped"
    update: torch.Tensor | None               # concat(a_j) when applied
    bans: list[Ban]
    eliminations: list[tuple[str, str]]       # (eliminator, target)
    silent: list[str]
    r: bytes                                  # r_t (or the public skip chain when MPRNG failed)
    record: StepRecord | None
    reason: str = ""
    role: str = "contributor"
    contributed: bool = False                 # this peer's gradient was aggregated (validators too)
    # undo step - 1's update if it was applied: a recalculation ban of this step caught one of its
    # contributors (``ProtocolParams.revert_on_recalc_ban``); always with a "dropped" outcome
    revert_previous: bool = False


class Stage(enum.Flag):
    """The stages a step has passed (``StepState.stages``); each guards one stage of ``_advance``."""

    NONE = 0
    VALIDATORS_DRAWN = enum.auto()    # validators and targets drawn from r_t
    COMMITTED = enum.auto()           # own commitment broadcast (3)
    SCATTERED = enum.auto()           # own parts sent (4)
    AGGREGATED = enum.auto()          # own part aggregated, H(a_j) published (5)
    REVEALED = enum.auto()            # own MPRNG reveal broadcast (6)
    REVEAL_CLOSED = enum.auto()       # the board closed the reveal phase (late revealers left out)
    SCALARS = enum.auto()             # own scalars broadcast (7)
    CHECKED = enum.auto()             # own checks run, validation report posted (8)
    REPORTED = enum.auto()            # the report is signed: later accusations are not "early"
    FIXED_POINT = enum.auto()         # fixed-point checks done (or skipped) after every report
    FIXED_POINT_PASSED = enum.auto()  # ... and passed over every part (invariant 1)
    PARTS_TIMEOUT = enum.auto()       # the parts deadline passed with nothing missing
    VALIDATION_TIMEOUT = enum.auto()  # the board closed the validation phase with reports missing


@dataclass
class StepState:
    """A peer's private state of one step (mutated only by :class:`~.protocol.BtardPeer`)."""

    ctx: StepContext
    n: int
    index: int
    bounds: list[tuple[int, int]]
    validators: dict[str, str]
    contributors: list[str]
    mprng_members: list[str]
    role: str
    secret: bytes
    majority: int
    board: dict[tuple[str, str], tuple[Envelope, Any, str]] = field(default_factory=dict)
    evidence: dict[str, Envelope] = field(default_factory=dict)
    accusations: dict[str, tuple[Envelope, M.AccusePayload]] = field(default_factory=dict)
    judged: dict[str, str] = field(default_factory=dict)          # accusation digest -> guilty
    judging: set[str] = field(default_factory=set)                # waiting for a recomputation
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)   # case -> signer -> guilty
    guilty_votes: dict[str, dict[str, tuple[Envelope, M.VerdictPayload]]] = field(default_factory=dict)
    my_cases: set[str] = field(default_factory=set)
    my_accusations: list[str] = field(default_factory=list)
    # What decides the step (finding 6): the accusations and ELIMINATEs that the step's validation
    # reports list. ``eliminates``: ELIMINATE broadcasts by digest; ``early``: accuse/eliminate digests
    # this peer saw before its own report (its report lists them); ``listed``: the union of the
    # digests listed in the reports this peer holds (the closed set of reports fixes it for everyone).
    eliminates: dict[str, tuple[Envelope, M.EliminatePayload]] = field(default_factory=dict)
    early: set[str] = field(default_factory=set)
    listed: set[str] = field(default_factory=set)
    # digests of this peer's own accusations/ELIMINATEs the board refused (it stored nothing): its
    # report never lists them (a report naming a digest the board does not hold is refused in turn)
    refused: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    gradient: torch.Tensor | None = None
    my_part_bytes: list[bytes] = field(default_factory=list)
    received: dict[str, torch.Tensor] = field(default_factory=dict)     # contributor -> my part
    received_bytes: dict[str, bytes] = field(default_factory=dict)
    faulted: set[str] = field(default_factory=set)
    pending_parts: dict[str, tuple[int, bytes, M.TensorHeader | None]] = field(default_factory=dict)
    aggregates: dict[int, torch.Tensor] = field(default_factory=dict)
    pending_aggregates: dict[int, tuple[str, bytes, M.TensorHeader | None]] = field(default_factory=dict)
    fetched: dict[str, bytes] = field(default_factory=dict)       # evidence tensors fetched by hash
    fetch_requested: set[str] = field(default_factory=set)
    fetch_queue: list[FetchTensor] = field(default_factory=list)
    aggregate_faulted: set[int] = field(default_factory=set)
    my_aggregate: torch.Tensor | None = None
    r: bytes | None = None
    mprng_failed: bool = False
    recalc: torch.Tensor | None = None
    validation_ok: bool | None = None
    validation_reason: str = ""
    stages: Stage = Stage.NONE
    result: StepResult | None = None
    fatal: str = ""
    last_digest: str = ""
    senders: dict[str, set] = field(default_factory=dict)
    barriers: set = field(default_factory=set)
    fixed_point_margin: float = 0.0
    bound_failed: list[int] = field(default_factory=list)
    scales: list[tuple[int, int, float]] = field(default_factory=list)
    z_scales: list[tuple[int, int, float]] = field(default_factory=list)
    direct_seen: bool = False
    members: frozenset = frozenset()

    def got(self, phase: str, sender: str) -> bool:
        return (phase, sender) in self.board

    def payload(self, phase: str, sender: str) -> Any:
        entry = self.board.get((phase, sender))
        return entry[1] if entry else None

    def view(self) -> StepView:
        """The read-only view of this step that hooks receive."""
        return StepView(ctx=self.ctx, index=self.index, role=self.role, bounds=tuple(self.bounds),
                        validators=MappingProxyType(self.validators), contributors=tuple(self.contributors),
                        mprng_members=tuple(self.mprng_members), secret=self.secret,
                        gradient=self.gradient, r=self.r, my_aggregate=self.my_aggregate,
                        my_part_bytes=tuple(self.my_part_bytes), received=MappingProxyType(self.received),
                        board=MappingProxyType(self.board), _list_in_report=self.my_accusations.append)



def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class StepView:
    """What a behaviour's ``hook_*`` method may read of the current step (a fresh view per call).

    Read-only: the mappings are :class:`types.MappingProxyType`, the sequences tuples. Its one write,
    :meth:`list_in_report`, names a digest in this peer's validation report (an honest peer lists its
    own accusations itself; a Byzantine behaviour may list one it never broadcast)."""

    ctx: Any                                   # StepContext (a driver outside a step may pass its own)
    index: int
    role: str
    bounds: tuple[tuple[int, int], ...]
    validators: Mapping[str, str] = field(default_factory=_empty)
    contributors: tuple[str, ...] = ()
    mprng_members: tuple[str, ...] = ()
    secret: bytes = b""                        # this peer's own MPRNG secret of the step
    gradient: torch.Tensor | None = None
    r: bytes | None = None
    my_aggregate: torch.Tensor | None = None
    my_part_bytes: tuple[bytes, ...] = ()
    received: Mapping[str, torch.Tensor] = field(default_factory=_empty)
    board: Mapping[tuple[str, str], tuple[Envelope, Any, str]] = field(default_factory=_empty)
    _list_in_report: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    @property
    def step(self) -> int:
        return self.ctx.step

    def got(self, phase: str, sender: str) -> bool:
        return (phase, sender) in self.board

    def payload(self, phase: str, sender: str) -> Any:
        entry = self.board.get((phase, sender))
        return entry[1] if entry else None

    def list_in_report(self, digest: str) -> None:
        """Name ``digest`` in this peer's validation report of the step."""
        if self._list_in_report is None:
            raise RuntimeError("this view belongs to no step")
        self._list_in_report(digest)
