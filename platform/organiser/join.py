"""The "Join this run" box: the exact commands for this site, and what the run needs."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from django.conf import settings

from .catalog import INSTALL_SIZE, task_info

WHEEL_NAME = re.compile(r"^btard_swarm-[0-9A-Za-z.+]+-py3-none-any\.whl$")


def worker_version() -> str:
    """The version of the ``btard-swarm`` distribution (the worker's ``__version__``), from the installed
    metadata, else from the checkout's pyproject.toml: the site imports no worker code (tests/test_layering.py)."""
    try:
        return metadata.version("btard-swarm")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def dist_dir() -> Path:
    """Where the deploy puts the worker wheel it built (``pip wheel --no-deps -w dist .``)."""
    return Path(getattr(settings, "WORKER_DIST_DIR", settings.BASE_DIR / "dist"))


def served_wheel(version: str) -> str | None:
    """The file name of the worker wheel of ``version`` the site serves under ``/dist/``, if any."""
    folder = dist_dir()
    if not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.glob(f"btard_swarm-{version}-*.whl") if WHEEL_NAME.match(p.name))
    return names[-1] if names else None


def server_url(request) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def join_info(*, request, run) -> dict:
    """Everything the join box shows for ``run`` as seen from ``request`` (its host is the server URL)."""
    from .models import RunControl

    __version__ = worker_version()
    server = server_url(request)
    wheel = served_wheel(__version__)
    # the worker extra (torch, hivemind, ...) of the distribution this site runs, from the site itself when served
    install = (f'pip install "btard-swarm[worker] @ {server}/dist/{wheel}"' if wheel
               else f'pip install "btard-swarm[worker]=={__version__}"')
    minimum = RunControl.objects.filter(run=run).values_list("min_worker_version", flat=True).first() or ""
    info = task_info(run.task)
    commands = "\n".join([
        "python3.11 -m venv btard-env && . btard-env/bin/activate",
        install,
        'read -rsp "Worker token: " BTARD_TOKEN && export BTARD_TOKEN',
        f"btard-worker doctor --server {server}",
        f"btard-worker --server {server} --run {run.pk}",
    ])
    return {"server": server, "commands": commands, "install": install, "wheel": wheel, "version": __version__,
            "min_version": minimum, "task": info, "install_size": INSTALL_SIZE, "run": run,
            "open": run.state == "open", "state": run.state}
