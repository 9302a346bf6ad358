"""Periodic tasks (django-celery-beat schedule in settings.CELERY_BEAT_SCHEDULE). Thin: call services."""

from celery import shared_task

from . import services
from .models import Run


@shared_task(name="runs.tick_runs")
def tick_runs() -> int:
    """Close overdue steps, admit, promote and form the next group in every open run."""
    count = 0
    for run in Run.objects.filter(state="open"):
        services.tick_run(run=run)
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
