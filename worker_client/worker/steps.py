"""One step on the networked worker: the group arrives, the core's actions are carried out, the step ends.

The core's actions go through the one dispatcher (:func:`worker_client.drive.dispatch.carry_out_async`)
against :class:`NetworkTransport`: board posts to the site, tensors over the data plane, gradients on
a compute thread, evidence fetched by its hash from the group's peers (:mod:`.evidence`). Deadlines
are per phase; a board phase is closed by the site (``phase_close`` when ours passes), a private one
by our own clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from btard_wire import BOARD_PHASES
from btard_wire import payloads as M
from btard_wire.control import BoardRequest, Group, PhaseClosed, PhaseCloseRequest, Relay, Status, StepReport
from btard_wire.control import Broadcast as BroadcastMessage

from ..btard.actions import ComputeGradient, FetchTensor, SendTensor
from ..btard.kernels import part_bounds
from ..btard.mprng import genesis_randomness
from ..btard.peer import step_validator_count
from ..btard.state import StepContext, StepResult
from ..btard.tensors import tensor_hash
from ..checkpoint import http_base, is_checkpoint_step, state_bytes, state_digest, upload, upload_url
from ..drive.dispatch import carry_out_async
from ..exit_codes import EXIT_OK
from ..net import DataPlaneError
from ..site_limits import clamp_timeout
from .evidence import EvidenceFetcher
from .inbox import GradientFailed, GradientReady, TensorArrived

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

EARLY_RELAY_BYTES = 16 * 1024 * 1024  # relays kept for the next step before its group arrives


def group_directory(group: Group) -> dict[str, tuple[str, list[str]]]:
    """Who this worker talks to (and serves) in ``group``'s step: members, donors and candidates."""
    directory = {p.peer_id: (p.p2p_id, p.p2p_addrs) for p in list(group.peers) + list(group.state_donors)}
    for cand in group.candidates:
        directory.setdefault(cand["peer_id"], (cand.get("p2p_id", ""), cand.get("p2p_addrs") or []))
    return directory


SEND_ATTEMPTS = 3  # tries of a tensor send whose dial failed (within the phase deadline)

class NetworkTransport:
    """The networked worker's :class:`~worker_client.drive.dispatch.Transport`: board posts go to the
    site (held back by ``hold_broadcasts`` when a test asks), tensors over the data plane, gradients on
    the compute thread, evidence by hash from the group; ``finish`` returns the coroutine that reports
    the step (awaited in order)."""

    def __init__(self, steps: StepDriver):
        self.steps = steps

    def post(self, envelope) -> None:
        w = self.steps.worker
        hold = w.config.hold_broadcasts.get(envelope.phase)
        if hold:
            w.spawn(self.steps.send_later(BroadcastMessage(envelope=envelope), hold))
        else:
            w.site.send(BroadcastMessage(envelope=envelope))

    def send_tensor(self, action: SendTensor) -> None:
        w = self.steps.worker
        w.spawn(self.steps.send_tensor(action, w.peer.step))

    def compute(self, request: ComputeGradient) -> None:
        w = self.steps.worker
        w.spawn(self.steps.compute(request, w.peer.step))

    def fetch(self, request: FetchTensor) -> None:
        self.steps.evidence.fetch(request)

    def finish(self, result: StepResult):
        return self.steps.finish(result)


class StepDriver:
    """Runs the steps of the worker's group; owns the step's layout, deadlines and early relays."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.transport = NetworkTransport(self)
        self.evidence = EvidenceFetcher(worker)
        self.layouts: dict[int, tuple[list[str], list[tuple[int, int]]]] = {}
        self.pending_relays: list = []
        self.pending_relay_bytes = 0
        # board phases the site closed and this peer has not acted on yet: (step, phase) -> senders
        self.site_closes: dict[tuple[int, str], list[str]] = {}
        self.board_asked: set[tuple[int, str]] = set()  # (step, phase) whose missing broadcasts we asked for
        self.deadline_phase: str | None = None
        self.deadline_at: float = 0.0
        self.own_batch = 0  # samples of this peer's own gradient in the current step
        self.last_loss: float | None = None
        self.steps_done = 0
        self.uploads: set[asyncio.Task] = set()

    async def execute(self, actions) -> None:
        await carry_out_async(actions, self.transport)

    # ------------------------------------------------------------------ deadlines
    def phase_timeout(self, phase: str) -> float:
        """Seconds this phase may take, always in [0.5, 600] whatever the site sent (0 and NaN would
        busy-loop, more than 600 s is more than the data plane waits)."""
        w = self.worker
        if w.config.phase_timeout:
            return clamp_timeout(w.config.phase_timeout)
        run_default = clamp_timeout(w.run_info.phase_timeout) if w.run_info else 30.0
        deadlines = w.current_group.deadlines if w.current_group else {}
        value = deadlines.get(phase)
        if value is not None:
            return clamp_timeout(value - time.time() if value > 1e9 else value, run_default)
        if deadlines.get("phase_timeout"):  # the site's, which follows the measured step time
            return clamp_timeout(deadlines["phase_timeout"], run_default)
        return run_default

    def seconds_to_deadline(self) -> float | None:
        if self.deadline_phase is None:
            return None
        return max(0.0, self.deadline_at - asyncio.get_running_loop().time())

    def arm_deadline(self) -> None:
        peer = self.worker.peer
        phase = peer.waiting_for if peer is not None and peer.step is not None else None
        if phase is None:
            self.deadline_phase = None
            return
        if phase != self.deadline_phase:
            self.deadline_phase = phase
            self.deadline_at = asyncio.get_running_loop().time() + self.phase_timeout(phase)
            busy = {"gradient": Status.validating if peer.role == "validator" else Status.training,
                    "parts": Status.aggregating, "agg_result": Status.aggregating}.get(phase, Status.training)
            self.worker.set_status(busy, f"step {peer.step}: {phase}")

    async def on_deadline_passed(self) -> None:
        w = self.worker
        phase, self.deadline_phase = self.deadline_phase, None
        step = w.peer.step if w.peer else None
        if phase in BOARD_PHASES and step is not None:
            # Who posted in time is the board's call, not this peer's clock: ask the site to close
            # the phase (it does once a majority asked) and go on when it says who was late.
            log.info("deadline of %s passed at step %s: asking the site to close the phase", phase, step)
            w.site.send(PhaseCloseRequest(step=step, phase=phase))
            # a relay lost while the socket stayed up (a full channel) would leave this peer alone in a
            # phase the others have passed (they never ask to close it): ask for copies of what is missing
            members = [p.peer_id for p in w.current_group.peers] if w.current_group else []
            missing = w.peer.missing_broadcasts(phase, members) \
                if w.peer.waiting_for == phase and step >= w.site_step else []  # (a closed step's: moot)
            if missing and (step, phase) not in self.board_asked:  # once per phase: the site rate-limits them
                self.board_asked.add((step, phase))
                w.site.send(BoardRequest(step=step, phase=phase, senders=missing[:256]))
            w.set_status(Status(w.status.status), f"step {step}: {phase} overdue; waiting for the group to close it")
            self.deadline_phase = phase  # ask again after another timeout (the request may be lost)
            self.deadline_at = asyncio.get_running_loop().time() + self.phase_timeout(phase)
            return
        log.info("deadline of %s passed at step %s", phase, step)
        await self.execute(w.peer.on_deadline(phase))
        self.arm_deadline()

    # ------------------------------------------------------------------ the board
    def on_phase_closed(self, closed: PhaseClosed) -> None:
        w = self.worker
        current = w.peer.step if w.peer is not None and w.peer.step is not None else w.site_step
        if current <= closed.step <= current + 1:  # older ones are moot, far-ahead ones are noise
            self.site_closes[(closed.step, closed.phase)] = list(closed.senders)

    async def apply_site_closes(self) -> None:
        """Act on the site's close of the phase this peer waits in (possibly several in a row)."""
        w = self.worker
        while self.site_closes and w.peer is not None and w.peer.step is not None and not w.peer.finished:
            step, phase = w.peer.step, w.peer.waiting_for
            senders = self.site_closes.pop((step, phase), None)
            if senders is None:
                return
            missing = w.peer.missing_broadcasts(phase, senders)
            late = [p for p in (w.current_group.peers if w.current_group else []) if p.peer_id not in senders]
            log.info("the site closed %s of step %s (late: %s)", phase, step,
                     [p.peer_id[:8] for p in late] or "nobody")
            if any(p.peer_id == w.identity.peer_id for p in late):
                w.event("late", f"our {phase} of step {step} reached the site after the group's deadline: "
                                f"this step goes on without it (a slow link or a busy machine?)", step=step)
            if missing:  # stored on the site, but their relays have not reached us (yet): ask for copies
                w.site.send(BoardRequest(step=step, phase=phase, senders=missing[:256]))
            await self.execute(w.peer.on_deadline(phase, senders))
            if w.peer.step == step and w.peer.waiting_for == phase:
                return  # still waiting for the senders' messages

    async def on_relay(self, relay: Relay) -> None:
        w = self.worker
        env = relay.envelope
        if w.peer is None or w.peer.step is None or env.step > w.peer.step + 1:
            # Early relays (the next step's group is not here yet): kept only for the step the site is
            # at or the one after, within a byte budget; anything else is dropped.
            current = w.peer.step if w.peer is not None and w.peer.step is not None else w.site_step
            if not current <= env.step <= max(current, w.site_step) + 1:
                log.info("dropping a relay for step %s (at step %s)", env.step, current)
                return
            size = len(env.model_dump_json())
            while self.pending_relays and self.pending_relay_bytes + size > EARLY_RELAY_BYTES:
                old_size, _ = self.pending_relays.pop(0)
                self.pending_relay_bytes -= old_size
            if size > EARLY_RELAY_BYTES:
                return
            self.pending_relays.append((size, env))
            self.pending_relay_bytes += size
            return
        await self.execute(w.peer.on_broadcast(env))

    # ------------------------------------------------------------------ a group arrives
    async def on_group(self, group: Group) -> None:
        w = self.worker
        w.queued_group_steps[group.step] -= 1
        if w.queued_group_steps[group.step] <= 0:
            del w.queued_group_steps[group.step]
        if w.run_info is None:
            return
        if any(step > group.step for step in w.queued_group_steps):
            # A newer group is already queued (we were busy, e.g. loading the data set). Only a queued
            # one counts: a far-ahead step the site once named must not hide every later group.
            return
        if w.current_group is not None and w.current_group.step == group.step and w.peer is not None \
                and w.peer.step == group.step:
            return  # the same group again (a reconnect): the step is already running here
        ids = [p.peer_id for p in group.peers]
        w.current_group = group
        w.plane.set_directory(group_directory(group), step=group.step)
        w.status.group_size = len(ids)
        me = w.identity.peer_id
        w.probation.assign(group)
        if me not in ids:
            mine = next((c for c in group.candidates if c.get("peer_id") == me), None)
            if mine is not None:
                w.role = w.status.role = "candidate"
                await w.probation.candidate_step(group, mine)
            else:
                w.status.step_roles = []
                w.set_status(Status.waiting_for_group, f"step {group.step}: not in the group")
            return
        if w.role != "active":
            w.role = w.status.role = "active"
            w.event("promoted", f"joined the group at step {group.step}")
        if w.peer is not None and w.peer.step is not None and not w.peer.finished \
                and w.peer.step < group.step and w.state.step == w.peer.step:
            # The site closed our unfinished step without us: nothing was applied here, but the others may
            # have applied it (and every step since): take the group's state from its donors; our own is
            # the group's only when the closed step was the last one and nobody has a newer state
            # (StateSync.download falls back to carrying ours over only then).
            w.event("step_abandoned", f"step {w.peer.step} abandoned: the site closed it", step=w.peer.step)
            self.deadline_phase = None
        if w.state.step != group.step and not await w.state_sync.download(group):
            return
        if w.r_prev is None:
            w.r_prev = genesis_randomness(w.run_name, w.run_info.seed)
        numel = w.state.numel
        self.layouts[group.step] = (ids, part_bounds(numel, len(ids)))
        for old in [s for s in self.layouts if s < group.step - 1]:
            del self.layouts[old]
        for key in [k for k in self.site_closes if k[0] < group.step]:
            del self.site_closes[key]
        self.board_asked = {k for k in self.board_asked if k[0] >= group.step}
        w.plane.forget_before(group.step)
        w.plane.notify_layout()
        prev = w.prev_record if w.prev_record is not None and w.prev_record.step == group.step - 1 else None
        ctx = StepContext(run=w.run_name, step=group.step, group=ids,
                          public_keys={p.peer_id: p.public_key for p in group.peers}, r_prev=w.r_prev,
                          numel=numel, model_ref=group.step, prev=prev,
                          validators=None)  # the core draws them from this step's r_t once it is revealed
        w.status.step = group.step
        self.deadline_phase = None
        actions = w.peer.begin_step(ctx)
        roles = [f"aggregator of part {ids.index(me)}"]
        roles += [f"probation validator of {c.get('peer_id', '')[:8]}" for c in w.probation.checks]
        w.status.step_roles = roles
        w.event("step", f"step {group.step} with {len(ids)} peers: {', '.join(roles)}", step=group.step)
        drawn = step_validator_count(w.peer.params, ctx)
        if drawn != w.peer.params.validators:  # docs/protocol.md, "More validators after a ban"
            w.event("alarm", f"step {group.step} draws {drawn} validators instead of {w.peer.params.validators}: "
                             f"step {group.step - 1} banned a peer for a wrong recomputation", step=group.step,
                    validators=drawn)
        await self.execute(actions)
        early, self.pending_relays, self.pending_relay_bytes = [env for _, env in self.pending_relays], [], 0
        for env in early:
            if env.step >= group.step:
                await self.execute(w.peer.on_broadcast(env))

    # ------------------------------------------------------------------ tensors
    def expect(self, step: int, kind: str, key: str, sender: str) -> int | None:
        """How many float32 values ``sender`` may push to us for ``(step, kind, key)`` (the data plane's
        receiver check, before a body is read); None when we expect nothing from it there."""
        layout = self.layouts.get(step)
        if layout is None or not key.isdigit():
            return None
        ids, bounds = layout
        me = self.worker.identity.peer_id
        if sender not in ids or me not in ids or sender == me:
            return None
        j = int(key)
        if kind == "part" and j == ids.index(me):
            return bounds[j][1] - bounds[j][0]
        if kind == "aggregate" and 0 <= j < len(ids) and ids[j] == sender:
            return bounds[j][1] - bounds[j][0]
        return None

    async def on_tensor(self, item: TensorArrived) -> None:
        peer = self.worker.peer
        if peer is None:
            return
        parsed = None
        if item.header:
            try:
                parsed = M.TensorHeader.model_validate(item.header)
            except ValueError:
                parsed = None
        if item.kind == "part":
            await self.execute(peer.on_part(item.sender, int(item.key), item.data, parsed, step=item.step))
        elif item.kind == "aggregate":
            await self.execute(peer.on_aggregate(item.sender, int(item.key), item.data, parsed, step=item.step))

    async def send_tensor(self, action: SendTensor, step: int) -> None:
        """Send within the phase's deadline; a failed dial (``unreachable``: two peers dialling each other at
        the same instant can fail libp2p's handshake) is tried again twice, after 0.5 s and 1 s, while the
        deadline allows. The receiver's deadline turns a tensor that never arrives into an ELIMINATE."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.phase_timeout("parts")
        header = action.header.model_dump() if action.header is not None else None
        for attempt in range(SEND_ATTEMPTS):
            try:
                await self.worker.plane.send(action.to, step=step, kind=action.kind, key=str(action.part),
                                             data=action.data, header=header,
                                             timeout=max(0.5, until - loop.time()))
                return
            except DataPlaneError as exc:
                pause = 0.5 * (attempt + 1)
                if exc.code != "unreachable" or attempt == SEND_ATTEMPTS - 1 or loop.time() + pause >= until:
                    log.info("sending %s %s of step %s to %s failed: %s", action.kind, action.part, step,
                             action.to[:8], exc)
                    return
                log.info("sending %s %s of step %s to %s: %s; again in %.1f s", action.kind, action.part, step,
                         action.to[:8], exc, pause)
                await asyncio.sleep(pause)

    async def send_later(self, message, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.worker.site.send(message)

    async def compute(self, request: ComputeGradient, current_step: int) -> None:
        w = self.worker
        batch = request.batch_size or w.run_info.batch_size  # the run's global batch split over the group
        if request.purpose == "own":
            self.own_batch = batch
        elif request.purpose == "validate":  # drawn from r_t during the step (docs/protocol.md, Sec. 3.3)
            w.status.step_roles = [*w.status.step_roles, f"validator of {request.peer[:8]}"]
            w.event("validator", f"step {current_step}: validating {request.peer[:8]}'s step "
                                 f"{request.step} gradient", step=current_step)
        try:
            g, loss = await asyncio.to_thread(w.state.gradient, request.model_ref, request.seed, batch,
                                              request.flip_labels)
        except Exception as exc:  # noqa: BLE001 - a missing snapshot or a task error: the deadline handles it
            w.inputs.put_nowait(GradientFailed(f"gradient for {request.request_id} failed: {exc}"))
            return
        if request.purpose == "own":
            self.last_loss = loss
        w.inputs.put_nowait(GradientReady(current_step, request.request_id, g))

    def serve_evidence(self, sha256: str, step: int, requester: str) -> bytes | None:
        """The data plane's evidence source: the bytes with this SHA-256 our core holds for ``step``,
        served only to a member of the current group (``requester`` is its protocol peer id).

        Called from the data plane's handler task, not the main loop: ``serve_tensor`` only reads the
        core's step state and runs without an ``await``, so it cannot interleave with the main loop."""
        w = self.worker
        group = w.current_group
        if w.peer is None or group is None or group.step != step \
                or requester not in {p.peer_id for p in group.peers}:
            return None
        return w.peer.serve_tensor(sha256, step)

    # ------------------------------------------------------------------ the step ends
    async def finish(self, result: StepResult) -> None:
        w = self.worker
        step = result.step
        w.r_prev = result.r
        w.prev_record = result.record
        banned = [b.peer for b in result.bans]
        for peer in banned:
            if peer not in w.status.bans_seen:
                w.status.bans_seen.append(peer)
        stale = False
        if result.revert_previous:  # a recalculation ban caught a contributor of step - 1
            if w.state.revert(step - 1):
                w.status.steps_applied -= 1
                w.status.steps_reverted += 1
                w.event("step_reverted", f"step {step - 1} undone: this step's recalculation ban caught one "
                                         f"of its contributors", step=step - 1)
            elif w.state.loaded_at == step:
                # our state is the donors' state of this step: they undo step - 1 (if they applied it) and
                # we cannot, so we take their state of the next step instead of serving ours
                stale = True
                w.event("state", f"step {step - 1} is undone by the group: the state of step {step + 1} "
                                 f"will be downloaded again", step=step)
        if stale:
            w.state.step = w.state.loaded_at = -1  # the next group's step downloads it (StateSync.download)
            w.status.steps_dropped += 1
        elif result.outcome == "applied" and result.update is not None:
            w.state.apply(result.update, step + 1)
            w.status.steps_applied += 1
        else:
            w.state.snapshot(step + 1)
            w.status.steps_dropped += 1
        if not stale:  # newcomers download the state of the next step from us (and from other peers at once)
            w.state_sync.publish(step + 1)
        # The model state of this step is still snapshotted; the report waits for the check.
        await w.probation.validate_candidates(step)
        accuracy = None
        if w.config.evaluate_every and (step + 1) % w.config.evaluate_every == 0:
            accuracy = await asyncio.to_thread(w.state.task.evaluate, w.state.model)
            w.status.accuracy = accuracy
        w.status.loss = self.last_loss
        contributed = result.outcome == "applied" and result.contributed
        samples = (self.own_batch or w.run_info.batch_size) if contributed else 0
        state_sha = None
        if result.outcome == "applied" and is_checkpoint_step(step, w.run_info.checkpoint_every):
            data = await asyncio.to_thread(state_bytes, w.state.model)
            state_sha = state_digest(data)
            group = w.current_group
            if group is not None and group.peers and min(p.peer_id for p in group.peers) == w.identity.peer_id:
                self.upload_checkpoint(step, data)
        w.site.send(StepReport(step=step, outcome=result.outcome, loss=self.last_loss, accuracy=accuracy,
                               samples=samples, banned=banned[:64],
                               eliminated=[list(e) for e in result.eliminations][:64],
                               missing=list(result.silent)[:64], state_sha256=state_sha))
        w.event("step_done", f"step {step} {result.outcome}" + (f": {result.reason}" if result.reason else ""),
                step=step, outcome=result.outcome, banned=banned, loss=self.last_loss,
                params_sha256=tensor_hash(w.state.params()))
        self.explain_eliminations(step, result.eliminations)
        self.deadline_phase = None
        self.steps_done += 1
        w.reachability.ask()  # again if nobody could check at start-up (no other peer was online)
        w.set_status(Status.waiting_for_group, f"step {step} {result.outcome}; waiting for step {step + 1}")
        if w.config.max_steps is not None and self.steps_done >= w.config.max_steps:
            w.stop(EXIT_OK, f"finished {self.steps_done} steps")

    def explain_eliminations(self, step: int, eliminations) -> None:
        """Say plainly why this worker sits out: an ELIMINATE names a pair (one of them is at fault, nobody
        can prove which), and most often the honest side of it is a slow or interrupted link."""
        me = self.worker.identity.peer_id
        for eliminator, target in eliminations:
            if me not in (eliminator, target):
                continue
            other = target if eliminator == me else eliminator
            if eliminator == me:
                what = f"a tensor from peer {other[:8]} did not reach us before the deadline and we said so"
            else:
                what = f"peer {other[:8]} reported that our tensor did not reach it before the deadline"
            self.worker.event("eliminated", f"step {step}: {what} (ELIMINATE); both of us sit out until the epoch "
                              "ends. This is not a ban. If it repeats, check this machine's upload bandwidth and "
                              "that its port stays reachable (btard-worker doctor)",
                              step=step, pair=[eliminator, target])

    def upload_checkpoint(self, step: int, data: bytes) -> None:
        """Upload this step's state in the background; the site keeps it once the group's hashes agree."""
        w = self.worker
        url = upload_url(http_base(w.config.server), w.run_info.id, step)

        async def go() -> None:
            try:
                await asyncio.to_thread(upload, url, w.config.token, data)
                w.event("checkpoint", f"checkpoint of step {step} stored on the site "
                                      f"({len(data) / 1e6:.2f} MB)", step=step)
            except Exception as exc:  # noqa: BLE001 - a failed upload costs one checkpoint, never the run
                w.event("error", f"checkpoint upload for step {step} failed: {exc}")

        task = asyncio.create_task(go())
        self.uploads.add(task)
        task.add_done_callback(self.uploads.discard)

    async def wait_for_uploads(self, timeout: float) -> None:
        if self.uploads:
            await asyncio.wait(list(self.uploads), timeout=timeout)
