from __future__ import annotations

from django import template

register = template.Library()


@register.simple_tag
def run_leaderboard(run_id: int, limit: int = 10):
    from runs.models import Run

    from ..selectors import leaderboard

    run = Run.objects.filter(pk=run_id).first()
    return leaderboard(run=run, limit=limit) if run is not None else []


@register.simple_tag
def credit_for(user):
    from ..selectors import credit_of

    return credit_of(user)


@register.simple_tag
def credit_history(user):
    from ..selectors import history_of

    return history_of(user)


@register.filter
def duration(value) -> str:
    """``3 h 12 min``, ``45 s``: a timedelta or seconds, for people."""
    seconds = int(value.total_seconds()) if hasattr(value, "total_seconds") else int(value or 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h"
