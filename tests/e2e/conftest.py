"""Fixtures for the cross-host fault tests (``-m e2e``): a bridge with namespaced hosts, private database
servers for the tests that restart them, and the site harness on top."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from . import netns, services

RECOVERY_LOG = Path(os.environ.get("BTARD_E2E_RECOVERY_LOG", "var/e2e-recovery.jsonl"))


@pytest.fixture
def network():
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"cross-host tests need network namespaces: {reason}")
    with netns.Network() as net:
        yield net


@pytest.fixture
def private_services(tmp_path):
    reason = services.unavailable()
    if reason:
        pytest.skip(f"this fault test restarts its own database servers: {reason}")
    with services.PrivatePostgres() as pg, services.PrivateRedis(tmp_path) as redis:
        yield pg, redis


@pytest.fixture
def record_recovery(request):
    """``record_recovery(fault, seconds)``: appended to a JSON-lines file that docs/performance.md cites."""
    def record(fault: str, seconds: float, **extra) -> None:
        RECOVERY_LOG.parent.mkdir(parents=True, exist_ok=True)
        with RECOVERY_LOG.open("a") as f:
            f.write(json.dumps({"test": request.node.name, "fault": fault, "seconds": round(seconds, 1), **extra})
                    + "\n")
    return record
