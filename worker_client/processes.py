"""Processes a program starts on this machine (the demo, the soak, the site tests, the integration harness).

One rule for all of them: every child runs in its own session (so its process group is its PID and holds its
p2pd daemon too), is stopped by signalling that group (SIGTERM, then SIGKILL), its log files are closed, and
only the hivemind sockets (``/tmp/hivemind-*``) that *its* processes had bound are removed: never another
program's, even when both run at once. Standard library only (the demo imports it before anything heavy).

    with ProcessGroup(cwd=ROOT, env=env) as procs:
        site = procs.start("daphne", [sys.executable, "-m", "daphne", ...], log=logs / "daphne.log")
        if wait_for_site(url, site, timeout=60) != "up": ...
        procs.kill(site, signal.SIGKILL)   # one process (a fault test), its sockets cleaned
    # on exit: every process stopped, every log closed, their sockets removed
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Self

HIVEMIND_SOCKETS = "/tmp/hivemind-*"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_site(url: str, proc: subprocess.Popen | None, *, timeout: float) -> str:
    """Poll ``url``/healthz until the site answers: ``"up"``, ``"exited"`` (``proc`` died) or ``"timeout"``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return "exited"
        parts = urllib.parse.urlsplit(url)
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(parts.hostname, parts.port, timeout=2)
        try:
            conn.request("GET", parts.path.rstrip("/") + "/healthz")
            conn.getresponse().read()
            return "up"  # any answer, a redirect to HTTPS included (production settings)
        except (OSError, http.client.HTTPException):
            time.sleep(0.3)
        finally:
            conn.close()
    return "timeout"


# --- which sockets belong to which processes ---------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (a child started in its own session: the child and
    everything it forked, e.g. its p2pd daemon); zombies left for init to reap are not counted."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":  # a zombie holds nothing
            out.append(int(entry))
    return out


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def bound_sockets(pids, pattern: str = HIVEMIND_SOCKETS) -> set[str]:
    """Paths matching ``pattern`` of the Unix sockets that the processes ``pids`` hold (``/proc/net/unix``)."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    if not inodes:
        return set()
    prefix = pattern.rstrip("*")
    paths = set()
    with contextlib.suppress(OSError), open("/proc/net/unix") as table:
        next(table, None)
        for line in table:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith(prefix):
                paths.add(parts[7])
    return paths


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def remove_sockets(paths) -> list[str]:
    """Remove the socket files ``paths`` that nobody listens on any more; returns the removed ones."""
    removed = []
    for path in paths:
        if os.path.exists(path) and not _listening(path):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    return removed


# --- stopping -------------------------------------------------------------------------------------------
def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, *, wait: float = 10.0) -> set[str]:
    """Signal the process group of ``proc`` (a child started in its own session), wait for it, and remove
    the hivemind sockets its processes held. Returns the sockets it found (removed if nobody listens)."""
    sockets = bound_sockets(group_pids(proc.pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    if sig in (signal.SIGKILL, signal.SIGTERM):
        # a daemon that outlives its parent for a moment still holds its socket: give it that moment
        deadline = time.monotonic() + (1.0 if sig == signal.SIGKILL else wait)
        while group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        remove_sockets(sockets)
    return sockets


class ProcessGroup:
    """The processes one program started: each in its own session, with its output in a log file."""

    def __init__(self, *, cwd=None, env: dict | None = None):
        self.cwd, self.env = cwd, env
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._files: list = []
        self._sockets: set[str] = set()
        self._log_opens: dict[str, int] = {}  # log path -> how many of our processes wrote to it so far

    def open_log(self, path, *, name: str | None = None) -> object:
        """A log file that is closed when the group stops. The first process of this group to use ``path``
        starts it afresh; a later one (a restart: the soak's rejoining worker, a fault test's site brought
        back) appends after a separator line naming the restart and its UTC time, so what the earlier
        process wrote (its last lines before a kill) stays readable."""
        key = os.path.abspath(path)
        before = self._log_opens.get(key, 0)
        f = open(path, "a" if before else "w")  # noqa: SIM115 - closed in stop()
        if before:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            f.write(f"\n===== restart {before} of {name or Path(path).name}: started again at {when} =====\n")
            f.flush()  # before the child writes to the same file
        self._log_opens[key] = before + 1
        self._files.append(f)
        return f

    def start(self, name: str, argv: list[str], *, log=None, stderr_log=None, env: dict | None = None,
              cwd=None) -> subprocess.Popen:
        """Start ``argv`` in its own session; stdout (and stderr, unless ``stderr_log``) go to ``log``
        (appended to, after a restart separator, when one of our processes already wrote there)."""
        out = self.open_log(log, name=name) if log is not None else subprocess.DEVNULL
        err = self.open_log(stderr_log, name=name) if stderr_log is not None else (
            subprocess.STDOUT if log is not None else subprocess.DEVNULL)
        proc = subprocess.Popen(argv, cwd=cwd or self.cwd, env=env or self.env, stdout=out, stderr=err,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Stop one of our processes (and its group) now; its hivemind sockets are removed."""
        self._sockets |= kill_group(proc, sig)

    def note_sockets(self) -> None:
        """Remember the sockets our live processes hold now (a process that later exits on its own may
        leave its socket file behind; ``stop`` removes it then)."""
        for _, proc in self.procs:
            if proc.poll() is None:
                self._sockets |= bound_sockets(group_pids(proc.pid))

    def stop(self, *, grace: float = 8.0) -> None:
        """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds, close the logs and
        remove the hivemind sockets our processes held."""
        self.note_sockets()
        live = [p for _, p in self.procs if p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _, proc in self.procs:
            self._sockets |= kill_group(proc, signal.SIGKILL, wait=5)
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files = []
        remove_sockets(self._sockets)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

