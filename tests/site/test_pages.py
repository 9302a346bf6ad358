"""Pages and JSON: the role matrix (anonymous, alice, bob, staff carol, banned dave), sign-up, tokens,
password reset, the public API and the worker token check."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from moderation import services as moderation
from moderation.models import AuditLog, ModerationCase
from runs import services as runs
from volunteers import services as volunteers
from volunteers.models import WorkerToken

from tests.factories import UserFactory, make_peer

pytestmark = pytest.mark.django_db


@pytest.fixture
def users(alice, bob, carol, dave):
    return {"anonymous": None, "alice": alice, "bob": bob, "carol": carol, "dave": dave}


def client_for(client, user):
    if user is not None:
        client.force_login(user)
    return client


PUBLIC = ["/", "/bans/", "/api/runs/", "/api/bans/", "/login/", "/signup/", "/password-reset/"]


@pytest.mark.parametrize("who", ["anonymous", "alice", "bob", "carol", "dave"])
def test_public_pages_answer_everyone(who, users, client, run):
    client = client_for(client, users[who])
    for url in PUBLIC + [f"/runs/{run.pk}/", f"/api/runs/{run.pk}/"]:
        response = client.get(url)
        if who != "anonymous" and url == "/signup/":
            assert response.status_code == 302
        else:
            assert response.status_code == 200, url


@pytest.mark.parametrize("who, me, tokens, moderation_page", [
    ("anonymous", 302, 302, 302),
    ("alice", 200, 200, 403),
    ("bob", 200, 200, 403),
    ("carol", 200, 200, 200),
    ("dave", 200, 200, 403),
])
def test_the_permission_matrix_of_private_pages(who, me, tokens, moderation_page, users, client):
    client = client_for(client, users[who])
    assert client.get("/me/").status_code == me
    assert client.get("/tokens/").status_code == tokens
    assert client.get("/moderation/").status_code == moderation_page
    if who == "anonymous":
        assert client.get("/me/")["Location"].startswith("/login/")


def test_a_banned_volunteer_sees_why_and_cannot_create_tokens(dave, client):
    client.force_login(dave)
    assert "part does not match its commitment" in client.get("/me/").content.decode()
    assert client.post("/tokens/", {"name": "sneaky"}).status_code == 403
    assert not WorkerToken.objects.filter(user=dave).exists()


def test_a_new_token_is_shown_once_and_then_only_by_its_prefix(alice, client):
    client.force_login(alice)
    response = client.post("/tokens/", {"name": "home-gpu"})
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    raw = re.search(r'id="token-secret">([^<]+)<', response.content.decode()).group(1)
    assert volunteers.authenticate_worker_token(raw).name == "home-gpu"
    later = client.get("/tokens/").content.decode()
    assert raw not in later and f"btard_{raw.split('_')[1]}_" in later


def test_only_the_owner_can_revoke_a_token(alice, bob, client):
    issued = volunteers.create_worker_token(user=alice, name="a")
    client.force_login(bob)
    assert client.post(f"/tokens/{issued.token.pk}/revoke/").status_code == 404
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is None
    client.force_login(alice)
    assert client.post(f"/tokens/{issued.token.pk}/revoke/").status_code == 302
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is not None


def test_sign_up_logs_in_and_is_rate_limited_with_a_clear_message(client, settings):
    settings.SIGNUP_LIMIT_PER_ADDRESS = 1
    data = {"username": "erin", "email": "erin@example.org", "password1": "a-long-pass-phrase",
            "password2": "a-long-pass-phrase"}
    assert client.post("/signup/", data)["Location"] == "/tokens/"
    client.logout()
    data.update(username="frank", email="frank@example.org")
    limited = client.post("/signup/", data)
    assert limited.status_code == 429 and "Too many sign-ups from your address" in limited.content.decode()
    assert limited["Retry-After"]


def test_password_reset_sends_a_link_by_email(alice, client):
    client.post("/password-reset/", {"email": alice.email})
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/reset/\S+/)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert form.status_code == 200 and "new password" in form.content.decode().lower()


def test_logout_needs_a_post(alice, client):
    client.force_login(alice)
    assert client.post("/logout/").status_code == 302
    assert client.get("/me/").status_code == 302


def test_the_worker_check_explains_refusals(alice, client):
    issued = volunteers.create_worker_token(user=alice, name="box")
    ok = client.get("/api/worker/check", HTTP_AUTHORIZATION=f"Bearer {issued.raw}")
    assert ok.status_code == 200 and ok.json()["account"] == "alice"
    assert client.get("/api/worker/check").json()["code"] == 4001
    assert client.get("/api/worker/check", HTTP_AUTHORIZATION="Bearer btard_x_y").status_code == 401
    volunteers.revoke_worker_token(token=issued.token, actor=alice)
    revoked = client.get("/api/worker/check", HTTP_AUTHORIZATION=f"Bearer {issued.raw}")
    assert revoked.status_code == 403 and revoked.json()["code"] == 4004 and "box" in revoked.json()["reason"]


def test_the_public_api_lists_runs_peers_and_bans(run, alice, bob, client):
    peer, _ = make_peer(run=run, user=alice, status="training")
    bad, _ = make_peer(run=run, user=bob)
    moderation.ban_peer(peer=bad, reason="wrong CenteredClip result", evidence_kind="bad_aggregate",
                        evidence={}, source="verdict", step=7)
    assert client.get("/api/runs/").json()["runs"][0]["name"] == run.name
    detail = client.get(f"/api/runs/{run.pk}/").json()
    assert detail["step"] == 0 and "curve" in detail and "accuracy" in detail
    assert {p["peer_id"]: p["status"] for p in detail["peers"]}[peer.peer_id] == "training"
    (ban,) = client.get("/api/bans/").json()["bans"]
    assert (ban["peer"], ban["account"], ban["run"], ban["step"], ban["evidence_kind"]) == \
        (bad.peer_id, "bob", run.pk, 7, "bad_aggregate")
    assert ban["reason"] and ban["time"]
    assert "bob" in client.get("/bans/").content.decode()


def test_partials_answer_htmx_polling(run, client):
    assert 'id="ban-list"' in client.get("/bans/?partial=rows").content.decode()
    body = client.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert body.startswith('<div id="run-dashboard"') and "every 5s" in body


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


def test_staff_create_runs_in_the_admin(client):
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    assert client.get("/admin/runs/run/add/").status_code == 200
    assert 'value="reputation"' in client.get("/admin/runs/run/add/").content.decode()
