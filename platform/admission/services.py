"""Admission writes: waiting peers into probation, candidates to active, as the run's policy
(``admission.policies``) allows. Keyword-only, atomic, one typed event per call (emitted on commit)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from live.bus import emit
from live.events import PeersAdmitted, PeersPromoted
from runs.models import Run

from .policies import get_policy


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
