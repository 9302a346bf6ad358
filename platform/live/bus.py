"""Emission of live events: after commit, to the channel-layer groups ``live.event_routing`` names."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connections, transaction

from btard_wire import BOARD_PHASES

from .event_routing import live_groups, worker_message, worker_recipients
from .events import _Event
from .fanout import fan_out

log = logging.getLogger(__name__)
MESSAGE_TYPE = "live.event"


def build_message(event: _Event) -> dict:
    return {"type": MESSAGE_TYPE, "event": event.model_dump(mode="json")}


async def deliver_async(event: _Event, layer=None) -> None:
    """Send ``event`` to its live-view groups, and its control message (if any) to the step's workers.

    A step's messages (``Group``, ``Relay``, ``PhaseClosed``) go to its members' sockets through the
    per-process hubs of :mod:`live.fanout`: the message is serialised once and one copy per Daphne process
    crosses the channel layer, whatever the number of recipients. A board-phase broadcast goes back to its
    sender too (the echo says the site stored it before the phase closed); other relays skip the sender.
    """
    layer = layer or get_channel_layer()
    if layer is None:
        return
    sends = []
    groups = live_groups(event)
    if groups:
        message = build_message(event)
        sends += [layer.group_send(group, message) for group in groups]
    control = worker_message(event)
    if control is not None:
        envelope = getattr(event, "envelope", None)
        skip = envelope.sender if envelope is not None and envelope.phase not in BOARD_PHASES else None
        sends.append(fan_out(layer, run_id=event.run_id, peer_ids=worker_recipients(event),
                             text=control.model_dump_json(), skip=skip))
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
    return [entry[1].args[0] for entry in connections[using].run_on_commit
            if isinstance(entry[1], partial) and entry[1].func is _deliver_on_commit]
