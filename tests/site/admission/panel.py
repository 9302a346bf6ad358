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


def full_mprng(run, members, step: int | None = None) -> None:
    """Every member of the step (``(peer, identity)`` in ``members``) commits and reveals its MPRNG secret, so
    the step has an MPRNG output and the next step's panels are drawn from it (a step drawn from the run's
    public chain decides nothing: btard_wire.probation.probation_decision)."""
    import os

    from runs.selectors import board_randomness

    from btard_wire.randomness import mprng_commitment

    step = Run.objects.get(pk=run.pk).current_step if step is None else step
    record = StepRecord.objects.get(run=run, step=step)
    by_id = {p.peer_id: (p, i) for p, i in members}
    secrets = {pid: os.urandom(32) for pid in record.members}
    for pid in record.members:
        peer, identity = by_id[pid]
        runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase="mprng_commit",
                                                         payload={"hash": mprng_commitment(
                                                             secrets[pid], run=str(run.id), step=step, sender=pid)}))
    for pid in record.members:
        peer, identity = by_id[pid]
        runs.post_broadcast(peer=peer, envelope=envelope(identity, Run.objects.get(pk=run.pk), phase="mprng_reveal",
                                                         payload={"value": secrets[pid].hex()}))
    assert board_randomness(run=run, step=step) is not None


def close_with_reports(run, members, candidates=()) -> None:
    """Every member (and each of ``candidates``) reports the current step; the step closes."""
    from btard_wire.control import StepReport

    step = Run.objects.get(pk=run.pk).current_step
    for peer, _ in members:
        runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="applied", samples=8))
    for cand in candidates:
        runs.record_step_report(peer=cand, report=StepReport(step=step, outcome="probation", samples=8))
    runs.close_step(run=Run.objects.get(pk=run.pk), force=True)


def step_drawn_from_randomness(run, members) -> StepRecord:
    """Run the current step with a full MPRNG and close it, then start the next one: its probation panels
    come from that MPRNG output (what a candidate could not know when it joined)."""
    full_mprng(run, members)
    close_with_reports(run, members)
    return runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))


def joined_long_ago(peer) -> None:
    """Date ``peer``'s key back an hour, before any step of the test opened (so any MPRNG draws it)."""
    from datetime import timedelta

    from runs.models import Peer

    Peer.objects.filter(pk=peer.pk).update(joined_at=Peer.objects.get(pk=peer.pk).joined_at - timedelta(hours=1))
