"""Admission reads: a step's probation candidates with their validator panels, and the step's
``probation`` reports. The rules are :mod:`btard_wire.probation` (the simulator runs the same ones)."""

from __future__ import annotations

from collections.abc import Collection

from runs.models import BroadcastLog, Run

from btard_wire import probation as probation_rules
from btard_wire.randomness import probation_seed


def probation_candidates(*, run: Run, step: int, members: Collection[str], randomness: bytes,
                         randomness_opened_at: float | None, withheld_reveals: bool = False) -> list[dict]:
    """The entries of ``Group.candidates`` (and ``StepRecord.candidates``) for step ``step``: each online
    candidate that :func:`btard_wire.probation.probation_panels` draws from ``randomness`` (the previous
    step's MPRNG output; ``randomness_opened_at``: when that MPRNG began, None for the public chain), with
    its public probation seed, its panel of two validators (``validators``; ``validator`` is the panel's
    first, for a worker that reads one), whether the draw came from the run's public chain (``public_chain``:
    such a step decides nothing, :func:`btard_wire.probation.probation_decision`), whether that randomness
    left out a committed member's withheld reveal (``withheld_reveals``, :func:`btard_wire.probation.
    reveals_withheld`: such a step decides nothing either) and the probation steps it has left."""
    online = {c.peer_id: c for c in run.peers.filter(role="candidate", online=True).order_by("peer_id")}
    panels = probation_rules.probation_panels(randomness, members=list(members),
                                              joined_at={pid: c.joined_at.timestamp() for pid, c in online.items()},
                                              randomness_opened_at=randomness_opened_at)
    entries = []
    for pid, cand in online.items():
        if pid not in panels:
            continue
        info = cand.peer_info().model_dump()
        info.update(seed=probation_seed(run=run.id, seed=run.seed, step=step, peer=pid), validator=panels[pid][0],
                    validators=list(panels[pid]), public_chain=randomness_opened_at is None,
                    withheld_reveals=bool(withheld_reveals) and randomness_opened_at is not None,
                    probation_left=max(0, cand.probation_required - cand.probation_done))
        entries.append(info)
    return entries


def probation_reports(*, run: Run, step: int) -> list[tuple[str, str, bool]]:
    """``(sender, named candidate, ok)`` of the ``probation`` reports stored at ``step``, in the order the
    board stored them (the board refuses a report from outside the candidate's panel and a second one)."""
    out = []
    for sender, env in BroadcastLog.objects.filter(run=run, step=step, phase="probation").order_by("id") \
            .values_list("sender_peer_id", "envelope"):
        payload = (env or {}).get("payload") or {}
        named, ok = payload.get("candidate"), payload.get("ok")
        if isinstance(named, str) and isinstance(ok, bool):
            out.append((sender, named, ok))
    return out
