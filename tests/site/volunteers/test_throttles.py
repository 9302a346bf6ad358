"""F10 (and F14's validators; site security review): login, admin login, the token check and sign-up
are throttled per address and per account; lookalike usernames and all-digit passwords are refused."""

from __future__ import annotations

import pytest
from btard_site.security import skeleton
from django.contrib.auth import get_user_model

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery"  # tests.factories.UserFactory's


def login(client, username, password, address="198.51.100.1", path="/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_guessing_one_accounts_password_is_throttled_even_from_many_addresses(alice, client, settings):
    settings.LOGIN_LIMIT_PER_ACCOUNT = 5
    for i in range(5):
        assert login(client, "alice", f"guess {i}", address=f"203.0.113.{i}").status_code == 200
    answer = login(client, "alice", PASSWORD, address="203.0.113.99")  # the right password, too late
    assert answer.status_code == 429 and int(answer["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session


def test_one_address_guessing_many_accounts_is_throttled(client, settings):
    settings.LOGIN_LIMIT_PER_ADDRESS = 4
    for i in range(4):
        login(client, f"nobody{i}", "x")
    assert login(client, "someone-else", "x").status_code == 429
    assert login(client, "someone-else", "x", address="198.51.100.2").status_code == 200  # another address


def test_a_login_under_the_limits_still_works(alice, client):
    assert login(client, "alice", "wrong").status_code == 200
    assert login(client, "alice", PASSWORD).status_code == 302


def test_the_admin_login_is_throttled_too(carol, client, settings):
    settings.LOGIN_LIMIT_PER_ACCOUNT = 3
    for i in range(3):
        assert login(client, "carol", f"guess {i}", path="/admin/login/").status_code == 200
    assert login(client, "carol", PASSWORD, path="/admin/login/").status_code == 429


def test_the_token_check_is_throttled_per_address(client, settings):
    settings.TOKEN_CHECK_LIMIT_PER_ADDRESS = 5
    codes = [client.get("/api/worker/check", HTTP_AUTHORIZATION=f"Bearer btard_deadbeef_{i}",
                        REMOTE_ADDR="198.51.100.7").status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]


def sign_up(client, username, password="a quiet meadow 42", email=None, address="198.51.100.3"):
    return client.post("/signup/", {"username": username, "email": email or f"{abs(hash(username))}@example.org",
                                    "password1": password, "password2": password}, REMOTE_ADDR=address)


@pytest.mark.parametrize("lookalike", ["\u0430dmin", "ADMIN", "Admin", "adm\u0456n", "admln", "\uff41dmin"])
def test_a_username_that_looks_like_an_existing_one_is_refused(client, lookalike):
    UserFactory(username="admin")
    answer = sign_up(client, lookalike)
    assert answer.status_code == 200
    assert b"looks too much like" in answer.content or b"already exists" in answer.content
    assert get_user_model().objects.count() == 1


def test_a_distinct_username_is_accepted(client):
    UserFactory(username="admin")
    assert sign_up(client, "admiral").status_code == 302


def test_skeletons_fold_case_width_and_lookalike_letters():
    assert skeleton("\u0430dmin") == skeleton("admin") == skeleton("ＡＤＭＩＮ") == skeleton("adm1n")
    assert skeleton("alice") != skeleton("alicia")


def test_an_all_digit_password_is_refused(client):
    answer = sign_up(client, "digits", password="73910482")
    assert answer.status_code == 200 and b"entirely numeric" in answer.content


def test_sign_ups_with_one_email_address_are_throttled(client, settings):
    settings.SIGNUP_LIMIT_PER_EMAIL = 1
    settings.SIGNUP_LIMIT_PER_ADDRESS = 100
    assert sign_up(client, "first", email="same@example.org", address="198.51.100.4").status_code == 302
    client.logout()
    assert sign_up(client, "second", email="same@example.org", address="198.51.100.5").status_code == 429
