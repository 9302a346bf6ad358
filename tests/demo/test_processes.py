"""worker_client.processes: children in their own session, killed by process group, and only the hivemind
sockets that our processes held are removed (a concurrent program's stay)."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from worker_client.processes import ProcessGroup, bound_sockets, group_pids, kill_group

# a child that binds a hivemind-like socket and forks a "daemon" (same process group) that binds another
CHILD = r"""
import os, socket, sys, time
def bind(path):
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(); return s
keep = bind(sys.argv[1])
if os.fork() == 0:
    keep2 = bind(sys.argv[2]); print("daemon", os.getpid(), flush=True); time.sleep(300); os._exit(0)
print("ready", flush=True)
time.sleep(300)
"""


def _paths(n):
    tag = secrets.token_hex(4)
    return [f"/tmp/hivemind-test-{tag}-{i}.sock" for i in range(n)]


def _wait_for(path_list, timeout=20):
    deadline = time.monotonic() + timeout
    while not all(Path(p).exists() for p in path_list):
        assert time.monotonic() < deadline, f"{path_list} never appeared"
        time.sleep(0.05)


def test_kill_group_stops_the_daemon_and_removes_only_our_sockets(tmp_path):
    ours, theirs = _paths(2), _paths(1)
    other = socket.socket(socket.AF_UNIX)  # another program's live socket
    other.bind(theirs[0])
    other.listen()
    stranger_file = _paths(1)[0]
    Path(stranger_file).touch()  # and a stale file nobody of ours held
    try:
        with ProcessGroup() as procs:
            proc = procs.start("child", [sys.executable, "-c", CHILD, *ours], log=tmp_path / "child.log")
            _wait_for(ours)
            assert len(group_pids(proc.pid)) == 2  # the child and its daemon
            assert bound_sockets(group_pids(proc.pid)) == set(ours)
            found = kill_group(proc, signal.SIGKILL)
            assert found == set(ours)
            assert group_pids(proc.pid) == []  # the daemon died with its parent's group
            assert not any(Path(p).exists() for p in ours)
        assert Path(theirs[0]).exists() and Path(stranger_file).exists()
    finally:
        other.close()
        for p in (*theirs, stranger_file):
            Path(p).unlink(missing_ok=True)


def test_stop_closes_logs_and_cleans_up_after_every_process(tmp_path):
    ours = _paths(2)
    group = ProcessGroup()
    proc = group.start("child", [sys.executable, "-c", CHILD, *ours], log=tmp_path / "child.log")
    _wait_for(ours)
    group.stop(grace=2)
    assert proc.poll() is not None and group_pids(proc.pid) == []
    assert not any(Path(p).exists() for p in ours)
    assert all(f.closed for f in group._files) and group._files == []
    assert "ready" in (tmp_path / "child.log").read_text()


def test_a_child_runs_in_its_own_session():
    with ProcessGroup() as procs:
        proc = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"])
        out = subprocess.run(["ps", "-o", "sid=", "-p", str(proc.pid)], capture_output=True, text=True, check=False)
        assert int(out.stdout.split()[0]) == proc.pid


def test_a_restarted_process_appends_to_its_log_after_a_separator_naming_the_restart(tmp_path):
    """The soak kills a worker and starts it again with the same log: the first life's last lines (what it
    was doing when killed) must survive the restart, with a line saying where the next life begins."""
    log = tmp_path / "volunteer1.log"
    log.write_text("an earlier program's log\n")  # another program's run: a group's first start begins afresh
    talker = "import sys, time; print(sys.argv[1], flush=True); time.sleep(300)"
    with ProcessGroup() as procs:
        for life in ("first life", "second life", "third life"):
            proc = procs.start("volunteer1", [sys.executable, "-c", talker, life], log=log)
            deadline = time.monotonic() + 20
            while life not in log.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.05)
            procs.kill(proc, signal.SIGKILL)
    lines = [line for line in log.read_text().splitlines() if line]
    assert "an earlier program's log" not in lines
    assert lines[0] == "first life" and lines[2] == "second life" and lines[4] == "third life"
    for n, separator in ((1, lines[1]), (2, lines[3])):
        assert re.fullmatch(rf"===== restart {n} of volunteer1: started again at "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC =====", separator), separator
    assert len(lines) == 5
