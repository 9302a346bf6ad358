"""Reads for bans, cases and the audit log."""

from __future__ import annotations

from .models import AuditLog, Ban, ModerationCase


def is_peer_id_banned(peer_id: str) -> bool:
    return Ban.objects.filter(peer_id=peer_id, lifted_at=None).exists()


def active_bans(*, run=None, limit: int = 200):
    bans = Ban.objects.filter(lifted_at=None).select_related("run", "user")
    if run is not None:
        bans = bans.filter(run=run)
    return bans.order_by("-created_at", "-id")[:limit]


def bans_of_user(user):
    return Ban.objects.filter(user=user).select_related("run").order_by("-created_at")


def open_cases():
    return ModerationCase.objects.filter(status="open").prefetch_related("peers__user").select_related("run")


def recent_cases(limit: int = 50):
    return ModerationCase.objects.exclude(status="open").prefetch_related("peers__user").select_related(
        "run", "resolved_by")[:limit]


def audit_log(limit: int = 100):
    return AuditLog.objects.select_related("actor")[:limit]


def ban_row(ban: Ban) -> dict:
    """One ban as the public API and the ban list show it."""
    return {
        "id": ban.id,
        "peer": ban.peer_id,
        "account": ban.user.username if ban.user_id else "",
        "run": ban.run_id,
        "run_name": ban.run.name if ban.run_id else "",
        "step": ban.step,
        "reason": ban.reason,
        "evidence_kind": ban.evidence_kind,
        "source": ban.source,
        "scope": ban.scope,
        "time": ban.created_at.isoformat(),
    }


def verdict_majority(*, run, step: int, guilty: str) -> tuple[list[dict], int]:
    """The verdict envelopes of the step's group members naming ``guilty`` (one per sender) and the
    group size."""
    from runs.models import BroadcastLog, StepRecord

    record = StepRecord.objects.filter(run=run, step=step).first()
    if record is None:
        return [], 0
    members = set(record.members)
    by_sender: dict[str, dict] = {}
    for entry in BroadcastLog.objects.filter(run=run, step=step, phase="verdict").order_by("id"):
        payload = entry.envelope.get("payload") or {}
        if payload.get("guilty") == guilty and entry.sender_peer_id in members:
            by_sender.setdefault(entry.sender_peer_id, entry.envelope)
    return list(by_sender.values()), len(members)


def step_members(run, step: int) -> list[str]:
    from runs.models import StepRecord

    record = StepRecord.objects.filter(run=run, step=step).first()
    return list(record.members) if record is not None else []


def elimination_pairs(*, run, since_step: int = 0, until_step: int | None = None) -> list[tuple[str, str, int]]:
    """The effective ELIMINATE pairs of ``run`` (``(eliminator, target, step)``, oldest first): the cases
    whose ELIMINATE removed a pair, at steps ``since_step <= step < until_step``."""
    cases = ModerationCase.objects.filter(run=run, kind="eliminate", step__gte=since_step).order_by("id")
    if until_step is not None:
        cases = cases.filter(step__lt=until_step)
    out = []
    for case in cases.only("evidence", "step"):
        evidence = case.evidence or {}
        env = evidence.get("eliminate") or {}
        if evidence.get("removed_pair") and env.get("sender"):
            out.append((env["sender"], (env.get("payload") or {}).get("target"), case.step))
    return out


def account_peer_ids(*, run, user_id) -> set[str]:
    """Every worker key (peer id) the account ``user_id`` held in ``run``."""
    from runs.models import Peer

    return set(Peer.objects.filter(run=run, user_id=user_id).values_list("peer_id", flat=True))
