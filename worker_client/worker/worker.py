"""The networked worker's lifecycle: the p2p daemon, the site connection, one typed inbox, one loop.

The protocol core (:class:`worker_client.btard.protocol.BtardPeer`) is a pure state machine; this
package is its networked driver, the counterpart of the in-memory simulator: signed broadcasts go to
the site (:mod:`worker_client.site_client`) and come back as relays, gradient parts and aggregates
travel over hivemind (:mod:`worker_client.net`), gradients are computed on the task the run names,
and each phase has a deadline. The update is applied only when the core's ``StepResult`` says
``applied`` (every check passed).

Everything the core sees happens on one asyncio task (:meth:`Worker._main`) fed by one queue, so the
core is never entered concurrently; network sends, gradient computations and evidence fetches run as
side tasks that post typed items (:mod:`.inbox`) back to that queue. Who does what:

- :mod:`.steps`: a group arrives, the step runs (actions through the shared dispatcher), the step ends;
- :mod:`.state_sync`: the state download from several donors, and carrying our state over skipped steps;
- :mod:`.probation`: a candidate's probation gradient, and the member that checks it;
- :mod:`.reachability`: whether other peers can dial us, and dialling others for the site.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from btard_wire.control import (
    KEY_BAN_ADVICE,
    BanNotice,
    ErrorMessage,
    Group,
    Heartbeat,
    Hello,
    PhaseClosed,
    ReachabilityCheck,
    ReachabilityResult,
    Relay,
    RunInfo,
    RunNotice,
    Status,
    Welcome,
    hello_proof,
)
from btard_wire.envelope import Identity

from .. import __version__
from ..btard.attacks import ATTACKS, make_peer
from ..btard.protocol import BtardPeer
from ..btard.state import ProtocolParams
from ..collusion import collusion_from_env
from ..exit_codes import EXIT_OK, EXIT_REFUSED, EXIT_STARTUP
from ..net import DataPlane
from ..site_client import FatalSiteError, SiteClient
from ..site_limits import SiteValueError, check_message
from ..tasks import TaskUnavailable, load_run_task
from ..tasks import device as task_device
from ..ui import WorkerStatus
from .inbox import (
    EvidenceArrived,
    GradientFailed,
    GradientReady,
    RunUnusable,
    SiteGone,
    TensorArrived,
)
from .model_state import ModelState
from .probation import Probation
from .reachability import Reachability
from .state_sync import StateSync
from .steps import StepDriver, group_directory

log = logging.getLogger(__name__)

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_STARTUP", "ModelState", "Worker", "WorkerConfig", "known_behaviours",
           "pick_device", "run_key", "run_worker"]


def known_behaviours() -> list[str]:
    """Names a worker accepts for ``--behaviour`` (the attacks registry of the protocol core)."""
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


class Worker:
    """One networked BTARD peer. ``await Worker(config, view).run()`` returns an exit code.

    The worker holds the session every part reads (the run, the model state, the protocol peer, the
    current group and the randomness chain); each part keeps its own bookkeeping.
    """

    def __init__(self, config: WorkerConfig, view=None):
        self.config = config
        self.view = view
        self.identity = config.identity
        self.status = WorkerStatus(server=config.server, peer_id=self.identity.peer_id,
                                   device=pick_device(config.device))
        self.inputs: asyncio.Queue = asyncio.Queue()
        self.plane: DataPlane | None = None
        self.site: SiteClient | None = None
        self.hello: Hello | None = None
        # the session
        self.run_info: RunInfo | None = None
        self.run_name = ""
        self.state: ModelState | None = None
        self.peer: BtardPeer | None = None
        self.role = ""
        self.current_group: Group | None = None
        self.r_prev: bytes | None = None
        self.prev_record = None
        self.site_step = 0  # the latest step the site named (welcome or group)
        self.latest_group_step = -1
        self.queued_group_steps: Counter = Counter()  # steps of the groups waiting in self.inputs
        # the parts
        self.steps = StepDriver(self)
        self.state_sync = StateSync(self)
        self.probation = Probation(self)
        self.reachability = Reachability(self)
        # the end
        self.side_tasks: set[asyncio.Task] = set()
        self.exit_code: int | None = None
        self.exit_message = ""

    # ------------------------------------------------------------------ UI helpers
    def event(self, kind: str, message: str, **fields) -> None:
        if self.view is not None:
            self.view.event(kind, message, **fields)
        log.info("%s: %s", kind, message)

    def refresh(self) -> None:
        if self.plane is not None:
            self.status.bytes_sent = self.plane.traffic.bytes_sent + (self.site.bytes_sent if self.site else 0)
            self.status.bytes_received = self.plane.traffic.bytes_received + (
                self.site.bytes_received if self.site else 0)
        if self.view is not None:
            self.view.update(self.status)

    def set_status(self, status: Status, detail: str = "") -> None:
        self.status.status, self.status.detail = status.value, detail
        self.refresh()

    def _heartbeat(self) -> Heartbeat:
        self.refresh()
        return Heartbeat(status=Status(self.status.status), detail=self.status.detail[:500],
                         step=self.status.step, bytes_sent=self.status.bytes_sent,
                         bytes_received=self.status.bytes_received)

    def spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` beside the main loop; cancelled when the worker stops."""
        task = asyncio.create_task(coro)
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)
        return task

    def stop(self, code: int, message: str) -> None:
        self.exit_code, self.exit_message = code, message

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        task_device.configure_device(self.status.device)  # on CUDA: no TF32, deterministic algorithms
        try:
            self.plane = await DataPlane.create(None, host_maddrs=self.config.host_maddrs,
                                                announce_maddrs=self.config.announce_maddrs,
                                                allow_private=self.config.allow_private)
        except Exception as exc:  # noqa: BLE001 - P2PDaemonError and OS errors: the user needs the text, not the type
            self.event("fatal", f"the hivemind p2p daemon did not start: {exc} (run btard-worker doctor)")
            return EXIT_STARTUP
        self.plane.set_receiver(self.steps.expect, self._deliver)
        self.plane.set_evidence_source(self.steps.serve_evidence)
        addrs = await self.plane.announced_addrs()
        if not addrs:
            self.event("warning", "no public address to announce: other peers cannot dial this worker. "
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
        site_task.add_done_callback(lambda t: self.inputs.put_nowait(SiteGone(t)))
        try:
            return await self._main()
        finally:
            await self.steps.wait_for_uploads(timeout=30)  # let a checkpoint upload in flight finish
            for task in list(self.side_tasks):
                task.cancel()
            await asyncio.gather(*self.side_tasks, return_exceptions=True)
            await self.site.close()
            site_task.cancel()
            await asyncio.gather(site_task, return_exceptions=True)
            await self.plane.shutdown()

    def _deliver(self, step, kind, key, sender, data, header) -> None:
        self.inputs.put_nowait(TensorArrived(step, kind, key, sender, data, header))

    def _on_site_message(self, message) -> None:
        try:
            message = check_message(message)
        except SiteValueError as exc:
            if isinstance(message, Welcome):  # nothing to do in a run this worker cannot train
                self.inputs.put_nowait(RunUnusable(str(exc)))
            else:
                self.event("warning", f"ignored a {message.type} message from the site: {exc}")
            return
        if isinstance(message, Group):
            self.latest_group_step = max(self.latest_group_step, message.step)
            self.queued_group_steps[message.step] += 1
            if self.plane is not None and self.run_info is not None:
                # Serve the step's peers at once: a newcomer may ask for the state before on_group runs.
                self.plane.set_directory(group_directory(message), step=message.step)
        if isinstance(message, (Group, Welcome)):
            self.site_step = max(self.site_step, message.step)
        self.inputs.put_nowait(message)

    def _on_connection_state(self, state: str) -> None:
        self.status.connection = state
        self.refresh()

    def _on_connection_problem(self, message: str) -> None:
        """The site is refused, unreachable or silent: say so now and on every retry (with its time)."""
        self.status.last_error = message[:500]
        self.event("connection", message)
        self.refresh()

    async def _main(self) -> int:
        while self.exit_code is None:
            try:
                item = await asyncio.wait_for(self.inputs.get(), self.steps.seconds_to_deadline())
            except TimeoutError:
                await self.steps.on_deadline_passed()
                continue
            await self._dispatch(item)
        if self.exit_code == EXIT_REFUSED:
            self.event("fatal", self.exit_message)
        else:
            self.event("exit", self.exit_message or "done")
        return self.exit_code

    # ------------------------------------------------------------------ inputs
    async def _dispatch(self, item) -> None:
        try:
            await self._handle(item)
        except Exception as exc:
            log.exception("handling %s failed", type(item).__name__)
            self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.event("error", f"could not handle a {self._item_name(item)}: {type(exc).__name__}: {exc}"[:600])
            self.set_status(Status.error, "the last input from the site or a peer could not be handled")
            if isinstance(item, Welcome) and self.state is None:  # no run to work in: say why and stop
                self.stop(EXIT_STARTUP, f"could not set up run {item.run.name!r}: {type(exc).__name__}: {exc}"[:600])

    @staticmethod
    def _item_name(item) -> str:
        name = getattr(item, "type", None)
        return f"{name} message" if isinstance(name, str) else f"{type(item).__name__} input"

    async def _handle(self, item) -> None:
        match item:
            case RunUnusable(reason=reason):
                self.stop(EXIT_STARTUP, f"the site's run cannot be trained by this worker: {reason}")
                self.event("fatal", self.exit_message)
                return
            case SiteGone(task=task):
                self._on_site_gone(task)
                return
            case TensorArrived():
                await self.steps.on_tensor(item)
            case GradientReady(step=step, request_id=request_id, gradient=g):
                if self.peer is not None and self.peer.step == step:
                    await self.steps.execute(self.peer.on_gradient(request_id, g))
            case GradientFailed(message=message):
                self.event("error", message)
            case EvidenceArrived(step=step, sha256=sha256, data=data):
                if self.peer is not None and self.peer.step == step:
                    await self.steps.execute(self.peer.on_tensor(sha256, data, step=step))
            case Welcome():
                await self._on_welcome(item)
            case Group():
                await self.steps.on_group(item)
            case Relay():
                await self.steps.on_relay(item)
            case BanNotice():
                self._on_ban(item)
            case ReachabilityCheck():
                self.spawn(self.reachability.check_for_site(item))
            case ReachabilityResult():
                self.reachability.on_result(item)
            case PhaseClosed():
                self.steps.on_phase_closed(item)
            case RunNotice(kind=kind, message=message):  # organisers: paused, resumed, finished, announcement
                self.event("announcement" if kind == "announcement" else "run", message, run_kind=kind)
            case ErrorMessage(code=code, message=message, step=int() as step, digest=str() as digest):
                # the board refused one of our broadcasts and stored nothing: the core takes it out of what
                # our report lists (and signs the report again if the report was refused for naming it)
                if code == "phase_closed":
                    self.event("late", f"a broadcast of ours came after the site closed its phase: {message}")
                else:
                    self.event("refused", f"step {step}: the site refused a broadcast of ours: {code}: {message}")
                if self.peer is not None and self.peer.step == step:
                    await self.steps.execute(self.peer.on_broadcast_refused(step=step, digest=digest, code=code))
            case ErrorMessage(code="phase_closed", message=message):
                self.event("late", f"a broadcast of ours came after the site closed its phase: {message}")
            case ErrorMessage(code="no_helper", message=message):
                self.event("reachability", f"not checked yet ({message}); asking again after the first step")
            case ErrorMessage(code=code, message=message):
                self.event("error", f"site: {code}: {message}")
        await self.steps.apply_site_closes()
        self.steps.arm_deadline()

    def _on_site_gone(self, task: asyncio.Task) -> None:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, FatalSiteError):
            self.stop(EXIT_REFUSED, f"the site refused this worker: {exc}")
        elif exc is not None:
            self.stop(EXIT_STARTUP, f"control plane failed: {exc!r}")
        elif self.exit_code is None:
            self.stop(EXIT_OK, self.exit_message)

    async def _on_welcome(self, welcome: Welcome) -> None:
        self.role = welcome.role
        self.status.role = welcome.role
        if self.run_info is None or self.run_info.id != welcome.run.id:
            try:  # the task's package (and version, and data) must be the run's
                task = load_run_task(welcome.run)
            except TaskUnavailable as exc:
                self.stop(EXIT_REFUSED, f"cannot join run {welcome.run.name!r}: {exc}")
                return
            self.run_info = welcome.run
            self.run_name = run_key(welcome.run)
            await self.plane.set_run(self.run_name)
            self.set_status(Status.waiting_for_group, f"loading the {welcome.run.task} data")
            # Load the data set before the first step: a first gradient that also reads the data set
            # could miss its deadline on a slow machine.
            await asyncio.to_thread(lambda: task.data)
            self.state = ModelState(task, seed=welcome.run.seed, lr=welcome.run.lr, device=self.status.device)
            self.state.snapshot(0)
            self.state.step = -1  # not known to be current until a group or a download says so
            try:
                self.peer = self._make_peer()
            except ValueError as exc:  # the run's settings (admin-edited ``extra``) are unusable
                self.event("fatal", f"run {welcome.run.name!r} has invalid settings: {exc}")
                self.stop(EXIT_STARTUP, f"invalid run settings: {exc}")
                return
            self.reachability.ask()
            self.status.run, self.status.task = welcome.run.name, welcome.run.task
        self.event("welcome", f"{welcome.role} in run {welcome.run.name!r} (task {welcome.run.task}) at step "
                              f"{welcome.step}")
        self.set_status(Status.waiting_for_group, "waiting for the next step's group")

    def _make_peer(self) -> BtardPeer:
        info = self.run_info
        extra = info.extra
        tuning = {k: extra[k] for k in ("recalc_rtol", "exact_rtol", "fixed_point_rtol", "cc_init", "tau_rule",
                                                 "tau_spread", "alarm_factor") if k in extra}
        if "global_batch" in extra:  # ProtocolParams refuses anything but a whole number >= 0, with the reason
            tuning["global_batch"] = extra["global_batch"]
        # board_echo: the site sends each stored broadcast back to its sender and closes board phases
        params = ProtocolParams(tau=info.tau, validators=info.validators_per_step, board_echo=True, **tuning)
        behaviour = self.config.behaviour
        if behaviour:
            # colluding --behaviour workers in separate processes share one coalition file (BTARD_COLLUSION)
            return make_peer(behaviour, self.identity, params, collusion=collusion_from_env(),
                             **self.config.behaviour_params)
        return BtardPeer(self.identity, params)

    def _on_ban(self, notice: BanNotice) -> None:
        if notice.peer_id not in self.status.bans_seen:
            self.status.bans_seen.append(notice.peer_id)
        self.event("ban", f"peer {notice.peer_id[:8]} banned: {notice.reason}", peer=notice.peer_id)
        if notice.peer_id == self.identity.peer_id:
            advice = f". {KEY_BAN_ADVICE[0].upper()}{KEY_BAN_ADVICE[1:]}" if notice.scope == "key" else ""
            self.stop(EXIT_REFUSED, f"this worker was banned: {notice.reason}{advice}")


async def run_worker(config: WorkerConfig, view=None) -> int:
    """Run a worker until ``max_steps``, a refusal by the site, or cancellation. Returns an exit code."""
    return await Worker(config, view).run()
