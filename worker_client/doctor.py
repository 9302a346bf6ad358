"""``btard-worker doctor``: check everything a worker needs and say what to fix.

Checks, in order: the site answers over HTTP; the token is accepted on ``/ws/worker/``; the hivemind
daemon starts; the peer's announced address is reachable from another peer (the site asks an active
peer to dial it; when no peer can, the check says so instead of guessing); the GPU and its memory.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from rich.console import Console
from rich.text import Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from btard_wire.control import (
    CLOSE_REASONS,
    FATAL_CLOSE_CODES,
    REACHABILITY_ADVICE,
    ErrorMessage,
    Hello,
    ReachabilityRequest,
    ReachabilityResult,
    Welcome,
    hello_proof,
    parse_site_message,
)
from btard_wire.errors import ControlError

from . import __version__
from .site_client import answer_challenge, ws_url

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


@dataclass
class Check:
    name: str
    result: str  # ok / fail / unknown
    detail: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Check:
        check = Check(*args, **kwargs)
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return all(c.result != FAIL for c in self.checks)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def check_http(server: str, timeout: float) -> Check:
    from .checkpoint import no_redirect_opener  # checkpoint loads torch: the doctor checks torch separately

    url = server.rstrip("/") + "/"
    try:
        with no_redirect_opener().open(url, timeout=timeout) as response:
            return Check("site", OK, f"{url} answered HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        # Any HTTP answer proves the site is up; the websocket check tells whether it is ours.
        return Check("site", OK, f"{url} answered HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check("site", FAIL, f"cannot reach {url}: {reason}",
                     fix="check --server (scheme, host and port) and your network; is the site up?")


def check_gpu() -> Check:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return Check("gpu", FAIL, f"torch is not importable: {exc}", fix="pip install btard-swarm again")
    if not torch.cuda.is_available():
        return Check("gpu", UNKNOWN, "no CUDA GPU visible: the worker trains on the CPU (slower but it counts)",
                     fix="for a GPU: install the NVIDIA driver and a CUDA build of torch, then check nvidia-smi")
    lines = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        lines.append(f"cuda:{index} {torch.cuda.get_device_name(index)}, "
                     f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    low = any(torch.cuda.mem_get_info(i)[0] < 512 * 2**20 for i in range(torch.cuda.device_count()))
    return Check("gpu", FAIL if low else OK, "; ".join(lines),
                 fix="free GPU memory (close other jobs) or run with --device cpu" if low else "")


async def check_site_and_reachability(server: str, token: str, hello: Hello, *, timeout: float,
                                      report: Report, identity=None) -> None:
    """Token check over the websocket, then the reachability request (needs the p2p addresses in ``hello``)."""
    try:
        async with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {token}"},
                           open_timeout=timeout) as ws:
            if identity is not None:  # the site's challenge first: the hello proves possession of the key
                hello = await answer_challenge(ws, hello, lambda nonce: hello_proof(identity, nonce),
                                               timeout=min(timeout, 5.0))
            await ws.send(hello.model_dump_json())
            welcome = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while welcome is None:
                raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - loop.time()))
                try:
                    message = parse_site_message(raw)
                except ControlError:
                    continue
                if isinstance(message, Welcome):
                    welcome = message
                elif isinstance(message, ErrorMessage):
                    report.add("token", FAIL, f"the site rejected the hello: {message.message}",
                               fix="upgrade btard-worker")
                    return
            report.add("token", OK, f"accepted: peer {welcome.peer_id[:12]} is {welcome.role} in run "
                                    f"{welcome.run.name!r} (task {welcome.run.task})")
            if not hello.p2p_addrs:
                report.add("reachability", UNKNOWN, "not checked: no public address to announce (the daemon did "
                                                    "not start, or it listens on private addresses only)",
                           fix="--announce-maddr /ip4/<public ip>/tcp/<port>, or --allow-private for a LAN swarm")
                return
            await ws.send(ReachabilityRequest(p2p_id=hello.p2p_id, p2p_addrs=hello.p2p_addrs).model_dump_json())
            deadline = loop.time() + timeout
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - loop.time()))
                except TimeoutError:
                    report.add("reachability", UNKNOWN,
                               "could not be checked: no active peer answered the site's request in time",
                               fix="run doctor again while a run has active peers")
                    return
                try:
                    message = parse_site_message(raw)
                except ControlError:
                    continue
                if isinstance(message, ReachabilityResult):
                    break
                if isinstance(message, ErrorMessage) and message.code.startswith("reachability"):
                    report.add("reachability", UNKNOWN, f"could not be checked: {message.message}")
                    return
            if message.reachable:
                report.add("reachability", OK, f"another peer dialled {', '.join(hello.p2p_addrs)}: "
                                               f"{message.detail}")
            else:
                report.add("reachability", FAIL, f"other peers cannot reach you: {message.detail}",
                           fix=REACHABILITY_ADVICE)
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            report.add("token", FAIL, f"the site refused the token (HTTP {status})",
                       fix="create a new worker token on the site's /tokens/ page")
        else:
            report.add("token", FAIL, f"{ws_url(server)} answered HTTP {status}",
                       fix="check --server: it must be the BTARD Swarm site's address")
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        human = CLOSE_REASONS.get(code, f"connection closed ({code})")
        report.add("token", FAIL if code in FATAL_CLOSE_CODES else UNKNOWN, human,
                   fix="create a new token on /tokens/" if code in FATAL_CLOSE_CODES else "try again later")
    except (TimeoutError, OSError, InvalidHandshake) as exc:
        report.add("token", FAIL, f"websocket to {ws_url(server)} failed: {exc or 'timed out'}",
                   fix="check --server and that the site serves /ws/worker/ (Daphne/ASGI)")


async def run_doctor(*, server: str, token: str | None, identity, host_maddrs: list[str],
                     announce_maddrs: list[str] | None, timeout: float = 15.0, allow_private: bool = False) -> Report:
    report = Report()
    site = await asyncio.to_thread(check_http, server, timeout)
    report.checks.append(site)

    plane = None
    p2p_id, addrs = "", []
    try:
        from .net import DataPlane  # inside the try: a broken hivemind install is a failed check, not a crash

        plane = await DataPlane.create("doctor", host_maddrs=host_maddrs, announce_maddrs=announce_maddrs,
                                       call_timeout=timeout, allow_private=allow_private)
        p2p_id, addrs = plane.p2p_id, await plane.announced_addrs()
        listening = await plane.addrs()
        report.add("hivemind", OK, f"p2p daemon up as {p2p_id[:16]}..., listening on {', '.join(listening)}"
                                   + ("" if addrs else "; no public address among them to announce"))
    except Exception as exc:  # noqa: BLE001 - the daemon reports many failure kinds; all mean the same to the user
        report.add("hivemind", FAIL, f"the hivemind p2p daemon did not start: {exc}",
                   fix="reinstall hivemind (pip install --force-reinstall hivemind==1.1.12); check /tmp is writable")
    try:
        if not token:
            report.add("token", FAIL, "no token given", fix="pass --token (create one on the site's /tokens/ page)")
            report.add("reachability", UNKNOWN, "not checked without a token")
        elif site.result == FAIL:
            report.add("token", UNKNOWN, "not checked: the site is unreachable")
            report.add("reachability", UNKNOWN, "not checked: the site is unreachable")
        else:
            hello = Hello(public_key=identity.public_key_b64, p2p_id=p2p_id, p2p_addrs=addrs,
                          client_version=__version__)
            await check_site_and_reachability(server, token, hello, timeout=timeout, report=report,
                                              identity=identity)
    finally:
        if plane is not None:
            await plane.shutdown()
    report.checks.append(check_gpu())
    return report


def print_report(report: Report, *, as_json: bool = False, console=None) -> None:
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console = console or Console()
    marks = {OK: ("ok  ", "green"), FAIL: ("FAIL", "red"), UNKNOWN: ("??  ", "yellow")}
    for check in report.checks:  # details carry site text (run names, messages): never parsed as markup
        console.print(Text.assemble(marks[check.result], " ", (check.name, "bold"), f": {check.detail}"))
        if check.fix and check.result != OK:
            console.print(Text(f"      fix: {check.fix}"))
    console.print("[green]all good[/green]" if report.ok else "[red]fix the items marked FAIL[/red]")
