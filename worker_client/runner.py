"""Drives the protocol core (:class:`worker_client.btard.protocol.BtardPeer`) over the real transports.

The core is a pure state machine; this module is its networked driver, the counterpart of the
in-memory simulator: signed broadcasts go to the site (:mod:`.site_client`) and come back as relays,
gradient parts and aggregates travel over hivemind (:mod:`.net`), gradients are computed on the
task the run names, and each phase has a deadline. The update is applied only when the core's
:class:`StepResult` says ``applied`` (every check passed).

Everything the core sees happens on one asyncio task (:meth:`Worker._main`) fed by one queue, so the
core is never entered concurrently; network sends and gradient computations run as side tasks that
post their results back to that queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from btard_wire import BOARD_PHASES
from btard_wire import payloads as M
from btard_wire.control import (
    KEY_BAN_ADVICE,
    REACHABILITY_ADVICE,
    BanNotice,
    BoardRequest,
    ErrorMessage,
    Group,
    Heartbeat,
    Hello,
    PhaseClosed,
    PhaseCloseRequest,
    ReachabilityCheck,
    ReachabilityRequest,
    ReachabilityResult,
    Relay,
    RunInfo,
    Status,
    StepReport,
    Welcome,
    hello_proof,  # noqa: E402 - proof of key possession on hello
)
from btard_wire.control import Broadcast as BroadcastMessage
from btard_wire.envelope import Identity

from . import __version__
from .btard.tensors import tensor_hash
from .checkpoint import is_checkpoint_step, state_bytes, state_digest
from .drive.dispatch import carry_out_async
from .net import DataPlane, DataPlaneError
from .site_client import FatalSiteError, SiteClient
from .site_limits import SiteValueError, check_message, clamp_timeout
from .ui import WorkerStatus

log = logging.getLogger(__name__)

EXIT_OK, EXIT_REFUSED, EXIT_STARTUP = 0, 3, 4
KEEP_STATES = 4  # model states kept for validation of earlier steps
EARLY_RELAY_BYTES = 16 * 1024 * 1024  # relays kept for the next step before its group arrives
REACHABILITY_CHECKS_PER_MINUTE = 4  # dials the site may ask of this worker for other peers
REACHABILITY_ADDRS = 4  # addresses tried per check


def known_behaviours() -> list[str]:
    """Names a worker accepts for ``--behaviour`` (the attacks registry of the protocol core)."""
    try:
        from .btard.attacks import ATTACKS
    except ImportError:  # the protocol core without attacks: only honest
        return []
    return sorted(ATTACKS)


def pick_device(requested: str | None) -> str:
    if requested:
        if requested == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but no CUDA GPU is visible (see btard-worker doctor)")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_key(run: RunInfo) -> str:
    """The run name peers sign into envelopes and namespace their data plane with."""
    return str(run.extra.get("key") or run.id)


@dataclass
class WorkerConfig:
    server: str
    token: str
    identity: Identity
    device: str | None = None
    data_dir: str | None = None
    host_maddrs: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce_maddrs: list[str] | None = None
    allow_private: bool = False  # dial and announce LAN, loopback and DNS addresses (--allow-private)
    behaviour: str | None = None
    behaviour_params: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None
    threads: int | None = None
    phase_timeout: float | None = None
    heartbeat_interval: float = 5.0
    hold_broadcasts: dict[str, float] = field(default_factory=dict)  # tests: phase -> seconds of delay
    evaluate_every: int = 5
    run_id: int | None = None  # --run: join this run, not the site's newest open one


class ModelState:
    """The task's model and optimizer, plus flat snapshots by step for recalculation (Sec. 3.3).

    The flat *state* a newcomer downloads is ``concat(params, optimizer state)`` (momentum buffers for
    SGD; Adam moments and the update counter, which drives the schedule, for AdamW/LAMB: see
    ``tasks.optim.optimizer_state_vector``): with both, its next update is bit-identical to the peers it joins.
    """

    def __init__(self, task, *, seed: int, lr: float, device: str):
        from .tasks import flatten_params

        self.task = task
        self.device = device
        self.model = task.build_model(seed=seed)
        self.optimizer = task.make_optimizer(self.model.parameters())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.numel = sum(p.numel() for p in self.model.parameters())
        from .tasks import optimizer_state_numel

        self.state_numel = self.numel + optimizer_state_numel(self.optimizer)  # what a newcomer downloads
        self.snapshots: dict[int, torch.Tensor] = {}
        self.step = 0
        self._scratch = task.build_model(seed=seed)
        self._flatten = flatten_params
        # Gradients run in worker threads (asyncio.to_thread) and share the scratch model: a validator's
        # recalculation and its own gradient would otherwise overwrite each other's weights mid-backward.
        self._scratch_lock = threading.Lock()

    def params(self) -> torch.Tensor:
        return self._flatten(self.model).clone()

    def snapshot(self, step: int) -> None:
        self.step = step
        self.snapshots[step] = self.params()
        for old in [s for s in self.snapshots if s < step - KEEP_STATES]:
            del self.snapshots[old]

    def momentum(self) -> torch.Tensor:
        bufs = []
        for p in self.model.parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            bufs.append(torch.zeros(p.numel()) if buf is None else buf.detach().reshape(-1).float().cpu())
        return torch.cat(bufs)

    def full_state(self) -> torch.Tensor:
        from .tasks import optimizer_state_vector

        return torch.cat([self.params(), optimizer_state_vector(self.optimizer)])

    def load_full_state(self, flat: torch.Tensor, step: int) -> None:
        from .tasks import load_flat_params, load_optimizer_state_vector

        if flat.numel() != self.state_numel:
            raise ValueError(f"state has {flat.numel()} values, expected {self.state_numel}")
        load_flat_params(self.model, flat[: self.numel])
        load_optimizer_state_vector(self.optimizer, flat[self.numel:])
        self.snapshot(step)

    def gradient(self, model_ref: int, seed: int, batch_size: int, flip_labels: bool = False
                 ) -> tuple[torch.Tensor, float]:
        """Flat float32 gradient (and loss) of the model state of step ``model_ref`` on batch ``seed``."""
        from .tasks import load_flat_params

        flat = self.snapshots.get(model_ref)
        if flat is None:
            raise KeyError(f"no model state for step {model_ref}")
        with self._scratch_lock:
            return self._gradient_locked(flat, seed, batch_size, flip_labels, load_flat_params)

    def _gradient_locked(self, flat, seed, batch_size, flip_labels, load_flat_params) -> tuple[torch.Tensor, float]:
        model = self._scratch
        load_flat_params(model, flat)
        params = list(model.parameters())
        x, y = self.task.batch(seed, batch_size, flip_labels=flip_labels)
        if self.device != "cpu":
            model.to(self.device)
            x, y = x.to(self.device), y.to(self.device)
            params = list(model.parameters())
        from .tasks import batch_gradient  # in micro-batches when the task accumulates

        g, loss = batch_gradient(self.task, model, x, y, params)
        g = g.cpu()
        if self.device != "cpu":
            model.to("cpu")
        return g, float(loss.detach())

    def apply(self, update: torch.Tensor, next_step: int) -> None:
        from .tasks import apply_flat_update

        apply_flat_update(self.model, update, self.optimizer)
        self.snapshot(next_step)


class _WorkerLink:
    """The networked worker's :class:`~worker_client.drive.dispatch.Transport`: board posts go to the
    site (held back by ``hold_broadcasts`` when a test asks), tensors over the data plane, gradients on
    the compute thread; ``finish`` returns the coroutine that reports the step (awaited in order)."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def post(self, envelope) -> None:
        w = self.worker
        hold = w.config.hold_broadcasts.get(envelope.phase)
        if hold:
            w._spawn(w._send_later(BroadcastMessage(envelope=envelope), hold))
        else:
            w.site.send(BroadcastMessage(envelope=envelope))

    def send_tensor(self, action) -> None:
        w = self.worker
        w._spawn(w._send_tensor(action.to, w.peer.step, action.kind, action.part, action.data, action.header))

    def compute(self, request) -> None:
        w = self.worker
        w._spawn(w._compute(request, w.peer.step))

    def fetch(self, request) -> None:
        # evidence too large to inline is not fetched over the data plane yet: the judge abstains
        log.warning("ignoring unknown action %r", request)

    def finish(self, result):
        return self.worker._finish(result)


class Worker:
    """One networked BTARD peer. ``await Worker(config, view).run()`` returns an exit code."""

    def __init__(self, config: WorkerConfig, view=None):
        self.config = config
        self.view = view
        self.identity = config.identity
        self.status = WorkerStatus(server=config.server, peer_id=self.identity.peer_id,
                                   device=pick_device(config.device))
        self.inputs: asyncio.Queue = asyncio.Queue()
        self.plane: DataPlane | None = None
        self.site: SiteClient | None = None
        self.run_info: RunInfo | None = None
        self.run_name = ""
        self.state: ModelState | None = None
        self.peer = None
        self._link = _WorkerLink(self)
        self.role = ""
        self.r_prev: bytes | None = None
        self.prev_record = None
        self.current_group: Group | None = None
        self.layouts: dict[int, tuple[list[str], list[tuple[int, int]]]] = {}
        self.pending_relays: list = []
        self.pending_relay_bytes = 0
        self.site_step = 0  # the latest step the site named (welcome or group)
        self.reachability_checks: list[float] = []  # when the site's recent checks started
        self.reachability_in_flight = False
        self.own_batch = 0  # samples of this peer's own gradient in the current step
        self.uploads: set[asyncio.Task] = set()
        self.hello: Hello | None = None
        self.reachable: bool | None = None  # can other peers dial us? (asked once joined; None: not known)
        self.reachability_asked = 0
        self.deadline_phase: str | None = None
        self.deadline_at: float = 0.0
        self.steps_done = 0
        self.last_loss: float | None = None
        self.side_tasks: set[asyncio.Task] = set()
        self.exit_code: int | None = None
        self.exit_message = ""
        self.fatal: FatalSiteError | None = None
        self.probation_checks: list[dict] = []
        self.latest_group_step = -1
        self.queued_group_steps: Counter = Counter()  # steps of the groups waiting in self.inputs
        # board phases the site closed and this peer has not acted on yet: (step, phase) -> senders
        self.site_closes: dict[tuple[int, str], list[str]] = {}

    # ------------------------------------------------------------------ UI helpers
    def _event(self, kind: str, message: str, **fields) -> None:
        if self.view is not None:
            self.view.event(kind, message, **fields)
        log.info("%s: %s", kind, message)

    def _refresh(self) -> None:
        if self.plane is not None:
            self.status.bytes_sent = self.plane.traffic.bytes_sent + (self.site.bytes_sent if self.site else 0)
            self.status.bytes_received = self.plane.traffic.bytes_received + (
                self.site.bytes_received if self.site else 0)
        if self.view is not None:
            self.view.update(self.status)

    def _set_status(self, status: Status, detail: str = "") -> None:
        self.status.status, self.status.detail = status.value, detail
        self._refresh()

    def _heartbeat(self) -> Heartbeat:
        self._refresh()
        return Heartbeat(status=Status(self.status.status), detail=self.status.detail[:500],
                         step=self.status.step, bytes_sent=self.status.bytes_sent,
                         bytes_received=self.status.bytes_received)

    def _upload_checkpoint(self, step: int, data: bytes) -> None:
        """Upload this step's state in the background; the site keeps it once the group's hashes agree."""
        from .checkpoint import http_base, upload, upload_url

        url = upload_url(http_base(self.config.server), self.run_info.id, step)

        async def go() -> None:
            try:
                await asyncio.to_thread(upload, url, self.config.token, data)
                self._event("checkpoint", f"checkpoint of step {step} stored on the site "
                                          f"({len(data) / 1e6:.2f} MB)", step=step)
            except Exception as exc:  # noqa: BLE001 - a failed upload costs one checkpoint, never the run
                self._event("error", f"checkpoint upload for step {step} failed: {exc}")

        task = asyncio.create_task(go())
        self.uploads.add(task)
        task.add_done_callback(self.uploads.discard)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        from .tasks.device import configure_device  # on CUDA: no TF32, deterministic algorithms

        configure_device(self.status.device)
        try:
            self.plane = await DataPlane.create(None, host_maddrs=self.config.host_maddrs,
                                                announce_maddrs=self.config.announce_maddrs,
                                                allow_private=self.config.allow_private)
        except Exception as exc:  # noqa: BLE001 - P2PDaemonError and OS errors: the user needs the text, not the type
            self._event("fatal", f"the hivemind p2p daemon did not start: {exc} (run btard-worker doctor)")
            return EXIT_STARTUP
        self.plane.set_receiver(self._expect, self._deliver)
        addrs = await self.plane.announced_addrs()
        if not addrs:
            self._event("warning", "no public address to announce: other peers cannot dial this worker. "
                                   "Announce one with --announce-maddr /ip4/<public ip>/tcp/<port>, or pass "
                                   "--allow-private for a swarm on a LAN or on this machine")
        hello = Hello(public_key=self.identity.public_key_b64, p2p_id=self.plane.p2p_id, p2p_addrs=addrs[:16],
                      device=self.status.device, client_version=__version__, run_id=self.config.run_id)
        self.hello = hello
        self.site = SiteClient(self.config.server, self.config.token, hello=lambda: hello,
                               heartbeat=self._heartbeat, on_message=self._on_site_message,
                               heartbeat_interval=self.config.heartbeat_interval,
                               on_state=self._on_connection_state, on_problem=self._on_connection_problem,
                               prove=lambda nonce: hello_proof(self.identity, nonce))
        site_task = asyncio.create_task(self.site.run())
        site_task.add_done_callback(lambda t: self.inputs.put_nowait(("site_done", t)))
        try:
            return await self._main()
        finally:
            if self.uploads:  # let a checkpoint upload in flight finish (bounded)
                await asyncio.wait(list(self.uploads), timeout=30)
            for task in list(self.side_tasks):
                task.cancel()
            await asyncio.gather(*self.side_tasks, return_exceptions=True)
            await self.site.close()
            site_task.cancel()
            await asyncio.gather(site_task, return_exceptions=True)
            await self.plane.shutdown()

    def _on_site_message(self, message) -> None:
        try:
            message = check_message(message)
        except SiteValueError as exc:
            if isinstance(message, Welcome):  # nothing to do in a run this worker cannot train
                self.inputs.put_nowait(("unusable_run", str(exc)))
            else:
                self._event("warning", f"ignored a {message.type} message from the site: {exc}")
            return
        if isinstance(message, Group):
            self.latest_group_step = max(self.latest_group_step, message.step)
            self.queued_group_steps[message.step] += 1
            if self.plane is not None and self.run_info is not None:
                # Serve the step's peers at once: a newcomer may ask for the state before _on_group runs.
                self.plane.set_directory(self._group_directory(message), step=message.step)
        if isinstance(message, (Group, Welcome)):
            self.site_step = max(self.site_step, message.step)
        self.inputs.put_nowait(message)

    @staticmethod
    def _group_directory(group: Group) -> dict[str, tuple[str, list[str]]]:
        """Who this worker talks to (and serves) in ``group``'s step: members, donors and candidates."""
        directory = {p.peer_id: (p.p2p_id, p.p2p_addrs) for p in list(group.peers) + list(group.state_donors)}
        for cand in group.candidates:
            directory.setdefault(cand["peer_id"], (cand.get("p2p_id", ""), cand.get("p2p_addrs") or []))
        return directory

    def _on_connection_state(self, state: str) -> None:
        self.status.connection = state
        self._refresh()

    def _on_connection_problem(self, message: str) -> None:
        """The site is refused, unreachable or silent: say so now and on every retry (with its time)."""
        self.status.last_error = message[:500]
        self._event("connection", message)
        self._refresh()

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        while self.exit_code is None:
            timeout = None
            if self.deadline_phase is not None:
                timeout = max(0.0, self.deadline_at - loop.time())
            try:
                item = await asyncio.wait_for(self.inputs.get(), timeout)
            except TimeoutError:
                phase, self.deadline_phase = self.deadline_phase, None
                step = self.peer.step if self.peer else None
                if phase in BOARD_PHASES and step is not None:
                    # Who posted in time is the board's call, not this peer's clock: ask the site to close
                    # the phase (it does once a majority asked) and go on when it says who was late.
                    log.info("deadline of %s passed at step %s: asking the site to close the phase", phase, step)
                    self.site.send(PhaseCloseRequest(step=step, phase=phase))
                    self._set_status(Status(self.status.status), f"step {step}: {phase} overdue; waiting for "
                                                                 f"the group to close it")
                    self.deadline_phase = phase  # ask again after another timeout (the request may be lost)
                    self.deadline_at = loop.time() + self._phase_timeout(phase)
                    continue
                log.info("deadline of %s passed at step %s", phase, step)
                await self._execute(self.peer.on_deadline(phase))
                self._arm_deadline()
                continue
            await self._dispatch(item)
        if self.exit_code == EXIT_REFUSED:
            self._event("fatal", self.exit_message)
        else:
            self._event("exit", self.exit_message or "done")
        return self.exit_code

    # ------------------------------------------------------------------ inputs
    async def _dispatch(self, item) -> None:
        try:
            await self._dispatch_one(item)
        except Exception as exc:  # noqa: BLE001 - one bad input costs that input, never the worker
            log.exception("handling %s failed", type(item).__name__ if not isinstance(item, tuple) else item[0])
            self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self._event("error", f"could not handle a {self._item_name(item)}: {type(exc).__name__}: {exc}"[:600])
            self._set_status(Status.error, "the last input from the site or a peer could not be handled")
            if isinstance(item, Welcome) and self.state is None:  # no run to work in: say why and stop
                self.exit_code = EXIT_STARTUP
                self.exit_message = f"could not set up run {item.run.name!r}: {type(exc).__name__}: {exc}"[:600]

    @staticmethod
    def _item_name(item) -> str:
        if isinstance(item, tuple):
            return f"{item[0]} input"
        return f"{getattr(item, 'type', type(item).__name__)} message"

    async def _dispatch_one(self, item) -> None:
        if isinstance(item, tuple):
            kind = item[0]
            if kind == "unusable_run":
                self.exit_code = EXIT_STARTUP
                self.exit_message = f"the site's run cannot be trained by this worker: {item[1]}"
                self._event("fatal", self.exit_message)
                return
            if kind == "site_done":
                task = item[1]
                exc = None if task.cancelled() else task.exception()
                if isinstance(exc, FatalSiteError):
                    self.exit_code, self.exit_message = EXIT_REFUSED, f"the site refused this worker: {exc}"
                elif exc is not None:
                    self.exit_code, self.exit_message = EXIT_STARTUP, f"control plane failed: {exc!r}"
                else:
                    self.exit_code = self.exit_code if self.exit_code is not None else EXIT_OK
                return
            if kind == "tensor":
                _, step, tkind, key, sender, data, header = item
                await self._on_tensor(step, tkind, key, sender, data, header)
            elif kind == "gradient":
                _, step, request_id, g = item
                if self.peer is not None and self.peer.step == step:
                    await self._execute(self.peer.on_gradient(request_id, g))
            elif kind == "gradient_failed":
                self._event("error", item[1])
            await self._apply_site_closes()
            self._arm_deadline()
            return
        if isinstance(item, Welcome):
            await self._on_welcome(item)
        elif isinstance(item, Group):
            await self._on_group(item)
        elif isinstance(item, Relay):
            await self._on_relay(item)
        elif isinstance(item, BanNotice):
            self._on_ban(item)
        elif isinstance(item, ReachabilityCheck):
            self._spawn(self._check_reachability(item))
        elif isinstance(item, ReachabilityResult):
            self._on_reachability(item)
        elif isinstance(item, PhaseClosed):
            current = self.peer.step if self.peer is not None and self.peer.step is not None else self.site_step
            if current <= item.step <= current + 1:  # older ones are moot, far-ahead ones are noise
                self.site_closes[(item.step, item.phase)] = list(item.senders)
        elif getattr(item, "type", "") == "run_notice":  # organisers: paused, resumed, finished, announcement
            self._event("announcement" if item.kind == "announcement" else "run", item.message, run_kind=item.kind)
        elif isinstance(item, ErrorMessage) and item.code == "phase_closed":
            self._event("late", f"a broadcast of ours came after the site closed its phase: {item.message}")
        elif isinstance(item, ErrorMessage) and item.code == "no_helper":
            self._event("reachability", f"not checked yet ({item.message}); asking again after the first step")
        elif isinstance(item, ErrorMessage):
            self._event("error", f"site: {item.code}: {item.message}")
        await self._apply_site_closes()
        self._arm_deadline()

    async def _apply_site_closes(self) -> None:
        """Act on the site's close of the phase this peer waits in (possibly several in a row)."""
        while self.site_closes and self.peer is not None and self.peer.step is not None and not self.peer.finished:
            step, phase = self.peer.step, self.peer.waiting_for
            senders = self.site_closes.pop((step, phase), None)
            if senders is None:
                return
            missing = self.peer.missing_broadcasts(phase, senders)
            late = [p for p in (self.current_group.peers if self.current_group else []) if p.peer_id not in senders]
            log.info("the site closed %s of step %s (late: %s)", phase, step,
                     [p.peer_id[:8] for p in late] or "nobody")
            if any(p.peer_id == self.identity.peer_id for p in late):
                self._event("late", f"our {phase} of step {step} reached the site after the group's deadline: "
                                    f"this step goes on without it (a slow link or a busy machine?)", step=step)
            if missing:  # stored on the site, but their relays have not reached us (yet): ask for copies
                self.site.send(BoardRequest(step=step, phase=phase, senders=missing[:256]))
            await self._execute(self.peer.on_deadline(phase, senders))
            if self.peer.step == step and self.peer.waiting_for == phase:
                return  # still waiting for the senders' messages

    async def _on_welcome(self, welcome: Welcome) -> None:
        from .tasks import TaskUnavailable, load_run_task

        self.role = welcome.role
        self.status.role = welcome.role
        if self.run_info is None or self.run_info.id != welcome.run.id:
            try:  # the task's package (and version, and data) must be the run's
                task = load_run_task(welcome.run)
            except TaskUnavailable as exc:
                self.exit_code, self.exit_message = EXIT_REFUSED, f"cannot join run {welcome.run.name!r}: {exc}"
                return
            self.run_info = welcome.run
            self.run_name = run_key(welcome.run)
            await self.plane.set_run(self.run_name)
            self._set_status(Status.waiting_for_group, f"loading the {welcome.run.task} data")
            # Load the data set before the first step: a first gradient that also reads the data set
            # could miss its deadline on a slow machine.
            await asyncio.to_thread(lambda: task.data)
            self.state = ModelState(task, seed=welcome.run.seed, lr=welcome.run.lr, device=self.status.device)
            self.state.snapshot(0)
            self.state.step = -1  # not known to be current until a group or a download says so
            try:
                self.peer = self._make_peer()
            except ValueError as exc:  # the run's settings (admin-edited ``extra``) are unusable
                self._event("fatal", f"run {welcome.run.name!r} has invalid settings: {exc}")
                self.exit_code, self.exit_message = EXIT_STARTUP, f"invalid run settings: {exc}"
                return
            self._ask_reachability()
            self.status.run, self.status.task = welcome.run.name, welcome.run.task
        self._event("welcome", f"{welcome.role} in run {welcome.run.name!r} (task {welcome.run.task}) at step "
                               f"{welcome.step}")
        self._set_status(Status.waiting_for_group, "waiting for the next step's group")

    def _make_peer(self):
        from .btard.protocol import ProtocolParams

        info = self.run_info
        extra = info.extra
        tuning = {k: extra[k] for k in ("recalc_rtol", "exact_rtol", "fixed_point_rtol", "cc_init") if k in extra}
        if "global_batch" in extra:  # ProtocolParams refuses anything but a whole number >= 0, with the reason
            tuning["global_batch"] = extra["global_batch"]
        # board_echo: the site sends each stored broadcast back to its sender and closes board phases
        params = ProtocolParams(tau=info.tau, validators=info.validators_per_step, board_echo=True, **tuning)
        behaviour = self.config.behaviour
        if behaviour:
            from .btard.attacks import make_peer

            return make_peer(behaviour, self.identity, params, **self.config.behaviour_params)
        from .btard.protocol import BtardPeer

        return BtardPeer(self.identity, params)

    # ------------------------------------------------------------------ steps
    def _phase_timeout(self, phase: str) -> float:
        """Seconds this phase may take, always in [0.5, 600] whatever the site sent (0 and NaN would
        busy-loop, more than 600 s is more than the data plane waits)."""
        if self.config.phase_timeout:
            return clamp_timeout(self.config.phase_timeout)
        run_default = clamp_timeout(self.run_info.phase_timeout) if self.run_info else 30.0
        deadlines = self.current_group.deadlines if self.current_group else {}
        value = deadlines.get(phase)
        if value is not None:
            return clamp_timeout(value - time.time() if value > 1e9 else value, run_default)
        if deadlines.get("phase_timeout"):  # the site's, which follows the measured step time
            return clamp_timeout(deadlines["phase_timeout"], run_default)
        return run_default

    def _arm_deadline(self) -> None:
        phase = self.peer.waiting_for if self.peer is not None and self.peer.step is not None else None
        if phase is None:
            self.deadline_phase = None
            return
        if phase != self.deadline_phase:
            self.deadline_phase = phase
            self.deadline_at = asyncio.get_running_loop().time() + self._phase_timeout(phase)
            busy = {"gradient": Status.validating if self.peer.role == "validator" else Status.training,
                    "parts": Status.aggregating, "agg_result": Status.aggregating}.get(phase, Status.training)
            self._set_status(busy, f"step {self.peer.step}: {phase}")

    async def _on_group(self, group: Group) -> None:
        from .btard.protocol import StepContext, part_bounds

        self.queued_group_steps[group.step] -= 1
        if self.queued_group_steps[group.step] <= 0:
            del self.queued_group_steps[group.step]
        if self.run_info is None:
            return
        if any(step > group.step for step in self.queued_group_steps):
            # A newer group is already queued (we were busy, e.g. loading the data set). Only a queued
            # one counts: a far-ahead step the site once named must not hide every later group.
            return
        if self.current_group is not None and self.current_group.step == group.step and self.peer is not None \
                and self.peer.step == group.step:
            return  # the same group again (a reconnect): the step is already running here
        ids = [p.peer_id for p in group.peers]
        self.current_group = group
        self.plane.set_directory(self._group_directory(group), step=group.step)
        self.status.group_size = len(ids)
        me = self.identity.peer_id
        self.probation_checks = [c for c in group.candidates if c.get("validator") == me]
        if me not in ids:
            mine = next((c for c in group.candidates if c.get("peer_id") == me), None)
            if mine is not None:
                self.role = self.status.role = "candidate"
                await self._probation_step(group, mine)
            else:
                self.status.step_roles = []
                self._set_status(Status.waiting_for_group, f"step {group.step}: not in the group")
            return
        if self.role != "active":
            self.role = self.status.role = "active"
            self._event("promoted", f"joined the group at step {group.step}")
        if self.peer is not None and self.peer.step is not None and not self.peer.finished \
                and self.peer.step < group.step and self.state.step == self.peer.step:
            # The site closed our unfinished step at its deadline: nothing was applied here.
            self._event("step_abandoned", f"step {self.peer.step} abandoned: the site closed it",
                        step=self.peer.step)
            self.deadline_phase = None
            self._carry_state_over(group.step, f"step {self.peer.step} was closed by the site")
        if self.state.step != group.step:
            if not await self._download_state(group):
                return
        if self.r_prev is None:
            from .btard.mprng import genesis_randomness

            self.r_prev = genesis_randomness(self.run_name, self.run_info.seed)
        numel = self.state.numel
        self.layouts[group.step] = (ids, part_bounds(numel, len(ids)))
        for old in [s for s in self.layouts if s < group.step - 1]:
            del self.layouts[old]
        for key in [k for k in self.site_closes if k[0] < group.step]:
            del self.site_closes[key]
        self.plane.forget_before(group.step)
        self.plane.notify_layout()
        prev = self.prev_record if self.prev_record is not None and self.prev_record.step == group.step - 1 else None
        ctx = StepContext(run=self.run_name, step=group.step, group=ids,
                          public_keys={p.peer_id: p.public_key for p in group.peers}, r_prev=self.r_prev,
                          numel=numel, model_ref=group.step, prev=prev,
                          validators=None)  # the core draws them from this step's r_t once it is revealed
        self.status.step = group.step
        self.deadline_phase = None
        actions = self.peer.begin_step(ctx)
        roles = [f"aggregator of part {ids.index(me)}"]
        roles += [f"probation validator of {c.get('peer_id', '')[:8]}" for c in self.probation_checks]
        self.status.step_roles = roles
        self._event("step", f"step {group.step} with {len(ids)} peers: {', '.join(roles)}", step=group.step)
        await self._execute(actions)
        early, self.pending_relays, self.pending_relay_bytes = [env for _, env in self.pending_relays], [], 0
        for env in early:
            if env.step >= group.step:
                await self._execute(self.peer.on_broadcast(env))

    async def _download_state(self, group: Group) -> bool:
        """Bring the local model to the state of ``group.step``: the seeded initial model at step 0,
        else a download from several of the step's donors at once."""
        donors = [p.peer_id for p in group.state_donors if p.peer_id != self.identity.peer_id]
        if group.step == 0 and self.state.step <= 0:
            self.state.snapshot(0)  # every peer builds the same initial model from the run's seed
            self.plane.publish_state(0, self.state.full_state(), meta={})
            return True
        if not donors:
            self._event("error", f"at step {self.state.step}, the group is at {group.step} and nobody can "
                                 f"send the state")
            return False
        self._set_status(Status.downloading_state, f"downloading the state of step {group.step} from "
                                                   f"{len(donors)} peers")
        try:
            flat, per_donor, info = await self.plane.download_state(donors, step=group.step,
                                                                    numel=self.state.state_numel,
                                                                    timeout=self._phase_timeout("state"))
        except DataPlaneError as exc:
            if self.state.step >= 0 and self.role == "active":
                return self._carry_state_over(group.step, f"no donor has the state of step {group.step} ({exc})")
            self._event("error", f"state download failed: {exc}")
            return False
        r = info.get("r")
        if r and not (isinstance(r, str) and len(r) == 64 and all(c in "0123456789abcdef" for c in r)):
            self._event("error", "state download failed: the donors' randomness chain is not 64 hex digits")
            return False
        self.state.load_full_state(flat, group.step)
        if r:
            self.r_prev = bytes.fromhex(r)
        self.prev_record = None
        self._event("state", f"downloaded the state of step {group.step} from {len(per_donor)} peers "
                             f"({sum(per_donor.values())} bytes)")
        return True

    # ------------------------------------------------------------------ probation (ours)
    # A candidate computes the gradient of the step's state on the public seed the site assigned,
    # serves it on the data plane to its validator only (with a signed header) and reports
    # ``probation``. The validator, an active member, fetches it after its own step, recomputes it and,
    # on a mismatch, posts a signed ``validation`` envelope naming the candidate with ``ok: false``; the
    # site then withholds the probation credit. Candidates are never aggregated (spec, Newcomers).
    async def _probation_step(self, group: Group, mine: dict) -> None:
        left = mine.get("probation_left", "?")
        self.status.step, self.status.step_roles = group.step, [f"candidate ({left} probation steps left)"]
        if self.state.step != group.step and not await self._download_state(group):
            return
        self._set_status(Status.training, f"probation step {group.step}: computing the assigned gradient")
        seed = int(mine.get("seed", 0))
        try:
            g, loss = await asyncio.to_thread(self.state.gradient, group.step, seed, self.run_info.batch_size)
        except Exception as exc:  # noqa: BLE001 - any task error: the candidate reports nothing
            self._event("error", f"probation gradient failed: {exc}")
            return
        data = g.numpy().astype("<f4").tobytes()
        header = M.sign_tensor_header(self.identity, run=self.run_name, step=group.step, kind="part", part=0,
                                      data=data)
        validator = mine.get("validator")
        self.plane.publish(group.step, "probation", self.identity.peer_id, data,
                           allowed=[validator] if validator else None, header=header.model_dump())
        self.last_loss = self.status.loss = loss
        self.site.send(StepReport(step=group.step, outcome="probation", loss=loss,
                                  samples=self.run_info.batch_size))
        self._set_status(Status.waiting_for_group, f"probation step {group.step} done; waiting for the next step")

    async def _validate_candidates(self, step: int) -> None:
        """Recompute each candidate this peer validates at ``step``; post ``ok: false`` on a mismatch."""
        from btard_wire.envelope import sign_envelope

        for cand in self.probation_checks:
            peer_id = cand.get("peer_id", "")
            self.plane.set_directory({peer_id: (cand.get("p2p_id", ""), cand.get("p2p_addrs") or [])})
            self._set_status(Status.validating, f"checking candidate {peer_id[:8]}'s probation gradient")
            reason = ""
            try:
                data, header = await self.plane.fetch_bytes_with_header(
                    peer_id, step=step, kind="probation", key=peer_id, numel=self.state.numel,
                    timeout=self._phase_timeout("probation"))
                # The signed header makes a wrong gradient attributable to the candidate.
                signed = M.TensorHeader.model_validate(header or {})
                if signed.sender != peer_id or signed.sha256 != hashlib.sha256(data).hexdigest():
                    raise DataPlaneError("malformed", "the gradient does not match its signed header", peer=peer_id)
                signed.verify(cand.get("public_key", ""))
                claimed = torch.frombuffer(bytearray(data), dtype=torch.float32)
                mine, _ = await asyncio.to_thread(self.state.gradient, step, int(cand.get("seed", 0)),
                                                  self.run_info.batch_size)
                tol = float(self.run_info.extra.get("recalc_rtol", 1e-3))
                diff = float((mine - claimed).norm())
                if not torch.isfinite(claimed).all() or diff > tol * (float(mine.norm()) + 1e-12):
                    reason = f"recomputed gradient differs by {diff:.3g} (relative tolerance {tol})"
            except (DataPlaneError, ValueError) as exc:  # ProtocolError and pydantic's errors are ValueErrors
                reason = f"no usable probation gradient: {exc}"
            except KeyError as exc:
                self._event("error", f"cannot check candidate {peer_id[:8]}: {exc}")
                continue
            if reason:
                env = sign_envelope(self.identity, run=self.run_name, step=step, phase="validation",
                                    payload=M.payload_dict(M.ValidationPayload(target=peer_id, target_step=step,
                                                                              ok=False)))
                self.site.send(BroadcastMessage(envelope=env))
                self._event("probation", f"candidate {peer_id[:8]} failed probation: {reason}")
            else:
                self._event("probation", f"candidate {peer_id[:8]} passed probation step {step}")

    def _carry_state_over(self, step: int, why: str) -> bool:
        """The site moved on past steps this peer did not finish (it closed them at their deadline):
        those steps applied nothing here, so our state is the state of ``step``; the randomness chain
        follows the public skip rule for the steps in between (see ``mprng.skipped_randomness``)."""
        from .btard.mprng import genesis_randomness, skipped_randomness

        start = self.state.step
        r = self.r_prev or genesis_randomness(self.run_name, self.run_info.seed)
        for skipped in range(max(start, 0), step):
            r = skipped_randomness(r, self.run_name, skipped)
        self.r_prev = r
        self.prev_record = None
        self.state.snapshot(step)
        self.plane.publish_state(step, self.state.full_state(), meta={"r": r.hex()})
        self._event("state", f"{why}; continuing from our own state of step {start} (steps {start}..{step - 1} "
                             f"were not applied here)")
        return True

    async def _on_relay(self, relay: Relay) -> None:
        env = relay.envelope
        if self.peer is None or self.peer.step is None or env.step > self.peer.step + 1:
            # Early relays (the next step's group is not here yet): kept only for the step the site is
            # at or the one after, within a byte budget; anything else is dropped.
            current = self.peer.step if self.peer is not None and self.peer.step is not None else self.site_step
            if not current <= env.step <= max(current, self.site_step) + 1:
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
        await self._execute(self.peer.on_broadcast(env))

    def _on_ban(self, notice: BanNotice) -> None:
        if notice.peer_id not in self.status.bans_seen:
            self.status.bans_seen.append(notice.peer_id)
        self._event("ban", f"peer {notice.peer_id[:8]} banned: {notice.reason}", peer=notice.peer_id)
        if notice.peer_id == self.identity.peer_id:
            advice = f". {KEY_BAN_ADVICE[0].upper()}{KEY_BAN_ADVICE[1:]}" if notice.scope == "key" else ""
            self.exit_code, self.exit_message = EXIT_REFUSED, f"this worker was banned: {notice.reason}{advice}"

    # ------------------------------------------------------------------ tensors
    def _expect(self, step: int, kind: str, key: str, sender: str) -> int | None:
        layout = self.layouts.get(step)
        if layout is None or not key.isdigit():
            return None
        ids, bounds = layout
        me = self.identity.peer_id
        if sender not in ids or me not in ids or sender == me:
            return None
        j = int(key)
        if kind == "part" and j == ids.index(me):
            return bounds[j][1] - bounds[j][0]
        if kind == "aggregate" and 0 <= j < len(ids) and ids[j] == sender:
            return bounds[j][1] - bounds[j][0]
        return None

    def _deliver(self, step, kind, key, sender, data, header) -> None:
        self.inputs.put_nowait(("tensor", step, kind, key, sender, data, header))

    async def _on_tensor(self, step, kind, key, sender, data, header) -> None:
        if self.peer is None:
            return
        parsed = None
        if header:
            try:
                parsed = M.TensorHeader.model_validate(header)
            except ValueError:
                parsed = None
        if kind == "part":
            await self._execute(self.peer.on_part(sender, int(key), data, parsed, step=step))
        elif kind == "aggregate":
            await self._execute(self.peer.on_aggregate(sender, int(key), data, parsed, step=step))

    async def _send_tensor(self, to: str, step: int, kind: str, part: int, data: bytes, header) -> None:
        try:
            await self.plane.send(to, step=step, kind=kind, key=str(part), data=data,
                                  header=header.model_dump() if header is not None else None,
                                  timeout=self._phase_timeout("parts"))
        except DataPlaneError as exc:
            # The receiver's deadline turns a missing tensor into an ELIMINATE; nothing to decide here.
            log.info("sending %s %s of step %s to %s failed: %s", kind, part, step, to[:8], exc)

    # ------------------------------------------------------------------ actions
    async def _execute(self, actions) -> None:
        await carry_out_async(actions, self._link)

    async def _send_later(self, message, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.site.send(message)

    async def _compute(self, request, current_step: int) -> None:
        batch = request.batch_size or self.run_info.batch_size  # the run's global batch split over the group
        if request.purpose == "own":
            self.own_batch = batch
        elif request.purpose == "validate":  # drawn from r_t during the step (docs/protocol.md, Sec. 3.3)
            self.status.step_roles = [*self.status.step_roles, f"validator of {request.peer[:8]}"]
            self._event("validator", f"step {current_step}: validating {request.peer[:8]}'s step "
                                     f"{request.step} gradient", step=current_step)
        try:
            g, loss = await asyncio.to_thread(self.state.gradient, request.model_ref, request.seed, batch,
                                              request.flip_labels)
        except Exception as exc:  # noqa: BLE001 - a missing snapshot or a task error: the deadline handles it
            self.inputs.put_nowait(("gradient_failed", f"gradient for {request.request_id} failed: {exc}"))
            return
        if request.purpose == "own":
            self.last_loss = loss
        self.inputs.put_nowait(("gradient", current_step, request.request_id, g))

    async def _finish(self, result) -> None:
        step = result.step
        self.r_prev = result.r
        self.prev_record = result.record
        banned = [b.peer for b in result.bans]
        for peer in banned:
            if peer not in self.status.bans_seen:
                self.status.bans_seen.append(peer)
        if result.outcome == "applied" and result.update is not None:
            self.state.apply(result.update, step + 1)
            self.status.steps_applied += 1
        else:
            self.state.snapshot(step + 1)
            self.status.steps_dropped += 1
        # Newcomers download the state of the next step from us (and from other peers at once).
        self.plane.publish_state(step + 1, self.state.full_state(), meta={"r": self.r_prev.hex()})
        if self.probation_checks:
            # The model state of this step is still snapshotted; the report waits for the check.
            await self._validate_candidates(step)
            self.probation_checks = []
        accuracy = None
        if self.config.evaluate_every and (step + 1) % self.config.evaluate_every == 0:
            accuracy = await asyncio.to_thread(self.state.task.evaluate, self.state.model)
            self.status.accuracy = accuracy
        self.status.loss = self.last_loss
        contributed = result.outcome == "applied" and result.contributed
        samples = (self.own_batch or self.run_info.batch_size) if contributed else 0
        state_sha = None
        if result.outcome == "applied" and is_checkpoint_step(step, self.run_info.checkpoint_every):
            data = await asyncio.to_thread(state_bytes, self.state.model)
            state_sha = state_digest(data)
            group = self.current_group
            if group is not None and group.peers and min(p.peer_id for p in group.peers) == self.identity.peer_id:
                self._upload_checkpoint(step, data)
        self.site.send(StepReport(step=step, outcome=result.outcome, loss=self.last_loss, accuracy=accuracy,
                                  samples=samples, banned=banned[:64],
                                  eliminated=[list(e) for e in result.eliminations][:64],
                                  missing=list(result.silent)[:64], state_sha256=state_sha))
        self._event("step_done", f"step {step} {result.outcome}" + (f": {result.reason}" if result.reason else ""),
                    step=step, outcome=result.outcome, banned=banned, loss=self.last_loss,
                    params_sha256=tensor_hash(self.state.params()))
        self._explain_eliminations(step, result.eliminations)
        self.deadline_phase = None
        self.steps_done += 1
        self._ask_reachability()  # again if nobody could check at start-up (no other peer was online)
        self._set_status(Status.waiting_for_group, f"step {step} {result.outcome}; waiting for step {step + 1}")
        if self.config.max_steps is not None and self.steps_done >= self.config.max_steps:
            self.exit_code, self.exit_message = EXIT_OK, f"finished {self.steps_done} steps"

    def _explain_eliminations(self, step: int, eliminations) -> None:
        """Say plainly why this worker sits out: an ELIMINATE names a pair (one of them is at fault, nobody
        can prove which), and most often the honest side of it is a slow or interrupted link."""
        me = self.identity.peer_id
        for eliminator, target in eliminations:
            if me not in (eliminator, target):
                continue
            other = target if eliminator == me else eliminator
            if eliminator == me:
                what = f"a tensor from peer {other[:8]} did not reach us before the deadline and we said so"
            else:
                what = f"peer {other[:8]} reported that our tensor did not reach it before the deadline"
            self._event("eliminated", f"step {step}: {what} (ELIMINATE); both of us sit out until the epoch ends. "
                        "This is not a ban. If it repeats, check this machine's upload bandwidth and that its "
                        "port stays reachable (btard-worker doctor)",
                        step=step, pair=[eliminator, target])

    def _ask_reachability(self) -> None:
        """Like Petals at start-up: have another peer dial our announced address, and say what to fix."""
        if self.hello is None or self.site is None or self.reachable is not None or self.reachability_asked >= 2 \
                or not self.hello.p2p_addrs:
            return
        self.reachability_asked += 1
        self.site.send(ReachabilityRequest(p2p_id=self.hello.p2p_id, p2p_addrs=self.hello.p2p_addrs))

    def _on_reachability(self, result: ReachabilityResult) -> None:
        self.reachable = result.reachable
        detail = f" ({result.detail[:100]})" if result.detail else ""
        if result.reachable:
            self._event("reachability", f"another peer dialled this worker{detail}")
        else:
            self._event("warning", f"other peers cannot reach this worker{detail}: {REACHABILITY_ADVICE}")

    def _take_reachability_slot(self) -> bool:
        """At most one check at a time and :data:`REACHABILITY_CHECKS_PER_MINUTE` a minute."""
        now = time.monotonic()
        self.reachability_checks = [t for t in self.reachability_checks if now - t < 60.0]
        if len(self.reachability_checks) >= REACHABILITY_CHECKS_PER_MINUTE or self.reachability_in_flight:
            return False
        self.reachability_checks.append(now)
        return True

    async def _check_reachability(self, check: ReachabilityCheck) -> None:
        """Dial another peer for the site. The answer is yes or no with a coarse code (``ok``, ``failed``,
        ``not_allowed``), never the daemon's error text: that would tell open ports from closed ones."""
        if not self._take_reachability_slot():
            log.info("ignoring reachability check %s: too many checks", check.request_id[:16])
            return
        self.reachability_in_flight = True
        addrs = check.p2p_addrs[:REACHABILITY_ADDRS]
        try:
            if not self.plane.dialable(addrs):
                reachable, code = False, "not_allowed"
            else:
                try:
                    await self.plane.ping(check.p2p_id, addrs, timeout=10.0)
                    reachable, code = True, "ok"
                except DataPlaneError:
                    reachable, code = False, "failed"
        finally:
            self.reachability_in_flight = False
        self.site.send(ReachabilityResult(request_id=check.request_id, reachable=reachable, detail=code))


async def run_worker(config: WorkerConfig, view=None) -> int:
    """Run a worker until ``max_steps``, a refusal by the site, or cancellation. Returns an exit code."""
    return await Worker(config, view).run()
