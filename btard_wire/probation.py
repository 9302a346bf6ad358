"""Probation rules as pure functions: which candidates a step checks, whether a step counts, promotion.

The draw and the report rule are :mod:`btard_wire.randomness` (``draw_probation_panels``) and
:mod:`btard_wire.board` (``probation_drawable``, ``probation_report_refused``); this module adds what
the site's step loop and admission policy decide around them, so the simulator (``worker_client.sim``)
and the site run one rule (docs/protocol.md, "Probation" under btard-sim):

- :func:`probation_panels`: the step's ``{candidate: [two validators]}`` for the candidates the step
  may check (joined before the MPRNG the randomness came from opened; all on the public chain), drawn
  from that randomness;
- :func:`probation_outcome` and :func:`probation_decision`: the step's word on a candidate from its
  panel's ``probation`` reports (issue 12, invariant 9): it counts only when both validators' passing
  reports agree; when both failing reports agree (and it reported its step) the step is a failed
  one (``REJECT``: it earns nothing and the site records it for staff, but nobody is banned: two
  accomplices on a panel could otherwise ban an honest newcomer, and the site cannot recompute to tell
  who is right); anything else (a disagreement, a missing report, a panel of one) neither counts nor
  punishes: the next step draws a new panel (re-drawn, not escalated); a step drawn from the run's
  public chain decides nothing (its panels could be ground), nor does one drawn from an MPRNG output that
  left out a committed member's withheld reveal (:func:`reveals_withheld`: the withholder chose it);
- :func:`ready_to_promote`: a candidate with as many counted steps as its probation requires becomes
  active at the step boundary.

Nothing here reads a clock or a store; times are whatever the caller's clock says (seconds, or step
numbers in the simulator) as long as both arguments use the same one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from .board import probation_drawable
from .randomness import PROBATION_PANEL, draw_probation_panels

__all__ = [
    "CREDIT",
    "FAIL",
    "OPEN",
    "PASS",
    "REJECT",
    "SPLIT",
    "panel_of",
    "probation_decision",
    "probation_outcome",
    "probation_panels",
    "ready_to_promote",
    "reveals_withheld",
]

PASS, FAIL, SPLIT, OPEN = "pass", "fail", "split", "open"  # a step's word on a candidate
CREDIT, REJECT = "credit", "reject"  # what the site (and the simulator) does with it


def probation_panels(randomness: bytes, *, members: Iterable[str], joined_at: Mapping[str, float],
                     randomness_opened_at: float | None) -> dict[str, list[str]]:
    """``{candidate: [validator, validator]}`` for one step: the candidates of ``joined_at`` (candidate ->
    when its key joined) that :func:`~btard_wire.board.probation_drawable` admits for randomness whose
    MPRNG opened at ``randomness_opened_at`` (None: the run's public chain, which draws every candidate),
    each with the two distinct active members :func:`~btard_wire.randomness.draw_probation_panels` assigns
    from ``randomness`` (one when the group has one member)."""
    drawable = [c for c, t in joined_at.items()
                if probation_drawable(joined_at=t, randomness_opened_at=randomness_opened_at)]
    if not drawable:
        return {}
    return draw_probation_panels(randomness, members=list(members), candidates=drawable)


def reveals_withheld(*, committed: Iterable[str], revealed: Collection[str] | None) -> bool:
    """Whether an MPRNG output left out the reveal of a member that committed: ``committed`` are the
    senders of the step's ``mprng_commit``, ``revealed`` the ``mprng_reveal`` sender set as the site closed
    the phase (None: not closed at a deadline, so every committed reveal was needed and is in).

    Such an output is one of several the withholders could pick once they had seen the others' reveals
    (each accomplice that withholds gives another value: SR 14's bit, once per accomplice), so panels
    drawn from it were chosen, not drawn: :func:`probation_decision` decides nothing on them
    (docs/threat-model.md, the probation residual row)."""
    if revealed is None:
        return False
    closed = set(revealed)
    return any(p not in closed for p in committed)


def panel_of(entry: Mapping) -> list[str]:
    """The validators a step's candidate entry (``Group.candidates[i]``, ``StepRecord.candidates[i]``) names:
    its ``validators`` panel, or ``[validator]`` for an entry of a site that names one."""
    panel = entry.get("validators")
    if isinstance(panel, (list, tuple)) and panel:
        return [v for v in panel if isinstance(v, str)]
    one = entry.get("validator")
    return [one] if isinstance(one, str) else []


def probation_outcome(*, candidate: str, panel: Sequence[str],
                      reports: Iterable[tuple[str, str, bool]]) -> str:
    """The step's word on ``candidate`` from its ``panel``'s reports: ``reports`` are ``(sender, named
    candidate, ok)`` of the step's stored ``probation`` reports; only the first report of each panel member
    on this candidate counts (the board refuses a second), anyone else's counts for nothing.

    ``PASS``: the panel has ``PROBATION_PANEL`` (2) distinct validators and every one reported ``ok``;
    ``FAIL``: every one reported a failure; ``SPLIT``: they disagree; ``OPEN``: a report is missing, or
    the panel is smaller (a group of one member: one validator decides nothing)."""
    members = list(dict.fromkeys(panel))
    words: dict[str, bool] = {}
    for sender, named, ok in reports:
        if named == candidate and sender in members and sender not in words:
            words[sender] = bool(ok)
    if len(members) < PROBATION_PANEL or len(words) < len(members):
        return SPLIT if len(set(words.values())) > 1 else OPEN
    if all(words.values()):
        return PASS
    return FAIL if not any(words.values()) else SPLIT


def probation_decision(*, candidate: str, panel: Sequence[str], reported: bool,
                       reports: Iterable[tuple[str, str, bool]], public_chain: bool = False,
                       withheld_reveals: bool = False) -> str | None:
    """What a step does with ``candidate``: ``CREDIT`` (the step counts towards promotion: the panel's
    passing reports agree and the candidate reported its probation step), ``REJECT`` (the panel's failing
    reports agree and the candidate reported its step, i.e. claimed the gradient it served: a failed step,
    which earns nothing and is recorded, but bans nobody, since two colluding members drawn together would
    otherwise ban an honest newcomer; a candidate that crashed before reporting has no failed step), or
    ``None``: neither; the next step draws a new panel (a Byzantine validator, disagreeing, silent or
    with an accomplice, can delay a newcomer but neither promote a bad one alone nor ban an honest one).

    ``public_chain``: the step's panels were drawn from the run's public chain (step 0, or after a step
    without an MPRNG output), which everyone knew before choosing a key. A grinder could then pick its own
    panel (two accomplices pass it) or, since its key moves the others in the candidate shuffle, steer an
    honest newcomer onto two accomplices (which would reject it); so such a step decides nothing (the
    reports are still checked and kept; docs/threat-model.md, step 0).

    ``withheld_reveals``: the panels' randomness left out a committed member's withheld reveal
    (:func:`reveals_withheld`). The withholders saw every other reveal first and picked this output among
    one per accomplice, so a coalition could choose two accomplices for an honest newcomer (rejecting it)
    or for its own never-computing candidate (crediting it); such a step decides nothing either, and a
    withholder pays a strike of the SR 14 window for each step it voids."""
    if not reported or public_chain or withheld_reveals:
        return None
    outcome = probation_outcome(candidate=candidate, panel=panel, reports=reports)
    return CREDIT if outcome == PASS else REJECT if outcome == FAIL else None


def ready_to_promote(*, done: int, required: int) -> bool:
    """Whether a candidate with ``done`` counted probation steps of ``required`` becomes active."""
    return done >= required
