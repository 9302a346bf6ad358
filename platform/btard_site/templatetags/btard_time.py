"""Human times: ``{{ value|when }}`` renders ``<time datetime="..." title="... UTC">12 s ago</time>``.

Without JavaScript the page shows the relative time as of the render and the UTC time on hover;
``static/js/time.js`` then keeps the relative text current and puts the absolute time in the viewer's
own time zone in the title.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html

register = template.Library()


def relative(value: datetime, now: datetime | None = None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 days ago``; ``in 40 s`` for the future."""
    now = now or timezone.now()
    seconds = (now - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"), (3600, "h"), (60, "min"),
                       (1, "s")):
        if seconds >= size:
            count = int(seconds // size)
            if unit in ("year", "month", "day"):
                text = f"{count} {unit}{'s' if count != 1 else ''}"
            else:
                text = f"{count} {unit}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"  # pragma: no cover


def _as_datetime(value) -> datetime | None:
    if isinstance(value, str):
        value = parse_datetime(value)
    if not isinstance(value, datetime):
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


@register.filter
def when(value, empty: str = "never"):
    """A datetime (or ISO string) as a ``<time>`` element with the relative time; ``empty`` for none."""
    moment = _as_datetime(value)
    if moment is None:
        return empty
    utc = moment.astimezone(UTC)
    return format_html('<time class="when" datetime="{}" title="{} UTC">{}</time>',
                       utc.isoformat(timespec="seconds"), utc.strftime("%Y-%m-%d %H:%M:%S"), relative(utc))
