"""In-memory transport: drives :class:`~worker_client.btard.protocol.BtardPeer` objects in one process.

It passes exactly what the network transport passes: signed :class:`Envelope` objects through a
:class:`BulletinBoard` (a model of the site: it checks, stores and relays broadcasts, counts verdicts,
bans on a majority, queues eliminations for moderation and fixes the next step's group) and raw
little-endian float32 bytes between peers for parts and aggregates.

Deadlines: the transport has no clock. When no message is in flight, the deadline of the earliest
pending phase expires (``on_deadline``) for the peers waiting in that phase; this is what a real
deadline does once everyone who could answer has answered.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from btard_wire import BOARD_PHASES, BROADCAST_PHASES
from btard_wire import board as rules
from btard_wire.envelope import Envelope, Identity, ReplayGuard
from btard_wire.errors import ProtocolError
from btard_wire.payloads import AccusePayload, EliminatePayload, FaultKind, ValidationPayload, VerdictPayload
from btard_wire.probation import reveals_withheld
from btard_wire.randomness import ALARM_FACTOR, validators_for_step

from ..btard import protocol as P
from ..btard.attacks import Collusion, make_peer
from ..btard.memo import Memo
from ..drive.dispatch import carry_out

GradientFn = Callable[[list[tuple[str, P.ComputeGradient]]], list[torch.Tensor]]


@dataclass
class BanRecord:
    peer: str
    step: int
    reason: str
    kind: str
    evidence: list[str]
    accuser: str | None = None

    def as_dict(self) -> dict:
        return {"peer": self.peer, "step": self.step, "reason": self.reason, "kind": self.kind,
                "evidence": self.evidence, "accuser": self.accuser}


@dataclass
class BulletinBoard:
    """The site's part of the protocol, in memory (membership, relay, evidence store, bans).

    Bans a peer once a strict majority of the step's group has posted a signed verdict naming it
    guilty; puts ELIMINATE pairs in :attr:`moderation_queue` and removes both from later groups;
    bans a peer reported silent by a majority of its group in ``silence_limit`` consecutive steps. The
    rules are :mod:`btard_wire.board`'s, the ones the site runs."""

    run: str
    public_keys: dict[str, str]
    members: list[str]
    verifier: P.EnvelopeVerifier = field(default_factory=P.EnvelopeVerifier)
    silence_limit: int = rules.SILENCE_LIMIT
    step: int = 0
    group: list[str] = field(default_factory=list)
    banned: dict[str, BanRecord] = field(default_factory=dict)
    eliminated: set[str] = field(default_factory=set)
    moderation_queue: list[dict] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    silence: dict[str, int] = field(default_factory=dict)
    withheld: dict[str, list[int]] = field(default_factory=dict)  # member -> steps it withheld its reveal
    log: list[Envelope] = field(default_factory=list)
    keep_log: bool = False
    # the board rules on what decides a step (btard_wire.board; findings 1, 6, 7): one message per
    # single-message slot (a second one is refused and bans its sender for equivocation); a report
    # lists only accusations and ELIMINATEs the board holds and every one of its sender's own; none
    # after it. False models a board without them (tests of the core's own defence).
    check_reports: bool = True

    def __post_init__(self):
        self._guard = ReplayGuard()
        self._votes: dict[str, dict[str, VerdictPayload]] = {}
        self._posted: dict[str, set[str]] = {}  # this step: phase -> who posted it
        self._prev_posted: dict[str, set[str]] = {}  # the same for the previous step
        self._mprng: dict[str, dict[str, str]] = {"mprng_commit": {}, "mprng_reveal": {}}  # phase -> sender -> hex
        self._asked: dict[str, set[str]] = {}  # this step: phase -> members whose deadline passed
        self.closed: dict[str, list[str]] = {}  # this step: board phases closed -> their senders
        self._slots: dict[tuple[str, str], str] = {}  # this step: (phase, sender) -> digest stored
        self._moderation: dict[str, list[str]] = {}  # this step: sender -> its accuse/eliminate digests

    def next_group(self) -> list[str]:
        return [p for p in self.members if p not in self.banned and p not in self.eliminated]

    def open_step(self, step: int, group: list[str]) -> None:
        # what validation at this step needs of the previous one: who committed and published scalars
        self._prev_posted = self._posted if step == self.step + 1 else {}
        self.step, self.group = step, list(group)
        self._votes = {}
        self._posted = {}
        self._mprng = {"mprng_commit": {}, "mprng_reveal": {}}
        self._asked = {}
        self.closed = {}
        self._slots = {}
        self._moderation = {}

    def close_phase(self, phase: str) -> list[str]:
        """Close a board phase as the site does: who posted it so far; later posts of it are refused."""
        if phase not in self.closed:
            self.closed[phase] = sorted(self._posted.get(phase, ()))
        return self.closed[phase]

    def request_close(self, peer: str, phase: str, online: list[str] | None = None) -> list[str] | None:
        """``peer``'s deadline for ``phase`` passed: the phase closes once a strict majority of the
        group's members still online asked (:func:`btard_wire.board.close_quorum`); returns its senders
        once closed, else None."""
        if phase in self.closed:
            return self.closed[phase]
        if peer not in self.group:
            return None
        asked = self._asked.setdefault(phase, set())
        asked.add(peer)
        if rules.close_quorum(asked=asked, members=self.group, online=self.group if online is None else online):
            return self.close_phase(phase)
        return None

    def validators(self, m: int, *, alarm_factor: int = ALARM_FACTOR) -> dict[str, str]:
        """The validators of the current step and their targets, computed from the board alone (this
        step's MPRNG commitments and reveals, the previous step's commitments and scalars, its bans) with
        :func:`btard_wire.board.validator_assignment`: what every peer draws from ``r_t``; ``m`` the run's
        validators per step (``alarm_factor`` times as many after a recalculation ban,
        :func:`btard_wire.randomness.validators_for_step`)."""
        m = validators_for_step(m, alarm_factor=alarm_factor, prev_recalc_ban=any(
            b.step == self.step - 1 and b.kind == FaultKind.recalc.value for b in self.banned.values()))
        prev = self._prev_posted
        targets = rules.checkable_targets(contributors=[p for p in sorted(prev.get("commit", ()))],
                                          scalars_senders=prev.get("scalars", ()))
        return rules.validator_assignment(run=self.run, step=self.step, group=self.group,
                                          commitments=self._mprng["mprng_commit"],
                                          reveals=self._mprng["mprng_reveal"], prev_contributors=targets, m=m,
                                          revealed=self.closed.get("mprng_reveal"))

    def randomness(self) -> bytes | None:
        """The current step's MPRNG output ``r_t`` as the board shows it (what the site stores and draws
        the next step's group order and probation validators from); None when the step has none."""
        commitments = self._mprng["mprng_commit"]
        return rules.mprng_output(run=self.run, step=self.step, members=[p for p in self.group if p in commitments],
                                  commitments=commitments, reveals=self._mprng["mprng_reveal"],
                                  revealed=self.closed.get("mprng_reveal"))

    def reveals_withheld(self) -> bool:
        """Whether this step's MPRNG output left out a committed member's withheld reveal
        (:func:`btard_wire.probation.reveals_withheld`: panels drawn from it decide nothing)."""
        return reveals_withheld(committed=[p for p in self.group if p in self._mprng["mprng_commit"]],
                                revealed=self.closed.get("mprng_reveal"))

    def post(self, connection: str, envelope: Envelope) -> bool:
        """A broadcast posted by the peer on ``connection``; True when stored and to be relayed."""
        try:
            if envelope.sender != connection:
                raise ProtocolError("envelope sender is not the posting peer")
            if envelope.run != self.run or envelope.step != self.step:
                raise ProtocolError(f"envelope for {envelope.run}/{envelope.step}, board is at {self.step}")
            if envelope.phase not in BROADCAST_PHASES:
                raise ProtocolError(f"unknown phase {envelope.phase!r}")
            if connection not in self.group:
                raise ProtocolError("poster is not in the step's group")
            if envelope.phase in self.closed:
                raise ProtocolError(f"{envelope.phase} of step {envelope.step} is closed")
            payload, digest = self.verifier.check(envelope, self.public_keys[connection])
            self._guard.check_and_remember(envelope)
            self._check_decisive(connection, envelope.phase, payload, digest)
        except ProtocolError as exc:
            self.rejected.append((connection, str(exc)))
            return False
        self._posted.setdefault(envelope.phase, set()).add(connection)
        if envelope.phase in self._mprng:
            self._mprng[envelope.phase][connection] = payload.hash if envelope.phase == "mprng_commit" else payload.value
        if envelope.phase in BOARD_PHASES:
            self._slots[(envelope.phase, connection)] = digest
        if isinstance(payload, (AccusePayload, EliminatePayload)):
            self._moderation.setdefault(connection, []).append(digest)
        if self.keep_log:
            self.log.append(envelope)
        if isinstance(payload, VerdictPayload):
            votes = self._votes.setdefault(payload.guilty, {})
            votes[connection] = payload
            if rules.verdict_majority(votes, members=self.group) and payload.guilty not in self.banned:
                self.banned[payload.guilty] = BanRecord(
                    peer=payload.guilty, step=self.step, reason=payload.reason, kind=payload.kind.value,
                    evidence=list(payload.evidence), accuser=payload.accuser)
        elif isinstance(payload, EliminatePayload):
            # The first ELIMINATE naming a peer removes the pair; later ones against a peer already
            # removed are queued but remove nobody else, so every removed pair holds a faulty peer
            # and the honest share never drops (ours).
            effective = rules.elimination_removes(eliminator=connection, target=payload.target,
                                                  members=self.group, removed=self.eliminated)
            self.moderation_queue.append({"step": self.step, "eliminator": connection, "target": payload.target,
                                          "reason": payload.reason, "effective": effective})
            if effective:
                self.eliminated.update({connection, payload.target})
        return True

    def _check_decisive(self, sender: str, phase: str, payload, digest: str) -> None:
        """The board rules that fix what decides the step (btard_wire.board); raises ProtocolError."""
        if not self.check_reports:
            return
        first = self._slots.get((phase, sender))
        if rules.slot_conflict(phase=phase, board_phases=BOARD_PHASES, stored_digest=first, digest=digest):
            # two signatures of one sender on one slot: refused, and proof of equivocation (finding 7)
            if sender not in self.banned:
                self.banned[sender] = BanRecord(peer=sender, step=self.step, kind="equivocation",
                                                evidence=[first, digest],
                                                reason=f"two different signed {phase} messages in one slot")
            raise ProtocolError(f"second {phase} message from {sender[:8]} in step {self.step}: equivocation")
        reported = ("validation", sender) in self._slots
        closed = "validation" in self.closed or len(self._posted.get("validation", ())) >= len(self.group)
        why = rules.moderation_refused(phase=phase, sender_reported=reported, validation_closed=closed,
                                       sender_posted_scalars=("scalars", sender) in self._slots)
        if why is not None:
            raise ProtocolError(why)
        if isinstance(payload, ValidationPayload):
            stored = [d for ds in self._moderation.values() for d in ds]
            phantom = rules.unheld_listed(payload.accusations, stored=stored)
            if phantom:
                raise ProtocolError(f"report lists {len(phantom)} digest(s) the board does not hold")
            unlisted = rules.unlisted_own(self._moderation.get(sender, ()), listed=payload.accusations)
            if unlisted:
                raise ProtocolError(f"report leaves out {len(unlisted)} of the sender's own accusations")

    def report_silence(self, reports: dict[str, list[str]]) -> None:
        """Peers' end-of-step reports of who missed a deadline; a majority of the group makes it count,
        and ``silence_limit`` consecutive silent steps ban (a step the peer spoke in resets its count).
        A committed member whose reveal is missing at the board's close of ``mprng_reveal`` withheld it:
        ``REVEAL_WITHHOLD_LIMIT`` such steps within ``REVEAL_WINDOW`` ban its key, whatever it did in
        between (``btard_wire.board.next_withheld_steps``; SR 14)."""
        silent = rules.reported_silent(reports, members=self.group)
        closed = self.closed.get("mprng_reveal")
        withheld = set() if closed is None else set(rules.reveal_silent(
            members=[p for p in self.group if p in self._mprng["mprng_commit"]], revealed=closed))
        for p in self.group:
            if p in self.banned:
                continue
            self.withheld[p] = rules.next_withheld_steps(self.withheld.get(p, ()), step=self.step,
                                                         withheld=p in withheld)
            if rules.withholding_banned(self.withheld[p]):
                self.banned[p] = BanRecord(peer=p, step=self.step, kind="withheld_reveal", evidence=[],
                                           reason=f"withheld {len(self.withheld[p])} MPRNG reveals in "
                                                  f"{rules.REVEAL_WINDOW} steps")
                continue
            self.silence[p] = rules.next_silence_count(self.silence.get(p, 0), silent=p in silent)
            if rules.silence_banned(self.silence[p], limit=self.silence_limit):
                self.banned[p] = BanRecord(peer=p, step=self.step, kind="silence", evidence=[],
                                           reason=f"missed deadlines in {self.silence[p]} consecutive steps")


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    """A reproducible ``entropy`` source (``k -> k bytes``) for simulated peers (never for real keys)."""
    rng = random.Random(seed)
    return lambda k: rng.getrandbits(8 * k).to_bytes(k, "little")


def seeded_nonces(seed: int) -> Callable[[], str]:
    """A reproducible envelope ``nonce`` source for simulated peers: a simulated run is then the same
    byte for byte (every envelope, every digest) for the same seed."""
    rng = random.Random(f"btard-nonce:{seed}")
    return lambda: rng.getrandbits(128).to_bytes(16, "little").hex()


def build_peers(identities: list[Identity], params: P.ProtocolParams, *, byzantine: Collection[str] = (),
                attack: str | None = None, collusion: Collusion | None = None,
                entropy: Callable[[int], bytes] | None = None, nonce: Callable[[], str] | None = None,
                verifier: P.EnvelopeVerifier | None = None, memo: Memo | None = None,
                attack_params: dict | None = None) -> dict[str, P.BtardPeer]:
    """One peer per identity, honest or running ``attack`` (those in ``byzantine``, in ``collusion``),
    all sharing ``entropy``, ``nonce``, ``verifier`` and ``memo`` when given (one process)."""
    shared = {"entropy": entropy, "verifier": verifier, "nonce": nonce, "memo": memo}
    peers: dict[str, P.BtardPeer] = {}
    for ident in identities:
        if ident.peer_id in byzantine and attack not in (None, "", "none"):
            peers[ident.peer_id] = make_peer(attack, ident, params, collusion=collusion, **shared,
                                             **(attack_params or {}))
        else:
            peers[ident.peer_id] = make_peer(None, ident, params, **shared)
    return peers


@dataclass
class Swarm:
    """What :func:`build_swarm` sets up: the peers, the board, the transport and what they share."""

    peers: dict[str, P.BtardPeer]
    board: BulletinBoard
    memory: MemorySwarm
    verifier: P.EnvelopeVerifier
    memo: Memo


def build_swarm(identities: list[Identity], params: P.ProtocolParams, gradient_fn: GradientFn, *, run: str,
                byzantine: Collection[str] = (), attack: str | None = None, collusion: Collusion | None = None,
                entropy: Callable[[int], bytes] | None = None, nonce: Callable[[], str] | None = None,
                attack_params: dict | None = None, members: Collection[str] | None = None,
                **swarm_options) -> Swarm:
    """The in-memory swarm the simulator, the protocol tests and the benchmarks run: peers from
    :func:`build_peers` sharing one verifier and one :class:`Memo`, a :class:`BulletinBoard` whose active
    ``members`` are every identity (or those given; the others are candidates the driver promotes by
    appending to ``board.members``), a :class:`MemorySwarm` over them (``swarm_options``: its keyword
    arguments)."""
    verifier, memo = P.EnvelopeVerifier(), Memo()
    peers = build_peers(identities, params, byzantine=byzantine, attack=attack, collusion=collusion,
                        entropy=entropy, nonce=nonce, verifier=verifier, memo=memo, attack_params=attack_params)
    keys = {i.peer_id: i.public_key_b64 for i in identities}
    active = [i.peer_id for i in identities] if members is None else [p for p in members if p in keys]
    board = BulletinBoard(run=run, public_keys=keys, members=active, verifier=verifier)
    memory = MemorySwarm(peers, board, gradient_fn, **swarm_options)
    return Swarm(peers=peers, board=board, memory=memory, verifier=verifier, memo=memo)


class MemorySwarm:
    """Runs steps of a group of peers to completion, in one process, with no clock and no threads."""

    def __init__(self, peers: dict[str, P.BtardPeer], board: BulletinBoard, gradient_fn: GradientFn,
                 *, before_gradients: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
                 max_deadline_rounds: int = 64, shuffle: random.Random | None = None,
                 site_closes: bool = False, late: Callable[[str, Envelope], bool] | None = None):
        self.peers = peers
        self.board = board
        self.gradient_fn = gradient_fn
        self.before_gradients = before_gradients
        self.max_deadline_rounds = max_deadline_rounds
        self.shuffle = shuffle  # deliver in random order (tests: the protocol must not rely on order)
        # As the networked site does: board phases close with the board's list of senders, and the board
        # echoes every stored broadcast to its sender (for peers with ``board_echo``). ``late`` picks
        # broadcasts the network holds back until the next deadline (a slow link or a busy machine).
        self.site_closes = site_closes
        self.late = late
        self.serve_evidence = True  # False: no holder serves a fetched tensor (evidence unavailable)
        self.crashed: dict[str, str] = {}
        self.bytes_sent = 0
        self.messages = 0

    def run_step(self, contexts: dict[str, P.StepContext]) -> dict[str, P.StepResult]:
        """Run one step for every peer in ``contexts`` (the step's group); returns their results."""
        group = list(contexts)
        if not group:
            return {}
        step = next(iter(contexts.values())).step
        self.board.open_step(step, group)
        queue: deque = deque()
        compute: list[tuple[str, P.ComputeGradient]] = []
        results: dict[str, P.StepResult] = {}

        held: list[tuple[str, Envelope]] = []
        acted: set[tuple[str, str]] = set()
        self.crashed: dict[str, str] = {}  # Byzantine peers whose code raised: silent for the rest of the step

        crashed = self.crashed
        honest_peers = {p: self.peers[p] for p in group if not getattr(self.peers[p], "byzantine", False)}

        def call(peer: str, method: str, *args) -> list[P.Action]:
            """A peer's input handler. A Byzantine peer that raises counts as silent for this step (its
            own code failed; the simulator never dies because of an attacker); an honest one raising is
            a bug and propagates."""
            if peer in crashed:
                return []
            obj = honest_peers.get(peer)
            if obj is not None:
                return getattr(obj, method)(*args)
            obj = self.peers[peer]
            try:
                return getattr(obj, method)(*args)
            except Exception as exc:  # noqa: BLE001 - any failure of attacker code
                crashed[peer] = f"{type(exc).__name__}: {exc}"
                return []

        board_post = self.board.post

        def post(sender: str, envelope: Envelope) -> None:
            if board_post(sender, envelope):
                self.messages += 1
                item = ("on_broadcast", (envelope,))
                if self.site_closes:  # every member gets it, the sender as the board's echo
                    queue.extend([(q, *item) for q in group])
                else:
                    queue.extend([(q, *item) for q in group if q != sender])
            elif self.site_closes:  # as the site does: the sender is told which broadcast was refused
                reason = self.board.rejected[-1][1] if self.board.rejected else ""
                queue.append((sender, "on_broadcast_refused", (envelope.step, envelope.digest(), reason)))

        class Link:
            """One peer's transport for this step (:class:`worker_client.drive.dispatch.Transport`)."""

            def __init__(self, sender: str):
                self.sender = sender

            def post(self, envelope: Envelope) -> None:
                sender = self.sender
                peer = self_.peers[sender]
                if ((self_.late is not None and self_.late(sender, envelope))
                        or (peer.byzantine and peer.view() is not None and peer.hook_hold_broadcast(envelope, peer.view()))):
                    held.append((sender, envelope))
                else:
                    post(sender, envelope)

            def send_tensor(self, a: P.SendTensor) -> None:
                if a.to in contexts:
                    self_.bytes_sent += len(a.data)
                    queue.append((a.to, "on_" + a.kind, (self.sender, a.part, a.data, a.header)))

            def fetch(self, a: P.FetchTensor) -> None:
                # content-addressed fetch of evidence: the first holder that serves a copy
                for holder in a.holders:
                    if holder in contexts and holder != self.sender and self_.serve_evidence:
                        data = call(holder, "serve_tensor", a.sha256, a.step)
                        if isinstance(data, bytes) and data:
                            self_.bytes_sent += len(data)
                            queue.append((self.sender, "on_tensor", (a.sha256, data, a.step)))
                            break

            def compute(self, a: P.ComputeGradient) -> None:
                compute.append((self.sender, a))

            def finish(self, result: P.StepResult) -> None:
                results[self.sender] = result

        self_ = self
        links = {p: Link(p) for p in group}

        def handle(sender: str, actions: list[P.Action]) -> None:
            if actions:  # most inputs (a broadcast that completes no barrier) return none
                carry_out(actions, links[sender])

        def run_compute(first: bool) -> None:
            batch = list(compute)
            compute.clear()
            grads = self.gradient_fn(batch)
            if first and self.before_gradients is not None:
                own = {peer: g for (peer, req), g in zip(batch, grads)
                       if req.purpose == "own" and not req.flip_labels}
                self.before_gradients(step, own)
            for (peer, req), g in zip(batch, grads):
                handle(peer, call(peer, "on_gradient", req.request_id, g))

        for p in group:
            handle(p, call(p, "begin_step", contexts[p]))
        run_compute(first=True)
        rounds = 0
        while True:
            if self.shuffle is None:  # call() inlined for honest peers: ~1,700 deliveries a step at 16 peers
                popleft = queue.popleft
                while queue:
                    target, method, args = popleft()
                    if target in crashed:
                        continue
                    obj = honest_peers.get(target)
                    actions = getattr(obj, method)(*args) if obj is not None else call(target, method, *args)
                    if actions:
                        carry_out(actions, links[target])
            while queue:
                queue.rotate(-self.shuffle.randrange(len(queue)))
                target, method, args = queue.popleft()
                handle(target, call(target, method, *args))
            if compute:
                run_compute(first=False)
                continue
            waiting = {p: self.peers[p].waiting_for for p in group
                       if p not in self.crashed and not self.peers[p].finished}
            if not waiting:
                break
            if self.site_closes:
                applied = False
                for p, phase in waiting.items():  # a close reaches every peer; each acts on it in that phase
                    if phase in self.board.closed and (p, phase) not in acted:
                        acted.add((p, phase))
                        handle(p, call(p, "on_deadline", phase, self.board.closed[phase]))
                        applied = True
                if applied:
                    continue
            rounds += 1
            if rounds > self.max_deadline_rounds:
                raise RuntimeError(f"step {step} does not converge: {waiting}")
            earliest = min(waiting.values(), key=P.PHASE_ORDER.index)
            if self.site_closes and earliest in P.BOARD_PHASES:
                for p, phase in waiting.items():  # every peer waiting in it asks the board to close it
                    if phase == earliest:
                        self.board.request_close(p, phase)
            else:
                if earliest == "mprng_reveal":  # as the site does: a reveal after the deadline is refused, so
                    self.board.close_phase(earliest)  # the board's r_t is the peers' (btard_wire.board.mprng_output)
                for p, phase in waiting.items():
                    if phase == earliest:
                        handle(p, call(p, "on_deadline", phase))
            for sender, envelope in held:  # what the network held back arrives now, after the deadline
                post(sender, envelope)
            held.clear()
        return results
