"""Fixtures for the worker tests: hivemind daemons that are always shut down, sockets that are removed."""

from __future__ import annotations

import glob
import os

import pytest


def hivemind_sockets() -> set[str]:
    return set(glob.glob("/tmp/hivemind-*"))


@pytest.fixture
def clean_hivemind_sockets():
    """Remove every /tmp/hivemind-* socket that appeared during the test, even when it failed."""
    before = hivemind_sockets()
    yield
    for path in hivemind_sockets() - before:
        try:
            os.remove(path)
        except OSError:
            pass
