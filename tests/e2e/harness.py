"""The integration harness across hosts: the site on the host (bound to the bridge), each worker in its
own network namespace, with the harness of :mod:`tests.worker.siteproc` for databases, logs and kills."""

from __future__ import annotations

import subprocess
import time

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

    def start(self, timeout: float = 60, port: int | None = None) -> str:
        """Start a Daphne process (``port``: another one beside the first); returns its URL."""
        port = port or self.port
        proc = self._start(f"daphne-{port}", [PY, "-m", "daphne", "-b", self.network.gateway, "-p", str(port),
                                              "btard_site.asgi:application"], stdout=self.workdir / f"daphne-{port}.log")
        self.daphnes[port] = proc
        url = f"http://{self.network.gateway}:{port}"
        outcome = wait_for_site(url, proc, timeout=timeout)
        if outcome != "up":
            raise RuntimeError(f"daphne on {port}: {outcome}: "
                               f"{(self.workdir / f'daphne-{port}.log').read_text()[-3000:]}")
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


def applied_steps(worker: WorkerProc) -> list[int]:
    return [e["step"] for e in worker.steps_done() if e.get("outcome") == "applied"]


def params_at(worker: WorkerProc, step: int) -> str | None:
    return next((e["params_sha256"] for e in worker.steps_done() if e["step"] == step), None)


def seconds_until(predicate, timeout: float, poll: float = 0.25) -> float:
    """Seconds until ``predicate()`` holds (raises AssertionError after ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(poll)
    raise AssertionError(f"not within {timeout:.0f} s")
