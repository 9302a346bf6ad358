"""The leaderboard (per run and across runs) with the credit rules, live over ``/ws/live/?view=leaderboard``."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from .rules import CREDIT_RULES
from .selectors import leaderboard


def _run_from(request):
    from runs.models import Run

    raw = request.GET.get("run", "")
    if not raw:
        return None
    if not raw.isdigit():
        from django.http import Http404

        raise Http404("run must be a run id")
    return get_object_or_404(Run, pk=int(raw))


def leaderboard_context(run=None) -> dict:
    from runs.models import Run

    return {"board": leaderboard(run=run), "run": run, "rules": CREDIT_RULES,
            "runs": Run.objects.order_by("-created_at")[:50]}


@require_GET
def leaderboard_page(request):
    context = leaderboard_context(_run_from(request))
    if request.GET.get("partial") == "board" or request.htmx:
        return render(request, "credit/_leaderboard.html", context)
    return render(request, "credit/leaderboard.html", context)


@require_GET
def api_leaderboard(request):
    run = _run_from(request)
    return JsonResponse({"run": run.pk if run else None, "rules": CREDIT_RULES, "leaderboard": [
        {"rank": e.rank, "account": e.username, "samples": e.samples, "steps": e.steps,
         "online_seconds": e.online_seconds, "bans": e.bans} for e in leaderboard(run=run)]})


def leaderboard_fragment(*, run_id: int | None) -> str:
    """The board as an htmx out-of-band swap, for ``/ws/live/?view=leaderboard`` (``credit.fragments``)."""
    from django.template.loader import render_to_string
    from runs.models import Run

    run = Run.objects.filter(pk=run_id).first() if run_id is not None else None
    if run_id is not None and run is None:
        return ""
    return render_to_string("credit/_leaderboard.html", {**leaderboard_context(run), "oob": True})
