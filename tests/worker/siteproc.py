"""Real processes for the integration tests: the site under Daphne (own PostgreSQL database, Redis) and
``btard-worker`` processes on loopback, through the one process helper (``worker_client.processes``): every
process in its own session, stopped by process group (with its p2pd child) on exit even when the test failed,
log files closed, and only the ``/tmp/hivemind-*`` sockets our processes held removed; the database is
dropped."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.support import ProcessGroup, free_port, kill_group, wait_for_site

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
__all__ = ["PY", "ROOT", "SiteHarness", "WorkerProc", "kill_group"]


class WorkerProc:
    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path, err_path: Path):
        self.name, self.proc, self.log_path, self.err_path = name, proc, log_path, err_path

    def events(self) -> list[dict]:
        out = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def steps_done(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "step_done"]

    def stderr(self) -> str:
        return self.err_path.read_text()[-4000:] if self.err_path.exists() else ""


class SiteHarness:
    """``with SiteHarness(postgres_url, redis_url, tmp_path) as site:`` migrate, demo run, Daphne."""

    def __init__(self, postgres_url: str, redis_url: str, workdir: Path):
        self.workdir = workdir
        parts = urlsplit(postgres_url)
        self.db_name = f"btard_it_{secrets.token_hex(4)}"
        self.admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))
        self.database_url = urlunsplit((parts.scheme, parts.netloc, f"/{self.db_name}", "", ""))
        # The site namespaces its channel groups and cache keys by its database name (REDIS_NAMESPACE), which
        # is ours alone, so a concurrent suite on the same Redis database never meets our keys, and on exit we
        # delete only ours (never FLUSHDB a database someone else may be using).
        self.redis_url = redis_url
        self.redis_namespace = self.db_name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[WorkerProc] = []
        self.env = dict(os.environ, DATABASE_URL=self.database_url, REDIS_URL=self.redis_url,
                        REDIS_NAMESPACE=self.redis_namespace,
                        PYTHONPATH=f"{ROOT / 'platform'}:{ROOT}", DJANGO_SETTINGS_MODULE="btard_site.settings",
                        CELERY_TASK_ALWAYS_EAGER="1", ALLOWED_HOSTS="127.0.0.1,localhost",
                        HEARTBEAT_TIMEOUT_SECONDS="20", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                        BTARD_CHECKPOINT_DIR=str(self.workdir / "checkpoints"))
        self.run: dict = {}
        self.group = ProcessGroup(cwd=ROOT, env=self.env)

    @property
    def procs(self) -> list[subprocess.Popen]:
        return [proc for _, proc in self.group.procs]

    # --- lifecycle -------------------------------------------------------------------------------
    def _sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def __enter__(self) -> SiteHarness:
        self._sql(f'CREATE DATABASE "{self.db_name}"')
        try:
            self.manage("migrate", "--noinput")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.group.stop(grace=3)  # every process group, every log file, our hivemind sockets
        try:
            self._sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except Exception:
            pass
        try:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            for key in client.scan_iter(match=f"*{self.redis_namespace}*", count=1000):
                client.delete(key)
        except Exception:
            pass

    def _log(self, path: Path):
        return self.group.open_log(path)

    def _start(self, name: str, cmd: list[str], *, stdout: Path, stderr: Path | None = None,
               env: dict | None = None) -> subprocess.Popen:
        return self.group.start(name, cmd, log=stdout, stderr_log=stderr, env=env)

    def manage(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code)

    def create_run(self, *, volunteers: int, policy: str = "open", **fields) -> dict:
        out = self.manage("create_demo_run", "--volunteers", str(volunteers), "--policy", policy, "--json")
        self.run = json.loads(out.strip().splitlines()[-1])
        if fields:
            args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
            self.shell(f"from runs.models import Run; Run.objects.filter(pk={self.run['run_id']}).update({args})")
        return self.run

    def start(self, timeout: float = 60) -> None:
        proc = self._start("daphne", [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                                      "btard_site.asgi:application"], stdout=self.workdir / "daphne.log")
        outcome = wait_for_site(self.url, proc, timeout=timeout)
        if outcome == "exited":
            raise RuntimeError(f"daphne exited: {(self.workdir / 'daphne.log').read_text()[-3000:]}")
        if outcome == "timeout":
            raise RuntimeError("daphne did not answer in time")

    def start_worker(self, name: str, token: str, *, max_steps: int, behaviour: str | None = None,
                     phase_timeout: float | None = None, hold: dict[str, float] | None = None,
                     env: dict | None = None) -> WorkerProc:
        """A ``btard-worker`` on loopback; ``env`` is merged over the harness's environment for this one."""
        config_dir = self.workdir / f"cfg-{name}"
        log_path, err_path = self.workdir / f"{name}.jsonl", self.workdir / f"{name}.err"
        cmd = [PY, "-m", "worker_client.cli", "--token", token, "--server", self.url, "--device", "cpu",
               "--host-maddr", "/ip4/127.0.0.1/tcp/0", "--allow-private", "--json", "--max-steps", str(max_steps),
               "--threads", "1",
               "--config-dir", str(config_dir), "--log-level", "INFO"]
        if behaviour:
            cmd += ["--behaviour", behaviour]
        if phase_timeout:
            cmd += ["--phase-timeout", str(phase_timeout)]
        for phase, seconds in (hold or {}).items():
            cmd += ["--hold-broadcast", f"{phase}={seconds}"]
        proc = self._start(name, cmd, stdout=log_path, stderr=err_path, env={**self.group.env, **env} if env else None)
        worker = WorkerProc(name, proc, log_path, err_path)
        self.workers.append(worker)
        return worker

    def run_doctor(self, token: str, *, config_dir: Path, timeout: float = 120) -> dict:
        result = subprocess.run([PY, "-m", "worker_client.cli", "doctor", "--token", token, "--server", self.url,
                                 "--host-maddr", "/ip4/127.0.0.1/tcp/0", "--allow-private", "--json", "--timeout", "20",
                                 "--config-dir", str(config_dir)], cwd=ROOT, env=self.env, capture_output=True,
                                text=True, timeout=timeout, start_new_session=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def start_when_ready(self, workers: list[WorkerProc], min_peers: int, timeout: float = 120) -> None:
        """Let the run start once every worker has its data loaded (its ``welcome`` event): a worker
        still importing torch on a busy machine would miss the first step's deadlines otherwise."""
        self.wait(lambda: all(any(e.get("event") == "welcome" for e in w.events()) for w in workers), timeout,
                  "every worker to be welcomed")
        self.shell(f"from runs.models import Run; Run.objects.filter(pk={self.run['run_id']})"
                   f".update(min_peers={min_peers})")

    def api(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def wait(self, predicate, timeout: float, what: str, poll: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        details = "\n".join(f"--- {w.name} (rc={w.proc.poll()}):\n{w.stderr()[-1500:]}" for w in self.workers)
        logs = sorted(self.workdir.glob("daphne*.log"), key=lambda p: p.stat().st_mtime)  # daphne-<port>.log too
        site = logs[-1].read_text()[-3000:] if logs else "(no Daphne log)"
        raise AssertionError(f"timed out waiting for {what}\n{details}\n--- {logs[-1].name if logs else 'daphne'}:\n"
                             f"{site}")
