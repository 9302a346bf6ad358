"""The worker's data plane: bulk tensors peer to peer over ``hivemind.p2p.P2P``.

One :class:`DataPlane` per worker, a facade over four parts:

- :mod:`.store`: what this peer serves, tensors *published* for ``(step, kind, key)`` (its aggregated
  part, a candidate's probation gradient, its model state) and evidence by hash (asked of the
  worker's evidence source);
- :mod:`.server`: the stream handler ``btard/<run>/v1/data`` that serves the store and accepts pushed
  tensors (scatter of parts, all-gather of aggregates) in the size the receiver's layout expects, plus
  the ping handler;
- :mod:`.client`: dialling, pushing, fetching (by slot and by hash) and pinging other peers;
- :mod:`.state_transfer`: the model state in hashed chunks, downloaded from several donors at once.

The remote side is identified by its libp2p peer id, which the transport authenticates, mapped
through the run's :mod:`.directory` (protocol peer id -> hivemind PeerID). Every remote call has a
timeout; failures raise :class:`DataPlaneError` with a stable ``code`` and the peer at fault. Exposure
(docs/threat-model.md, "Volunteer's machine"): see :mod:`.server`; only the addresses
:class:`~worker_client.net.policy.AddressPolicy` allows are dialled (public IPs unless
``allow_private``). The daemon runs without its DHT, AutoNAT and circuit relay: the project uses none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Self

import torch
from hivemind.p2p import P2P

from . import state_transfer
from .client import PING_HANDLER, Client, handler_name, split_p2p_addr
from .directory import MAX_DIRECTORY, Directory
from .errors import DataPlaneError
from .policy import AddressPolicy
from .server import MAX_STREAMS, MAX_STREAMS_PER_PEER, STATE_SERVES_PER_PEER, Server, Traffic
from .store import MAX_WAITING_KEYS, EvidenceSource, Store
from .wire import FetchResponse

__all__ = ["MAX_DIRECTORY", "MAX_STREAMS", "MAX_STREAMS_PER_PEER", "MAX_WAITING_KEYS", "PING_HANDLER",
           "STATE_SERVES_PER_PEER", "DataPlane", "DataPlaneError", "Traffic", "handler_name", "split_p2p_addr",
           "state_chunk_numel"]

state_chunk_numel = state_transfer.state_chunk_numel


class P2PWithoutDHT(P2P):
    """hivemind's P2P with one more DHT mode, ``off``: p2pd then starts no DHT at all."""

    DHT_MODE_MAPPING = {**P2P.DHT_MODE_MAPPING, "off": {}}  # noqa: RUF012 - hivemind reads the class attribute


class DataPlane:
    """A hivemind P2P daemon plus the run's data handler. Create with :meth:`create`; always :meth:`shutdown`."""

    store_class = Store

    def __init__(self, p2p, run: str, *, call_timeout: float, max_wait: float, allow_private: bool = False,
                 request_timeout: float = 5.0, max_streams: int = MAX_STREAMS,
                 max_streams_per_peer: int = MAX_STREAMS_PER_PEER, announce_maddrs: Iterable[str] | None = None):
        self.p2p = p2p
        self.call_timeout = call_timeout
        self.policy = AddressPolicy(allow_private=allow_private)
        self.announce_maddrs = list(announce_maddrs or [])
        self.traffic = Traffic()
        self.directory = Directory()
        self.store = self.store_class(max_wait=max_wait)
        self.server = Server(self.store, self.directory, self.traffic, p2p_id=lambda: self.p2p_id,
                             call_timeout=call_timeout, max_wait=max_wait, request_timeout=request_timeout,
                             max_streams=max_streams, max_streams_per_peer=max_streams_per_peer)
        self.server.run = run
        self.client = Client(p2p, self.directory, self.policy, self.traffic, run=lambda: self.server.run,
                             call_timeout=call_timeout)

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
        p2p = await P2PWithoutDHT.create(host_maddrs=list(host_maddrs),
                                         announce_maddrs=list(announce_maddrs) if announce_maddrs else None,
                                         identity_path=identity_path, nat_port_map=nat_port_map,
                                         startup_timeout=startup_timeout, dht_mode=dht_mode, auto_nat=auto_nat,
                                         use_relay=use_relay, **p2p_kwargs)
        plane = cls(p2p, run or "", call_timeout=call_timeout, max_wait=max_wait, allow_private=allow_private,
                    announce_maddrs=announce_maddrs)
        try:
            if run:
                await p2p.add_binary_stream_handler(handler_name(run), plane.server.handle)
            await p2p.add_binary_stream_handler(PING_HANDLER, plane.server.handle_ping)
        except BaseException:
            await p2p.shutdown()
            raise
        return plane

    @property
    def run(self) -> str:
        return self.server.run

    async def set_run(self, run: str) -> None:
        """Serve run ``run`` (the worker learns it from the site's Welcome, after the daemon started)."""
        if run == self.server.run:
            return
        if self.server.run:
            await self.p2p.remove_binary_stream_handler(handler_name(self.server.run))
        self.server.run = run
        self.store.clear()
        await self.p2p.add_binary_stream_handler(handler_name(run), self.server.handle)

    async def shutdown(self) -> None:
        if self.server.closed:
            return
        self.server.closed = True
        self.store.wake_all()
        await self.p2p.shutdown()

    async def __aenter__(self) -> Self:
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

    @property
    def hash_bodies(self) -> bool:
        """Whether received bodies (pushed and fetched) are hashed chunk by chunk as they arrive and
        delivered as :class:`~worker_client.btard.tensors.HashedBytes` (default: every BTARD check hashes
        what it receives). Off: plain bytes, nothing hashed (a reference transport)."""
        return self.server.hash_bodies

    @hash_bodies.setter
    def hash_bodies(self, on: bool) -> None:
        self.server.hash_bodies = self.client.hash_bodies = bool(on)

    @property
    def open_streams(self) -> int:
        """Incoming streams being served right now (all pools)."""
        return self.server.open_streams

    # --- directory ----------------------------------------------------------------------------
    def set_directory(self, peers: Mapping[str, tuple[str, list[str]]], *, step: int | None = None) -> None:
        """Tell the plane who is who: ``{protocol peer id: (hivemind p2p id, [multiaddrs])}``.

        Only peers in the directory are served. ``step``: the step whose group named them (default:
        the current one); :meth:`forget_before` drops peers no group of the last two steps named.
        """
        self.directory.update(peers, step=step if step is not None else (self.store.step or 0))
        self.notify_layout()

    def knows(self, p2p_id: str) -> bool:
        """Whether ``p2p_id`` is a peer this plane serves (in the directory)."""
        return self.directory.knows(p2p_id)

    def peer_of(self, p2p_id: str) -> str | None:
        return self.directory.peer_of(p2p_id)

    def set_receiver(self, expect, deliver) -> None:
        """How pushed tensors are accepted.

        ``expect(step, kind, key, sender)`` returns how many float32 values this peer accepts from
        ``sender`` for that slot, or ``None`` (not expected, or not known yet: the put waits for
        :meth:`notify_layout` up to its ``wait``). ``deliver(step, kind, key, sender, data, header)``
        gets the body once it was read and its size checked (:class:`~worker_client.btard.tensors.HashedBytes`,
        its SHA-256 taken while it arrived, unless :attr:`hash_bodies` is off).
        """
        self.server.expect, self.server.deliver = expect, deliver
        self.notify_layout()

    def set_evidence_source(self, source: EvidenceSource) -> None:
        """``source(sha256, step, requester)`` returns the bytes with that hash this peer may serve to
        ``requester`` (a protocol peer id) for ``step``, or None; asked for every evidence fetch."""
        self.store.evidence_source = source

    def notify_layout(self) -> None:
        """Wake puts waiting for a step this peer did not know about yet."""
        self.server.notify_layout()

    # --- publishing ---------------------------------------------------------------------------
    def publish(self, step: int, kind: str, key: str, tensor: torch.Tensor | bytes, *,
                allowed: Iterable[str] | None = None, info: dict | None = None, header: dict | None = None) -> None:
        """Make a tensor fetchable by peers for ``(step, kind, key)``.

        ``allowed``: protocol peer ids that may fetch it (``None``: any peer in the directory).
        ``header``: a small signed JSON header served with the tensor (the sender's ``TensorHeader``).
        """
        self.store.publish(step, kind, key, tensor, allowed=allowed, info=info, header=header)

    def published(self, step: int, kind: str, key: str) -> bool:
        return self.store.published(step, kind, key)

    def unpublish(self, step: int, kind: str, key: str) -> None:
        self.store.unpublish(step, kind, key)

    def forget_before(self, step: int, *, keep_kinds: Iterable[str] = ("state",)) -> None:
        """``step`` is now the current step: drop what was published for steps before it (the state stays
        until replaced) and the directory entries of peers no group of ``step - 1`` or later named."""
        self.store.forget_before(step, keep_kinds=keep_kinds)
        self.directory.forget_before(step)

    def publish_state(self, step: int, flat_state: torch.Tensor, *, chunk_numel: int | None = None,
                      allowed: Iterable[str] | None = None, meta: dict | None = None) -> None:
        """Serve this peer's flat model state as of ``step`` (see :func:`.state_transfer.publish_state`)."""
        state_transfer.publish_state(self.store, step, flat_state, chunk_numel=chunk_numel, allowed=allowed,
                                     meta=meta)

    # --- calling ------------------------------------------------------------------------------
    def dialable(self, addrs: Iterable[object], limit: int = 16) -> list[str]:
        """The addresses of ``addrs`` this plane may dial (see :class:`~worker_client.net.policy.AddressPolicy`)."""
        return self.client.dialable(addrs, limit=limit)

    async def connect(self, p2p_id: str, addrs: Iterable[str], *, timeout: float | None = None) -> None:
        await self.client.connect(p2p_id, addrs, timeout=timeout)

    async def send(self, peer: str, *, step: int, kind: str, key: str, data: bytes | torch.Tensor,
                   header: dict | None = None, wait: float | None = None, timeout: float | None = None) -> None:
        await self.client.send(peer, step=step, kind=kind, key=key, data=data, header=header, wait=wait,
                               timeout=timeout)

    async def fetch_bytes(self, peer: str, *, step: int, kind: str, key: str, numel: int, start: int = 0,
                          wait: float | None = None, timeout: float | None = None) -> bytes:
        return await self.client.fetch_bytes(peer, step=step, kind=kind, key=key, numel=numel, start=start,
                                             wait=wait, timeout=timeout)

    async def fetch_bytes_with_header(self, peer: str, *, step: int, kind: str, key: str, numel: int,
                                      start: int = 0, wait: float | None = None,
                                      timeout: float | None = None) -> tuple[bytes, dict | None]:
        return await self.client.fetch_bytes_with_header(peer, step=step, kind=kind, key=key, numel=numel,
                                                         start=start, wait=wait, timeout=timeout)

    async def fetch(self, peer: str, *, step: int, kind: str, key: str, numel: int, start: int = 0,
                    wait: float | None = None, timeout: float | None = None) -> torch.Tensor:
        return await self.client.fetch(peer, step=step, kind=kind, key=key, numel=numel, start=start, wait=wait,
                                       timeout=timeout)

    async def fetch_evidence(self, peer: str, *, step: int, sha256: str, numel: int,
                             timeout: float | None = None) -> bytes:
        return await self.client.fetch_evidence(peer, step=step, sha256=sha256, numel=numel, timeout=timeout)

    async def fetch_info(self, peer: str, *, step: int, kind: str, key: str, wait: float = 0.0,
                         timeout: float | None = None) -> FetchResponse:
        return await self.client.fetch_info(peer, step=step, kind=kind, key=key, wait=wait, timeout=timeout)

    async def ping(self, p2p_id: str, addrs: Iterable[str], *, timeout: float = 10.0) -> float:
        return await self.client.ping(p2p_id, addrs, timeout=timeout)

    async def download_state(self, donors: list[str], *, step: int, numel: int, timeout: float | None = None,
                             max_parallel: int = 4) -> tuple[torch.Tensor, dict[str, int], dict]:
        """Download the flat state of ``step`` from several donors at once (see
        :func:`.state_transfer.download_state`)."""
        return await state_transfer.download_state(self.client, donors, step=step, numel=numel,
                                                   timeout=timeout or self.call_timeout,
                                                   max_parallel=max_parallel)
