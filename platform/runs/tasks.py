"""Periodic tasks (django-celery-beat schedule in settings.CELERY_BEAT_SCHEDULE). Thin: call services."""

import logging

from celery import shared_task

from btard_site.retry import retry_transient

from . import services
from .models import Run

log = logging.getLogger(__name__)


@shared_task(name="runs.tick_runs")
def tick_runs() -> int:
    """Close overdue steps, admit, promote and form the next group in every open run. One run whose tick
    raises is logged and skipped: the runs after it are still ticked. Returns the runs ticked cleanly."""
    count = 0
    for run in Run.objects.filter(state="open"):
        try:
            retry_transient(services.tick_run)(run=run)
        except Exception:
            log.exception("tick of run %s (%s) failed; the other runs are still ticked", run.pk, run.name)
            continue
        count += 1
    return count


@shared_task(name="runs.mark_stale_peers_offline")
def mark_stale_peers_offline() -> int:
    return sum(len(services.mark_stale_peers_offline(run=run)) for run in Run.objects.filter(state="open"))


@shared_task(name="runs.promote_candidates")
def promote_candidates() -> int:
    return sum(len(services.promote_candidates(run=run)) for run in Run.objects.filter(state="open"))


@shared_task(name="runs.expire_broadcasts")
def expire_broadcasts() -> int:
    return services.expire_broadcasts()
