"""Emission of live events: after commit, to the channel layer groups the event names."""

from __future__ import annotations

import logging
from functools import partial

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from worker_client.control import BOARD_PHASES

from .events import _Event

log = logging.getLogger(__name__)
MESSAGE_TYPE = "live.event"


def build_message(event: _Event) -> dict:
    return {"type": MESSAGE_TYPE, "event": event.model_dump(mode="json")}


async def register_step_members(layer, *, group: str, peer_ids: list[str]) -> int:
    """Add the live sockets of ``peer_ids`` to a step's channel group; returns how many were online."""
    import asyncio

    from django.core.cache import cache

    from .events import peer_channel_key

    channels = await cache.aget_many([peer_channel_key(pid) for pid in peer_ids])
    await asyncio.gather(*(layer.group_add(group, channel) for channel in channels.values()))
    return len(channels)


async def deliver_async(event: _Event, layer=None) -> None:
    """Send ``event`` to its live-view groups, and its control message (if any) to the step's workers.

    ``GroupFormed`` first puts the recipients' sockets into the step's channel group, then sends one
    ``Group`` message to it; ``BroadcastRecorded`` sends one ``Relay`` to the same group (its sender
    skips it). The worker message is serialised once per push, and with Redis one copy per Daphne
    process crosses the channel layer, whatever the number of recipients.
    """
    import asyncio

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
        group = event.worker_group()
        if hasattr(event, "worker_recipients"):
            await register_step_members(layer, group=group, peer_ids=event.worker_recipients())
        forward = {"type": "worker.forward", "text": worker_message().model_dump_json()}
        envelope = getattr(event, "envelope", None)
        if envelope is not None and envelope.phase not in BOARD_PHASES:
            # a board-phase broadcast goes back to its sender too: the echo tells it the site stored it
            # before the phase closed (see worker_client.control.BOARD_PHASES)
            forward["skip"] = envelope.sender
        sends.append(layer.group_send(group, forward))
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
