"""What the worker accepts from the site, beyond the wire schema: every value bounded, typed or clamped.

The limits themselves are shared with the site (:mod:`btard_wire.limits`); this module is the
worker's policy for values outside them. A hostile (or buggy) site gets a refusal with a sentence,
never a traceback:

- :func:`check_run` refuses a run the worker cannot train (seed outside 64 bits, non-finite or
  non-positive learning rate, batch size, group size...); the worker then exits with that sentence.
- :func:`check_message` bounds lists and strings of every other message and types the candidates of
  a group (:class:`Candidate`); a message that fails is dropped with a warning.
- :func:`clamp_timeout` turns any deadline the site sends (0, NaN, 10^9) into something in
  [:data:`MIN_TIMEOUT`, :data:`MAX_TIMEOUT`].
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from btard_wire.control import (
    BanNotice,
    ErrorMessage,
    Group,
    PhaseClosed,
    ReachabilityCheck,
    RunInfo,
    Welcome,
)
from btard_wire.json import first_error
from btard_wire.limits import (
    MAX_ADDR_CHARS,
    MAX_ADDRS,
    MAX_BATCH_SIZE,
    MAX_CANDIDATES,
    MAX_CHECKPOINT_EVERY,
    MAX_CODE_CHARS,
    MAX_DEADLINES,
    MAX_DONORS,
    MAX_EXTRA_BYTES,
    MAX_ID_CHARS,
    MAX_LR,
    MAX_PEERS,
    MAX_PHASE_TIMEOUT,
    MAX_PROBATION_LEFT,
    MAX_PROBATION_STEPS,
    MAX_RUN_NAME_CHARS,
    MAX_STEP,
    MAX_TASK_CHARS,
    MAX_TAU,
    MAX_TEXT,
    MIN_PHASE_TIMEOUT,
    SEED_RANGE,
)

MIN_TIMEOUT, MAX_TIMEOUT = MIN_PHASE_TIMEOUT, MAX_PHASE_TIMEOUT


class SiteValueError(ValueError):
    """A value from the site this worker cannot use; ``str()`` is the sentence for the volunteer."""


class Candidate(BaseModel):
    """A probation peer in ``Group.candidates``: the seed it computes on and the member validating it."""

    model_config = ConfigDict(extra="ignore")
    peer_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    public_key: str = Field(default="", max_length=MAX_ID_CHARS)
    p2p_id: str = Field(default="", max_length=MAX_ID_CHARS)
    p2p_addrs: list[str] = Field(default_factory=list, max_length=MAX_ADDRS)
    seed: int = Field(default=0, ge=0, lt=SEED_RANGE[1])
    validator: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    validators: list[Annotated[str, Field(max_length=MAX_ID_CHARS)]] = Field(default_factory=list, max_length=2)
    probation_left: int = Field(default=0, ge=0, le=MAX_PROBATION_LEFT)


def clamp_timeout(value: Any, default: float = 30.0) -> float:
    """A deadline in seconds the worker can honour: NaN/inf/garbage -> ``default``, then [0.5, 600]."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = default
    if not math.isfinite(seconds):
        seconds = default
    return min(MAX_TIMEOUT, max(MIN_TIMEOUT, seconds))


def _finite(name: str, value: float, *, low: float, high: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise SiteValueError(f"the run's {name} is {value!r}; this worker accepts a number in [{low:g}, {high:g}]")


def _whole(name: str, value: int, *, low: int, high: int) -> None:
    if not (isinstance(value, int) and low <= value < high):
        raise SiteValueError(f"the run's {name} is {value!r}; this worker accepts a whole number in "
                             f"[{low}, {high})")


def check_run(run: RunInfo) -> RunInfo:
    """Refuse a run whose settings this worker cannot use. Returns the run unchanged."""
    if len(run.name) > MAX_RUN_NAME_CHARS or len(run.task) > MAX_TASK_CHARS:
        raise SiteValueError("the run's name or task is longer than this worker accepts")
    _whole("seed", run.seed, low=SEED_RANGE[0], high=SEED_RANGE[1])
    _whole("batch_size", run.batch_size, low=1, high=MAX_BATCH_SIZE + 1)
    _whole("peers_per_group", run.peers_per_group, low=1, high=MAX_PEERS + 1)
    _whole("validators_per_step", run.validators_per_step, low=0, high=MAX_PEERS + 1)
    _whole("probation_steps", run.probation_steps, low=0, high=MAX_PROBATION_STEPS)
    _whole("checkpoint_every", run.checkpoint_every, low=0, high=MAX_CHECKPOINT_EVERY + 1)
    _finite("lr", run.lr, low=0.0, high=MAX_LR)
    if run.lr <= 0:
        raise SiteValueError(f"the run's lr is {run.lr!r}; this worker accepts a positive number")
    _finite("tau", run.tau, low=0.0, high=MAX_TAU)
    try:
        size = len(json.dumps(run.extra, allow_nan=False))
    except (TypeError, ValueError):
        raise SiteValueError("the run's extra settings are not plain finite JSON") from None
    if size > MAX_EXTRA_BYTES:
        raise SiteValueError(f"the run's extra settings take {size} bytes; this worker accepts {MAX_EXTRA_BYTES}")
    return run


def _ids_ok(values) -> bool:
    return all(isinstance(v, str) and len(v) <= MAX_ID_CHARS for v in values)


def _addrs_ok(addrs: list[str]) -> bool:
    return len(addrs) <= MAX_ADDRS and all(len(a) <= MAX_ADDR_CHARS for a in addrs)


def check_group(group: Group) -> Group:
    """Bound a group's lists and type its candidates; returns the group with typed, clean candidates
    (as dicts, which is what the worker reads). Raises :class:`SiteValueError`."""
    if not 0 <= group.step < MAX_STEP:
        raise SiteValueError(f"group for step {group.step}, outside [0, 2**53)")
    if len(group.peers) > MAX_PEERS or len(group.state_donors) > MAX_DONORS:
        raise SiteValueError(f"group of {len(group.peers)} peers and {len(group.state_donors)} donors; "
                             f"this worker accepts {MAX_PEERS} and {MAX_DONORS}")
    for peer in list(group.peers) + list(group.state_donors):
        if not _ids_ok([peer.peer_id, peer.public_key, peer.p2p_id]) or not _addrs_ok(peer.p2p_addrs):
            raise SiteValueError(f"group for step {group.step} names a peer with oversized fields")
    if len(group.validators) > MAX_PEERS or not _ids_ok(list(group.validators) + list(group.validators.values())):
        raise SiteValueError(f"group for step {group.step} has an oversized validator map")
    if len(group.candidates) > MAX_CANDIDATES or len(group.deadlines) > MAX_DEADLINES:
        raise SiteValueError(f"group for step {group.step} has {len(group.candidates)} candidates and "
                             f"{len(group.deadlines)} deadlines; this worker accepts {MAX_CANDIDATES} and "
                             f"{MAX_DEADLINES}")
    candidates = []
    for raw in group.candidates:
        try:
            candidates.append(Candidate.model_validate(raw).model_dump())
        except ValidationError as exc:
            raise SiteValueError(f"group for step {group.step} has an unusable candidate: "
                                 f"{first_error(exc, default='candidate')}") from None
    return group.model_copy(update={"candidates": candidates})


def check_message(message):
    """The message, bounded (see the module doc); raises :class:`SiteValueError` with the reason."""
    if isinstance(message, Welcome):
        check_run(message.run)
        if not 0 <= message.step < MAX_STEP:
            raise SiteValueError(f"welcome at step {message.step}, outside [0, 2**53)")
        return message
    if isinstance(message, Group):
        return check_group(message)
    if isinstance(message, BanNotice):
        if len(message.peer_id) > MAX_ID_CHARS:
            raise SiteValueError("ban notice for an oversized peer id")
        return message.model_copy(update={"reason": message.reason[:MAX_TEXT]})
    if isinstance(message, ErrorMessage):
        return message.model_copy(update={"code": message.code[:MAX_CODE_CHARS], "message": message.message[:MAX_TEXT]})
    if isinstance(message, ReachabilityCheck):
        if len(message.request_id) > 64 or len(message.p2p_id) > MAX_ID_CHARS or not _addrs_ok(message.p2p_addrs):
            raise SiteValueError("reachability check with oversized fields")
        return message
    if isinstance(message, PhaseClosed):
        if not _ids_ok(message.senders):
            raise SiteValueError("phase close with oversized sender ids")
        return message
    return message
