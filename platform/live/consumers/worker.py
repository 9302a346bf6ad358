"""``/ws/worker/``: one ``btard-worker`` socket. Thin: parse a control message, call the runs service
(in the thread pool, ``common.db``), and turn live events and relays into control-plane JSON.

A refusal accepts the socket and closes it at once with a ``CLOSE_*`` code and a reason, so the worker
can tell the volunteer why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.cache import cache
from organiser.notices import welcome_notice
from pydantic import ValidationError
from runs.deadlines import effective_deadlines
from runs.models import Peer, Run, StepRecord
from runs.selectors import board_envelopes, state_donors
from runs.services import (
    JoinRefused,
    Rejected,
    reachability_word,
    record_reachability,
    start_step_if_ready,
    tick_run,
)
from runs.services.board import board_request, post_broadcast, request_phase_close
from runs.services.membership import disconnect_peer, join_run, record_heartbeat
from runs.services.reports import record_step_report
from volunteers.services import TokenRefused, authenticate_worker_token

from btard_wire import BROADCAST_PHASES, PROTOCOL_VERSION
from btard_wire import board as board_rules
from btard_wire.control import (
    CLOSE_BANNED,
    CLOSE_PROTOCOL_VERSION,
    CLOSE_REASONS,
    CLOSE_REPLACED,
    CLOSE_REVOKED_TOKEN,
    CLOSE_RUN_FINISHED,
    KEY_BAN_ADVICE,
    BanNotice,
    Challenge,
    ErrorMessage,
    Group,
    ReachabilityCheck,
    ReachabilityResult,
    Relay,
    RunNotice,
    Welcome,
    hello_proof_valid,
    parse_worker_message,
)
from btard_wire.envelope import b64d, peer_id_from_public_key
from btard_wire.errors import ControlError, ProtocolError

from .. import event_routing as routes
from .. import events as ev
from .. import fanout
from .common import FastDispatchMixin, close_reason, db

log = logging.getLogger(__name__)
TICK_THROTTLE_SECONDS = 1
# A steady heartbeat (same status) is written at most this often; a status change is written at once.
HEARTBEAT_WRITE_SECONDS = 5.0
# A socket re-joins its channel-layer groups this often (channels_redis forgets a member after its
# ``group_expiry``, a day by default), and at once when its routing entry was found gone.
GROUP_REFRESH_SECONDS = 3600.0


def bearer_token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            text = value.decode("latin-1").strip()
            if text.lower().startswith("bearer "):
                return text[7:].strip() or None
            return None
    return None


# --- sync parts, run in the thread pool ------------------------------------------------------------
def _authenticate(raw):
    return authenticate_worker_token(raw)


def _peer_id_of_hello(hello) -> str | None:
    try:
        return peer_id_from_public_key(b64d(hello.public_key, what="public key"))
    except (ProtocolError, ValueError):
        return None  # the join rejects the key with its own message


def _group_of_step_in_progress(peer) -> tuple[int, str] | None:
    """The ``Group`` of the run's step in progress if ``peer`` is in it: ``(step, json)``.

    Sent on every ``hello``, however long ago the step formed: the group may have formed while this
    socket's routing entry was not written yet, or its fan-out may have been lost with the previous socket
    (a Redis restart drops the routing entries and closes every socket at once, a killed Daphne process
    takes its sockets). A worker already running that step ignores the copy; one that never got it joins
    the step late instead of idling until the step's deadline and the next group."""
    run = Run.objects.filter(pk=peer.run_id, step_in_progress=True).first()
    record = run and StepRecord.objects.filter(run=run, step=run.current_step).first()
    if not record or peer.peer_id not in record.recipients():
        return None
    by_id = {p.peer_id: p for p in Peer.objects.filter(run=run, peer_id__in=record.members)}
    rows = [by_id[pid] for pid in record.members if pid in by_id]
    members = [p.peer_info() for p in rows]
    group = Group(step=record.step, peers=members, validators=record.validators, candidates=record.candidates,
                  deadlines={"step": record.deadline.timestamp(),
                             "phase_timeout": effective_deadlines(run).phase_timeout},
                  state_donors=[p.peer_info() for p in state_donors(run, step=record.step, members=rows)])
    return record.step, group.model_dump_json()


def _board_so_far(peer, step: int) -> list[dict]:
    """The broadcasts of ``step`` stored so far, phase by phase, for a member that (re)connected during it:
    the relays posted while it had no socket (or no routing entry) went to nobody, and a phase the others
    already passed never closes for it (they do not ask), so it would wait for the step's deadline.

    Bounded like a ``board_request`` (F6): at most a step's board per phase, and at most
    ``BOARD_REQUESTS_PER_PHASE`` catch-ups per peer and step, however often it reconnects."""
    record = StepRecord.objects.filter(run_id=peer.run_id, step=step).first()
    if record is None or peer.peer_id not in record.recipients():
        return []
    key = f"board-catch-up:{peer.run_id}:{peer.peer_id}:{step}"
    cache.add(key, 0, timeout=3600)
    if cache.incr(key) > board_rules.BOARD_REQUESTS_PER_PHASE:
        return []
    return [env for phase in BROADCAST_PHASES for env in board_envelopes(record=record, phase=phase, senders=[])]


def _join(token, hello):
    return join_run(token=token, hello=hello)


def _tick(run_id: int, *, force: bool = False) -> None:
    """Drive the run forward, at most once a second per run unless ``force`` (a step report)."""
    if not force and not cache.add(f"tick-run:{run_id}", 1, timeout=TICK_THROTTLE_SECONDS):
        return
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return
    try:
        tick_run(run=run)
    except Exception:  # housekeeping for the whole run: the worker's own message was already stored
        log.exception("tick of run %s after a worker message failed", run_id)


def _start_step_if_ready(run_id: int) -> None:
    run = Run.objects.filter(pk=run_id).first()
    if run is not None and not run.step_in_progress:
        start_step_if_ready(run=run)


def _heartbeat(peer, heartbeat) -> None:
    record_heartbeat(peer=peer, heartbeat=heartbeat)
    _tick(peer.run_id)


def _broadcast(peer, envelope) -> None:
    post_broadcast(peer=peer, envelope=envelope)  # one transaction: retried as a whole on a transient lock


def _step_report(peer, report) -> None:
    try:
        record_step_report(peer=peer, report=report)
    except Rejected as exc:
        if exc.code == "duplicate":  # a worker repeats its last report after a reconnect: the first stands
            return
        raise
    _tick(peer.run_id, force=True)


def _phase_close(peer, msg) -> None:
    request_phase_close(peer=peer, step=msg.step, phase=msg.phase)


def _board(peer, msg) -> list[dict]:
    return board_request(peer=peer, step=msg.step, phase=msg.phase, senders=msg.senders)


def _welcome_notice(run_id: int):
    return welcome_notice(run_id)


def _disconnect(peer) -> None:
    disconnect_peer(peer=peer)


def _reachability_helper(peer) -> str | None:
    helper = (Peer.objects.filter(run_id=peer.run_id, role="active", online=True)
              .exclude(pk=peer.pk).order_by("?").values_list("peer_id", flat=True).first())
    return helper


def _reach_key(request_id: str) -> str:
    """Cache key of a pending reachability check: the id a worker sends back is hashed, never used raw."""
    return "reach:" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()


def _refused_broadcast(msg) -> dict:
    """For a refused ``broadcast``: its step and digest, so its sender can take it out of its report; an
    envelope that has no digest (a NaN in its payload cannot be serialised canonically) names none."""
    if msg.type != "broadcast":
        return {}
    try:
        return {"step": msg.envelope.step, "digest": msg.envelope.digest()}
    except ValueError:
        return {}


_GROUP_PREFIX = f'{{"v":{PROTOCOL_VERSION},"type":"group"'


class WorkerConsumer(FastDispatchMixin, AsyncWebsocketConsumer):
    """One ``btard-worker``. Refusals: the socket is accepted and closed at once with a
    ``CLOSE_*`` code and a reason, so the worker can tell the volunteer why."""

    peer = None
    token = None
    replaced = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_steps: set[int] = set()

    async def connect(self):
        self.joined: list[str] = []
        try:
            self.token = await db(_authenticate)(bearer_token(self.scope))
        except TokenRefused as exc:
            log.info("worker refused (%s): %s", exc.close_code, exc.reason)
            await self.accept()
            await self.close(code=exc.close_code, reason=close_reason(exc.reason))
            return
        await self.accept()
        # proof of key possession: the hello must sign this nonce with the key it announces
        self.nonce = secrets.token_urlsafe(24)
        await self.send_model(Challenge(nonce=self.nonce))
        # one live worker per token: an older connection is told to close
        await self.channel_layer.group_send(routes.token_group(self.token.pk),
                                            {"type": "worker.replaced", "channel": self.channel_name})
        await self._group_add(routes.token_group(self.token.pk))
        await self._group_add(routes.user_group(self.token.user_id))

    async def _group_add(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.append(group)

    async def disconnect(self, code):
        if getattr(self, "cleaned_up", False):
            return
        self.cleaned_up = True
        self.gone = True
        fanout.detach(self)
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.peer is not None and not self.replaced:
            key = routes.peer_channel_key(self.peer.peer_id, self.peer.run_id)
            if await cache.aget(key) == self.channel_name:
                await cache.adelete(key)
            try:
                await db(_disconnect)(self.peer)
            except Exception:
                log.exception("could not mark %s offline", self.peer.peer_id[:8])

    async def send(self, text_data=None, bytes_data=None, close=False):
        """Write to the worker; a socket the worker already left is not an error of the site (a ban
        notice or relay can cross the worker's disconnect)."""
        if getattr(self, "gone", False):
            return
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Exception as exc:  # noqa: BLE001 - the server's own "closed" error type differs per server
            self.gone = True
            log.info("socket of %s closed before a send could go out (%s)", self._who(), exc)

    async def send_model(self, model) -> None:
        await self.send(text_data=model.model_dump_json())

    async def websocket_receive(self, message):
        """A message the consumer cannot survive (anything ``receive`` does not turn into an ``error``)
        closes the socket with 1011 and a reason, and the peer is cleaned up (offline, routing entry
        gone) at once, not at its heartbeat timeout (F11)."""
        try:
            await super().websocket_receive(message)
        except Exception:
            log.exception("worker socket of %s failed on a message; closing it", self._who())
            await self.send_error("internal", "the site could not process this message; closing the connection")
            await self.close(code=1011, reason="the site could not process a message; reconnect")
            await self.disconnect(1011)

    async def send_error(self, code: str, message: str, *, step: int | None = None,
                         digest: str | None = None) -> None:
        error = ErrorMessage(code=code, message=message, step=step, digest=digest)
        await self.send(text_data=error.model_dump_json(exclude_none=True))

    async def receive(self, text_data=None, bytes_data=None):
        if self.token is None:
            return
        data = text_data if text_data is not None else bytes_data
        try:
            msg = parse_worker_message(data or "", max_bytes=settings.WORKER_MAX_MESSAGE_BYTES)
        except ControlError as exc:
            log.warning("rejected message from token %s: %s: %s", self.token.prefix, exc.code, exc.message)
            await self.send_error(exc.code, exc.message)
            if exc.code == "version" and self.peer is None:
                await self.close(code=CLOSE_PROTOCOL_VERSION, reason=CLOSE_REASONS[CLOSE_PROTOCOL_VERSION])
            return
        if msg.type != "hello" and self.peer is None:
            await self.send_error("hello_first", "send hello before anything else")
            return
        try:
            await getattr(self, f"on_{msg.type}")(msg)
        except Rejected as exc:
            log.warning("rejected %s from %s: %s: %s", msg.type, self._who(), exc.code, exc.message)
            await self.send_error(exc.code, exc.message, **_refused_broadcast(msg))
        except JoinRefused as exc:
            await self.close(code=exc.close_code, reason=close_reason(exc.reason))
        except Exception:
            log.exception("error handling %s from %s", msg.type, self._who())
            await self.send_error("internal", "the site could not process this message; nothing changed")

    def _who(self) -> str:
        if self.peer is not None:
            return self.peer.peer_id[:8]
        return f"token {self.token.prefix}" if self.token is not None else "an unauthenticated socket"

    # --- worker messages ------------------------------------------------------------------------------
    async def on_hello(self, msg):
        if self.peer is not None:
            await self.send_error("already_joined", "hello was already received on this connection")
            return
        if _peer_id_of_hello(msg) is not None and not hello_proof_valid(
                nonce=getattr(self, "nonce", ""), public_key_b64=msg.public_key, proof=msg.proof):
            await self.send_error("proof", "hello.proof must be the signature of this connection's challenge "
                                           "with the announced key (upgrade btard-worker)")
            return
        # The routing entry of (run, key) is written only once the join succeeded: a refused hello never
        # redirects another peer's traffic. The group of the step in progress is sent here (once per socket
        # and step), whether it formed in between or its fan-out was lost with a previous socket.
        result = await db(_join)(self.token, msg)
        self.peer = result.peer
        fanout.attach(self)  # a step's messages find this socket through the key (live.fanout)
        await cache.aset(routes.peer_channel_key(self.peer.peer_id, result.run.pk), self.channel_name, timeout=None)
        await self._group_add(routes.run_workers_group(result.run.pk))
        await self._group_add(routes.peer_group(self.peer.peer_id, result.run.pk))
        self._groups_at = time.monotonic()
        await self.send_model(Welcome(peer_id=self.peer.peer_id, role=result.role, run=result.run.run_info(),
                                      step=result.run.current_step, probation_steps_left=result.probation_left))
        notice = await db(_welcome_notice)(result.run.pk)  # the organisers' latest announcement
        if notice is not None:
            await self.send_model(notice)
        await self._catch_up()
        await db(_start_step_if_ready)(self.peer.run_id)

    async def _catch_up(self) -> None:
        """Send the group of the step in progress (if this peer is in it and this socket did not get it yet) and
        what the step's board holds so far (duplicates of relays the worker got are ignored there)."""
        missed = await db(_group_of_step_in_progress)(self.peer)
        if missed is None:
            return
        if missed[0] not in self.group_steps:
            self._group_sent(missed[0])
            await self.send(text_data=missed[1])
        for envelope in await db(_board_so_far)(self.peer, missed[0]):
            await self.send(text_data=Relay.model_validate({"envelope": envelope}).model_dump_json())

    async def on_heartbeat(self, msg):
        key = (msg.status.value, msg.detail)
        now = time.monotonic()
        if key == getattr(self, "_last_beat", None) and now - self._last_beat_at < HEARTBEAT_WRITE_SECONDS:
            return  # coalesced: the stale-peer timeout is far longer than the write interval
        await db(_heartbeat)(self.peer, msg)
        self._last_beat, self._last_beat_at = key, now
        await self._keep_routes(now)

    async def _keep_routes(self, now: float) -> None:
        """Restore this socket's routing entry if Redis lost it (a restart without persistence, an
        eviction, a flush), and with it the socket's group memberships: without them the step's groups,
        relays and phase closes would pass this worker by while its socket stays up. ``add`` never
        overwrites a newer socket's entry."""
        if self.replaced or getattr(self, "gone", False):
            return
        key = routes.peer_channel_key(self.peer.peer_id, self.peer.run_id)
        restored = await cache.aadd(key, self.channel_name, timeout=None)
        if restored:
            log.warning("routing entry of %s was gone (Redis restarted or evicted it): restored", self._who())
        if restored or now - getattr(self, "_groups_at", now) >= GROUP_REFRESH_SECONDS:
            for group in self.joined:
                await self.channel_layer.group_add(group, self.channel_name)
            self._groups_at = now
        if restored:
            # what the step's fan-out sent meanwhile went past this socket (a Redis restart closes only the
            # sockets waiting on the layer at that moment; the others stay up and hear nothing)
            await self._catch_up()

    async def on_broadcast(self, msg):
        await db(_broadcast)(self.peer, msg.envelope)

    async def on_step_report(self, msg):
        await db(_step_report)(self.peer, msg)

    async def on_phase_close(self, msg):
        await db(_phase_close)(self.peer, msg)

    async def on_board_request(self, msg):
        for envelope in await db(_board)(self.peer, msg):
            await self.send(text_data=Relay.model_validate({"envelope": envelope}).model_dump_json())

    async def on_reachability_request(self, msg):
        """Another active peer dials this peer's *announced* address (F5): only the p2p id and addresses of
        its hello, a few times an hour; the answer is taken only from the peer that was asked."""
        announced = list(self.peer.p2p_addrs or [])
        if msg.p2p_id != self.peer.p2p_id or not msg.p2p_addrs or not set(msg.p2p_addrs) <= set(announced):
            await self.send_error("not_announced", "a reachability check dials only the p2p id and addresses "
                                                   "this worker announced in its hello")
            return
        limit = settings.REACHABILITY_REQUESTS_PER_HOUR
        rate_key = f"reach-rate:{self.peer.run_id}:{self.peer.peer_id}"
        await cache.aadd(rate_key, 0, timeout=3600)
        if await cache.aincr(rate_key) > limit:
            await self.send_error("rate_limited", f"at most {limit} reachability checks per hour")
            return
        helper = await db(_reachability_helper)(self.peer)
        if helper is None:
            await self.send_error("no_helper", "no other active peer is online to test your address")
            return
        request_id = secrets.token_urlsafe(16)
        await cache.aset(_reach_key(request_id), {"channel": self.channel_name, "peer": self.peer.pk,
                                                 "helper": helper, "run": self.peer.run_id}, timeout=120)
        await self.channel_layer.group_send(routes.peer_group(helper, self.peer.run_id), {
            "type": "worker.forward",
            "text": ReachabilityCheck(request_id=request_id, p2p_id=msg.p2p_id, p2p_addrs=msg.p2p_addrs)
            .model_dump_json()})

    async def on_reachability_result(self, msg):
        pending = await cache.aget(_reach_key(msg.request_id))
        if (not isinstance(pending, dict) or pending.get("helper") != self.peer.peer_id
                or pending.get("run") != self.peer.run_id):
            await self.send_error("unknown_request", "no such reachability request for this peer (expired?)")
            return
        await cache.adelete(_reach_key(msg.request_id))  # one answer per request
        # a fixed vocabulary, never the helper's own text; stored before the asker hears the answer
        word = reachability_word(reachable=msg.reachable, detail=msg.detail)
        await db(record_reachability)(peer_pk=pending["peer"], reachable=msg.reachable, detail=word)
        answer = ReachabilityResult(request_id=msg.request_id, reachable=msg.reachable, detail=word)
        await self.channel_layer.send(pending["channel"], {"type": "worker.forward", "text": answer.model_dump_json()})

    # --- channel-layer messages -----------------------------------------------------------------------
    async def worker_forward(self, message):
        await self.forward_text(message["text"], skip=message.get("skip"))

    async def forward_text(self, text: str, *, skip: str | None = None) -> None:
        """A control message for this worker, already serialised (also called by this process's hub)."""
        if self.peer is not None and skip == self.peer.peer_id:
            return  # a relay of this worker's own broadcast
        if text.startswith(_GROUP_PREFIX):  # once per step (on_hello may have sent a group it formed meanwhile)
            step = json.loads(text).get("step")
            if step in self.group_steps:
                return
            self._group_sent(step)
        await self.send(text_data=text)

    def _group_sent(self, step) -> None:
        """Remember that this socket got the group of ``step``; only the latest few steps are kept (a socket
        that lives for thousands of steps must not grow by one entry a step)."""
        self.group_steps.add(step)
        if len(self.group_steps) > 16:
            self.group_steps.discard(min(self.group_steps, key=lambda s: s if isinstance(s, int) else -1))

    async def worker_replaced(self, message):
        if message["channel"] != self.channel_name:
            self.replaced = True
            await self.close(code=CLOSE_REPLACED, reason=CLOSE_REASONS[CLOSE_REPLACED])

    async def live_event(self, message):
        try:
            event = ev.parse_event(message["event"])
        except ValidationError:
            log.exception("undecodable live event")
            return
        me = self.peer.peer_id if self.peer is not None else None
        if event.type == "token_revoked":
            await self.close(code=CLOSE_REVOKED_TOKEN,
                             reason=close_reason(f"token revoked: btard_{event.prefix}_... was revoked"))
        elif event.type == "peer_banned":
            notice = BanNotice(peer_id=event.peer_id, step=event.step, reason=event.reason, scope=event.scope)
            if event.scope == "key" and me == event.peer_id:
                await self.send_model(notice)
                await self.close(code=CLOSE_BANNED, reason=close_reason(f"{KEY_BAN_ADVICE} ({event.reason})"))
            elif event.scope == "account" and self.token is not None and event.user_id == self.token.user_id:
                if me is not None:
                    await self.send_model(notice)
                await self.close(code=CLOSE_BANNED, reason=close_reason(f"banned: {event.reason}"))
            elif me is not None:
                await self.send_model(notice)
        elif event.type in ("run_control_changed", "announcement_posted") and self.peer is not None \
                and self.peer.run_id == event.run_id:
            await self._run_notice(event)

    async def _run_notice(self, event) -> None:
        """An organiser's change or announcement (``organiser.services``): tell the volunteer; a finished
        run's sockets close (the worker exits with the sentence)."""
        if event.type == "announcement_posted":
            await self.send_model(RunNotice(run_id=event.run_id, kind="announcement", message=event.text))
            return
        if event.action == "created":
            return
        await self.send_model(RunNotice(run_id=event.run_id, kind=event.action, message=event.message[:1000]))
        if event.action == "finished":
            await self.close(code=CLOSE_RUN_FINISHED, reason=close_reason(event.message))
