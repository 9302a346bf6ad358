"""moderation.services: cases (timeouts, staff clear or confirm with an audited reason)."""

from __future__ import annotations

import pytest
from moderation import services as moderation
from moderation.models import AuditLog, ModerationCase
from runs import services as runs

from btard_wire.control import StepReport
from tests.site.helpers import envelope, types

pytestmark = pytest.mark.django_db


def test_staff_clear_a_case_restoring_reputation_with_an_audited_reason(run, group, carol, events):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))
    case = moderation.record_elimination(entry=entry)
    moderation.clear_case(case=case, actor=carol, reason="network partition, both honest")
    sender.user.volunteer.refresh_from_db()
    assert sender.user.volunteer.reputation == 0.0
    assert AuditLog.objects.get().action == "clear"
    assert types(events)[-1] == "case_resolved"


def test_staff_confirm_a_ban_from_a_case_and_can_unban(run, group, carol, events):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))
    case = moderation.record_elimination(entry=entry)
    ban = moderation.confirm_case_ban(case=case, peer=target, actor=carol, reason="withholds parts every epoch")
    assert ban.source == "staff" and types(events)[-1] == "peer_banned"
    moderation.unban(ban=ban, actor=carol, reason="appeal accepted")
    target.refresh_from_db()
    target.user.volunteer.refresh_from_db()
    assert not target.user.volunteer.is_banned and target.role == "waiting"
    assert list(AuditLog.objects.order_by("id").values_list("action", flat=True)) == ["confirm_ban", "unban"]
    assert types(events)[-1] == "peer_unbanned"


def test_only_staff_can_moderate_and_a_reason_is_required(run, group, alice, carol):
    (sender, identity), (target, _), _ = group
    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id}))
    case = moderation.record_elimination(entry=entry)
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        moderation.clear_case(case=case, actor=alice, reason="mine")
    with pytest.raises(ValueError):
        moderation.clear_case(case=case, actor=carol, reason="  ")
    assert ModerationCase.objects.get().status == "open" and not AuditLog.objects.exists()


def test_repeated_missed_deadlines_open_a_timeouts_case(run, group):
    type(run).objects.filter(pk=run.pk).update(missed_deadlines_for_case=2)
    *_, (silent, _) = group
    for step in range(2):
        if step:
            runs.start_step_if_ready(run=run)
        for peer, _ in group[:2]:
            runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="applied", samples=8))
        runs.close_step(run=run, force=True)
    case = ModerationCase.objects.get()
    assert case.kind == "timeouts" and list(case.peers.all()) == [silent]
