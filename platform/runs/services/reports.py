"""End-of-step reports of members and candidates (bounded self-claims) and the probation credit of a
candidate's late report. Keyword-only, atomic, one typed event per call."""

from __future__ import annotations

import logging
import math

from admission.services import settle_probation
from django.db import IntegrityError, transaction
from live.bus import emit
from live.events import (
    StepReported,
)
from volunteers.services import record_reputation_event

from btard_wire.control import (
    StepReport,
)

from ..models import Peer, Run, StepRecord, StepReportRecord
from .errors import Rejected

log = logging.getLogger(__name__)


# A step report is a self-claim: the site stores and shows only bounded, finite values (docs/threat-model.md,
# "Site"). Credit comes from the batch size the site knows (``samples_per_peer``), never from the claim.
MAX_REPORTED_LOSS = 1e9
MAX_SAMPLE_CLAIM_FACTOR = 1000


def samples_per_peer(run: Run, group_size: int) -> int:
    """The samples one peer's gradient covers at a step of ``group_size`` members, as the site knows it:
    ``ceil(global_batch / group size)`` when the run fixes a global batch, else the run's batch size."""
    global_batch = (run.extra or {}).get("global_batch")
    if isinstance(global_batch, int) and not isinstance(global_batch, bool) and global_batch > 0:
        return -(-global_batch // max(1, group_size))
    return int(run.batch_size)


def _check_report_bounds(run: Run, record: StepRecord, report: StepReport) -> None:
    limit = samples_per_peer(run, len(record.members)) * MAX_SAMPLE_CLAIM_FACTOR
    if report.samples > limit:
        raise Rejected("samples", f"samples={report.samples} is more than this run's peers can compute in a step "
                                  f"(at most {limit}); the site credits its own batch size anyway")
    for name in ("loss", "accuracy"):
        value = getattr(report, name)
        if value is not None and (not math.isfinite(value) or abs(value) > MAX_REPORTED_LOSS):
            raise Rejected(name, f"{name} must be a finite number of magnitude at most {MAX_REPORTED_LOSS:g}")


@transaction.atomic
def record_step_report(*, peer: Peer, report: StepReport) -> StepReportRecord:
    """Store the end-of-step report of a group member or candidate. Raises :class:`Rejected`."""
    run = Run.objects.get(pk=peer.run_id)
    current = run.step_in_progress and report.step == run.current_step
    # A step closes when its members reported; a candidate (who first downloads the state) may report
    # its probation step just after that, and still gets the step counted.
    late_candidate = not current and report.step == run.current_step - 1 and peer.role == "candidate"
    if not current and not late_candidate:
        raise Rejected("stale_step", f"report for step {report.step}, but the current step is {run.current_step}"
                                     f"{'' if run.step_in_progress else ' (not started)'}")
    record = StepRecord.objects.get(run=run, step=report.step)
    if peer.peer_id not in record.recipients():
        raise Rejected("not_in_group", f"{peer.peer_id[:8]} is not in the group of step {report.step}")
    _check_report_bounds(run, record, report)
    try:
        with transaction.atomic():
            entry = StepReportRecord.objects.create(
                step_record=record, peer=peer, outcome=report.outcome, loss=report.loss, accuracy=report.accuracy,
                samples=report.samples,
                details={"banned": report.banned, "eliminated": report.eliminated, "missing": report.missing,
                         **({"state_sha256": report.state_sha256} if report.state_sha256 else {})})
    except IntegrityError:
        raise Rejected("duplicate", f"a report for step {report.step} was already received") from None
    if late_candidate and record.finished_at is not None:
        _credit_probation(run=run, record=record, peer=peer)
    reported = record.reports.count()
    emit(StepReported(run_id=run.id, step=record.step, peer_id=peer.peer_id, reported=reported,
                      expected=len(record.recipients())))
    return entry


def _credit_probation(*, run: Run, record: StepRecord, peer: Peer) -> bool:
    """Count a candidate's probation step that was reported after its step closed, when both validators of
    its panel passed it (admission.services.settle_probation, which also rejects it on two failures)."""
    if not settle_probation(run=run, record=record, reported={peer.peer_id}, only=peer.peer_id):
        return False
    record_reputation_event(user_id=peer.user_id, kind="probation_step", run=run, step=record.step)
    return True
