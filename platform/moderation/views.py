"""Public ban list, the staff moderation queue and the bans JSON API."""

from __future__ import annotations

import json
from functools import wraps

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import selectors, services
from .models import Ban, ModerationCase


def staff_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
def ban_list(request):
    context = {"bans": [selectors.ban_row(b) for b in selectors.active_bans()]}
    if request.GET.get("partial") == "rows" or request.htmx:
        return render(request, "moderation/_ban_rows.html", context)
    return render(request, "moderation/ban_list.html", context)


@require_GET
def api_bans(request):
    return JsonResponse({"bans": [selectors.ban_row(b) for b in selectors.active_bans()]})


@staff_required
def queue(request):
    cases = list(selectors.open_cases())
    for case in cases:
        case.evidence_json = json.dumps(case.evidence, indent=2, sort_keys=True)
    return render(request, "moderation/queue.html", {
        "cases": cases, "bans": selectors.active_bans(), "resolved": selectors.recent_cases(),
        "audit": selectors.audit_log()})


@staff_required
@require_POST
def case_action(request, pk: int):
    case = get_object_or_404(ModerationCase, pk=pk)
    reason = request.POST.get("reason", "")
    try:
        if request.POST.get("action") == "ban":
            peer = get_object_or_404(case.peers, pk=request.POST.get("peer"))
            services.confirm_case_ban(case=case, peer=peer, actor=request.user, reason=reason)
            messages.success(request, f"Case #{case.pk}: ban confirmed.")
        elif request.POST.get("action") == "clear":
            services.clear_case(case=case, actor=request.user, reason=reason)
            messages.success(request, f"Case #{case.pk} cleared; reputation restored.")
        else:
            messages.error(request, "Unknown action.")
    except ValueError as exc:
        messages.error(request, str(exc))
    return redirect("/moderation/")


@staff_required
@require_POST
def unban(request, pk: int):
    ban = get_object_or_404(Ban, pk=pk)
    try:
        services.unban(ban=ban, actor=request.user, reason=request.POST.get("reason", ""))
        messages.success(request, f"Peer {ban.peer_id[:8]} unbanned.")
    except ValueError as exc:
        messages.error(request, str(exc))
    return redirect("/moderation/")
