"""``make demo``: the whole system on one machine, on the embedded default.

Migrates, creates the admin and a demo run with one volunteer account (and worker token) per peer,
starts the site under Daphne, then a local swarm of ``btard-worker`` processes, some of them with
Byzantine behaviours. It prints the dashboard address and the admin login, and on Ctrl-C stops every
process it started (by process group, p2p daemons included) and removes the hivemind sockets it made.

No PostgreSQL or Redis is needed: SQLite under ``var/demo/``, the in-process channel layer, and
Celery tasks in-process (the site also advances steps from the workers' heartbeats).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .processes import ProcessGroup, wait_for_site

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BEHAVIOURS = ["wrong_aggregate", "sign_flip", "bad_commitment"]


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.var = Path(args.var_dir).resolve()
        self.logs = self.var / "logs"
        # every process in its own session, stopped by process group; only their own hivemind sockets removed
        self.group = ProcessGroup(cwd=ROOT)
        self.url = f"http://127.0.0.1:{args.port}"
        env = dict(os.environ)
        env.setdefault("DATABASE_URL", f"sqlite:///{self.var / 'demo.sqlite3'}")
        env.setdefault("BTARD_VAR_DIR", str(self.var))
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT), env.get("PYTHONPATH", "")]),
                   DJANGO_SETTINGS_MODULE="btard_site.settings", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                   HEARTBEAT_TIMEOUT_SECONDS=env.get("HEARTBEAT_TIMEOUT_SECONDS", "20"))
        self.env = env
        self.group.env = env

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen]]:
        return self.group.procs

    # --- steps ------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def manage(self, *argv: str) -> str:
        result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *argv], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise SystemExit(f"manage.py {' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def prepare(self) -> dict:
        if not self.args.keep and (self.var / "demo.sqlite3").exists():
            (self.var / "demo.sqlite3").unlink()
        self.var.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.say("migrating the database")
        self.manage("migrate", "--noinput")
        # The run pins the task's data hash, which only the task's code can compute (the site imports no
        # worker code): the demo, a worker-side program, asks the registry and hands it to the site.
        from worker_client.tasks import DatasetMissing, TaskUnavailable, run_task_extra

        try:
            extra = run_task_extra(self.args.task)
        except (TaskUnavailable, DatasetMissing, OSError) as exc:
            raise SystemExit(f"the task {self.args.task!r} cannot run here: {exc}") from None
        out = self.manage("create_demo_run", "--volunteers", str(self.args.peers), "--task", self.args.task,
                          "--run-name", self.args.run_name, "--min-peers", str(self._min_peers()),
                          "--task-extra", json.dumps(extra), "--json")
        return json.loads(out.strip().splitlines()[-1])

    def _min_peers(self) -> int:
        # Steps need this many online peers. Banned attackers leave, so it must not exceed the
        # honest peers, or the run would stall after the first ban.
        return max(2, self.args.peers - self.args.byzantine)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        return self.group.start(name, argv, log=self.logs / f"{name}.log")

    def start_site(self) -> None:
        self.say(f"starting the site under Daphne on {self.url}")
        proc = self.spawn("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.args.port),
                                     "btard_site.asgi:application"])
        outcome = wait_for_site(self.url, proc, timeout=60)
        if outcome == "exited":
            raise SystemExit(f"the site exited; see {self.logs / 'daphne.log'}:\n"
                             f"{(self.logs / 'daphne.log').read_text()[-2000:]}")
        if outcome == "timeout":
            raise SystemExit("the site did not answer within 60 s")

    def start_workers(self, run: dict) -> list[tuple[str, str | None]]:
        behaviours = self.args.behaviours or DEFAULT_BEHAVIOURS
        plan: list[tuple[str, str | None]] = []
        for i, entry in enumerate(run["tokens"]):
            behaviour = behaviours[i % len(behaviours)] if i >= self.args.peers - self.args.byzantine else None
            name = entry["username"]
            argv = [sys.executable, "-m", "worker_client.cli", "--token", entry["token"], "--server", self.url,
                    "--device", "cpu", "--host-maddr", "/ip4/127.0.0.1/tcp/0", "--allow-private", "--json",
                    "--threads", "1", "--config-dir", str(self.var / "peers" / name)]
            if self.args.steps:
                argv += ["--max-steps", str(self.args.steps)]
            if behaviour:
                argv += ["--behaviour", behaviour]
            self.spawn(name, argv)
            plan.append((name, behaviour))
        return plan

    def stop(self) -> None:
        self.group.stop(grace=8)

    def run(self) -> int:
        run = self.prepare()
        try:
            self.start_site()
            plan = self.start_workers(run)
            attackers = [f"{n} ({b})" for n, b in plan if b]
            # Who is who, for scripts and the end-to-end test (the site itself does not know).
            (self.var / "swarm.json").write_text(json.dumps({
                "url": self.url, "run_id": run["run_id"], "dashboard": f"{self.url}/runs/{run['run_id']}/",
                "peers": [{"account": n, "behaviour": b, "pid": p.pid}
                          for (n, b), (_, p) in zip(plan, self.procs[1:])],
                "site_pid": self.procs[0][1].pid}, indent=1))
            print(
                "\n"
                f"  BTARD Swarm demo is running.\n"
                f"  Dashboard:   {self.url}/runs/{run['run_id']}/\n"
                f"  Ban list:    {self.url}/bans/\n"
                f"  Moderation:  {self.url}/moderation/   (log in as admin / {self.args.admin_password})\n"
                f"  Admin:       {self.url}/admin/\n"
                f"  Swarm:       {len(plan)} peers on {run['task']}; Byzantine: {', '.join(attackers) or 'none'}\n"
                f"  Logs:        {self.logs}/\n"
                "  Press Ctrl-C to stop everything.\n", flush=True)
            ticks = 0
            while True:
                time.sleep(1)
                ticks += 1
                if ticks % 15 == 0:
                    self.group.note_sockets()  # so a worker that exits on its own leaves no socket file
                for name, proc in self.procs:
                    if name == "daphne" and proc.poll() is not None:
                        self.say(f"the site exited (code {proc.returncode}); see {self.logs / 'daphne.log'}")
                        return 1
                if self.args.steps and all(p.poll() is not None for n, p in self.procs if n != "daphne"):
                    self.say("every worker finished its steps; the site stays up until Ctrl-C")
                    self.args.steps = 0
        except KeyboardInterrupt:
            self.say("stopping")
            return 0
        finally:
            self.stop()
            self.say("all demo processes stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btard-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=8, help="workers to start (default: %(default)s)")
    parser.add_argument("--byzantine", type=int, default=3, help="how many of them misbehave (default: %(default)s)")
    parser.add_argument("--behaviours", type=lambda s: [b for b in s.split(",") if b], default=None,
                        help=f"comma-separated attack names, cycled over the attackers "
                             f"(default: {','.join(DEFAULT_BEHAVIOURS)})")
    parser.add_argument("--task", default="digits-mlp",
                        help="an installed task, e.g. digits-mlp, mnist5k-mlp, gpt-char-small (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=0, help="steps per worker, 0 = until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--run-name", default="demo")
    parser.add_argument("--admin-password", default="admin")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "demo"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the previous demo database (default: start from an empty one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.byzantine < args.peers:
        raise SystemExit("--byzantine must be between 0 and --peers - 1")
    if args.byzantine * 2 >= args.peers:
        print("[demo] warning: BTARD assumes fewer than half of the peers are Byzantine", file=sys.stderr)
    from worker_client.btard.attacks import ATTACKS

    unknown = [b for b in (args.behaviours or []) if b not in ATTACKS]
    if unknown:
        raise SystemExit(f"unknown behaviour(s) {unknown}; choose from {sorted(ATTACKS)}")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
