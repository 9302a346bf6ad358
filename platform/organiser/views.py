"""The organiser page (staff, not /admin/): create a run, pause, resume, finish, minimum worker version,
announcements; and the worker wheel the join box points at. Thin: parse, call a service, render."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST
from moderation.views import staff_required

from . import services
from .forms import AnnouncementForm, MinVersionForm, RunCreateForm
from .join import WHEEL_NAME, dist_dir

RUN_ACTIONS = {"pause": services.pause_run, "resume": services.resume_run, "finish": services.finish_run}


def _page(request, *, form=None, status=200, error: str = ""):
    from moderation.models import AuditLog
    from runs.models import Run

    from .catalog import available_tasks, task_info
    from .models import RunControl

    runs = list(Run.objects.order_by("-created_at")[:100])
    controls = {c.run_id: c for c in RunControl.objects.filter(run__in=runs)}
    for run in runs:
        run.min_worker_version = controls[run.pk].min_worker_version if run.pk in controls else ""
    context = {"runs": runs, "form": form or RunCreateForm(), "tasks": [task_info(n) for n in available_tasks()], "error": error,
               "audit": AuditLog.objects.filter(action__startswith="run_").select_related("actor")[:30]}
    return render(request, "organiser/organise.html", context, status=status)


@staff_required
@require_GET
def organise(request):
    return _page(request)


@staff_required
@require_POST
def create_run(request):
    form = RunCreateForm(request.POST)
    if not form.is_valid():
        return _page(request, form=form, status=400, error="The run was not created: fix the fields marked below.")
    try:
        run = services.create_run(actor=request.user, name=form.cleaned_data["name"], task=form.cleaned_data["task"],
                                  **form.hyperparameters())
    except services.ControlRefused as exc:
        return _page(request, form=form, status=409, error=str(exc))
    messages.success(request, f"Run {run.name} created and open for workers.")
    return redirect("/organise/")


@staff_required
@require_POST
def run_action(request, pk: int, action: str):
    from runs.models import Run

    run = get_object_or_404(Run, pk=pk)
    service = RUN_ACTIONS.get(action)
    if service is None:
        raise Http404("no such action")
    try:
        service(run=run, actor=request.user, reason=request.POST.get("reason", "").strip()[:500])
    except services.ControlRefused as exc:
        return _page(request, status=409, error=str(exc))
    messages.success(request, f"Run {run.name}: {action} done; its workers were told.")
    return redirect("/organise/")


@staff_required
@require_POST
def min_version(request, pk: int):
    from runs.models import Run

    run = get_object_or_404(Run, pk=pk)
    form = MinVersionForm(request.POST)
    try:
        if not form.is_valid():
            raise services.ControlRefused("a version has at most 32 characters")
        services.set_min_worker_version(run=run, actor=request.user, version=form.cleaned_data["version"])
    except services.ControlRefused as exc:
        return _page(request, status=400, error=str(exc))
    messages.success(request, f"Run {run.name}: minimum worker version "
                              f"{form.cleaned_data['version'] or 'cleared'}.")
    return redirect("/organise/")


@staff_required
@require_POST
def announce(request, pk: int):
    from runs.models import Run

    run = get_object_or_404(Run, pk=pk)
    form = AnnouncementForm(request.POST)
    try:
        if not form.is_valid():
            raise services.ControlRefused("an announcement needs text, at most 500 characters")
        services.post_announcement(run=run, actor=request.user, text=form.cleaned_data["text"])
    except services.ControlRefused as exc:
        return _page(request, status=400, error=str(exc))
    messages.success(request, f"Announcement posted to run {run.name} and its workers.")
    return redirect("/organise/")


@require_GET
def worker_wheel(request, filename: str):
    """``/dist/<wheel>``: the worker distribution the deploy built, for the join box's install line."""
    if not WHEEL_NAME.match(filename):
        raise Http404("no such file")
    path = dist_dir() / filename
    if not path.is_file():
        raise Http404("no such file")
    return FileResponse(open(path, "rb"), as_attachment=True, filename=filename,
                        content_type="application/octet-stream")
