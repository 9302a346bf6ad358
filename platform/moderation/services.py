"""Writes for moderation: protocol verdicts, bans, ELIMINATE cases, and staff actions.

A verdict signed by a strict majority of a step's group is a provable fault: the peer and its account
are banned at once. Faults an honest crash also produces (a withheld MPRNG reveal, silence) ban only the
worker key at first: the volunteer starts again with a new key and a new probation, and staff get a case
to escalate. The account's ``KEY_BANS_BEFORE_ACCOUNT + 1``-th such ban bans the account. Unprovable incidents (ELIMINATE pairs, repeated timeouts) become cases for staff,
who confirm a ban, clear the peer (restoring reputation) or unban; every staff action is audited.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from live.bus import emit
from live.events import CaseOpened, CaseResolved, PeerBanned, PeerUnbanned

from btard_wire import board as board_rules
from btard_wire.payloads import EliminatePayload, VerdictPayload

from .models import AuditLog, Ban, ModerationCase
from .selectors import account_peer_ids, elimination_pairs, step_members, verdict_majority

# Faults that a worker crashing mid-step produces as well as a cheater: the protocol must remove the key
# (an aborted reveal could bias the shared randomness), but the account pays only when it keeps happening.
KEY_ONLY_KINDS = board_rules.KEY_ONLY_KINDS
KEY_BANS_BEFORE_ACCOUNT = board_rules.KEY_BANS_BEFORE_ACCOUNT


def ban_scope_for(*, user, evidence_kind: str, peer_id: str | None = None) -> str:
    """The scope of a protocol ban (btard_wire.board.ban_scope): ``"key"`` for a crash-like fault while the
    account held fewer than ``KEY_BANS_BEFORE_ACCOUNT`` active key bans *before* this one (a ban already on
    ``peer_id`` is not counted, so deciding again cannot widen it), else ``"account"``."""
    earlier = 0
    if user is not None and evidence_kind in KEY_ONLY_KINDS:
        bans = Ban.objects.filter(user=user, scope="key", lifted_at=None)
        if peer_id is not None:
            bans = bans.exclude(peer_id=peer_id)
        earlier = bans.count()
    return board_rules.ban_scope(kind=evidence_kind, earlier_key_bans=earlier, has_account=user is not None)


def _require_staff(actor, reason: str) -> str:
    if actor is None or not actor.is_staff:
        raise PermissionDenied("only staff can moderate")
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a reason is required")
    return reason


def _audit(*, actor, action: str, target: str, reason: str, **details) -> AuditLog:
    return AuditLog.objects.create(actor=actor, action=action, target=target, reason=reason, details=details)


@transaction.atomic
def ban_peer(*, peer, reason: str, evidence_kind: str, evidence: dict, source: str, step: int | None = None,
             actor=None, scope: str = "account") -> Ban:
    """Ban ``peer``; with ``scope="account"`` also its account: every peer of the account is banned and
    its sockets close with ``CLOSE_BANNED``. With ``scope="key"`` only this worker key is out. The ban
    appears on the ban list. Idempotent for an already banned peer, except that an account ban on a peer
    whose key alone was banned widens that ban to the account."""
    from runs.models import Peer
    from volunteers.models import Volunteer

    if scope not in {"account", "key"}:
        raise ValueError(f"unknown ban scope {scope!r}")
    Peer.objects.select_for_update().filter(pk=peer.pk).first()  # concurrent verdicts ban once
    existing = Ban.objects.filter(peer_id=peer.peer_id, lifted_at=None).first()
    if existing is not None and (existing.scope == "account" or scope == "key"):
        return existing
    now = timezone.now()
    if existing is not None:  # key ban widened to the account (staff confirming a crash case)
        ban = existing
        ban.scope, ban.source = "account", source
        ban.reason, ban.evidence_kind = reason[:2000], evidence_kind[:64]
        ban.evidence = {**(ban.evidence or {}), "widened": evidence}
        ban.save(update_fields=["scope", "source", "reason", "evidence_kind", "evidence"])
    else:
        ban = Ban.objects.create(run=peer.run, run_peer=peer, user=peer.user, peer_id=peer.peer_id, step=step,
                                 reason=reason[:2000], evidence_kind=evidence_kind[:64], evidence=evidence,
                                 source=source, scope=scope)
    if scope == "account":
        Peer.objects.filter(user=peer.user).update(role="banned", online=False)
        Volunteer.objects.get_or_create(user=peer.user)
        Volunteer.objects.filter(user=peer.user).update(banned_at=now,
                                                        ban_reason=f"{evidence_kind}: {reason}"[:2000])
    else:
        Peer.objects.filter(pk=peer.pk).update(role="banned", online=False)
    if actor is not None:
        _audit(actor=actor, action="ban", target=f"peer {peer.peer_id}", reason=reason, ban_id=ban.id)
    emit(PeerBanned(ban_id=ban.id, run_id=peer.run_id, run_name=peer.run.name, step=step, peer_id=peer.peer_id,
                    user_id=peer.user_id, username=peer.user.username, reason=ban.reason,
                    evidence_kind=ban.evidence_kind, source=source, created=ban.created_at, scope=scope))
    return ban


def _open_crash_case(*, ban: Ban, peer) -> ModerationCase:
    """A key-only ban goes to the staff queue too: staff may widen it to the account."""
    case = ModerationCase.objects.create(
        run=peer.run, kind="crash", step=ban.step,
        summary=f"{peer.peer_id[:8]} ({peer.user.username}): worker key banned for {ban.evidence_kind} at step "
                f"{ban.step}; a crash looks the same, so the account was not banned"[:300],
        evidence={"ban": ban.id, "evidence_kind": ban.evidence_kind, "reason": ban.reason})
    case.peers.set([peer])
    emit(CaseOpened(case_id=case.id, run_id=peer.run_id, kind="crash", peer_ids=[peer.peer_id]))
    return case


def ban_for_fault(*, peer, reason: str, evidence_kind: str, evidence: dict, step: int | None) -> Ban:
    """A protocol ban (majority verdict or board silence), scoped by :func:`ban_scope_for`."""
    scope = ban_scope_for(user=peer.user, evidence_kind=evidence_kind, peer_id=peer.peer_id)
    already = Ban.objects.filter(peer_id=peer.peer_id, lifted_at=None).exists()
    ban = ban_peer(peer=peer, step=step, reason=reason, evidence_kind=evidence_kind, source="verdict",
                   evidence=evidence, scope=scope)
    if scope == "key" and not already:
        _open_crash_case(ban=ban, peer=peer)
    return ban


def record_failed_probation_step(*, peer, step: int, panel: list[str], reasons: list) -> AuditLog:
    """A probation step of ``peer`` that both validators of its panel failed
    (``btard_wire.probation.probation_decision`` said ``REJECT``): it earns nothing and goes to the audit
    log for staff (the panel, the candidate, the reports), and nobody is banned. The site cannot recompute
    a gradient, so it cannot tell a candidate that cheated from two accomplices who failed an honest one
    (at 7 colluders of 16, 89 % of honest newcomers would meet such a panel during a 5-step probation);
    a bad candidate is still never credited without two agreeing passes. A candidate failed again and
    again is what staff look at in the log."""
    return _audit(actor=None, action="probation_failed", target=peer.peer_id,
                  reason=f"probation step {step}: both validators ({', '.join(v[:8] for v in panel)}) "
                         f"found its gradient wrong", run=peer.run_id, step=step, validators=list(panel),
                  reports=[list(r) for r in reasons])


def consider_verdict(*, entry) -> Ban | None:
    """After a stored verdict: ban its ``guilty`` peer once a strict majority of the group signed the
    same verdict (counting distinct senders). Returns the ban or ``None``."""
    from runs.models import Peer, StepRecord

    payload = VerdictPayload.model_validate(entry.envelope["payload"])
    # Verdicts of one step are counted one at a time: a verdict is stored and counted in one transaction,
    # so without this lock concurrent verdicts (PostgreSQL, read committed) each miss the others' rows and
    # no count ever reaches the majority. The step's row: the lock order of accept_broadcast and close_step.
    StepRecord.objects.select_for_update().filter(run=entry.run, step=entry.step).first()
    signed, group_size = verdict_majority(run=entry.run, step=entry.step, guilty=payload.guilty)
    # counted per account, not per key: one account holding two keys of the step is one voice
    members = step_members(entry.run, entry.step)
    account = {pid: f"user:{uid}" for pid, uid in Peer.objects.filter(run=entry.run, peer_id__in=members)
               .values_list("peer_id", "user_id")}
    signers = [account.get(env.get("sender"), env.get("sender")) for env in signed]
    accounts = [account.get(pid, pid) for pid in members]
    if group_size == 0 or not board_rules.verdict_majority(signers, members=accounts):
        return None
    peer = Peer.objects.select_related("run", "user").filter(run=entry.run, peer_id=payload.guilty).first()
    if peer is None:
        return None
    # The majority decides the kind (hence the scope), and the public reason is the site's own text: the
    # verdict that completes the majority picks neither (F4; btard_wire.board.verdict_kind).
    kinds = {account.get(env.get("sender"), env.get("sender")): (env.get("payload") or {}).get("kind")
             for env in signed}
    kind = board_rules.verdict_kind(kinds, members=accounts)
    if kind is None:
        return None
    agreeing = [env for env in signed if (env.get("payload") or {}).get("kind") == kind]
    reason = f"{kind}: verdict signed by {len(agreeing)} of {group_size} members of step {entry.step}"
    return ban_for_fault(peer=peer, step=entry.step, reason=reason, evidence_kind=kind,
                         evidence={"verdicts": agreeing, "evidence_digests": payload.evidence,
                                   "signers": len(agreeing), "group_size": group_size})


def _epoch_bounds(run, step: int) -> tuple[int, int]:
    size = max(1, run.epoch_steps)
    start = (step // size) * size
    return start, start + size


def elimination_allowed(*, peer, step: int) -> bool:
    """Whether one more ELIMINATE of ``peer``'s account at ``step`` is within the account's limit for the
    epoch (btard_wire.board.elimination_rate_ok: counted per account, over all its keys in the run)."""
    start, end = _epoch_bounds(peer.run, step)
    keys = account_peer_ids(run=peer.run, user_id=peer.user_id)
    effective = sum(1 for e, _, _ in elimination_pairs(run=peer.run, since_step=start, until_step=end) if e in keys)
    return board_rules.elimination_rate_ok(effective_in_epoch=effective)


def _escalate_eliminator(*, run, peer, step: int) -> ModerationCase | None:
    """A repeat eliminator goes to staff automatically (btard_wire.board.escalated: the account's ELIMINATE
    pairs of the run, as eliminator or target); one open escalation case per account and run."""
    keys = account_peer_ids(run=run, user_id=peer.user_id)
    pairs = [p for p in elimination_pairs(run=run) if p[0] in keys or p[1] in keys]
    if not board_rules.escalated(pairs_in_run=len(pairs)):
        return None
    if ModerationCase.objects.filter(run=run, kind="escalated", status="open", peers__user_id=peer.user_id).exists():
        return None
    case = ModerationCase.objects.create(
        run=run, kind="escalated", step=step,
        summary=f"{peer.peer_id[:8]} ({peer.user.username}) took part in {len(pairs)} ELIMINATE pairs of this run "
                f"(last at step {step}): repeat eliminators go to staff"[:300],
        evidence={"pairs": [{"eliminator": e, "target": t, "step": s} for e, t, s in pairs]})
    case.peers.set([peer])
    emit(CaseOpened(case_id=case.id, run_id=run.id, kind="escalated", peer_ids=[peer.peer_id]))
    return case


@transaction.atomic
def record_elimination(*, entry) -> ModerationCase:
    """ELIMINATE(sender, target): both sit out the rest of the epoch, both lose reputation, and the pair
    lands in the staff queue with the signed message as evidence."""
    from runs.models import Peer
    from volunteers.services import record_reputation_event

    payload = EliminatePayload.model_validate(entry.envelope["payload"])
    run = entry.run
    epoch_end = (entry.step // max(1, run.epoch_steps) + 1) * max(1, run.epoch_steps)
    pair = list(Peer.objects.select_for_update().filter(run=run, peer_id__in=[entry.sender_peer_id,
                                                                                payload.target]))
    # Only the first ELIMINATE naming a peer removes a pair (docs/protocol.md): later ones against a
    # peer already out are queued but remove nobody, so every removed pair holds a faulty peer. Only
    # between two active members of the step: a candidate's ELIMINATE removes nobody (btard_wire.board).
    out = [p.peer_id for p in pair if p.excluded_until_step is not None and p.excluded_until_step > entry.step]
    already_out = not board_rules.elimination_removes(
        eliminator=entry.sender_peer_id, target=payload.target, members=step_members(run, entry.step),
        active=[p.peer_id for p in pair if p.role == "active"], removed=out)
    rep_ids = []
    if not already_out:
        Peer.objects.filter(pk__in=[p.pk for p in pair]).update(excluded_until_step=epoch_end)
        rep_ids = [record_reputation_event(user_id=p.user_id, kind="eliminated", run=run, step=entry.step,
                                           note=f"ELIMINATE pair at step {entry.step}").id for p in pair]
    case = ModerationCase.objects.create(
        run=run, kind="eliminate", step=entry.step,
        summary=f"{entry.sender_peer_id[:8]} eliminated {payload.target[:8]} at step {entry.step}: "
                f"{payload.reason}"[:300],
        evidence={"eliminate": entry.envelope, "excluded_until_step": None if already_out else epoch_end,
                  "removed_pair": not already_out}, reputation_event_ids=rep_ids)
    case.peers.set(pair)
    emit(CaseOpened(case_id=case.id, run_id=run.id, kind="eliminate", peer_ids=[p.peer_id for p in pair]))
    eliminator = next((p for p in pair if p.peer_id == entry.sender_peer_id), None)
    if eliminator is not None and not already_out:
        _escalate_eliminator(run=run, peer=eliminator, step=entry.step)
    return case


def open_timeout_case_quietly(*, run, peer, step: int) -> ModerationCase:
    """Building block for ``runs.services.close_step``: repeated missed deadlines become a case."""
    from volunteers.models import ReputationEvent

    rep_ids = list(ReputationEvent.objects.filter(user=peer.user, run=run, kind="missed_deadline")
                   .order_by("-id").values_list("id", flat=True)[: run.missed_deadlines_for_case])
    case = ModerationCase.objects.create(
        run=run, kind="timeouts", step=step,
        summary=f"{peer.peer_id[:8]} ({peer.user.username}) missed {run.missed_deadlines_for_case} step "
                f"deadlines in a row, last at step {step}",
        evidence={"missed_steps": list(range(step - run.missed_deadlines_for_case + 1, step + 1))},
        reputation_event_ids=rep_ids)
    case.peers.set([peer])
    return case


SILENCE_LIMIT = board_rules.SILENCE_LIMIT  # consecutive steps reported silent by a majority of the group


@transaction.atomic
def ban_silent_peers(*, run) -> list[Ban]:
    """Ban the peers a majority of their group reported silent in ``SILENCE_LIMIT`` consecutive steps, and
    those that withheld ``REVEAL_WITHHOLD_LIMIT`` MPRNG reveals within ``REVEAL_WINDOW`` steps
    (btard_wire.board.withholding_banned; a step spoken in between does not reset it): a missing broadcast
    is publicly visible on the board, so this is a protocol ban (key only, a crash looks the same), not a
    staff case."""
    from django.db.models import Q
    from runs.models import Peer

    bans = []
    for peer in Peer.objects.select_related("run", "user").filter(run=run).exclude(role="banned").filter(
            Q(silent_steps__gte=SILENCE_LIMIT) | ~Q(withheld_reveal_steps=[])):
        if peer.silent_steps >= SILENCE_LIMIT:
            bans.append(ban_for_fault(peer=peer, step=run.current_step - 1, evidence_kind="silence",
                                      reason=f"reported silent by a majority of its group in {peer.silent_steps} "
                                             f"steps", evidence={"silent_steps": peer.silent_steps}))
        elif board_rules.withholding_banned(peer.withheld_reveal_steps or []):
            bans.append(ban_for_fault(peer=peer, step=run.current_step - 1, evidence_kind="withheld_reveal",
                                      reason=f"withheld its MPRNG reveal in {len(peer.withheld_reveal_steps)} of "
                                             f"the last {board_rules.REVEAL_WINDOW} steps",
                                      evidence={"withheld_reveal_steps": peer.withheld_reveal_steps}))
    return bans


@transaction.atomic
def confirm_case_ban(*, case: ModerationCase, peer, actor, reason: str) -> Ban:
    """Staff: ban ``peer`` (one of the case's peers) on the evidence of the case."""
    reason = _require_staff(actor, reason)
    case = ModerationCase.objects.select_for_update().get(pk=case.pk)
    if case.status != "open":
        raise ValueError(f"case #{case.pk} is already {case.status}")
    if not case.peers.filter(pk=peer.pk).exists():
        raise ValueError("that peer is not part of this case")
    ban = ban_peer(peer=peer, reason=reason, evidence_kind=f"staff:{case.kind}", source="staff", step=case.step,
                   evidence={"case": case.pk, **case.evidence}, scope="account")
    case.status, case.resolved_at, case.resolved_by, case.resolution_reason = "banned", timezone.now(), actor, reason
    case.save()
    _audit(actor=actor, action="confirm_ban", target=f"case #{case.pk}", reason=reason, peer=peer.peer_id,
           ban_id=ban.id)
    return ban


@transaction.atomic
def clear_case(*, case: ModerationCase, actor, reason: str) -> ModerationCase:
    """Staff: the peers of the case did nothing wrong; their reputation hits are reversed and they may
    rejoin groups at once."""
    from runs.models import Peer
    from volunteers.models import ReputationEvent
    from volunteers.services import record_reputation_event

    reason = _require_staff(actor, reason)
    case = ModerationCase.objects.select_for_update().get(pk=case.pk)
    if case.status != "open":
        raise ValueError(f"case #{case.pk} is already {case.status}")
    for event in ReputationEvent.objects.filter(pk__in=case.reputation_event_ids):
        record_reputation_event(user_id=event.user_id, kind="restored", run=event.run, step=event.step,
                                delta=-event.delta, note=f"case #{case.pk} cleared by staff")
    Peer.objects.filter(pk__in=case.peers.values("pk")).update(excluded_until_step=None)
    case.status, case.resolved_at, case.resolved_by, case.resolution_reason = "cleared", timezone.now(), actor, reason
    case.save()
    _audit(actor=actor, action="clear", target=f"case #{case.pk}", reason=reason)
    emit(CaseResolved(case_id=case.pk, run_id=case.run_id, action="cleared", reason=reason))
    return case


@transaction.atomic
def unban(*, ban: Ban, actor, reason: str) -> Ban:
    """Staff: lift a ban. The account may work again; its banned peers must rejoin (probation again)."""
    from runs.models import Peer
    from volunteers.models import Volunteer

    reason = _require_staff(actor, reason)
    ban = Ban.objects.select_for_update().get(pk=ban.pk)
    if ban.lifted_at is not None:
        raise ValueError("this ban is already lifted")
    ban.lifted_at, ban.lifted_by, ban.lift_reason = timezone.now(), actor, reason
    ban.save()
    if ban.scope == "key":
        restart = Peer.objects.select_related("run").filter(peer_id=ban.peer_id, role="banned")
    elif ban.user_id and not Ban.objects.filter(user_id=ban.user_id, lifted_at=None, scope="account").exists():
        Volunteer.objects.filter(user_id=ban.user_id).update(banned_at=None, ban_reason="")
        restart = Peer.objects.select_related("run").filter(user_id=ban.user_id, role="banned") \
            .exclude(peer_id__in=Ban.objects.filter(user_id=ban.user_id, lifted_at=None).values("peer_id"))
    else:
        restart = Peer.objects.none()
    # banned peers start over as waiting candidates (a new probation), keeping account reputation
    for peer in restart:
        peer.role, peer.probation_done, peer.admitted_at, peer.promoted_at = "waiting", 0, None, None
        peer.probation_required = max(1, peer.run.probation_steps)
        peer.save(update_fields=["role", "probation_done", "admitted_at", "promoted_at", "probation_required"])
    _audit(actor=actor, action="unban", target=f"peer {ban.peer_id}", reason=reason, ban_id=ban.id)
    emit(PeerUnbanned(ban_id=ban.id, run_id=ban.run_id, peer_id=ban.peer_id,
                      username=ban.user.username if ban.user_id else "", reason=reason))
    return ban
