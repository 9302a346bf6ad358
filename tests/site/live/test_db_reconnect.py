"""A worker message whose database connection was lost (PostgreSQL restarted) is handled on a new
connection, not dropped with ``internal`` (issue 13: a lost step report kept its step open until the
deadline)."""

from __future__ import annotations

import psycopg
import pytest
from django.db import Error, IntegrityError, connection
from live.consumers import common
from runs.models import Run

from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (a server that can drop our connection)")


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(common, "RECONNECT_DELAYS", (0.01, 0.01))


def _terminate_our_backend() -> None:
    """What a server restart does to our connection: the server ends it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    settings = connection.get_connection_params()
    dsn = {k: v for k, v in settings.items() if k in ("host", "port", "user", "password", "dbname")}
    with psycopg.connect(**dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_call_that_lost_its_database_connection_runs_again_on_a_new_one(quick):
    run = RunFactory(name="reconnect")
    calls = []

    def rename():
        calls.append(1)
        if len(calls) == 1:
            _terminate_our_backend()
        Run.objects.filter(pk=run.pk).update(name="renamed")
        return "done"

    assert common.retry_lost_connection(rename)() == "done"
    assert len(calls) == 2 and Run.objects.get(pk=run.pk).name == "renamed"


def test_an_error_on_a_healthy_connection_is_not_retried(quick):
    calls = []

    def refused():
        calls.append(1)
        raise IntegrityError("a constraint said no")

    with pytest.raises(IntegrityError):
        common.retry_lost_connection(refused)()
    assert len(calls) == 1


def test_a_connection_that_stays_lost_gives_up_after_the_last_delay(quick):
    calls = []

    def always_lost():
        calls.append(1)
        _terminate_our_backend()
        Run.objects.count()

    with pytest.raises(Error):
        common.retry_lost_connection(always_lost)()
    assert len(calls) == len(common.RECONNECT_DELAYS) + 1
