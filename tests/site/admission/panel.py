"""Test helpers: the probation panel of a step's candidate, and its validators' ``probation`` reports
posted through the real board service (``runs.services.post_broadcast``)."""

from __future__ import annotations

from runs import services as runs
from runs.models import Run, StepRecord

from btard_wire.probation import panel_of
from tests.site.helpers import envelope


def panel(run, candidate_id: str, members, step: int | None = None) -> list:
    """The ``(peer, identity)`` of ``members`` that the step's record names as ``candidate_id``'s panel,
    in panel order."""
    step = Run.objects.get(pk=run.pk).current_step if step is None else step
    record = StepRecord.objects.get(run=run, step=step)
    (entry,) = [c for c in record.candidates if c["peer_id"] == candidate_id]
    by_id = {p.peer_id: (p, i) for p, i in members}
    return [by_id[v] for v in panel_of(entry)]


def report(run, validator, candidate_id: str, ok: bool, reason: str = ""):
    """``validator`` (``(peer, identity)``) posts its signed ``probation`` report on ``candidate_id``."""
    peer, identity = validator
    payload = {"candidate": candidate_id, "ok": ok, **({"reason": reason} if reason else {})}
    return runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk),
                                                            phase="probation", payload=payload))


def panel_reports(run, candidate_id: str, members, *oks: bool) -> list:
    """The panel of ``candidate_id`` reports ``oks`` (one per validator, in panel order); returns the panel."""
    validators = panel(run, candidate_id, members)
    for v, ok in zip(validators, oks, strict=True):
        report(run, v, candidate_id, ok, "" if ok else "mismatch")
    return validators
