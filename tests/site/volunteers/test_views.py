"""volunteers.views: sign-up, log-in and out, password reset, tokens and the worker token check."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from volunteers import services as volunteers
from volunteers.models import WorkerToken

pytestmark = pytest.mark.django_db

PUBLIC = ["/", "/bans/", "/api/runs/", "/api/bans/", "/login/", "/signup/", "/password-reset/"]


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
