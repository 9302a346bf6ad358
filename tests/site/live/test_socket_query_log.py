"""A DEBUG site (make demo, development) keeps each connection's last 9,000 SQL queries until a request
starts; the worker sockets' database calls are no request, so each call clears its thread's log itself
(the soak's site held ~7 MiB of SQL text there)."""

from __future__ import annotations

import pytest
from django.db import connection
from live.consumers.common import db

pytestmark = pytest.mark.django_db


def _queries_logged_at_call() -> int:
    return len(connection.queries_log)


def test_a_socket_database_call_starts_with_an_empty_query_log_under_debug(settings):
    settings.DEBUG = True
    with connection.cursor() as cursor:
        for _ in range(20):
            cursor.execute("SELECT 1")  # earlier calls of this thread
    assert len(connection.queries_log) >= 20
    assert db(_queries_logged_at_call).func() == 0  # the wrapped call, run in this thread
