"""Small builders shared by site tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

from btard_wire.control import Hello
from btard_wire.envelope import sign_envelope
from tests.conftest import ROOT, free_port

ROLES = ["anonymous", "alice", "bob", "carol", "dave"]  # the role matrix (``users`` fixture, conftest)


def client_for(client, user):
    """``client`` logged in as ``user`` (anonymous for ``None``)."""
    if user is not None:
        client.force_login(user)
    return client


def envelope(identity, run, *, step=None, phase="commit", payload=None, nonce=None):
    payload = payload if payload is not None else {"hashes": ["00" * 32]}
    if "type" not in payload:  # the site checks every payload against its phase's schema
        payload = {"type": phase, **payload}
    return sign_envelope(identity, run=str(run.id), step=run.current_step if step is None else step, phase=phase,
                         payload=payload, nonce=nonce)


def verdict(identity, run, *, guilty, step=None, kind="part_mismatch", nonce=None):
    return envelope(identity, run, step=step, phase="verdict", nonce=nonce,
                    payload={"type": "verdict", "guilty": guilty, "accuser": identity.peer_id, "accused": guilty,
                             "kind": kind, "evidence": ["ab" * 32], "reason": "part does not match commitment"})


def types(events):
    """The types of the events a test's services emitted (the ``events`` fixture), in order."""
    return [e.type for e in events()]


def hello_for(identity, **kw):
    """A ``Hello`` of ``identity`` with a p2p address (for the services; the sockets sign a challenge)."""
    return Hello(public_key=identity.public_key_b64, p2p_id="QmPeer", p2p_addrs=["/ip4/127.0.0.1/tcp/1"], **kw)


@contextlib.contextmanager
def running_daphne(*, env: dict, log_path, attempts: int = 120):
    """Daphne serving the site on a free loopback port with ``env``; yields its base URL and is stopped by
    process group (SIGTERM, then SIGKILL) even when the test fails."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                 "btard_site.asgi:application"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(attempts):
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"daphne exited: see {log_path}") from None
                    time.sleep(0.25)
            yield base
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
