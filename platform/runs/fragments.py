"""The run dashboard's live fragment (``/ws/live/?run=<id>``), registered in ``live.fragments``."""

from __future__ import annotations

from django.template.loader import render_to_string
from live.fragments import register

from .models import Run
from .selectors import run_state


@register("run")
def dashboard_fragment(event, *, run_id: int | None) -> str:
    """Any event of the run: the whole dashboard partial, swapped out of band."""
    if run_id is None or getattr(event, "run_id", None) != run_id:
        return ""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return ""
    return render_to_string("runs/_dashboard.html", {"state": run_state(run), "oob": True})
