"""Run dashboard and the public JSON API for runs."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

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


# Rejection codes of runs.checkpoints.store_checkpoint -> HTTP status
_CHECKPOINT_STATUS = {"no_run": 404, "not_checkpoint_step": 400, "not_in_group": 403, "banned": 403,
                      "too_large": 413, "format": 400, "not_finite": 400, "unconfirmed": 409, "mismatch": 409}


@csrf_exempt  # a worker token in the Authorization header, not a browser session
@require_POST
def api_checkpoint_upload(request, pk: int, step: int):
    """``POST /api/runs/<id>/checkpoints/<step>/`` with ``Authorization: Bearer <token>`` and the model
    state as safetensors bytes: 201 when stored, else 4xx with ``code`` and ``reason``."""
    from django.conf import settings
    from volunteers import services as volunteers

    from .checkpoints import check_uploader, store_checkpoint
    from .services import Rejected

    try:
        token = volunteers.authenticate_bearer(request.headers.get("Authorization"))
    except volunteers.TokenRefused as exc:
        return JsonResponse({"ok": False, "code": "token", "reason": exc.reason}, status=exc.http_status)
    limit = settings.CHECKPOINT_MAX_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    try:
        check_uploader(token=token, run_id=pk, step=step)  # before a byte of the body is read (F9)
        if declared > limit:
            raise Rejected("too_large", f"{declared} bytes; this site takes checkpoints up to {limit} bytes "
                                        f"(CHECKPOINT_MAX_BYTES)")
        from btard_site.retry import retry_transient

        data = request.read(limit + 1)  # streamed: not subject to DATA_UPLOAD_MAX_MEMORY_SIZE
        checkpoint = retry_transient(store_checkpoint)(token=token, run_id=pk, step=step, data=data)
    except Rejected as exc:
        return JsonResponse({"ok": False, "code": exc.code, "reason": exc.message},
                            status=_CHECKPOINT_STATUS.get(exc.code, 400))
    return JsonResponse({"ok": True, "step": checkpoint.step, "sha256": checkpoint.sha256, "size": checkpoint.size,
                         "confirmations": checkpoint.confirmations, "group_size": checkpoint.group_size},
                        status=201)


@staff_member_required
@require_GET
def checkpoint_download(request, pk: int):
    """The run's latest confirmed checkpoint as a safetensors download (staff: run organisers)."""
    from pathlib import Path

    from .checkpoints import latest_checkpoint

    run = get_object_or_404(Run, pk=pk)
    checkpoint = latest_checkpoint(run)
    if checkpoint is None or not Path(checkpoint.path).exists():
        raise Http404("this run has no checkpoint yet")
    response = FileResponse(open(checkpoint.path, "rb"), as_attachment=True,  # noqa: SIM115 - FileResponse closes it
                            filename=f"{run.name}-step{checkpoint.step}.safetensors",
                            content_type="application/octet-stream")
    response["X-Checkpoint-SHA256"] = checkpoint.sha256
    return response
