"""What a worker hears from the organisers when it joins: the run's latest announcement, if recent."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

WELCOME_ANNOUNCEMENT_HOURS = 24


def welcome_notice(run_id: int):
    """A ``RunNotice`` with the latest announcement of the last day, or ``None``."""
    from btard_wire.control import RunNotice

    from .models import Announcement

    since = timezone.now() - timedelta(hours=WELCOME_ANNOUNCEMENT_HOURS)
    latest = Announcement.objects.filter(run_id=run_id, created_at__gte=since).order_by("-created_at", "-id").first()
    if latest is None:
        return None
    return RunNotice(run_id=run_id, kind="announcement", message=latest.text)
