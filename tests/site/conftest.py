"""The role matrix shared by the site's page and websocket tests: anonymous, volunteer alice, other
volunteer bob, staff carol, banned dave (``users[role]``, parametrize over ``tests.site.helpers.ROLES``). Events emitted by
services are collected by the ``events`` fixture. Tests live by app and service:
``tests/site/<app>/test_<service or view>.py``."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests.factories import UserFactory


@pytest.fixture(autouse=True, scope="session")
def _no_persistent_connections_in_tests():
    """Consumers run their queries in a worker thread; a kept-alive connection there would keep the
    test database busy at teardown."""
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(autouse=True)
def _in_memory_layer_and_clean_cache(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, tests only
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "site-tests"}}
    from channels.layers import channel_layers
    from django.core.cache import cache

    channel_layers.backends.pop("default", None)
    cache.clear()
    yield
    channel_layers.backends.pop("default", None)


@pytest.fixture
def events(db):
    """``events()`` lists the events services emitted in this test, waiting for commit, in order."""
    from live.bus import pending_events

    return pending_events


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def carol(db):
    return UserFactory(username="carol", is_staff=True)


@pytest.fixture
def dave(db):
    user = UserFactory(username="dave")
    user.volunteer.banned_at = timezone.now()
    user.volunteer.ban_reason = "bad_commitment: part does not match its commitment"
    user.volunteer.save()
    return user


@pytest.fixture
def users(alice, bob, carol, dave):
    """The role matrix by name (``tests.site.helpers.ROLES``); ``users["anonymous"]`` is ``None``."""
    return {"anonymous": None, "alice": alice, "bob": bob, "carol": carol, "dave": dave}


@pytest.fixture
def run(db):
    from tests.factories import RunFactory

    return RunFactory(name="digits")


@pytest.fixture
def group(run):
    """Three active peers of ``run`` (``[(peer, identity), ...]``) and the run's first step formed."""
    from runs.services import start_step_if_ready

    from tests.factories import make_peer

    peers = [make_peer(run=run, seed=f"g{i}") for i in range(3)]
    start_step_if_ready(run=run)
    return peers
