"""The integration harness across hosts: the site on the host (bound to the bridge), each worker in its
own network namespace, with the harness of :mod:`tests.worker.siteproc` for databases, logs and kills."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.support import free_port, kill_group, wait_for_site
from tests.worker.siteproc import PY, SiteHarness, WorkerProc

from .netns import Host, Network


class NetSite(SiteHarness):
    """``SiteHarness`` whose Daphne listens on the bridge address and whose workers live in namespaces."""

    def __init__(self, postgres_url: str, redis_url: str, workdir, network: Network):
        super().__init__(postgres_url, redis_url, workdir)
        self.network = network
        self.url = f"http://{network.gateway}:{self.port}"
        self.env["ALLOWED_HOSTS"] = f"127.0.0.1,localhost,{network.gateway}"
        self.daphnes: dict[int, subprocess.Popen] = {}
        self.starts: dict[int, int] = {}

    def start(self, timeout: float = 60, port: int | None = None) -> str:
        """Start a Daphne process (``port``: another one beside the first); returns its URL."""
        port = port or self.port
        # one log per start: a restarted Daphne must not overwrite what its predecessor logged
        self.starts[port] = self.starts.get(port, 0) + 1
        log = self.workdir / f"daphne-{port}-{self.starts[port]}.log"
        proc = self._start(f"daphne-{port}", [PY, "-m", "daphne", "-b", self.network.gateway, "-p", str(port),
                                              "btard_site.asgi:application"], stdout=log)
        self.daphnes[port] = proc
        url = f"http://{self.network.gateway}:{port}"
        outcome = wait_for_site(url, proc, timeout=timeout)
        if outcome != "up":
            raise RuntimeError(f"daphne on {port}: {outcome}: {log.read_text()[-3000:]}")
        return url

    def second_port(self) -> int:
        return free_port()

    def kill_daphne(self, port: int | None = None) -> None:
        kill_group(self.daphnes.pop(port or self.port))

    def start_worker_on(self, host: Host, name: str, token: str, *, max_steps: int, server: str | None = None,
                        behaviour: str | None = None, phase_timeout: float | None = None) -> WorkerProc:
        config_dir = self.workdir / f"cfg-{name}"
        log_path, err_path = self.workdir / f"{name}.jsonl", self.workdir / f"{name}.err"
        cmd = [*host.prefix(), PY, "-m", "worker_client.cli", "--server", server or self.url, "--insecure",
               "--allow-private", "--device", "cpu", "--host-maddr", f"/ip4/{host.ip}/tcp/0", "--json",
               "--max-steps", str(max_steps), "--threads", "1", "--config-dir", str(config_dir),
               "--log-level", "INFO"]
        if behaviour:
            cmd += ["--behaviour", behaviour]
        if phase_timeout:
            cmd += ["--phase-timeout", str(phase_timeout)]
        env = dict(self.env, BTARD_TOKEN=token)
        proc = self._start(name, cmd, stdout=log_path, stderr=err_path, env=env)
        worker = WorkerProc(name, proc, log_path, err_path)
        self.workers.append(worker)
        return worker


    def describe(self, events: int = 15, log_lines: int = 40) -> str:
        """What a failed wait prints: each worker's last events and stderr, each Daphne log's tail (without
        the access lines), and where the full logs are."""
        out = [f"logs: {self.workdir}"]
        for w in self.workers:
            out.append(f"--- {w.name} (rc={w.proc.poll()}): last events")
            out += [_event_line(e) for e in w.events() if e.get("event") != "status"][-events:]
            out.append(f"--- {w.name}: stderr tail")
            out += w.stderr().splitlines()[-12:]
        for path in sorted(Path(self.workdir).glob("daphne*.log"), key=lambda p: p.stat().st_mtime):
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if not ('"GET /' in line or '"POST /' in line or line.startswith((" ", "Traceback")))]
            out.append(f"--- {path.name}: tail (access lines and traceback bodies left out)")
            out += [line[:300] for line in lines[-log_lines:]]
        return "\n".join(out)


def _event_line(event: dict) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(event.get("ts", 0)))
    extra = {k: v for k, v in event.items() if k in ("step", "outcome")}
    return f"{at} {event.get('event')} {json.dumps(extra) if extra else ''} {str(event.get('message', ''))[:200]}"


def applied_steps(worker: WorkerProc) -> list[int]:
    return [e["step"] for e in worker.steps_done() if e.get("outcome") == "applied"]


def params_at(worker: WorkerProc, step: int) -> str | None:
    return next((e["params_sha256"] for e in worker.steps_done() if e["step"] == step), None)


def seconds_until(predicate, timeout: float, poll: float = 0.25, *, site: NetSite | None = None) -> float:
    """Seconds until ``predicate()`` holds (raises AssertionError after ``timeout``, with ``site``'s
    workers' last events and its Daphne logs when given)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(poll)
    raise AssertionError(f"not within {timeout:.0f} s" + (f"\n{site.describe()}" if site is not None else ""))
