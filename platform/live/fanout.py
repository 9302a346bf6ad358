"""Per-process fan-out of a step's messages to its members' worker sockets.

A step's ``Group``, every ``Relay`` of its broadcasts and every ``PhaseClosed`` go to all members of the
step at once. Sending one channel-layer message per member socket costs one Redis push, one pop and one
decode per member, all on the one event loop of a Daphne process. Instead, each process that holds
worker sockets runs one *hub*: a channel named after the process's own channel prefix (so any process
can address it without a lookup), served by one task that hands the text to the local sockets itself.
A push then costs one cache ``MGET`` of the members' socket names (``peer-channel:<run>:<peer>``, set
once a ``hello`` joined) and **one channel-layer message per Daphne process**, however many members it has.

Membership is resolved when a message is sent, so a worker that reconnects mid-step (a new socket, a new
cache entry) gets the rest of the step's messages with no group bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.core.cache import cache

from .event_routing import peer_channel_key

log = logging.getLogger(__name__)

HUB_SUFFIX = "!btard-hub"
MESSAGE_TYPE = "hub.fanout"

# cache lookups of fan_out (never the loop's default executor: see fan_out)
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fanout-lookup")
_sockets: dict[str, tuple[object, asyncio.AbstractEventLoop]] = {}  # channel name -> (consumer, its loop)
_hubs: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
_open: dict[asyncio.AbstractEventLoop, int] = {}  # sockets registered per event loop


def hub_of(channel_name: str) -> str | None:
    """The hub channel of the process that owns ``channel_name`` (None for a name without a process part)."""
    if "!" not in channel_name:
        return None
    return channel_name.split("!", 1)[0] + HUB_SUFFIX


def attach(consumer) -> None:
    """Register a worker socket of this process and make sure this process's hub is running."""
    loop = asyncio.get_running_loop()
    if consumer.channel_name not in _sockets:
        _open[loop] = _open.get(loop, 0) + 1
    _sockets[consumer.channel_name] = (consumer, loop)
    task = _hubs.get(loop)
    hub = hub_of(consumer.channel_name)
    if hub is not None and (task is None or task.done()):
        _hubs[loop] = loop.create_task(_serve(consumer.channel_layer, hub), name="btard-fanout-hub")


def detach(consumer) -> None:
    """Forget a closed socket; the hub stops when this event loop has no socket left."""
    entry = _sockets.pop(getattr(consumer, "channel_name", None), None)
    if entry is None:
        return
    loop = entry[1]
    _open[loop] -= 1
    if _open[loop] <= 0:
        del _open[loop]
        task = _hubs.pop(loop, None)
        if task is not None:
            task.cancel()


async def _serve(layer, hub: str) -> None:
    while True:
        try:
            message = await layer.receive(hub)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken layer connection: retry, the sockets stay up
            log.exception("fan-out hub %s could not receive; retrying", hub)
            await asyncio.sleep(0.5)
            continue
        text, skip = message.get("text", ""), message.get("skip")
        for channel in message.get("channels", ()):
            entry = _sockets.get(channel)
            if entry is None:
                continue  # closed meanwhile
            consumer = entry[0]
            try:
                await consumer.forward_text(text, skip=skip)
            except Exception:  # one socket's failure must not stop the others' messages
                log.exception("fan-out to %s failed", channel)


async def fan_out(layer, *, run_id: int, peer_ids: list[str], text: str, skip: str | None = None) -> int:
    """Send ``text`` to the live worker sockets of ``peer_ids`` (except ``skip``'s); returns how many
    sockets it was addressed to. One channel-layer message per process holding any of them."""
    # One MGET in one thread hop: Django's ``aget_many`` awaits one ``aget`` (and one thread hop) per
    # key, which for 1,000 members took longer than the whole fan-out.
    # Its own threads: a delivery runs on commit inside a database call that holds a thread of the loop's
    # default executor (``live.bus.deliver`` blocks it until the fan-out is sent); a lookup queued on that
    # same executor would wait forever once every thread is delivering (a burst of cpu + 4 broadcasts).
    names = await sync_to_async(cache.get_many, thread_sensitive=False, executor=_LOOKUPS)(
        [peer_channel_key(p, run_id) for p in peer_ids])
    by_hub: dict[str, list[str]] = defaultdict(list)
    for channel in names.values():
        hub = hub_of(channel) if isinstance(channel, str) else None
        if hub is not None:
            by_hub[hub].append(channel)
    sends = [layer.send(hub, {"type": MESSAGE_TYPE, "channels": channels, "text": text, "skip": skip})
             for hub, channels in by_hub.items()]
    results = await asyncio.gather(*sends, return_exceptions=True)
    for hub, result in zip(by_hub, results):
        if isinstance(result, BaseException):
            log.error("could not reach fan-out hub %s: %r", hub, result)
    return sum(len(c) for c in by_hub.values())
