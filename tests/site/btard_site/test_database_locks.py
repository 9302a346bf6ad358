"""No message lost to a transient lock: step reports of a whole group, heartbeats, a checkpoint upload, a
ban and a slow writer at once all land, with no ``database is locked`` and no ``internal``. On SQLite
(the embedded default: WAL, a busy timeout, IMMEDIATE transactions) in a subprocess on a file database,
on PostgreSQL in-process on the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.db import connection

from tests.conftest import ROOT


def check(result: dict) -> None:
    assert result["errors"] == []
    assert result["reports"] == result["members"]
    assert result["checkpoints"] == 1 and result["banned"] == 1
    assert result["step_closed"]


@pytest.mark.timeout(300)
def test_concurrent_writers_on_the_embedded_sqlite_database_lose_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(BTARD_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="btard_site.settings", LOG_LEVEL="WARNING",
               PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "site" / "lock_scenario.py"), str(tmp_path)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["vendor"], result["journal"]) == ("sqlite", "wal")
    check(result)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_concurrent_writers_on_postgresql_lose_nothing(postgres_url, tmp_path):
    from tests.site.lock_scenario import run_scenario

    assert connection.vendor == "postgresql"
    check(run_scenario(tmp_path))


def test_the_embedded_default_configures_sqlite_for_concurrent_writers(tmp_path):
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "import json; print(json.dumps(s.DATABASES['default'].get('OPTIONS', {})))")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(BTARD_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="btard_site.settings",
               PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    options = json.loads(out.stdout.strip().splitlines()[-1])
    assert options["transaction_mode"] == "IMMEDIATE" and options["timeout"] >= 5
    assert "journal_mode=WAL" in options["init_command"]


def test_a_transient_lock_is_retried_and_other_errors_are_not():
    from btard_site.retry import retry_transient
    from django.db import OperationalError

    calls = []

    @retry_transient(base_delay=0.001)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("database is locked")
        return "stored"

    assert flaky() == "stored" and len(calls) == 3

    @retry_transient(base_delay=0.001)
    def broken():
        calls.append(2)
        raise OperationalError("no such table: nowhere")

    with pytest.raises(OperationalError, match="no such table"):
        broken()
    assert calls.count(2) == 1
