"""Admission writes: waiting peers into probation, a step's probation word on its candidates (credit or
rejection, :func:`settle_probation`), candidates to active, as the run's policy (``admission.policies``)
allows. Keyword-only, atomic, one typed event per call (emitted on commit)."""

from __future__ import annotations

from collections.abc import Collection

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from live.bus import emit
from live.events import PeersAdmitted, PeersPromoted
from runs.models import Peer, Run, StepRecord

from btard_wire import probation as probation_rules

from .policies import get_policy
from .selectors import probation_reports


@transaction.atomic
def admit_waiting_peers(*, run: Run) -> list[str]:
    """At a step boundary, move waiting peers into probation as far as the run's policy allows."""
    run = Run.objects.select_for_update().get(pk=run.pk)
    policy = get_policy(run.admission_policy)
    admitted = []
    now = timezone.now()
    for peer in run.peers.filter(role="waiting", online=True).order_by("joined_at", "id"):
        if run.peers.filter(user_id=peer.user_id, role="candidate").exists():
            continue  # one probation slot per account at a time: the others' keys go first (F8)
        active = run.peers.filter(role="active").count()
        if not policy.may_admit_candidate(
                run, active_count=active, candidate_count=run.peers.filter(role="candidate").count(),
                admitted_in_window=run.peers.filter(admitted_at__gte=policy.window_start(run)).count()):
            break
        peer.role, peer.admitted_at = "candidate", now
        peer.save(update_fields=["role", "admitted_at"])
        admitted.append(peer.peer_id)
    if admitted:
        emit(PeersAdmitted(run_id=run.id, peer_ids=admitted))
    return admitted


@transaction.atomic
def promote_candidates(*, run: Run) -> list[str]:
    """Candidates that finished their validated probation steps become active."""
    policy = get_policy(run.admission_policy)
    promoted = []
    now = timezone.now()
    for peer in run.peers.select_for_update().filter(role="candidate"):
        if policy.ready_to_promote(run, peer):
            peer.role, peer.promoted_at = "active", now
            peer.save(update_fields=["role", "promoted_at"])
            promoted.append(peer.peer_id)
    if promoted:
        emit(PeersPromoted(run_id=run.id, peer_ids=promoted))
    return promoted


@transaction.atomic
def settle_probation(*, run: Run, record: StepRecord, reported: Collection[str], only: str | None = None) -> list[int]:
    """Apply the closed step ``record``'s probation word to its candidates (``only``: to that candidate alone,
    for a probation report that came after the step closed). ``reported``: the candidates that reported their
    probation step. Each candidate's panel (``validators`` of its entry) and the step's ``probation`` reports
    decide (:func:`btard_wire.probation.probation_decision`): both validators passed it, the step counts
    (``probation_done`` + 1); both failed it, the step earns nothing and is written to the audit log
    (``moderation.services.record_failed_probation_step``; no ban: two accomplices drawn together could
    otherwise ban an honest newcomer);
    anything else (a disagreement, a missing report, a panel of one, a draw from the public chain or from an
    MPRNG output that left out a withheld reveal) neither
    counts nor punishes, and the next step draws a new panel. Returns the user ids of the credited candidates (for their reputation)."""
    from moderation.services import record_failed_probation_step

    reports = probation_reports(run=run, step=record.step)
    entries = [e for e in record.candidates if only is None or e.get("peer_id") == only]
    peers = {p.peer_id: p for p in run.peers.filter(peer_id__in=[e.get("peer_id") for e in entries])}
    credited = []
    for entry in entries:
        peer = peers.get(entry.get("peer_id"))
        if peer is None or peer.role != "candidate":
            continue
        panel = probation_rules.panel_of(entry)
        decision = probation_rules.probation_decision(candidate=peer.peer_id, panel=panel,
                                                      reported=peer.peer_id in reported, reports=reports,
                                                      public_chain=bool(entry.get("public_chain")),
                                                      withheld_reveals=bool(entry.get("withheld_reveals")))
        if decision == probation_rules.CREDIT:
            Peer.objects.filter(pk=peer.pk).update(probation_done=F("probation_done") + 1)
            credited.append(peer.user_id)
        elif decision == probation_rules.REJECT:
            record_failed_probation_step(peer=peer, step=record.step, panel=panel,
                                         reasons=[r for r in reports if r[1] == peer.peer_id and r[0] in panel])
    return credited
