"""Retry a database write that lost a race for a lock (docs/threat-model.md, "Site": no message lost to a
transient lock). Every service is one atomic transaction, so a failed attempt changed nothing and can be
run again; anything that is not a transient lock is raised at once."""

from __future__ import annotations

import functools
import logging
import random
import time

from django.db import OperationalError

log = logging.getLogger(__name__)
ATTEMPTS = 6
# SQLite: "database is locked" / "database table is locked"; PostgreSQL: deadlock, serialization failure,
# lock timeout (SQLSTATE 40P01, 40001, 55P03)
_TRANSIENT_TEXT = ("database is locked", "database table is locked", "deadlock detected",
                   "could not serialize access", "lock timeout", "canceling statement due to lock timeout")
_TRANSIENT_CODES = {"40P01", "40001", "55P03"}


def is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code in _TRANSIENT_CODES or any(text in str(exc).lower() for text in _TRANSIENT_TEXT)


def retry_transient(func=None, *, attempts: int = ATTEMPTS, base_delay: float = 0.05):
    """Decorator: run ``func`` again (jittered exponential backoff) when it fails on a transient lock."""
    if func is None:
        return functools.partial(retry_transient, attempts=attempts, base_delay=base_delay)

    @functools.wraps(func)
    def run(*args, **kwargs):
        from django.db import connection

        for attempt in range(attempts):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if not is_transient(exc) or attempt == attempts - 1 or connection.in_atomic_block:
                    raise  # inside an outer transaction the caller must retry the whole of it
                delay = base_delay * (2 ** attempt) * (0.5 + random.random())
                log.info("%s hit a transient lock (%s); retry %d in %.2f s", func.__name__, exc, attempt + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    return run
