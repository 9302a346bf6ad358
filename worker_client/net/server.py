"""The data plane's stream handlers: serve fetches from the :class:`~.store.Store`, accept pushed tensors.

Exposure (docs/threat-model.md, "Volunteer's machine"): the data handler serves only peers in the
directory, which holds the members, candidates and donors of the current and the previous step; a
stranger's stream is refused before its request is read. Streams are capped per remote peer and in
total, a silent stream is dropped after ``request_timeout`` seconds, waits are allowed only for steps
next to the current one, the state is served at most twice per peer and step, and evidence only to
whom the evidence source allows (members of the current group). Pings, which anyone may send (a
reachability check), have a small pool of their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from btard_wire.errors import ProtocolError

from .directory import Directory
from .store import EVIDENCE_KIND, Entry, Store
from .wire import (
    FetchRequest,
    FetchResponse,
    InfoRequest,
    PingRequest,
    PutRequest,
    encode_header,
    read_body,
    read_request,
    write_body,
)

log = logging.getLogger(__name__)

MAX_STREAMS = 256  # concurrent incoming streams from peers in the directory
MAX_STREAMS_PER_PEER = 8
MAX_PING_STREAMS = 16  # pings come from anyone (a reachability check): a small pool of their own
MAX_REFUSING_STREAMS = 16  # streams being refused politely (beyond that: answered unread, closed at once)
REFUSAL_READ_TIMEOUT = 1.0  # seconds a refused request is waited for, so that the refusal arrives
STATE_SERVES_PER_PEER = 2  # full copies of the state one peer may fetch per published step

Expect = Callable[[int, str, str, str], int | None]
Deliver = Callable[[int, str, str, str, bytes, dict | None], None]


@dataclass
class Traffic:
    bytes_sent: int = 0
    bytes_received: int = 0
    requests_served: int = 0
    requests_refused: int = 0


class Server:
    """The handlers one :class:`~.dataplane.DataPlane` registers: ``btard/<run>/v1/data`` and the ping."""

    def __init__(self, store: Store, directory: Directory, traffic: Traffic, *, p2p_id: Callable[[], str],
                 call_timeout: float, max_wait: float, request_timeout: float, max_streams: int,
                 max_streams_per_peer: int):
        self.store, self.directory, self.traffic = store, directory, traffic
        self.p2p_id = p2p_id
        self.run = ""
        self.closed = False
        self.call_timeout, self.max_wait = call_timeout, max_wait
        self.request_timeout = min(request_timeout, call_timeout)
        self.max_streams, self.max_streams_per_peer = max_streams, max_streams_per_peer
        self.streams: Counter = Counter()  # pool -> open incoming streams
        self.streams_by_peer: Counter = Counter()  # (pool, p2p id) -> open incoming streams
        self.puts: set[tuple[str, int, str, str]] = set()  # puts whose body is being read
        self.hash_bodies = True  # pushed bodies arrive hashed (HashedBytes); see DataPlane.hash_bodies
        self.expect: Expect = lambda *a: None
        self.deliver: Deliver = lambda *a: None
        self.layout = asyncio.Event()

    def notify_layout(self) -> None:
        """Wake puts waiting for a step this peer did not know about yet."""
        self.layout.set()
        self.layout = asyncio.Event()

    @property
    def open_streams(self) -> int:
        return sum(self.streams.values())

    # --- plumbing -----------------------------------------------------------------------------
    async def respond(self, writer, response: FetchResponse, body: bytes | memoryview | None = None) -> None:
        header = encode_header(response)
        writer.write(header)
        self.traffic.bytes_sent += len(header)
        if body is not None:
            await write_body(writer, body)
            self.traffic.bytes_sent += 8 + len(body)
        await writer.drain()

    def _open_slot(self, pool: str, remote_p2p: str, *, total: int, per_peer: int) -> bool:
        if self.streams[pool] >= total or self.streams_by_peer[(pool, remote_p2p)] >= per_peer:
            return False
        self.streams[pool] += 1
        self.streams_by_peer[(pool, remote_p2p)] += 1
        return True

    def _close_slot(self, pool: str, remote_p2p: str) -> None:
        self.streams[pool] -= 1
        self.streams_by_peer[(pool, remote_p2p)] -= 1
        if self.streams_by_peer[(pool, remote_p2p)] <= 0:
            del self.streams_by_peer[(pool, remote_p2p)]

    async def _refuse(self, writer, code: str, message: str, *, reader=None, remote_p2p: str = "") -> None:
        """Refuse a stream without serving it (a stranger, a peer over its stream cap) and close it.

        With ``reader``, the request is read first (at most :data:`REFUSAL_READ_TIMEOUT`, from a pool of
        :data:`MAX_REFUSING_STREAMS`) so the answer is not lost to a reset; beyond the pool it is not read.
        """
        if reader is not None and self._open_slot("refusing", remote_p2p, total=MAX_REFUSING_STREAMS, per_peer=2):
            try:
                await asyncio.wait_for(read_request(reader), REFUSAL_READ_TIMEOUT)
            except (TimeoutError, ProtocolError, asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                self._close_slot("refusing", remote_p2p)
        self.traffic.requests_refused += 1
        try:
            await asyncio.wait_for(self.respond(writer, FetchResponse(ok=False, code=code, message=message)), 2.0)
        except (TimeoutError, ProtocolError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _deny(self, writer, code: str, message: str, **fields) -> None:
        self.traffic.requests_refused += 1
        await self.respond(writer, FetchResponse(ok=False, code=code, message=message, **fields))

    # --- handlers -----------------------------------------------------------------------------
    async def handle_ping(self, info, reader, writer) -> None:
        remote_p2p = info.peer_id.to_base58()
        if not self._open_slot("ping", remote_p2p, total=MAX_PING_STREAMS, per_peer=2):
            await self._refuse(writer, "busy", "too many pings at once", reader=reader, remote_p2p=remote_p2p)
            return
        try:
            req = await asyncio.wait_for(read_request(reader), self.request_timeout)
            if not isinstance(req, PingRequest):
                raise ProtocolError("expected a ping")
            await self.respond(writer, FetchResponse(ok=True, info={"p2p_id": self.p2p_id(), "nonce": req.nonce}))
        except (TimeoutError, ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("ping from %s failed: %s", info.peer_id, exc)
        finally:
            self._close_slot("ping", remote_p2p)
            writer.close()

    async def handle(self, info, reader, writer) -> None:
        remote_p2p = info.peer_id.to_base58()
        if not self.directory.knows(remote_p2p):
            # Not a member, candidate or donor of this step or the last: nothing is served, nothing waits.
            await self._refuse(writer, "refused", "not a peer of this run's current step", reader=reader,
                               remote_p2p=remote_p2p)
            return
        if not self._open_slot("data", remote_p2p, total=self.max_streams, per_peer=self.max_streams_per_peer):
            await self._refuse(writer, "busy", "too many streams from this peer", reader=reader,
                               remote_p2p=remote_p2p)
            return
        try:
            await self._serve(remote_p2p, reader, writer)
        finally:
            self._close_slot("data", remote_p2p)

    async def _serve(self, remote_p2p: str, reader, writer) -> None:
        try:
            req = await asyncio.wait_for(read_request(reader), self.request_timeout)
            if isinstance(req, PingRequest):
                await self.respond(writer, FetchResponse(ok=True, info={"p2p_id": self.p2p_id()}))
                return
            if req.run != self.run:
                await self.respond(writer, FetchResponse(ok=False, code="wrong_run",
                                                         message=f"this handler serves run {self.run}"))
                return
            if isinstance(req, PutRequest):
                await self._accept_put(req, remote_p2p, reader, writer)
                return
            remote_peer = self.directory.peer_of(remote_p2p)
            if req.kind == EVIDENCE_KIND:
                entry = self.store.evidence(req.key, req.step, remote_peer)
            else:
                entry = await self.store.wait_entry((req.step, req.kind, req.key), req.wait)
            if entry is None:
                await self.respond(writer, FetchResponse(
                    ok=False, code="not_found", message=f"nothing published for {req.kind}/{req.key} "
                                                        f"at step {req.step}"))
                return
            if entry.allowed is not None and remote_peer not in entry.allowed:
                await self._deny(writer, "refused", "not allowed to fetch this tensor")
                return
            if isinstance(req, InfoRequest):
                await self.respond(writer, FetchResponse(ok=True, numel=entry.numel, info=entry.info or {}))
                return
            await self._serve_body(req, entry, remote_p2p, remote_peer, writer)
        except (TimeoutError, ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("request from %s failed: %s", remote_p2p, exc)
        finally:
            writer.close()

    async def _serve_body(self, req: FetchRequest, entry: Entry, remote_p2p: str, remote_peer: str | None,
                          writer) -> None:
        whole = req.kind != EVIDENCE_KIND or (req.start == 0 and req.numel == entry.numel)  # evidence: all of it
        if req.start + req.numel > entry.numel or not whole:
            await self.respond(writer, FetchResponse(
                ok=False, code="size", numel=entry.numel,
                message=f"asked for {req.numel} values at {req.start}, have {entry.numel}"))
            return
        if req.kind == "state":
            served = self.store.state_served[(remote_p2p, req.key)] + 4 * req.numel
            if served > STATE_SERVES_PER_PEER * 4 * entry.numel:
                await self._deny(writer, "refused", "this peer already fetched the state")
                return
            self.store.state_served[(remote_p2p, req.key)] = served
        data = entry.body_for(remote_peer)
        body = memoryview(data)[4 * req.start: 4 * (req.start + req.numel)]
        self.traffic.requests_served += 1
        await self.respond(writer, FetchResponse(ok=True, numel=req.numel, header=entry.header_for(remote_peer)),
                           body)

    async def _accept_put(self, req: PutRequest, remote_p2p: str, reader, writer) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(req.wait, self.max_wait)
        while True:
            sender = self.directory.peer_of(remote_p2p)
            expected = self.expect(req.step, req.kind, req.key, sender) if sender else None
            remaining = deadline - loop.time()
            if expected is not None or remaining <= 0 or self.closed:
                break
            try:
                await asyncio.wait_for(self.layout.wait(), remaining)
            except TimeoutError:
                pass
        if expected is None:
            await self._deny(writer, "refused", f"not expecting {req.kind}/{req.key} of step {req.step} "
                                                f"from this peer")
            return
        if expected != req.numel:
            await self._deny(writer, "size", f"expected {expected} values, not {req.numel}", numel=expected)
            return
        slot = (remote_p2p, req.step, req.kind, req.key)
        if slot in self.puts:  # one body per slot at a time: parallel copies are refused before reading
            await self._deny(writer, "busy", f"{req.kind}/{req.key} is already being received")
            return
        self.puts.add(slot)
        try:
            body = await asyncio.wait_for(read_body(reader, expected_bytes=4 * expected, digest=self.hash_bodies),
                                          self.call_timeout)
        finally:
            self.puts.discard(slot)
        self.traffic.bytes_received += 8 + len(body)
        self.deliver(req.step, req.kind, req.key, sender, body, req.header)
        await self.respond(writer, FetchResponse(ok=True, numel=expected))
