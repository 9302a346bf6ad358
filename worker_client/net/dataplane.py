"""The worker's data plane: bulk tensors peer to peer over ``hivemind.p2p.P2P``.

One :class:`DataPlane` per run. It registers one stream handler, ``btard/<run>/v1/data``, that serves
tensors this peer *published* for ``(step, kind, key)``: its gradient parts (scatter), its aggregated
part (all-gather), the parts it received from a validation target, its model state (newcomers). Peers
*fetch* what they need, so the requester always knows how many float32 values it expects and checks
that before allocating (see :mod:`worker_client.net.wire`). Access is per entry: a published tensor
can be limited to given protocol peer ids, and the remote side is identified by its libp2p peer id,
which the transport authenticates, mapped through the run's directory (peer id -> hivemind PeerID).

Every remote call has a timeout. Failures raise :class:`DataPlaneError` with a stable ``code``
(``timeout``, ``unreachable``, ``refused``, ``not_found``, ``size``, ``malformed``, ``hash``) and the
peer at fault, so the runner can tell "withheld" (an ELIMINATE) from "lied" (an ACCUSE).

Exposure (docs/threat-model.md, "Volunteer's machine"): the data handler serves only peers in the
directory, which holds the members, candidates and donors of the current and the previous step; a
stranger's stream is refused before its request is read. Streams are capped per remote peer and in
total, a silent stream is dropped after ``request_timeout`` seconds, waits are allowed only for steps
next to the current one, and the state is served at most twice per peer and step. Only the addresses
:class:`~worker_client.net.policy.AddressPolicy` allows are dialled (public IPs unless
``allow_private``). The daemon runs without its DHT, AutoNAT and circuit relay: the project uses none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from btard_wire.errors import ProtocolError

from ..btard.tensors import bytes_to_tensor, tensor_to_bytes
from .policy import AddressPolicy
from .wire import (
    FetchRequest,
    FetchResponse,
    InfoRequest,
    PingRequest,
    PutRequest,
    encode_header,
    read_body,
    read_request,
    read_response,
    write_body,
)

log = logging.getLogger(__name__)

PING_HANDLER = "btard/v1/ping"
DEFAULT_STATE_CHUNK = 1 << 20  # float32 values per state chunk (4 MiB)
MAX_STREAMS = 256  # concurrent incoming streams from peers in the directory
MAX_STREAMS_PER_PEER = 8
MAX_PING_STREAMS = 16  # pings come from anyone (a reachability check): a small pool of their own
MAX_REFUSING_STREAMS = 16  # streams being refused politely (beyond that: answered unread, closed at once)
REFUSAL_READ_TIMEOUT = 1.0  # seconds a refused request is waited for, so that the refusal arrives
MAX_WAITING_KEYS = 512  # (step, kind, key) slots requests may wait on at once
MAX_DONORS = 16  # state donors asked, at most, whatever the site lists
MAX_DIRECTORY = 4096  # peers known at once; beyond that the ones named longest ago are dropped
STATE_SERVES_PER_PEER = 2  # full copies of the state one peer may fetch per published step


class DataPlaneError(ProtocolError):
    """A data-plane call failed. ``code`` is stable; ``peer`` is the protocol peer id (or p2p id) at fault."""

    def __init__(self, code: str, message: str, *, peer: str = ""):
        super().__init__(message, code=code)
        self.peer = peer

    @classmethod
    def coded(cls, code: str, message: str) -> DataPlaneError:
        return cls(code, message)


def state_chunk_numel(numel: int) -> int:
    """Values per state chunk: at most 4 MiB, at least 8 chunks for models above 2k values."""
    return max(256, min(DEFAULT_STATE_CHUNK, -(-numel // 8)))


def handler_name(run: str) -> str:
    return f"btard/{run}/v1/data"


def split_p2p_addr(addr: str) -> tuple[str | None, str]:
    """``/ip4/../tcp/N/p2p/<id>`` -> (``<id>``, ``/ip4/../tcp/N``)."""
    if "/p2p/" in addr:
        base, _, peer = addr.rpartition("/p2p/")
        return peer, base
    return None, addr


async def _bounded(coro, *, peer: str, timeout: float, what: str):
    """Await ``coro`` within ``timeout``; every transport failure becomes a :class:`DataPlaneError`."""
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise DataPlaneError("timeout", f"{peer[:8]} did not {what} in {timeout:.1f}s", peer=peer) from None
    except asyncio.IncompleteReadError:
        raise DataPlaneError("unreachable", f"{peer[:8]} closed the stream early", peer=peer) from None
    except DataPlaneError:
        raise
    except ProtocolError as exc:
        raise DataPlaneError("malformed", f"{peer[:8]}: {exc}", peer=peer) from None
    except (ConnectionError, OSError) as exc:
        raise DataPlaneError("unreachable", f"{peer[:8]}: {exc}", peer=peer) from None


@dataclass
class _Entry:
    data: bytes
    numel: int
    allowed: frozenset[str] | None
    info: dict | None = None
    overrides: dict[str, bytes] = field(default_factory=dict)
    header: dict | None = None
    override_headers: dict[str, dict] = field(default_factory=dict)


@dataclass
class Traffic:
    bytes_sent: int = 0
    bytes_received: int = 0
    requests_served: int = 0
    requests_refused: int = 0


class _P2P:
    """hivemind's P2P with one more DHT mode, ``off``: p2pd then starts no DHT at all."""

    @staticmethod
    def cls():
        from hivemind.p2p import P2P

        class P2PWithoutDHT(P2P):
            DHT_MODE_MAPPING = {**P2P.DHT_MODE_MAPPING, "off": {}}

        return P2PWithoutDHT


class DataPlane:
    """A hivemind P2P daemon plus the run's data handler. Create with :meth:`create`; always :meth:`shutdown`."""

    def __init__(self, p2p, run: str, *, call_timeout: float, max_wait: float, allow_private: bool = False,
                 request_timeout: float = 5.0, max_streams: int = MAX_STREAMS,
                 max_streams_per_peer: int = MAX_STREAMS_PER_PEER, announce_maddrs: Iterable[str] | None = None):
        self.p2p = p2p
        self.run = run
        self.call_timeout = call_timeout
        self.max_wait = max_wait
        self.policy = AddressPolicy(allow_private=allow_private)
        self.request_timeout = min(request_timeout, call_timeout)
        self.max_streams, self.max_streams_per_peer = max_streams, max_streams_per_peer
        self.announce_maddrs = list(announce_maddrs or [])
        self.traffic = Traffic()
        self._store: dict[tuple[int, str, str], _Entry] = {}
        self._events: dict[tuple[int, str, str], asyncio.Event] = {}
        self._waiters: Counter = Counter()
        self._directory: dict[str, tuple[str, list[str]]] = {}  # peer id -> (p2p id, addrs)
        self._by_p2p: dict[str, str] = {}  # p2p id -> peer id
        self._named_at: dict[str, int] = {}  # peer id -> the latest step a group named it in
        self._step: int | None = None  # the current step (set by forget_before)
        self._streams: Counter = Counter()  # pool -> open incoming streams
        self._streams_by_peer: Counter = Counter()  # (pool, p2p id) -> open incoming streams
        self._puts: set[tuple[str, int, str, str]] = set()  # puts whose body is being read
        self._state_served: defaultdict[tuple[str, str], int] = defaultdict(int)  # (peer, state key) -> bytes
        self._connected: set[str] = set()
        self._closed = False
        self._expect: Callable[[int, str, str, str], int | None] = lambda *a: None
        self._deliver: Callable[[int, str, str, str, bytes, dict | None], None] = lambda *a: None
        self._layout = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------
    @classmethod
    async def create(cls, run: str | None, *, host_maddrs: Iterable[str] = ("/ip4/127.0.0.1/tcp/0",),
                     announce_maddrs: Iterable[str] | None = None, identity_path: str | None = None,
                     nat_port_map: bool = False, call_timeout: float = 30.0, max_wait: float = 60.0,
                     startup_timeout: float = 60.0, allow_private: bool = False, dht_mode: str = "off",
                     auto_nat: bool = False, use_relay: bool = False, **p2p_kwargs) -> DataPlane:
        """Start a p2pd daemon listening on ``host_maddrs`` and register the run's handlers.

        ``allow_private``: dial (and announce) private, loopback and DNS addresses too (a LAN swarm).
        The daemon's DHT, AutoNAT service and circuit relay are off unless asked for.
        Raises ``hivemind.p2p.P2PDaemonError`` when the daemon cannot start.
        """
        p2p = await _P2P.cls().create(host_maddrs=list(host_maddrs),
                                      announce_maddrs=list(announce_maddrs) if announce_maddrs else None,
                                      identity_path=identity_path, nat_port_map=nat_port_map,
                                      startup_timeout=startup_timeout, dht_mode=dht_mode, auto_nat=auto_nat,
                                      use_relay=use_relay, **p2p_kwargs)
        plane = cls(p2p, run or "", call_timeout=call_timeout, max_wait=max_wait, allow_private=allow_private,
                    announce_maddrs=announce_maddrs)
        try:
            if run:
                await p2p.add_binary_stream_handler(handler_name(run), plane._handle)
            await p2p.add_binary_stream_handler(PING_HANDLER, plane._handle_ping)
        except BaseException:
            await p2p.shutdown()
            raise
        return plane

    async def set_run(self, run: str) -> None:
        """Serve run ``run`` (the worker learns it from the site's Welcome, after the daemon started)."""
        if run == self.run:
            return
        if self.run:
            await self.p2p.remove_binary_stream_handler(handler_name(self.run))
        self.run = run
        self._store.clear()
        self._state_served.clear()
        await self.p2p.add_binary_stream_handler(handler_name(run), self._handle)

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for event in self._events.values():
            event.set()
        await self.p2p.shutdown()

    async def __aenter__(self) -> DataPlane:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.shutdown()

    @property
    def p2p_id(self) -> str:
        return self.p2p.peer_id.to_base58()

    async def addrs(self) -> list[str]:
        """Addresses other peers can dial, each ending in ``/p2p/<our id>``."""
        return [str(m) for m in await self.p2p.get_visible_maddrs()]

    async def announced_addrs(self, limit: int = 16) -> list[str]:
        """The addresses to tell the group: ``announce_maddrs`` as configured, else the visible ones the
        address policy allows (no LAN, loopback or docker addresses unless ``allow_private``)."""
        visible = await self.addrs()
        if self.announce_maddrs:
            return visible[:limit]
        return self.policy.allowed(visible, limit=limit)

    # --- directory ----------------------------------------------------------------------------
    def set_directory(self, peers: Mapping[str, tuple[str, list[str]]], *, step: int | None = None) -> None:
        """Tell the plane who is who: ``{protocol peer id: (hivemind p2p id, [multiaddrs])}``.

        Only peers in the directory are served. ``step``: the step whose group named them (default:
        the current one); :meth:`forget_before` drops peers no group of the last two steps named.
        """
        tag = step if step is not None else (self._step or 0)
        for peer_id, (p2p_id, addrs) in peers.items():
            if not p2p_id or not isinstance(p2p_id, str) or not isinstance(peer_id, str):
                continue
            old = self._directory.get(peer_id)
            if old is not None and old[0] != p2p_id and self._by_p2p.get(old[0]) == peer_id:
                del self._by_p2p[old[0]]
            self._directory[peer_id] = (p2p_id, [a for a in addrs if isinstance(a, str)][:16])
            self._by_p2p[p2p_id] = peer_id
            self._named_at[peer_id] = max(tag, self._named_at.get(peer_id, tag))
        if len(self._directory) > MAX_DIRECTORY:  # a site naming ever new peers at far steps
            for peer_id in sorted(self._named_at, key=self._named_at.get)[: len(self._directory) - MAX_DIRECTORY]:
                self._drop_peer(peer_id)
        self.notify_layout()

    def _drop_peer(self, peer_id: str) -> None:
        self._named_at.pop(peer_id, None)
        p2p_id, _ = self._directory.pop(peer_id, ("", []))
        if self._by_p2p.get(p2p_id) == peer_id:
            del self._by_p2p[p2p_id]

    def knows(self, p2p_id: str) -> bool:
        """Whether ``p2p_id`` is a peer this plane serves (in the directory)."""
        return p2p_id in self._by_p2p

    def set_receiver(self, expect: Callable[[int, str, str, str], int | None],
                     deliver: Callable[[int, str, str, str, bytes, dict | None], None]) -> None:
        """How pushed tensors are accepted.

        ``expect(step, kind, key, sender)`` returns how many float32 values this peer accepts from
        ``sender`` for that slot, or ``None`` (not expected, or not known yet: the put waits for
        :meth:`notify_layout` up to its ``wait``). ``deliver(step, kind, key, sender, data, header)``
        gets the body once it was read and its size checked.
        """
        self._expect, self._deliver = expect, deliver
        self.notify_layout()

    def notify_layout(self) -> None:
        """Wake puts waiting for a step this peer did not know about yet."""
        self._layout.set()
        self._layout = asyncio.Event()

    def peer_of(self, p2p_id: str) -> str | None:
        return self._by_p2p.get(p2p_id)

    # --- publishing ---------------------------------------------------------------------------
    def publish(self, step: int, kind: str, key: str, tensor: torch.Tensor | bytes, *,
                allowed: Iterable[str] | None = None, info: dict | None = None, header: dict | None = None,
                overrides: Mapping[str, torch.Tensor | bytes] | None = None,
                override_headers: Mapping[str, dict] | None = None) -> None:
        """Make a tensor fetchable by peers for ``(step, kind, key)``.

        ``allowed``: protocol peer ids that may fetch it (``None``: any peer). ``header``: a small
        signed JSON header served with the tensor (the sender's ``TensorHeader``). ``overrides`` serves
        a different tensor (and ``override_headers`` a different header) to given peers: only
        Byzantine test behaviours use it.
        """
        data = tensor if isinstance(tensor, bytes) else tensor_to_bytes(tensor)
        entry = _Entry(data=data, numel=len(data) // 4,
                       allowed=frozenset(allowed) if allowed is not None else None, info=info, header=header,
                       override_headers=dict(override_headers or {}))
        for peer, other in (overrides or {}).items():
            other_bytes = other if isinstance(other, bytes) else tensor_to_bytes(other)
            if len(other_bytes) != len(data):
                raise ValueError("an override must have the size of the published tensor")
            entry.overrides[peer] = other_bytes
        k = (step, kind, key)
        self._store[k] = entry
        event = self._events.get(k)
        if event is not None:
            event.set()

    def published(self, step: int, kind: str, key: str) -> bool:
        return (step, kind, key) in self._store

    def unpublish(self, step: int, kind: str, key: str) -> None:
        self._store.pop((step, kind, key), None)

    def forget_before(self, step: int, *, keep_kinds: Iterable[str] = ("state",)) -> None:
        """``step`` is now the current step: drop what was published for steps before it (the state stays
        until replaced) and the directory entries of peers no group of ``step - 1`` or later named."""
        self._step = step
        keep = set(keep_kinds)
        for k in [k for k in self._store if k[0] < step and k[1] not in keep]:
            del self._store[k]
        for k in [k for k in self._events if k[1] != "state" and k[0] < step]:
            self._events.pop(k).set()
        for peer_id in [p for p, named in self._named_at.items() if named < step - 1]:
            self._drop_peer(peer_id)

    # --- serving ------------------------------------------------------------------------------
    async def _respond(self, writer, response: FetchResponse, body: bytes | memoryview | None = None) -> None:
        header = encode_header(response)
        writer.write(header)
        self.traffic.bytes_sent += len(header)
        if body is not None:
            await write_body(writer, body)
            self.traffic.bytes_sent += 8 + len(body)
        await writer.drain()

    def _may_wait(self, k: tuple[int, str, str]) -> bool:
        """Requests wait only for steps next to the current one, and on a bounded number of slots."""
        if len(self._events) >= MAX_WAITING_KEYS and k not in self._events:
            return False
        if self._step is None:
            return True
        step = k[0]
        if k[1] == "state":
            key = k[2]
            if not (key[:1] == "s" and key[1:].isdigit() and len(key) < 20):
                return False
            step = int(key[1:])
        return self._step - 1 <= step <= self._step + 1

    async def _wait_entry(self, k: tuple[int, str, str], wait: float) -> _Entry | None:
        entry = self._store.get(k)
        if entry is not None or wait <= 0 or not self._may_wait(k):
            return entry
        event = self._events.setdefault(k, asyncio.Event())
        self._waiters[k] += 1
        try:
            await asyncio.wait_for(event.wait(), min(wait, self.max_wait))
        except TimeoutError:
            pass
        finally:
            self._waiters[k] -= 1
            if self._waiters[k] <= 0:
                del self._waiters[k]
                if self._events.get(k) is event:
                    del self._events[k]
        return self._store.get(k)

    def _open_slot(self, pool: str, remote_p2p: str, *, total: int, per_peer: int) -> bool:
        if self._streams[pool] >= total or self._streams_by_peer[(pool, remote_p2p)] >= per_peer:
            return False
        self._streams[pool] += 1
        self._streams_by_peer[(pool, remote_p2p)] += 1
        return True

    def _close_slot(self, pool: str, remote_p2p: str) -> None:
        self._streams[pool] -= 1
        self._streams_by_peer[(pool, remote_p2p)] -= 1
        if self._streams_by_peer[(pool, remote_p2p)] <= 0:
            del self._streams_by_peer[(pool, remote_p2p)]

    @property
    def open_streams(self) -> int:
        """Incoming streams being served right now (all pools)."""
        return sum(self._streams.values())

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
            await asyncio.wait_for(self._respond(writer, FetchResponse(ok=False, code=code, message=message)), 2.0)
        except (TimeoutError, ProtocolError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle_ping(self, info, reader, writer) -> None:
        remote_p2p = info.peer_id.to_base58()
        if not self._open_slot("ping", remote_p2p, total=MAX_PING_STREAMS, per_peer=2):
            await self._refuse(writer, "busy", "too many pings at once", reader=reader, remote_p2p=remote_p2p)
            return
        try:
            req = await asyncio.wait_for(read_request(reader), self.request_timeout)
            if not isinstance(req, PingRequest):
                raise ProtocolError("expected a ping")
            await self._respond(writer, FetchResponse(ok=True, info={"p2p_id": self.p2p_id, "nonce": req.nonce}))
        except (TimeoutError, ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("ping from %s failed: %s", info.peer_id, exc)
        finally:
            self._close_slot("ping", remote_p2p)
            writer.close()

    async def _handle(self, info, reader, writer) -> None:
        remote_p2p = info.peer_id.to_base58()
        if remote_p2p not in self._by_p2p:
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
                await self._respond(writer, FetchResponse(ok=True, info={"p2p_id": self.p2p_id}))
                return
            if req.run != self.run:
                await self._respond(writer, FetchResponse(ok=False, code="wrong_run",
                                                          message=f"this handler serves run {self.run}"))
                return
            if isinstance(req, PutRequest):
                await self._accept_put(req, remote_p2p, reader, writer)
                return
            entry = await self._wait_entry((req.step, req.kind, req.key), req.wait)
            if entry is None:
                await self._respond(writer, FetchResponse(
                    ok=False, code="not_found", message=f"nothing published for {req.kind}/{req.key} "
                                                        f"at step {req.step}"))
                return
            remote_peer = self._by_p2p.get(remote_p2p)
            if entry.allowed is not None and remote_peer not in entry.allowed:
                self.traffic.requests_refused += 1
                await self._respond(writer, FetchResponse(ok=False, code="refused",
                                                          message="not allowed to fetch this tensor"))
                return
            if isinstance(req, InfoRequest):
                await self._respond(writer, FetchResponse(ok=True, numel=entry.numel, info=entry.info or {}))
                return
            data = entry.overrides.get(remote_peer or "", entry.data)
            header = entry.override_headers.get(remote_peer or "", entry.header)
            if req.start + req.numel > entry.numel:
                await self._respond(writer, FetchResponse(
                    ok=False, code="size", numel=entry.numel,
                    message=f"asked for {req.numel} values at {req.start}, have {entry.numel}"))
                return
            if req.kind == "state":
                served = self._state_served[(remote_p2p, req.key)] + 4 * req.numel
                if served > STATE_SERVES_PER_PEER * 4 * entry.numel:
                    self.traffic.requests_refused += 1
                    await self._respond(writer, FetchResponse(ok=False, code="refused",
                                                              message="this peer already fetched the state"))
                    return
                self._state_served[(remote_p2p, req.key)] = served
            body = memoryview(data)[4 * req.start: 4 * (req.start + req.numel)]
            self.traffic.requests_served += 1
            await self._respond(writer, FetchResponse(ok=True, numel=req.numel, header=header), body)
        except (TimeoutError, ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("request from %s failed: %s", remote_p2p, exc)
        finally:
            writer.close()

    async def _accept_put(self, req: PutRequest, remote_p2p: str, reader, writer) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(req.wait, self.max_wait)
        while True:
            sender = self._by_p2p.get(remote_p2p)
            expected = self._expect(req.step, req.kind, req.key, sender) if sender else None
            remaining = deadline - loop.time()
            if expected is not None or remaining <= 0 or self._closed:
                break
            try:
                await asyncio.wait_for(self._layout.wait(), remaining)
            except TimeoutError:
                pass
        if expected is None:
            self.traffic.requests_refused += 1
            await self._respond(writer, FetchResponse(ok=False, code="refused",
                                                      message=f"not expecting {req.kind}/{req.key} of step "
                                                              f"{req.step} from this peer"))
            return
        if expected != req.numel:
            self.traffic.requests_refused += 1
            await self._respond(writer, FetchResponse(ok=False, code="size", numel=expected,
                                                      message=f"expected {expected} values, not {req.numel}"))
            return
        slot = (remote_p2p, req.step, req.kind, req.key)
        if slot in self._puts:  # one body per slot at a time: parallel copies are refused before reading
            self.traffic.requests_refused += 1
            await self._respond(writer, FetchResponse(ok=False, code="busy",
                                                      message=f"{req.kind}/{req.key} is already being received"))
            return
        self._puts.add(slot)
        try:
            body = await asyncio.wait_for(read_body(reader, expected_bytes=4 * expected), self.call_timeout)
        finally:
            self._puts.discard(slot)
        self.traffic.bytes_received += 8 + len(body)
        self._deliver(req.step, req.kind, req.key, sender, body, req.header)
        await self._respond(writer, FetchResponse(ok=True, numel=expected))

    # --- calling ------------------------------------------------------------------------------
    def _resolve(self, peer: str) -> tuple[str, list[str]]:
        if peer in self._directory:
            return self._directory[peer]
        raise DataPlaneError("unreachable", f"peer {peer[:8]} is not in the directory", peer=peer)

    def dialable(self, addrs: Iterable[object], limit: int = 16) -> list[str]:
        """The addresses of ``addrs`` this plane may dial (see :class:`~worker_client.net.policy.AddressPolicy`)."""
        return self.policy.allowed(addrs, limit=limit)

    async def connect(self, p2p_id: str, addrs: Iterable[str], *, timeout: float | None = None) -> None:
        """Dial a peer at its announced addresses the address policy allows.

        Raises ``DataPlaneError``: ``refused`` when no address may be dialled (private, loopback, DNS or
        garbage; nothing is sent), ``unreachable`` when the dial failed.
        """
        from hivemind.p2p import PeerID
        from hivemind.utils.multiaddr import Multiaddr

        peer = self._by_p2p.get(p2p_id, p2p_id)
        addrs = list(addrs)
        allowed = self.dialable(addrs)
        if not allowed:
            why = self.policy.refusal(addrs[0]) if addrs else "no address given"
            raise DataPlaneError("refused", f"no address of {str(p2p_id)[:12]} may be dialled ({why})", peer=peer)
        try:
            target = PeerID.from_base58(p2p_id)
            maddrs = [Multiaddr(split_p2p_addr(a)[1]) for a in allowed]
        except Exception:  # noqa: BLE001 - base58 and multiaddr parsers raise several kinds
            raise DataPlaneError("malformed", f"{str(p2p_id)[:12]} is not a peer id", peer=peer) from None
        try:
            await asyncio.wait_for(self.p2p._client.connect(target, maddrs), timeout or self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - timeouts, and the daemon reports dial errors as ControlFailure
            raise DataPlaneError("unreachable", f"cannot dial {p2p_id[:12]}: {exc or 'timed out'}",
                                 peer=peer) from None
        self._connected.add(p2p_id)

    async def _is_connected(self, p2p_id: str) -> bool:
        try:
            return any(info.peer_id.to_base58() == p2p_id for info in await self.p2p.list_peers())
        except Exception:  # noqa: BLE001 - a daemon error: treat as not connected
            return False

    async def _open(self, p2p_id: str, addrs: list[str], name: str, peer: str):
        from hivemind.p2p import PeerID

        if p2p_id not in self._connected:
            if addrs:
                await self.connect(p2p_id, addrs)
            elif not await self._is_connected(p2p_id):
                # Without an address the daemon would look the peer up on its own: never let it dial blind.
                raise DataPlaneError("unreachable", f"no address known for {peer[:8]}", peer=peer)
        try:
            _, reader, writer = await self.p2p.call_binary_stream_handler(PeerID.from_base58(p2p_id), name)
        except Exception as exc:  # noqa: BLE001 - the daemon reports dial errors as ControlFailure
            self._connected.discard(p2p_id)
            raise DataPlaneError("unreachable", f"cannot open a stream to {peer[:8]}: {exc}", peer=peer) from None
        return reader, writer

    async def _call(self, peer: str, p2p_id: str, addrs: list[str], name: str, request,
                    *, expected_bytes: int | None, timeout: float) -> tuple[FetchResponse, bytes | None]:
        async def go():
            reader, writer = await self._open(p2p_id, addrs, name, peer)
            try:
                header = encode_header(request)
                writer.write(header)
                await writer.drain()
                self.traffic.bytes_sent += len(header)
                response = await read_response(reader)
                self.traffic.bytes_received += 4 + len(response.model_dump_json())
                if not response.ok:
                    return response, None
                if expected_bytes is None:
                    return response, None
                if response.numel * 4 != expected_bytes:
                    raise DataPlaneError("size", f"{peer[:8]} offers {response.numel} values, "
                                                 f"expected {expected_bytes // 4}", peer=peer)
                body = await read_body(reader, expected_bytes=expected_bytes)
                self.traffic.bytes_received += 8 + len(body)
                return response, body
            finally:
                writer.close()

        return await _bounded(go(), peer=peer, timeout=timeout, what="answer")

    async def send(self, peer: str, *, step: int, kind: str, key: str, data: bytes | torch.Tensor,
                   header: dict | None = None, wait: float | None = None, timeout: float | None = None) -> None:
        """Push a tensor to ``peer`` (it checks the size against its layout before reading the body).

        Raises :class:`DataPlaneError`: ``refused``/``size`` when the receiver does not accept it,
        ``timeout``/``unreachable`` on network trouble.
        """
        body = data if isinstance(data, bytes) else tensor_to_bytes(data)
        p2p_id, addrs = self._resolve(peer)
        timeout = timeout or self.call_timeout
        request = PutRequest(run=self.run, step=step, kind=kind, key=key, numel=len(body) // 4, header=header,
                             wait=min(timeout * 0.8 if wait is None else wait, 600.0))

        async def go():
            reader, writer = await self._open(p2p_id, addrs, handler_name(self.run), peer)
            try:
                head = encode_header(request)
                writer.write(head)
                try:
                    await write_body(writer, body)
                    self.traffic.bytes_sent += len(head) + 8 + len(body)
                except (ConnectionError, OSError):
                    pass  # the receiver may refuse and close before reading the body: read why
                return await read_response(reader)
            finally:
                writer.close()

        response = await _bounded(go(), peer=peer, timeout=timeout, what="accept")
        if not response.ok:
            raise DataPlaneError(response.code or "refused", f"{peer[:8]}: {response.message}", peer=peer)

    async def fetch_bytes(self, peer: str, *, step: int, kind: str, key: str, numel: int, start: int = 0,
                          wait: float | None = None, timeout: float | None = None) -> bytes:
        """Fetch ``numel`` raw float32 values published by ``peer``; see :meth:`fetch`."""
        return (await self.fetch_bytes_with_header(peer, step=step, kind=kind, key=key, numel=numel, start=start,
                                                   wait=wait, timeout=timeout))[0]

    async def fetch_bytes_with_header(self, peer: str, *, step: int, kind: str, key: str, numel: int,
                                      start: int = 0, wait: float | None = None,
                                      timeout: float | None = None) -> tuple[bytes, dict | None]:
        """Like :meth:`fetch_bytes`, also returning the signed header the peer served (or ``None``)."""
        p2p_id, addrs = self._resolve(peer)
        timeout = timeout or self.call_timeout
        wait = timeout * 0.8 if wait is None else wait
        request = FetchRequest(run=self.run, step=step, kind=kind, key=key, start=start, numel=numel,
                               wait=min(wait, 600.0))
        response, body = await self._call(peer, p2p_id, addrs, handler_name(self.run), request,
                                          expected_bytes=4 * numel, timeout=timeout)
        if not response.ok:
            code = response.code if response.code in {"not_found", "refused", "size", "wrong_run", "busy"} \
                else "refused"
            raise DataPlaneError(code, f"{peer[:8]}: {response.message or response.code}", peer=peer)
        assert body is not None
        return body, response.header

    async def fetch(self, peer: str, *, step: int, kind: str, key: str, numel: int, start: int = 0,
                    wait: float | None = None, timeout: float | None = None) -> torch.Tensor:
        """Fetch a tensor ``peer`` published; its size is checked against ``numel`` before it is read.

        The server may hold the request up to ``wait`` seconds while the tensor is not published yet.
        Raises :class:`DataPlaneError`; a NaN/inf tensor raises it with code ``malformed``.
        """
        data = await self.fetch_bytes(peer, step=step, kind=kind, key=key, numel=numel, start=start,
                                      wait=wait, timeout=timeout)
        try:
            return bytes_to_tensor(data, expected_numel=numel)
        except ProtocolError as exc:
            raise DataPlaneError("malformed", f"{peer[:8]}: {exc}", peer=peer) from None

    async def fetch_info(self, peer: str, *, step: int, kind: str, key: str, wait: float = 0.0,
                         timeout: float | None = None) -> FetchResponse:
        p2p_id, addrs = self._resolve(peer)
        request = InfoRequest(run=self.run, step=step, kind=kind, key=key, wait=max(0.0, min(wait, 600.0)))
        response, _ = await self._call(peer, p2p_id, addrs, handler_name(self.run), request,
                                       expected_bytes=None, timeout=timeout or self.call_timeout)
        if not response.ok:
            raise DataPlaneError(response.code or "refused", f"{peer[:8]}: {response.message}", peer=peer)
        return response

    async def ping(self, p2p_id: str, addrs: Iterable[str], *, timeout: float = 10.0) -> float:
        """Dial ``p2p_id`` at ``addrs`` and round-trip a ping; returns the seconds it took.

        This is how an active peer checks a newcomer's announced address (``btard-worker doctor``).
        """
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        nonce = secrets.token_hex(8)
        response, _ = await self._call(p2p_id, p2p_id, list(addrs), PING_HANDLER, PingRequest(nonce=nonce),
                                       expected_bytes=None, timeout=timeout)
        if not response.ok or (response.info or {}).get("nonce") != nonce:
            raise DataPlaneError("malformed", "the peer answered the ping wrongly", peer=p2p_id)
        return loop.time() - t0

    # --- model state for newcomers -------------------------------------------------------------
    def publish_state(self, step: int, flat_state: torch.Tensor, *, chunk_numel: int | None = None,
                      allowed: Iterable[str] | None = None, meta: dict | None = None) -> None:
        """Serve this peer's flat model state as of ``step`` with per-chunk SHA-256 hashes.

        The chunking is a function of the size only (so every donor announces the same hashes): at
        least 8 chunks, so even a small model is fetched from several donors at once. The state of
        the previous step stays available too, for a newcomer that asked just as the step ended.
        """
        data = tensor_to_bytes(flat_state)
        numel = len(data) // 4
        if chunk_numel is None:
            chunk_numel = state_chunk_numel(numel)
        hashes = [hashlib.sha256(data[4 * s: 4 * min(numel, s + chunk_numel)]).hexdigest()
                  for s in range(0, numel, chunk_numel)] or [hashlib.sha256(b"").hexdigest()]
        info = {"step": step, "numel": numel, "chunk_numel": chunk_numel, "chunks": hashes, **(meta or {})}
        # The key names the step so a newcomer never mixes chunks of two different states.
        for k in [k for k in self._store if k[1] == "state" and k[2] not in (f"s{step}", f"s{step - 1}")]:
            del self._store[k]
        for k in [k for k in self._state_served if k[1] not in (f"s{step}", f"s{step - 1}")]:
            del self._state_served[k]
        self.publish(0, "state", f"s{step}", data, allowed=allowed, info=info)

    async def download_state(self, donors: list[str], *, step: int, numel: int, timeout: float | None = None,
                             max_parallel: int = 4) -> tuple[torch.Tensor, dict[str, int], dict]:
        """Download the flat state of ``step`` from several donors at once, not from one.

        Each donor is asked for its chunk hashes; the list a strict majority of the answering donors
        agree on is the reference (a lying donor is outvoted), then chunks are fetched round-robin
        from the agreeing donors in parallel and each is checked against its hash; a failed chunk is
        retried from the next donor. Returns the state, the bytes received per donor and the agreed
        info (chunking plus the ``meta`` donors published, e.g. the randomness chain).
        Raises :class:`DataPlaneError` when no majority exists or a chunk cannot be obtained.
        """
        timeout = timeout or self.call_timeout
        key = f"s{step}"
        donors = list(dict.fromkeys(donors))[:MAX_DONORS]
        asking = asyncio.Semaphore(max_parallel)

        async def ask(donor: str):
            loop = asyncio.get_running_loop()
            until = loop.time() + timeout
            async with asking:
                while True:
                    try:
                        return donor, await self.fetch_info(donor, step=0, kind="state", key=key,
                                                            wait=timeout * 0.5, timeout=timeout)
                    except DataPlaneError as exc:
                        # A donor that has not seen this step's group yet refuses us for a moment.
                        if exc.code == "refused" and "current step" in str(exc) and loop.time() + 1.0 < until:
                            await asyncio.sleep(0.5)
                            continue
                        log.info("state donor %s: %s", donor[:8], exc)
                        return donor, None

        answers = [(d, r) for d, r in await asyncio.gather(*(ask(d) for d in donors))
                   if r is not None and (r.info or {}).get("numel") == numel]
        if not answers:
            raise DataPlaneError("not_found", f"no donor serves the state of step {step} with {numel} values")
        canon = {d: json.dumps(r.info, sort_keys=True) for d, r in answers}
        votes = Counter(canon.values())
        winner, count = votes.most_common(1)[0]
        info = json.loads(winner)
        chunk_numel, hashes = info.get("chunk_numel"), tuple(info.get("chunks") or ())
        if count * 2 <= len(answers) and len(answers) > 1:
            raise DataPlaneError("hash", "state donors disagree and none has a majority")
        if not isinstance(chunk_numel, int) or chunk_numel <= 0 or \
                len(hashes) != max(1, -(-numel // chunk_numel)):
            raise DataPlaneError("malformed", "donors announced an inconsistent chunking")
        good = [d for d, _ in answers if canon[d] == winner]
        out = bytearray(4 * numel)
        per_donor: Counter[str] = Counter()
        sem = asyncio.Semaphore(max_parallel)

        async def get_chunk(index: int) -> None:
            start = index * chunk_numel
            count_ = min(chunk_numel, numel - start)
            last_error: Exception | None = None
            for attempt in range(len(good)):
                donor = good[(index + attempt) % len(good)]
                try:
                    async with sem:
                        data = await self.fetch_bytes(donor, step=0, kind="state", key=key, start=start,
                                                      numel=count_, wait=0.0, timeout=timeout)
                except DataPlaneError as exc:
                    last_error = exc
                    continue
                if hashlib.sha256(data).hexdigest() != hashes[index]:
                    last_error = DataPlaneError("hash", f"chunk {index} from {donor[:8]} does not match", peer=donor)
                    continue
                out[4 * start: 4 * (start + count_)] = data
                per_donor[donor] += len(data)
                return
            raise last_error or DataPlaneError("not_found", f"chunk {index} unavailable")

        await asyncio.gather(*(get_chunk(i) for i in range(len(hashes)) if numel))
        return bytes_to_tensor(bytes(out), expected_numel=numel), dict(per_donor), info
