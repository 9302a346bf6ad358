"""Run-page pieces owned by the organiser app: the join box and the announcements."""

from __future__ import annotations

from django import template

register = template.Library()


@register.inclusion_tag("organiser/_join_box.html", takes_context=True)
def join_box(context, run_id: int):
    from runs.models import Run

    from ..join import join_info

    request = context["request"]
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return {"join": None}
    return {"join": join_info(request=request, run=run), "user": context.get("user")}


@register.simple_tag
def run_announcements(run_id: int, limit: int = 3):
    from ..models import Announcement

    return list(Announcement.objects.filter(run_id=run_id).select_related("author")[:limit])


@register.simple_tag
def run_chart_data(run_id: int):
    from runs.models import Run

    from ..charts import chart_series

    run = Run.objects.filter(pk=run_id).first()
    return chart_series(run) if run is not None else {}


@register.simple_tag
def run_control_of(run_id: int):
    from ..models import RunControl

    return RunControl.objects.filter(run_id=run_id).first()
