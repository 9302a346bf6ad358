"""Reads for runs: the dashboard, the public JSON, the volunteer's peers."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from btard_wire import board as board_rules
from btard_wire.errors import ProtocolError
from btard_wire.payloads import FaultKind
from btard_wire.randomness import ALARM_FACTOR, validators_for_step

from .deadlines import effective_deadlines
from .models import BroadcastLog, Peer, Run, StepRecord, StepReportRecord

CURVE_POINTS = 200


def open_runs():
    return Run.objects.exclude(state="finished").order_by("-created_at")


def all_runs():
    return Run.objects.order_by("-created_at")


def peer_row(peer: Peer) -> dict:
    return {
        "peer_id": peer.peer_id,
        "account": peer.user.username,
        "role": peer.role,
        "online": peer.online,
        "status": peer.status if peer.online else "offline",
        "status_detail": peer.status_detail,
        "last_heartbeat": peer.last_heartbeat.isoformat() if peer.last_heartbeat else None,
        "probation": f"{peer.probation_done}/{peer.probation_required}" if peer.role == "candidate" else "",
        "excluded_until_step": peer.excluded_until_step,
        # no network addresses: they go only to the members of a peer's step, in Group (F13)
        "reachable": peer.reachable,
        "reachability_detail": peer.reachability_detail,
    }


def curve(run: Run, *, points: int = CURVE_POINTS) -> list[dict]:
    import math

    rows = (StepRecord.objects.filter(run=run).exclude(finished_at=None).order_by("-step")
            .values("step", "loss", "accuracy", "outcome", "samples")[:points])
    # strict JSON only (F7): a non-finite value stored before reports were bounded is shown as missing
    return [{**row, **{k: None for k in ("loss", "accuracy")
                       if isinstance(row[k], float) and not math.isfinite(row[k])}} for row in reversed(rows)]


def _svg_polyline(values: list[tuple[int, float]], *, width=600, height=160, ymax: float | None = None) -> str:
    if not values:
        return ""
    xs = [x for x, _ in values]
    ys = [y for _, y in values]
    x0, x1 = min(xs), max(xs)
    top = ymax if ymax is not None else max(ys) or 1.0
    span = max(1, x1 - x0)
    return " ".join(f"{(x - x0) / span * width:.1f},{height - min(y, top) / top * height:.1f}" for x, y in values)


def run_state(run: Run) -> dict:
    """Everything the run dashboard and ``/api/runs/<id>/`` show."""
    from moderation.selectors import active_bans, ban_row

    run.refresh_from_db()
    peers = list(run.peers.select_related("user").order_by("-online", "role", "peer_id"))
    points = curve(run)
    loss = [(p["step"], p["loss"]) for p in points if p["loss"] is not None]
    acc = [(p["step"], p["accuracy"]) for p in points if p["accuracy"] is not None]
    last_acc = acc[-1][1] if acc else None
    return {
        "id": run.id,
        "name": run.name,
        "task": run.task,
        "state": run.state,
        "step": run.current_step,
        "step_in_progress": run.step_in_progress,
        "step_deadline": run.step_deadline.isoformat() if run.step_in_progress and run.step_deadline else None,
        "hyperparameters": run.run_info().model_dump(exclude={"id", "name", "task"}) | {
            "min_peers": run.min_peers, "step_timeout": run.step_timeout, "epoch_steps": run.epoch_steps,
            "admission_policy": run.admission_policy, "max_new_per_window": run.max_new_per_window,
            "admission_window_seconds": run.admission_window_seconds,
            "max_candidate_fraction": run.max_candidate_fraction},
        "deadlines": effective_deadlines(run).as_dict(),
        "checkpoint": _checkpoint_row(run),
        "checkpoint_every": run.checkpoint_every,
        "active_peers": sum(1 for p in peers if p.role == "active" and p.online),
        "candidates": sum(1 for p in peers if p.role == "candidate"),
        "waiting": sum(1 for p in peers if p.role == "waiting"),
        "accuracy": last_acc,
        "curve": points,
        "loss_svg": _svg_polyline(loss),
        "accuracy_svg": _svg_polyline(acc, ymax=1.0),
        "peers": [peer_row(p) for p in peers],
        "recent_bans": [ban_row(b) for b in active_bans(run=run, limit=10)],
        "updated": timezone.now().isoformat(),
    }


def run_list_row(run: Run) -> dict:
    return {"id": run.id, "name": run.name, "task": run.task, "state": run.state, "step": run.current_step,
            "active_peers": run.peers.filter(role="active", online=True).count(),
            "candidates": run.peers.filter(role="candidate").count(), "url": f"/runs/{run.id}/"}


def peers_of_user(user):
    return Peer.objects.filter(user=user).select_related("run").order_by("-online", "-joined_at")


def _checkpoint_row(run: Run) -> dict | None:
    from .checkpoints import latest_checkpoint

    c = latest_checkpoint(run)
    if c is None:
        return None
    return {"step": c.step, "sha256": c.sha256, "size": c.size, "confirmations": c.confirmations,
            "group_size": c.group_size, "created": c.created_at.isoformat(), "url": f"/runs/{run.id}/checkpoint/"}


# --- the board as the peers see it (reads behind runs.services.steps and .board) --------------------
def _board_senders(run: Run, step: int, phase: str, record: StepRecord) -> list[str]:
    """The members whose ``phase`` broadcast of ``step`` is on the board (a closed phase: its senders)."""
    closed = (record.closed_phases or {}).get(phase)
    if closed is not None:
        return [p for p in closed if p in record.members]
    stored = set(BroadcastLog.objects.filter(run=run, step=step, phase=phase)
                 .values_list("sender_peer_id", flat=True))
    return [p for p in record.members if p in stored]


def _board_mprng(run: Run, step: int, record: StepRecord) -> dict[str, dict[str, str]]:
    """``{"mprng_commit": {sender: H(x)}, "mprng_reveal": {sender: x}}`` of the members' stored broadcasts."""
    mprng: dict[str, dict[str, str]] = {phase: {} for phase in ("mprng_commit", "mprng_reveal")}
    members = {phase: set(_board_senders(run, step, phase, record)) for phase in mprng}
    for sender, phase, envelope in BroadcastLog.objects.filter(run=run, step=step, phase__in=list(mprng)) \
            .order_by("pk").values_list("sender_peer_id", "phase", "envelope"):
        value = (envelope.get("payload") or {}).get("hash" if phase == "mprng_commit" else "value")
        if sender in members[phase] and isinstance(value, str):
            mprng[phase].setdefault(sender, value)
    return mprng


def board_randomness(*, run: Run, step: int) -> bytes | None:
    """``r_step`` as every peer computed it from the board (None: no such step, or its MPRNG failed)."""
    record = StepRecord.objects.filter(run=run, step=step).first()
    if record is None:
        return None
    mprng = _board_mprng(run, step, record)
    return board_rules.mprng_output(run=str(run.id), step=step,
                                    members=[p for p in record.members if p in mprng["mprng_commit"]],
                                    commitments=mprng["mprng_commit"], reveals=mprng["mprng_reveal"],
                                    revealed=(record.closed_phases or {}).get("mprng_reveal"))


def step_validators(*, run: Run, step: int) -> dict[str, str]:
    """The validators of ``step`` and their targets (contributors of ``step - 1``), computed from the board
    with the rule every peer runs (:func:`btard_wire.board.validator_assignment`): drawn from the step's own
    MPRNG output, so empty until every member's reveal is stored (or when the step has none)."""
    from moderation.models import Ban  # (moderation imports the runs models)

    record = StepRecord.objects.filter(run=run, step=step).first()
    previous = StepRecord.objects.filter(run=run, step=step - 1).first()
    if record is None or previous is None or run.validators_per_step <= 0:
        return {}
    # twice the validators after a step that banned by recalculation (the peers' ProtocolParams.alarm_factor,
    # from the run's ``extra`` as the workers take it): the verdict majority of step - 1 is on the board
    recalc_ban = Ban.objects.filter(run=run, step=step - 1, source="verdict",
                                    evidence_kind=FaultKind.recalc.value).exists()
    try:
        m = validators_for_step(run.validators_per_step, prev_recalc_ban=recalc_ban,
                                alarm_factor=(run.extra or {}).get("alarm_factor", ALARM_FACTOR))
    except ProtocolError:  # a setting the workers refuse too (ProtocolParams): they run no step
        return {}
    mprng = _board_mprng(run, step, record)
    targets = board_rules.checkable_targets(
        contributors=_board_senders(run, step - 1, "commit", previous),
        scalars_senders=_board_senders(run, step - 1, "scalars", previous))
    return board_rules.validator_assignment(run=str(run.id), step=step, group=record.members,
                                            commitments=mprng["mprng_commit"], reveals=mprng["mprng_reveal"],
                                            prev_contributors=targets, m=m,
                                            revealed=(record.closed_phases or {}).get("mprng_reveal"))


def board_envelopes(*, record: StepRecord, phase: str, senders: list[str]) -> list[dict]:
    """The stored broadcasts of ``phase`` at ``record``'s step (of ``senders`` if given), in arrival order:
    at most one per recipient of the step and about :data:`btard_wire.board.MAX_BOARD_RESPONSE_BYTES`."""
    rows = BroadcastLog.objects.filter(run_id=record.run_id, step=record.step, phase=phase)
    if senders:
        rows = rows.filter(sender_peer_id__in=senders)
    out, size = [], 0
    for env in rows.order_by("pk").values_list("envelope", flat=True)[:max(1, len(record.recipients()))]:
        size += len(str(env))
        if out and size > board_rules.MAX_BOARD_RESPONSE_BYTES:
            break
        out.append(env)
    return out


# A member offline this long has left the step: a worker whose connection dropped reconnects sooner (its site
# client retries after 0.5 s, then backs off), a killed or cut-off one does not. A site restart closes every
# socket at once; the workers are back within the grace, so such a step still waits for their reports.
LEFT_STEP_GRACE_SECONDS = 8.0


def members_gone(record: StepRecord, *, now=None) -> set[str]:
    """The members of ``record`` that left its step: banned, listed in ``record.left`` (joined again after
    being away longer than the grace), or offline for at least ``LEFT_STEP_GRACE_SECONDS``."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=LEFT_STEP_GRACE_SECONDS)
    gone = set(record.left or []) & set(record.members)
    for pid, role, online, left_at in Peer.objects.filter(run_id=record.run_id, peer_id__in=record.members) \
            .values_list("peer_id", "role", "online", "left_at"):
        if role == "banned" or (not online and (left_at is None or left_at <= cutoff)):
            gone.add(pid)
    return gone


DONOR_HISTORY_STEPS = 20  # how far back a peer's unbroken run of step reports is counted
STATE_DONORS = 3


def report_streaks(run: Run, *, step: int, peer_ids) -> dict[str, int]:
    """For each of ``peer_ids``: how many steps in a row, ending at ``step - 1``, it reported as a member (at
    most ``DONOR_HISTORY_STEPS``). A peer that was away (its worker or its site process down) has a short
    streak: it holds an older state."""
    since = step - DONOR_HISTORY_STEPS
    seen: dict[str, set[int]] = {}
    for s, pid, members in StepReportRecord.objects.filter(
            step_record__run=run, step_record__step__gte=since, step_record__step__lt=step,
            peer__peer_id__in=list(peer_ids)).values_list("step_record__step", "peer__peer_id",
                                                           "step_record__members"):
        if pid in (members or []):
            seen.setdefault(pid, set()).add(s)
    out = {}
    for pid in peer_ids:
        n, steps = 0, seen.get(pid, set())
        while step - 1 - n in steps and n < DONOR_HISTORY_STEPS:
            n += 1
        out[pid] = n
    return out


def state_donors(run: Run, *, step: int, members: list) -> list:
    """The members a newcomer or a peer that fell behind downloads step ``step``'s state from: those with the
    longest unbroken run of reports up to the previous step first (they hold that state; a peer that came
    back after missing steps does not), in group order among equals. ``members`` are ``Peer`` rows."""
    streaks = report_streaks(run, step=step, peer_ids=[p.peer_id for p in members])
    ranked = sorted(range(len(members)), key=lambda i: (-streaks[members[i].peer_id], i))
    return [members[i] for i in ranked[:STATE_DONORS]]


def step_complete(record: StepRecord, *, now=None) -> bool:
    """Whether the step of ``record`` can close before its deadline (:func:`btard_wire.board.step_closable`)."""
    reported = set(record.reports.values_list("peer__peer_id", flat=True))
    if set(record.members) <= reported:
        return True
    return bool(reported & set(record.members)) and board_rules.step_closable(
        members=record.members, reported=reported, gone=members_gone(record, now=now))
