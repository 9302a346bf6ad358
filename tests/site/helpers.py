"""Small builders shared by site tests."""

from __future__ import annotations

import contextlib
import sys

from btard_wire.control import Hello
from btard_wire.envelope import sign_envelope
from tests.conftest import ROOT
from tests.support import ProcessGroup, free_port, wait_for_site

# The role matrix (``users`` fixture, conftest): one row per role, read by the page tests and by the worker
# socket's test, so a role's rights are written once. ``me``/``tokens``/``moderation``: the status of those
# pages; ``worker_socket``: what a worker token of that account gets (no token at all for anonymous).
ROLE_MATRIX = {
    "anonymous": {"me": 302, "tokens": 302, "moderation": 302, "worker_socket": "no_token"},
    "alice": {"me": 200, "tokens": 200, "moderation": 403, "worker_socket": "joins"},
    "bob": {"me": 200, "tokens": 200, "moderation": 403, "worker_socket": "joins"},
    "carol": {"me": 200, "tokens": 200, "moderation": 200, "worker_socket": "joins"},  # staff
    "dave": {"me": 200, "tokens": 200, "moderation": 403, "worker_socket": "banned"},  # banned account
}
ROLES = list(ROLE_MATRIX)


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
def running_daphne(*, env: dict, log_path, timeout: float = 30):
    """Daphne serving the site on a free loopback port with ``env``; yields its base URL and is stopped by
    process group (SIGTERM, then SIGKILL), its log closed, even when the test fails (tests.support)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with ProcessGroup(cwd=ROOT, env=env) as procs:
        proc = procs.start("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                      "btard_site.asgi:application"], log=log_path)
        outcome = wait_for_site(base, proc, timeout=timeout)
        if outcome != "up":
            raise RuntimeError(f"daphne {outcome}: see {log_path}")
        yield base
