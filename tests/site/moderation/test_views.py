"""moderation.views and admin: the staff queue and actions, audited; non-staff refused."""

from __future__ import annotations

import pytest
from moderation import services as moderation
from moderation.models import AuditLog, ModerationCase
from runs import services as runs

from tests.factories import UserFactory, make_peer
from tests.site.helpers import client_for

pytestmark = pytest.mark.django_db

PUBLIC = ["/", "/bans/", "/api/runs/", "/api/bans/", "/login/", "/signup/", "/password-reset/"]


@pytest.fixture
def case(run):
    (sender, identity), (target, _) = make_peer(run=run, seed="s"), make_peer(run=run, seed="t")
    runs.start_step_if_ready(run=run)
    from tests.site.helpers import envelope

    entry = runs.accept_broadcast(peer=sender, envelope=envelope(
        identity, run, phase="eliminate", payload={"type": "eliminate", "target": target.peer_id,
                                                   "reason": "no part"}))
    return moderation.record_elimination(entry=entry)


def test_staff_work_the_queue_with_reasons_and_everything_is_audited(case, carol, client):
    client.force_login(carol)
    page = client.get("/moderation/").content.decode()
    assert f"Case #{case.pk}" in page and "no part" in page  # the evidence is shown
    target = case.peers.order_by("peer_id").last()
    assert client.post(f"/moderation/cases/{case.pk}/", {"action": "ban", "peer": target.pk, "reason": ""}
                       ).status_code == 302
    assert ModerationCase.objects.get().status == "open"  # no reason, no action
    client.post(f"/moderation/cases/{case.pk}/", {"action": "ban", "peer": target.pk, "reason": "withholding"})
    assert ModerationCase.objects.get().status == "banned"
    ban = target.bans.get()
    client.post(f"/moderation/bans/{ban.pk}/unban/", {"reason": "appeal accepted"})
    ban.refresh_from_db()
    assert ban.lifted_at is not None
    assert list(AuditLog.objects.order_by("id").values_list("action", "reason")) == [
        ("confirm_ban", "withholding"), ("unban", "appeal accepted")]


@pytest.mark.parametrize("who", ["anonymous", "alice", "dave"])
def test_non_staff_cannot_moderate(who, users, case, client):
    client = client_for(client, users[who])
    response = client.post(f"/moderation/cases/{case.pk}/", {"action": "clear", "reason": "mine now"})
    # anonymous visitors are sent to the login page; signed-in non-staff are refused outright
    assert response.status_code == (302 if who == "anonymous" else 403)
    assert ModerationCase.objects.get().status == "open" and not AuditLog.objects.exists()


def test_the_admin_actions_moderate_with_a_reason(case, client):
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    url = "/admin/moderation/moderationcase/"
    client.post(url, {"action": "clear", "_selected_action": [case.pk], "reason": ""})
    assert ModerationCase.objects.get().status == "open"
    client.post(url, {"action": "clear", "_selected_action": [case.pk], "reason": "false alarm"})
    assert ModerationCase.objects.get().status == "cleared"
    assert AuditLog.objects.get().reason == "false alarm"
