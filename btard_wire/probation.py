"""Probation rules as pure functions: which candidates a step checks, whether a step counts, promotion.

The draw and the voiding rule are :mod:`btard_wire.randomness` (``draw_probation_validators``) and
:mod:`btard_wire.board` (``probation_drawable``, ``probation_voided``); this module adds what the site's
step loop and admission policy decide around them, so the simulator (``worker_client.sim``) and the
site run one rule (docs/protocol.md, "Newcomers"):

- :func:`probation_checks`: the step's ``{candidate: validator}`` for the candidates the step may
  check (joined before the MPRNG the randomness came from opened; all on the public chain), drawn from
  that randomness;
- :func:`probation_credited`: a candidate's probation step counts when it was drawn, reported the
  step, and its assigned validator did not void it;
- :func:`ready_to_promote`: a candidate with as many counted steps as its probation requires becomes
  active at the step boundary.

Nothing here reads a clock or a store; times are whatever the caller's clock says (seconds, or step
numbers in the simulator) as long as both arguments use the same one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .board import probation_drawable, probation_voided
from .randomness import draw_probation_validators

__all__ = ["probation_checks", "probation_credited", "ready_to_promote"]


def probation_checks(randomness: bytes, *, members: Iterable[str], joined_at: Mapping[str, float],
                     randomness_opened_at: float | None) -> dict[str, str]:
    """``{candidate: validator}`` for one step: the candidates of ``joined_at`` (candidate -> when its key
    joined) that :func:`~btard_wire.board.probation_drawable` admits for randomness whose MPRNG opened at
    ``randomness_opened_at`` (None: the run's public chain, which draws every candidate), each with the
    active member :func:`~btard_wire.randomness.draw_probation_validators` assigns from ``randomness``."""
    drawable = [c for c, t in joined_at.items()
                if probation_drawable(joined_at=t, randomness_opened_at=randomness_opened_at)]
    if not drawable:
        return {}
    return draw_probation_validators(randomness, members=list(members), candidates=drawable)


def probation_credited(*, candidate: str, validator: str | None, reported: bool,
                       failures: Iterable[tuple[str, str]]) -> bool:
    """Whether ``candidate``'s probation step counts: the step drew it (``validator`` is not None), it
    reported its probation step, and ``validator`` did not post a failed check naming it
    (:func:`~btard_wire.board.probation_voided`; ``failures``: ``(sender, named candidate)`` pairs)."""
    return validator is not None and reported and not probation_voided(candidate=candidate, validator=validator,
                                                                       failures=failures)


def ready_to_promote(*, done: int, required: int) -> bool:
    """Whether a candidate with ``done`` counted probation steps of ``required`` becomes active."""
    return done >= required
