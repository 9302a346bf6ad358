import os
import secrets
import subprocess
import sys

import pytest
from btard_site.env import env_bool, env_int, parse_database_url
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from tests.conftest import ROOT


def _run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG"}}
    clean.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=clean, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


@pytest.mark.django_db
def test_it_uses_postgresql_when_database_url_is_set(postgres_url):
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        assert "PostgreSQL" in cursor.fetchone()[0]


def test_it_parses_postgres_and_sqlite_urls():
    pg = parse_database_url("postgres://u:p%40ss@db.example:5433/btard?sslmode=require")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "btard", "u", "p@ss", "db.example", "5433")
    assert pg["OPTIONS"] == {"sslmode": "require"}
    assert parse_database_url("sqlite:////tmp/x.db")["NAME"] == "/tmp/x.db"
    assert parse_database_url("sqlite:///rel.db")["NAME"] == "rel.db"


def test_it_rejects_an_unknown_database_scheme():
    with pytest.raises(ImproperlyConfigured, match="unsupported scheme 'mysql'"):
        parse_database_url("mysql://x/y")


def test_it_rejects_a_bad_boolean_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        env_bool("DEBUG", False)
    monkeypatch.setenv("SOME_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="SOME_INT='ten' is not an integer"):
        env_int("SOME_INT", 1)


def test_settings_refuse_to_start_with_a_bad_debug_value():
    result = _run_manage("check", env={"DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr


def test_production_settings_require_a_secret_key():
    result = _run_manage("check", env={"BTARD_PRODUCTION": "1", "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_check_deploy_passes_under_production_settings(tmp_path):
    env = {
        "BTARD_PRODUCTION": "1",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "swarm.example.org",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
        "BTARD_VAR_DIR": str(tmp_path),
    }
    result = _run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_embedded_default_uses_sqlite_and_in_memory_layer(tmp_path):
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='btard_site.settings'; django.setup();"
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], s.CELERY_TASK_ALWAYS_EAGER)"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    clean.update({"BTARD_VAR_DIR": str(tmp_path), "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"})
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "django.db.backends.sqlite3", "channels.layers.InMemoryChannelLayer", "True"]
