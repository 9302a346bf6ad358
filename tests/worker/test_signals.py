"""Ctrl-C and SIGTERM stop ``btard-worker`` and its p2p daemon: nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_worker_also_stops_its_p2p_daemon(sig, tmp_path, clean_hivemind_sockets):
    # no site on port 9: the worker keeps retrying, with its daemon up, until it is stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker_client.cli", "--token", "t", "--server", "http://127.0.0.1:9", "--json",
         "--host-maddr", "/ip4/127.0.0.1/tcp/0", "--config-dir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        daemons: list[int] = []
        while time.monotonic() < deadline and not daemons:
            daemons = _children(proc.pid)
            time.sleep(0.5)
        assert daemons, "the worker never started its p2p daemon"
        time.sleep(1.0)  # let it finish starting
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        events = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
        assert events[-1]["event"] == "exit"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(d) for d in daemons):
            time.sleep(0.2)
        assert not any(_alive(d) for d in daemons)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
