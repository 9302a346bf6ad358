"""Shared test configuration.

Tests that need PostgreSQL or Redis ask for the ``postgres_url`` / ``redis_url`` fixtures, which skip
with a reason where the variable is absent (CI always sets both).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Headless Chromium for browser tests (Debian's /usr/bin/chromium; nothing downloaded)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]


from worker_client.processes import free_port  # noqa: F401 - re-exported: tests import it from here


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        pytest.skip("DATABASE_URL does not point at PostgreSQL (CI sets it)")
    return url


@pytest.fixture(scope="session")
def _run_redis_url():
    """A Redis database that this test run alone holds (``tests.support.redis_db``: claimed with SET NX and a
    TTL, so a concurrent run on the same server never meets our keys); ``None`` without ``REDIS_URL``."""
    url = os.environ.get("REDIS_URL")
    if not url:
        yield None
        return
    from tests.support.redis_db import claim_redis_db

    with claim_redis_db(url) as ours:
        yield ours


@pytest.fixture
def redis_url(_run_redis_url) -> str:
    if not _run_redis_url:
        pytest.skip("REDIS_URL is not set (CI sets it)")
    return _run_redis_url


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """A PostgreSQL test database of this run's own (``test_<name>_<pid>``): two runs on one server (a
    developer's and CI's, or two terminals) would otherwise both create, use and drop ``test_<name>``."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        return
    db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_{os.getpid()}"[:63]


@pytest.fixture
def chromium_path() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists() and not shutil.which(path):
        pytest.skip("Chromium is not installed: apt-get install chromium")
    return path


@pytest.fixture
def output_dir(request) -> Path:
    """A per-test folder under test-output/ for screenshots and artefacts."""
    path = ROOT / "test-output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
