"""What both websocket consumers share: database calls in the thread pool (retried on a transient lock),
close reasons that fit a websocket close frame, and the dispatch that skips Django's connection
housekeeping for channel-layer messages that never touch the database."""

from __future__ import annotations

import functools
import logging
import random
import time

from btard_site.retry import retry_transient
from channels.consumer import get_handler_name
from channels.db import DatabaseSyncToAsync
from django.db import Error, OperationalError, connections, reset_queries

log = logging.getLogger(__name__)

# A lost database connection (PostgreSQL restarted, a failover) is retried on a new one for about this long:
# a restart takes a few seconds, and a worker's message dropped with ``internal`` meanwhile (a step report,
# a broadcast) is never sent again, so its step waits for its deadline (likely the 54.6 s of one e2e run).
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)


def _connection_lost(exc: Exception) -> bool:
    conn = connections["default"]
    if conn.vendor == "sqlite" or conn.in_atomic_block:
        return False  # a file does not go away; inside a caller's transaction the caller must retry it whole
    if conn.connection is None:  # connecting failed (the server is still down), or nothing was ever opened
        return isinstance(exc, OperationalError)
    return not conn.is_usable()


def retry_lost_connection(func):
    """Run ``func`` again on a fresh connection when it failed because the database connection was lost
    (each service is one transaction: a failed attempt committed nothing; a repeated broadcast or report
    is refused by the services, never applied twice). Anything else is raised at once."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        for delay in (*RECONNECT_DELAYS, None):
            try:
                return func(*args, **kwargs)
            except Error as exc:  # OperationalError, or InterfaceError on a closed connection
                if not _connection_lost(exc):
                    raise
                connections["default"].close()  # the next query opens a new connection
                if delay is None:
                    raise
                log.warning("%s lost its database connection (%s); retrying in %.1f s", func.__name__,
                            str(exc).strip()[:200], delay)
                time.sleep(delay * (0.75 + random.random() / 2))
        raise AssertionError("unreachable")

    return run


def db(func):
    """Run ``func`` in the thread pool. With PostgreSQL calls run in parallel threads (each with its own
    connection, row locks serialise what must be serialised); SQLite keeps one writer thread. A call that
    loses a race for a lock (another process writing) is run again (btard_site.retry), and so is one whose
    database connection was lost (:func:`retry_lost_connection`): a worker's message is not dropped with
    ``internal`` for a transient lock or a database restart."""
    return DatabaseSyncToAsync(retry_lost_connection(retry_transient(_outside_a_request(func))),
                               thread_sensitive=connections["default"].vendor == "sqlite")


def _outside_a_request(func):
    """Under DEBUG a connection keeps its last 9,000 queries until a request starts (``request_started``
    clears the log); a socket's calls are no request, so each clears its thread's log as a request would
    (the soak's DEBUG site held ~7 MiB of SQL text there)."""

    @functools.wraps(func)
    def call(*args, **kwargs):
        reset_queries()
        return func(*args, **kwargs)

    return call


def close_reason(text: str) -> str:
    """A websocket close reason must fit in 123 bytes."""
    data = text.encode()[:120]
    return data.decode(errors="ignore")


# Channel-layer messages whose handlers never touch the database directly (they only write to the socket,
# or go through ``db``, whose thread closes stale connections itself).
NO_DB_MESSAGES = frozenset({"worker.forward", "worker.replaced", "live.event"})


class FastDispatchMixin:
    """Channels runs ``close_old_connections`` in the one thread-sensitive sync thread before *every*
    message. A step's relay reaches every member socket at once, so with 1,000 sockets that is 1,000
    thread hops queued behind each other (about two thirds of the fan-out time in
    ``benchmarks/site_load.py``). Messages that do not use the database skip it."""

    async def dispatch(self, message):
        if message.get("type") in NO_DB_MESSAGES:
            handler = getattr(self, get_handler_name(message), None)
            if handler is not None:
                await handler(message)
                return
        await super().dispatch(message)
