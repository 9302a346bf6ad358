"""A minimal site speaking the ``/ws/worker/`` contract (btard_wire.control), for driving real workers.

It is a real websocket server (``websockets.serve``) with the membership logic cut to the bone: every
token is accepted, the first ``group_size`` peers form the group, each step's group is sent when the
previous one has reported, broadcasts are relayed to the group unchanged, and a peer is banned once a
majority of the step's group signed verdicts naming it (``btard_wire.board``, the site's rules); it can
tell the validators every peer drew from a step's r_t (:meth:`FakeSite.validators_for`). The real site lives in ``platform/``; the
Daphne integration tests run against it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from websockets.asyncio.server import serve

from btard_wire import BOARD_PHASES
from btard_wire import board as rules
from btard_wire.control import (
    CLOSE_BANNED,
    BanNotice,
    Group,
    PeerInfo,
    Relay,
    RunInfo,
    Welcome,
    parse_worker_message,
)
from btard_wire.envelope import b64d, peer_id_from_public_key
from btard_wire.randomness import ALARM_FACTOR, validators_for_step


class FakeSite:
    def __init__(self, *, group_size: int, task: str = "digits-mlp", validators: int = 0, batch_size: int = 16,
                 phase_timeout: float = 20.0, tau: float = 1.0, drop_relay=None):
        """``drop_relay(envelope, member) -> bool``: relays to leave out (a message lost on the way while
        the socket stays up); the stored copy is still served on a ``board_request``."""
        self.group_size = group_size
        self.run = RunInfo(id=7, name="fake", task=task, validators_per_step=validators, batch_size=batch_size,
                           phase_timeout=phase_timeout, tau=tau, peers_per_group=group_size)
        self.peers: dict[str, PeerInfo] = {}
        self.sockets: dict[str, object] = {}
        self.banned: set[str] = set()
        self.recalc_ban_steps: set[int] = set()  # steps whose verdict majority banned by recalculation
        self.step = 0
        self.group: list[str] = []
        self.reports: dict[int, dict[str, object]] = defaultdict(dict)
        self.verdicts: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.groups: dict[int, list[str]] = {}
        # step -> phase -> sender -> payload of the first stored message (board phases only)
        self.board: dict[int, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
        self.broadcasts = 0
        self.drop_relay = drop_relay
        self.envelopes: dict[tuple[int, str, str], object] = {}  # (step, phase, sender) -> first stored envelope
        self.board_requests: list = []
        self.heartbeats: list = []
        self.server = None
        self.url = ""
        self._lock = asyncio.Lock()

    async def __aenter__(self):
        self.server = await serve(self.handler, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _send(self, peer_id: str, message) -> None:
        ws = self.sockets.get(peer_id)
        if ws is None:
            return
        try:
            await ws.send(message.model_dump_json())
        except Exception:
            pass

    def validators_for(self, step: int) -> dict[str, str]:
        """The validators of ``step`` as the peers draw them from its r_t, from this board alone (the
        rule of the site and the in-memory board: ``btard_wire.board.validator_assignment``)."""
        board, prev = self.board.get(step, {}), self.board.get(step - 1, {})
        commits = {p: v["hash"] for p, v in board.get("mprng_commit", {}).items()}
        reveals = {p: v["value"] for p, v in board.get("mprng_reveal", {}).items()}
        targets = rules.checkable_targets(contributors=list(prev.get("commit", {})),
                                          scalars_senders=prev.get("scalars", {}))
        run = str(self.run.extra.get("key") or self.run.id)  # what peers sign (worker_client.worker.run_key)
        return rules.validator_assignment(run=run, step=step, group=self.groups.get(step, []), commitments=commits,
                                          reveals=reveals, prev_contributors=targets,
                                          m=validators_for_step(self.run.validators_per_step,
                                                                prev_recalc_ban=step - 1 in self.recalc_ban_steps,
                                                                alarm_factor=self.run.extra.get("alarm_factor",
                                                                                                ALARM_FACTOR)))

    async def _start_step(self) -> None:
        self.group = sorted(p for p in self.peers if p not in self.banned)[: self.group_size]
        self.groups[self.step] = list(self.group)
        donors = [self.peers[p] for p in self.group]
        # validators are not assigned here: every peer draws them from the step's r_t (Sec. 3.3)
        group = Group(step=self.step, peers=[self.peers[p] for p in self.group], state_donors=donors)
        for peer_id in list(self.sockets):
            await self._send(peer_id, group)

    async def handler(self, ws):
        from btard_wire.control import Challenge

        await ws.send(Challenge(nonce="fake-site-nonce-0123456789").model_dump_json())
        hello = parse_worker_message(await ws.recv())
        peer_id = peer_id_from_public_key(b64d(hello.public_key))
        if peer_id in self.banned:
            await ws.close(CLOSE_BANNED, "banned")
            return
        self.peers[peer_id] = PeerInfo(peer_id=peer_id, public_key=hello.public_key, p2p_id=hello.p2p_id,
                                       p2p_addrs=hello.p2p_addrs)
        self.sockets[peer_id] = ws
        await ws.send(Welcome(peer_id=peer_id, role="active", run=self.run, step=self.step).model_dump_json())
        async with self._lock:
            if not self.group and len(self.peers) >= self.group_size:
                await self._start_step()
        try:
            async for raw in ws:
                message = parse_worker_message(raw)
                async with self._lock:
                    await self._on_message(peer_id, message)
        finally:
            if self.sockets.get(peer_id) is ws:
                del self.sockets[peer_id]

    async def _on_message(self, peer_id: str, message) -> None:
        if message.type == "heartbeat":
            self.heartbeats.append((peer_id, message))
        elif message.type == "broadcast":
            env = message.envelope
            if env.sender != peer_id or peer_id in self.banned:
                return
            self.broadcasts += 1
            if env.phase in BOARD_PHASES:
                self.board[env.step][env.phase].setdefault(peer_id, dict(env.payload))
                self.envelopes.setdefault((env.step, env.phase, peer_id), env)
            for member in self.group:
                if self.drop_relay is not None and self.drop_relay(env, member):
                    continue
                await self._send(member, Relay(envelope=env))
            if env.phase == "verdict":
                guilty = env.payload.get("guilty")
                signers = self.verdicts[env.step][guilty]
                signers.add(peer_id)
                if guilty not in self.banned and rules.verdict_majority(
                        signers, members=self.groups.get(env.step, self.group)):
                    self.banned.add(guilty)
                    if env.payload.get("kind") == "recalc":
                        self.recalc_ban_steps.add(env.step)
                    for member in list(self.sockets):
                        await self._send(member, BanNotice(peer_id=guilty, step=env.step, reason=env.payload.get(
                            "kind", "verdict")))
        elif message.type == "board_request":
            self.board_requests.append((peer_id, message))
            for sender in message.senders:
                env = self.envelopes.get((message.step, message.phase, sender))
                if env is not None:
                    await self._send(peer_id, Relay(envelope=env))
        elif message.type == "step_report":
            self.reports[message.step][peer_id] = message
            live = [p for p in self.group if p not in self.banned and p in self.sockets]
            if message.step == self.step and all(p in self.reports[self.step] for p in live):
                self.step += 1
                await self._start_step()
