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


def deliver(event: _Event) -> None:
    """Send ``event`` to its groups now. Failures are logged: the database state is already committed."""
    groups = event.groups()
    if not groups:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": MESSAGE_TYPE, "event": event.model_dump(mode="json")}
    worker_message = getattr(event, "worker_message", None)
    if worker_message is not None:
        # Fan-out fast path: the control message is serialised once here, and each worker socket only
        # checks whether it is a recipient (no per-socket parsing).
        message["worker"] = worker_message().model_dump_json()
        message["recipients"] = sorted(event.recipients() if callable(event.recipients) else event.recipients)
        message["sender"] = getattr(getattr(event, "envelope", None), "sender", None)
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # a full channel or a Redis hiccup must not undo a committed write
            log.exception("could not deliver %s to %s", event.type, group)


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
