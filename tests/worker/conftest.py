"""Fixtures for the worker tests: hivemind daemons that are always shut down, sockets that are removed."""

from __future__ import annotations

import glob
import os
import socket

import pytest


def hivemind_sockets() -> set[str]:
    return set(glob.glob("/tmp/hivemind-*"))


def remove_stale_hivemind_sockets(paths) -> None:
    """Remove the given /tmp/hivemind-* sockets that no daemon listens on any more.

    Other test runs on this machine start daemons of their own at the same time: a socket that still
    accepts a connection belongs to a live daemon and is left alone.
    """
    for path in paths:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
            continue  # alive: not ours to remove
        except OSError:
            pass
        finally:
            probe.close()
        try:
            os.remove(path)
        except OSError:
            pass


@pytest.fixture
def clean_hivemind_sockets():
    """Remove the /tmp/hivemind-* sockets left behind by daemons this test started, even when it failed."""
    before = hivemind_sockets()
    yield
    remove_stale_hivemind_sockets(hivemind_sockets() - before)
