import subprocess
import sys

import yaml

from tests.conftest import ROOT


def test_platform_is_a_source_root_not_a_package_shadowing_the_stdlib():
    import platform

    assert not (ROOT / "platform" / "__init__.py").exists()
    assert hasattr(platform, "python_version"), "the stdlib platform module must not be shadowed"
    import btard_site

    assert btard_site.__file__.startswith(str(ROOT / "platform"))


def test_btard_worker_help_works():
    out = subprocess.run([sys.executable, "-m", "worker_client.cli", "--help"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0
    assert "--token" in out.stdout


def test_docker_compose_runs_every_service_with_health_checks_and_environment():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"proxy", "postgres", "redis", "web", "celery-worker", "celery-beat"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        assert service["healthcheck"]["test"], name
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "pgdata" in compose["volumes"]
    for name in ("web", "celery-worker", "celery-beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert env["BTARD_PRODUCTION"] == "1"
        assert "SECRET_KEY" in env
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "daphne" in services["web"]["command"]
    assert "worker" in services["celery-worker"]["command"]
    assert "beat" in services["celery-beat"]["command"]
