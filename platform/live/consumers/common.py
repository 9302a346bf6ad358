"""What both websocket consumers share: database calls in the thread pool (retried on a transient lock),
close reasons that fit a websocket close frame, and the dispatch that skips Django's connection
housekeeping for channel-layer messages that never touch the database."""

from __future__ import annotations

from btard_site.retry import retry_transient
from channels.consumer import get_handler_name
from channels.db import DatabaseSyncToAsync
from django.db import connections


def db(func):
    """Run ``func`` in the thread pool. With PostgreSQL calls run in parallel threads (each with its own
    connection, row locks serialise what must be serialised); SQLite keeps one writer thread. A call that
    loses a race for a lock (another process writing) is run again (btard_site.retry): a worker's message
    is not dropped with ``internal`` for a transient lock."""
    return DatabaseSyncToAsync(retry_transient(func), thread_sensitive=connections["default"].vendor == "sqlite")


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
