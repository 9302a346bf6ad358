"""Emission of live events: after commit, to the channel layer groups the event names."""

from __future__ import annotations

import logging
from functools import partial

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from .events import _Event

log = logging.getLogger(__name__)
MESSAGE_TYPE = "live.event"


def build_message(event: _Event) -> dict:
    return {"type": MESSAGE_TYPE, "event": event.model_dump(mode="json")}


async def deliver_async(event: _Event, layer=None) -> None:
    """Send ``event`` to its groups, and its control message (if any) to each recipient worker.

    Worker messages (``Group``, ``Relay``) are serialised once and sent only to the recipients' own
    groups (``workers.peer.<id>``), so a push costs O(recipients) whatever the size of the run.
    """
    import asyncio

    from .events import peer_group

    layer = layer or get_channel_layer()
    if layer is None:
        return
    sends = []
    groups = event.groups()
    if groups:
        message = build_message(event)
        sends += [layer.group_send(group, message) for group in groups]
    worker_message = getattr(event, "worker_message", None)
    if worker_message is not None:
        forward = {"type": "worker.forward", "text": worker_message().model_dump_json()}
        sends += [layer.group_send(peer_group(pid), forward) for pid in event.worker_recipients()]
    results = await asyncio.gather(*sends, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):  # a full channel must not undo a committed write
            log.error("could not deliver %s: %r", event.type, result)


def deliver(event: _Event) -> None:
    """Deliver ``event`` now (sync callers). Failures are logged: the database state is committed."""
    try:
        async_to_sync(deliver_async)(event)
    except Exception:
        log.exception("could not deliver %s", event.type)


def emit(event: _Event) -> _Event:
    """Deliver ``event`` once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(partial(_deliver_on_commit, event))
    return event


def _deliver_on_commit(event: _Event) -> None:
    deliver(event)


def pending_events(using: str = "default") -> list[_Event]:
    """Events waiting for the current transaction to commit (tests read these inside their atomic block)."""
    from django.db import connections

    return [entry[1].args[0] for entry in connections[using].run_on_commit
            if isinstance(entry[1], partial) and entry[1].func is _deliver_on_commit]
