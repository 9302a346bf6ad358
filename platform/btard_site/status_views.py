"""Public pages about the whole site: network status (peers per run, versions, reachability, device class,
step times; account names only, never addresses) and the trust page (how bans are decided, their evidence,
how to appeal)."""

from __future__ import annotations

import json
import statistics
from collections import Counter

from django.conf import settings
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

STEP_TIME_SAMPLES = 200
HISTOGRAM_BINS = 12


def device_class(device: str) -> str:
    """``cpu`` / ``gpu`` / ``other`` from the worker's device string (its model name stays private)."""
    text = (device or "").lower()
    if text.startswith("cuda") or "gpu" in text:
        return "gpu"
    if text.startswith("cpu") or not text:
        return "cpu"
    return "other"


def _histogram(values: list[float], bins: int = HISTOGRAM_BINS) -> list[dict]:
    if not values:
        return []
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / width))] += 1
    top = max(counts)
    # SVG of 100 x 40 units: bars as attributes (no inline styles under the site's CSP)
    rows = []
    for i, c in enumerate(counts):
        h = round(38 * c / top, 2)
        rows.append({"from": low + i * width, "to": low + (i + 1) * width, "count": c,
                     "x": round(i * 100 / bins + 0.4, 2), "w": round(100 / bins - 0.8, 2), "y": round(40 - h, 2), "h": h})
    return rows


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def network_status() -> list[dict]:
    from runs.models import Run, StepRecord

    rows = []
    for run in Run.objects.exclude(state="finished").order_by("-created_at")[:20]:
        peers = list(run.peers.filter(online=True).select_related("user").order_by("user__username", "peer_id"))
        durations = sorted((r.finished_at - r.started_at).total_seconds()
                           for r in StepRecord.objects.filter(run=run).exclude(finished_at=None)
                           .order_by("-step")[:STEP_TIME_SAMPLES])
        times = None
        if durations:
            times = {"count": len(durations), "min": durations[0], "median": statistics.median(durations),
                     "p90": _quantile(durations, 0.9), "max": durations[-1], "histogram": _histogram(durations)}
        rows.append({
            "run": run, "online": len(peers),
            "active": sum(1 for p in peers if p.role == "active"),
            "candidates": sum(1 for p in peers if p.role == "candidate"),
            "versions": sorted(Counter(p.client_version or "unknown" for p in peers).items()),
            "devices": sorted(Counter(device_class(p.device) for p in peers).items()),
            "reachable": Counter("yes" if p.reachable else "unchecked" if p.reachable is None else "no"
                                 for p in peers),
            "peers": [{"account": p.user.username, "peer": p.peer_id[:12], "role": p.role,
                       "version": p.client_version or "unknown", "device": device_class(p.device),
                       "reachable": p.reachable, "status": p.status, "last": p.last_heartbeat} for p in peers[:200]],
            "step_times": times,
        })
    return rows


@require_GET
def network(request):
    context = {"runs": network_status()}
    if request.GET.get("partial") == "status" or request.htmx:
        return render(request, "status/_network.html", context)
    return render(request, "status/network.html", context)


def appeal_contact() -> str:
    return getattr(settings, "APPEAL_CONTACT", "") or settings.DEFAULT_FROM_EMAIL


@require_GET
def trust(request):
    from moderation.models import Ban
    from moderation.services import KEY_BANS_BEFORE_ACCOUNT, KEY_ONLY_KINDS, SILENCE_LIMIT

    bans = Ban.objects.select_related("run", "user").order_by("-created_at", "-id")[:100]
    return render(request, "status/trust.html", {
        "bans": bans, "contact": appeal_contact(), "key_only_kinds": sorted(KEY_ONLY_KINDS),
        "key_bans_before_account": KEY_BANS_BEFORE_ACCOUNT, "silence_limit": SILENCE_LIMIT})


@require_GET
def ban_evidence(request, pk: int):
    """One ban with its evidence as the site holds it (signed verdicts, the case), public like the ban."""
    from moderation.models import Ban

    ban = get_object_or_404(Ban.objects.select_related("run", "user", "lifted_by"), pk=pk)
    evidence = json.dumps(_without_addresses(ban.evidence), indent=2, sort_keys=True, default=str)
    return render(request, "status/ban_evidence.html", {"ban": ban, "evidence": evidence,
                                                        "contact": appeal_contact()})


def _without_addresses(value):
    """The evidence minus network addresses (``p2p_addrs``, ``addrs``): the trust page shows no IPs."""
    if isinstance(value, dict):
        return {k: _without_addresses(v) for k, v in value.items() if k not in ("p2p_addrs", "addrs", "address")}
    if isinstance(value, list):
        return [_without_addresses(v) for v in value]
    return value
