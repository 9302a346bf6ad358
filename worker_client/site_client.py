"""The worker's control plane: one websocket to the site's ``/ws/worker/`` (see :mod:`btard_wire.control`).

:class:`SiteClient` keeps the connection up: it sends ``Hello`` on every (re)connect, heartbeats with a
status reason, and every message the worker queues (signed broadcasts, step reports) in order, keeping
them across a reconnect. Network errors reconnect with exponential backoff and jitter; a refused,
revoked or banned token (a fatal close code, or HTTP 401/403 at the handshake) raises
:class:`FatalSiteError` carrying a message for humans, and is never retried.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from btard_wire.control import (
    CLOSE_BAD_TOKEN,
    CLOSE_NO_RUN,
    CLOSE_REASONS,
    CLOSE_REPLACED,
    FATAL_CLOSE_CODES,
    Challenge,
    Heartbeat,
    Hello,
    StepReport,
    parse_site_message,
)
from btard_wire.errors import CodedError, ControlError

log = logging.getLogger(__name__)

# Besides the site's fatal codes, a worker replaced by another one with the same token stops too:
# reconnecting would only kick the other worker out in turn.
EXIT_CLOSE_CODES = set(FATAL_CLOSE_CODES) | {CLOSE_REPLACED}
MAX_PENDING = 2000


class FatalSiteError(CodedError, RuntimeError):
    """The site refused this worker for a reason retrying cannot fix (``code``: the close code).
    ``str()`` is for humans."""


def _is_loopback(host: str) -> bool:
    if host.lower() in {"localhost", "localhost.", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def site_url(server: str, *, insecure: bool = False) -> str:
    """``--server`` with its scheme made explicit, or :class:`ValueError` with the sentence to show.

    A bare ``host[:port]`` means ``https://``. Plain ``http://`` / ``ws://`` is accepted for loopback
    (this machine) and otherwise only with ``insecure`` (``--insecure``): over it the token travels in
    clear and anyone on the path can play the site.
    """
    text = (server or "").strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in {"http", "https", "ws", "wss"}:
        raise ValueError(f"--server {server!r} has the scheme {parts.scheme!r}: use https://host[:port]")
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"--server {server!r} has an invalid port: use https://host[:port]") from None
    if not host:
        raise ValueError(f"--server {server!r} names no host: use https://host[:port]")
    if parts.scheme in {"http", "ws"} and not insecure and not _is_loopback(host):
        raise ValueError(f"--server {server} is plain {parts.scheme}://: the worker token and every instruction "
                         f"from the site would travel unencrypted. Use https://{parts.netloc}, or pass --insecure "
                         f"on a network you trust")
    return urlunsplit(parts)


def ws_url(server: str) -> str:
    """``https://site`` -> ``wss://site/ws/worker/`` (``http`` -> ``ws``; a ws URL is kept as it is; no scheme
    means https)."""
    parts = urlsplit(server if "://" in server else f"https://{server}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"unsupported server address {server!r}: use http(s)://host[:port]")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/worker"):
        path += "/ws/worker"
    return urlunsplit((scheme, parts.netloc, path + "/", "", ""))


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``min(cap, base * 2**attempt)`` scaled by a factor in [0.5, 1), so a
    try is never more than ``cap`` after the last (the jitter used to stretch a 30 s cap to 45 s: a worker
    whose site process came back waited that long) and tries stay spread over [cap/2, cap)."""
    return min(cap, base * (2 ** min(attempt, 30))) * (0.5 + rng.random() / 2)


MessageHandler = Callable[[BaseModel], Awaitable[None] | None]
SLOW_CONNECT_REPORT = 4.0  # seconds without an answer before the volunteer is told (the attempt goes on)


class connect_without_redirects(connect):  # noqa: N801 - used like the function it extends
    """websockets' ``connect`` that follows no redirect: it would send the token to wherever the
    ``Location`` header points."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed connection attempt (``connection refused``, ``timed out``...)."""
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def answer_challenge(ws, hello: Hello, prove: Callable[[str], str], *, timeout: float) -> Hello:
    """Wait for the site's ``challenge`` (its first message) and return ``hello`` carrying the proof; a site
    that sends none within ``timeout`` gets the hello as it is."""
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        log.info("the site sent no challenge; saying hello without a proof of key possession")
        return hello
    try:
        message = parse_site_message(raw)
    except ControlError as exc:
        log.warning("ignoring a malformed first message from the site: %s", exc)
        return hello
    if isinstance(message, Challenge):
        return hello.model_copy(update={"proof": prove(message.nonce)})
    return hello


class SiteClient:
    """Keeps a worker connected to the site. Run :meth:`run` as a task; :meth:`close` ends it."""

    def __init__(self, server: str, token: str, *, hello: Callable[[], Hello], heartbeat: Callable[[], Heartbeat],
                 on_message: MessageHandler, heartbeat_interval: float = 5.0, backoff_base: float = 0.5,
                 backoff_cap: float = 15.0, open_timeout: float = 10.0, rng: random.Random | None = None,
                 on_state: Callable[[str], None] | None = None, prove: Callable[[str], str] | None = None,
                 challenge_timeout: float = 5.0, on_problem: Callable[[str], None] | None = None):
        self.url = ws_url(server)
        # proof of key possession: the site's first message is a challenge; the hello signs its nonce
        self._prove = prove
        self.challenge_timeout = challenge_timeout
        self._token = token
        self._hello = hello
        self._heartbeat = heartbeat
        self._on_message = on_message
        self._on_state = on_state or (lambda state: None)
        self._on_problem = on_problem or (lambda message: log.warning("%s", message))
        self.heartbeat_interval = heartbeat_interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.open_timeout = open_timeout
        self._rng = rng or random.Random()
        self._pending: deque[str] = deque(maxlen=MAX_PENDING)
        # the last step report: a socket that dies right after a write loses what it held without a word,
        # so the report goes again after every reconnect until the site's group moves past its step (the
        # site ignores a repeat of a report it has: at least once, never twice)
        self._last_report: tuple[int, str] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._ws = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.reconnect_delays: list[float] = []
        self.bytes_sent = 0
        self.bytes_received = 0

    # --- API for the worker -------------------------------------------------------------------
    def send(self, message: BaseModel) -> None:
        """Queue a worker message; it is sent in order, after a reconnect if the socket is down."""
        text = message.model_dump_json()
        if isinstance(message, StepReport):
            self._last_report = (message.step, text)
        self._pending.append(text)
        self._wake.set()

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Stop; messages still queued (a last step report) get ``flush_timeout`` seconds to go out."""
        loop = asyncio.get_running_loop()
        until = loop.time() + flush_timeout
        while self._pending and self._ws is not None and self.connected.is_set() and loop.time() < until:
            await asyncio.sleep(0.05)
        self._closing = True
        self._wake.set()
        if self._ws is not None:
            await self._ws.close()

    # --- connection loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Connect and serve until :meth:`close`. Raises :class:`FatalSiteError` on a refusal."""
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            problem = ""
            slow = loop.call_later(SLOW_CONNECT_REPORT, lambda: self._on_problem(
                f"no answer from {self.url} after {SLOW_CONNECT_REPORT:.0f}s; still trying")) \
                if self.open_timeout > SLOW_CONNECT_REPORT else None
            try:
                self._on_state("connecting")
                async with connect_without_redirects(
                        self.url, additional_headers={"Authorization": f"Bearer {self._token}"},
                        open_timeout=self.open_timeout, max_size=4 * 1024 * 1024,
                        ping_interval=20, ping_timeout=20) as ws:
                    if slow is not None:
                        slow.cancel()
                    self._ws = ws
                    self.connections += 1
                    await self._serve(ws)
                    attempt = 0
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 300 <= status < 400:
                    where = exc.response.headers.get("Location", "")[:200]
                    raise FatalSiteError(0, f"{self.url} answered with a redirect (HTTP {status}"
                                            + (f" to {where}" if where else "") + "), which the worker does not "
                                            "follow: the token goes only to --server. Check --server") from None
                if status in (401, 403):
                    raise FatalSiteError(CLOSE_BAD_TOKEN, f"the site refused the token (HTTP {status}): "
                                                          f"{CLOSE_REASONS[CLOSE_BAD_TOKEN]}") from None
                if status == 404:
                    raise FatalSiteError(0, f"{self.url} is not a BTARD Swarm site (HTTP 404): check --server") \
                        from None
                problem = f"the site answered HTTP {status}"
            except InvalidURI as exc:
                raise FatalSiteError(0, f"bad server address: {exc}") from None
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                if code in EXIT_CLOSE_CODES:
                    human = CLOSE_REASONS.get(code, reason or "refused")
                    raise FatalSiteError(code, f"{human}" + (f" ({reason})" if reason and reason not in human else "")) \
                        from None
                if code == CLOSE_NO_RUN:
                    attempt = max(attempt, 4)  # no run yet: check back slowly
                log.info("connection closed (%s %s); reconnecting", code, reason)
            except (TimeoutError, OSError, InvalidHandshake, EOFError) as exc:
                log.info("cannot reach %s: %s", self.url, exc)
                problem = f"cannot reach {self.url}: {describe_failure(exc)}"
            finally:
                if slow is not None:
                    slow.cancel()
                self._ws = None
                self.connected.clear()
            if self._closing:
                break
            delay = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rng=self._rng)
            self.reconnect_delays.append(delay)
            attempt += 1
            self._on_state(f"reconnecting in {delay:.1f}s")
            if problem:
                at = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
                self._on_problem(f"{problem}; next try in {delay:.1f}s (at {at})")
            try:
                await asyncio.wait_for(self._closed_event(), delay)
            except TimeoutError:
                pass

    async def _closed_event(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self._wake.wait()

    async def _send_now(self, ws, text: str) -> None:
        await ws.send(text)
        self.bytes_sent += len(text)

    async def _serve(self, ws) -> None:
        hello = self._hello()
        if self._prove is not None:
            hello = await answer_challenge(ws, hello, self._prove, timeout=self.challenge_timeout)
        await self._send_now(ws, hello.model_dump_json())
        if self.connections > 1 and self._last_report is not None and self._last_report[1] not in self._pending:
            self._pending.appendleft(self._last_report[1])  # the old socket may have swallowed it
        self.connected.set()
        self._on_state("connected")
        tasks = [asyncio.create_task(self._reader(ws)), asyncio.create_task(self._writer(ws)),
                 asyncio.create_task(self._heartbeats(ws))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raises ConnectionClosed and friends
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reader(self, ws) -> None:
        async for raw in ws:
            self.bytes_received += len(raw)
            try:
                message = parse_site_message(raw)
            except (ControlError, RecursionError) as exc:
                log.warning("ignoring a malformed site message: %s", exc)
                continue
            if message.type == "group" and self._last_report is not None and message.step > self._last_report[0]:
                self._last_report = None  # the site closed the reported step: nothing to repeat
            result = self._on_message(message)
            if inspect.isawaitable(result):
                await result
        # The iterator ends on a normal close: surface it as ConnectionClosed for run().
        await ws.recv()

    async def _writer(self, ws) -> None:
        while True:
            while self._pending:
                text = self._pending[0]
                await self._send_now(ws, text)
                self._pending.popleft()  # only once it went out
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _heartbeats(self, ws) -> None:
        while True:
            await self._send_now(ws, self._heartbeat().model_dump_json())
            await asyncio.sleep(self.heartbeat_interval)
