"""``/ws/live/``: a browser watching a public view (the ban list, a run's dashboard, the leaderboard).
Read-only; pushes the fragment the view's app renders for each live event (``live.fragments``) as an htmx
out-of-band swap."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from pydantic import ValidationError

from .. import event_routing as routes
from .. import events as ev
from ..fragments import render_fragment
from .common import FastDispatchMixin, db

log = logging.getLogger(__name__)


class _FragmentMemo:
    """Every browser socket of a view gets the same fragment for an event: render it once per process
    (the dashboard's state takes several queries) and hand the same HTML to the other sockets."""

    def __init__(self, ttl: float = 5.0, size: int = 256):
        self.ttl, self.size = ttl, size
        self.entries: dict[tuple, tuple[float, asyncio.Future]] = {}

    async def get(self, key: tuple, render) -> str:
        now = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return await asyncio.shield(hit[1])
        future = asyncio.get_running_loop().create_future()
        self.entries[key] = (now, future)
        if len(self.entries) > self.size:
            for old in sorted(self.entries, key=lambda k: self.entries[k][0])[: len(self.entries) - self.size]:
                self.entries.pop(old, None)
        try:
            html = await render()
        except BaseException as exc:
            self.entries.pop(key, None)
            future.set_exception(exc)
            future.exception()  # retrieved: a failed render is not an unhandled error of the memo
            raise
        future.set_result(html)
        return html


fragment_memo = _FragmentMemo()


class LiveConsumer(FastDispatchMixin, AsyncWebsocketConsumer):
    """``/ws/live/?view=bans`` (ban list) or ``/ws/live/?run=<id>`` (run dashboard): pushes the page's
    partials as htmx out-of-band swaps. Read-only; anyone may watch the public views."""

    async def connect(self):
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.run_id = None
        self.view = query.get("view", ["run" if "run" in query else "bans"])[0]
        groups = []
        if self.view == "bans":
            groups.append(routes.bans_group())
        elif self.view == "run":
            raw = query.get("run", [""])[0]
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # a group name has a length limit (F11)
                await self.close(code=4400)
                return
            self.run_id = int(raw)
            groups.append(routes.run_live_group(self.run_id))
        elif self.view == "leaderboard":  # every run's steps and bans; ``run`` narrows the board to one
            raw = query.get("run", [""])[0]
            if raw and not raw.isdigit():
                await self.close(code=4400)
                return
            self.run_id = int(raw) if raw else None
            groups.append(routes.runs_group())
        else:
            await self.close(code=4400)
            return
        self.groups_joined = groups
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        return  # the htmx ws extension may send form data; these views take none

    async def live_event(self, message):
        try:
            event = ev.parse_event(message["event"])
        except ValidationError:
            log.exception("undecodable live event")
            return
        key = (json.dumps(message["event"], sort_keys=True, default=str), self.view, self.run_id)
        html = await fragment_memo.get(
            key, lambda: db(render_fragment)(event, view=self.view, run_id=self.run_id))
        if html:
            await self.send(text_data=html)
