"""volunteers.services: worker tokens (issue, authenticate, revoke) and what a banned account may do."""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from live import event_routing as routes
from volunteers import services as volunteers

from btard_wire.control import (
    CLOSE_BAD_TOKEN,
    CLOSE_BANNED,
    CLOSE_NO_TOKEN,
    CLOSE_REVOKED_TOKEN,
)
from tests.factories import WorkerTokenFactory
from tests.site.helpers import types

pytestmark = pytest.mark.django_db


def test_a_token_is_shown_once_and_stored_only_as_a_hash(alice, events):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    assert issued.raw.startswith(f"btard_{issued.token.prefix}_")
    assert issued.raw not in issued.token.token_hash
    assert issued.token.token_hash == volunteers.hash_token(issued.raw)
    assert types(events) == ["token_created"]
    assert volunteers.authenticate_worker_token(f" {issued.raw}").pk == issued.token.pk


def test_a_token_cannot_log_in(alice):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    assert authenticate(username="alice", password=issued.raw) is None


@pytest.mark.parametrize("raw, code", [(None, CLOSE_NO_TOKEN), ("", CLOSE_NO_TOKEN), ("nonsense", CLOSE_BAD_TOKEN),
                                       ("btard_deadbeef_wrong", CLOSE_BAD_TOKEN)])
def test_it_refuses_missing_and_unknown_tokens_with_distinct_codes(raw, code, alice):
    volunteers.create_worker_token(user=alice, name="laptop")
    with pytest.raises(volunteers.TokenRefused) as info:
        volunteers.authenticate_worker_token(raw)
    assert info.value.close_code == code


def test_a_revoked_token_is_refused_with_its_name_in_the_reason(alice, events):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    volunteers.revoke_worker_token(token=issued.token, actor=alice)
    with pytest.raises(volunteers.TokenRefused) as info:
        volunteers.authenticate_worker_token(issued.raw)
    assert info.value.close_code == CLOSE_REVOKED_TOKEN
    assert "laptop" in info.value.reason
    assert types(events) == ["token_created", "token_revoked"]
    assert routes.live_groups(events()[-1]) == [routes.token_group(issued.token.pk)]


def test_another_volunteer_cannot_revoke_my_token(alice, bob):
    issued = volunteers.create_worker_token(user=alice, name="laptop")
    with pytest.raises(PermissionError):
        volunteers.revoke_worker_token(token=issued.token, actor=bob)
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is None


def test_a_banned_account_token_is_refused_and_cannot_be_created(alice, dave):
    token = WorkerTokenFactory(user=dave)  # issued before the ban
    with pytest.raises(volunteers.TokenRefused) as info:
        volunteers.authenticate_worker_token(token.raw)
    assert info.value.close_code == CLOSE_BANNED and token.pk
    with pytest.raises(PermissionError):
        volunteers.create_worker_token(user=dave, name="new")
