"""Run dashboard and the public JSON API for runs."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from . import selectors
from .models import Run


@require_GET
def run_detail(request, pk: int):
    run = get_object_or_404(Run, pk=pk)
    context = {"state": selectors.run_state(run)}
    if request.GET.get("partial") == "dashboard" or request.htmx:
        return render(request, "runs/_dashboard.html", context)
    return render(request, "runs/run_detail.html", context)


@require_GET
def api_runs(request):
    return JsonResponse({"runs": [selectors.run_list_row(run) for run in selectors.all_runs()]})


@require_GET
def api_run(request, pk: int):
    run = get_object_or_404(Run, pk=pk)
    state = selectors.run_state(run)
    for key in ("loss_svg", "accuracy_svg"):
        state.pop(key)
    return JsonResponse(state)
