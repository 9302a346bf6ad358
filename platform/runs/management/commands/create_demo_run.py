"""``python manage.py create_demo_run``: an admin, a demo run and N volunteers with worker tokens.

Idempotent: users and the run are reused; each call issues fresh tokens for the demo volunteers
(raw tokens are never stored, so they cannot be printed again) and revokes their older demo tokens.

The run pins its task (``extra``: ``task_package``, ``task_version``, as a worker's ``load_run_task``
checks them): the distribution that registers the task under the ``btard_swarm.tasks`` entry points and its
version, read from the installed metadata without importing the task (the site loads no worker code or
torch, tests/test_layering.py). The data hash (``data_sha256``) needs the task's own code, so the site
cannot compute it: ``--task-extra JSON`` adds it (``make demo`` passes what the worker-side registry's
``run_task_extra`` reports); without it the run pins no data and any copy of the data is accepted.
The run's ``lr`` and ``batch_size`` are the task's catalog defaults (organiser.catalog).
"""

from __future__ import annotations

import json
from importlib import metadata

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from organiser.catalog import TASK_ENTRY_POINTS, task_info
from volunteers.models import Volunteer, WorkerToken
from volunteers.services import create_worker_token

from runs.models import Run

DEMO_TOKEN_NAME = "demo-worker"
PROJECT = "btard-swarm"


def task_pins(task: str) -> dict[str, str]:
    """``task_package`` / ``task_version`` of the distribution whose ``btard_swarm.tasks`` entry point is
    ``task``, from installed metadata only (nothing is imported); empty when no installed distribution
    registers it (a checkout without an install: the worker then checks nothing)."""
    try:
        eps = [ep for ep in metadata.entry_points(group=TASK_ENTRY_POINTS) if ep.name == task]
    except Exception:  # noqa: BLE001 - broken metadata: pin nothing rather than fail the demo
        return {}
    if not eps or getattr(eps[0], "dist", None) is None:
        return {}
    dist = eps[0].dist
    return {"task_package": dist.metadata["Name"], "task_version": dist.version}


def parse_task_extra(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--task-extra is not JSON: {exc}") from None
    allowed = {"task_package", "task_version", "task_install", "data_sha256"}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CommandError("--task-extra must be a JSON object of strings")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise CommandError(f"--task-extra: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return value


class Command(BaseCommand):
    help = "Create (or reuse) the admin user, a demo run and demo volunteers with worker tokens."

    def add_arguments(self, parser):
        parser.add_argument("--volunteers", type=int, default=4)
        parser.add_argument("--run-name", default="demo")
        parser.add_argument("--task", default="digits-mlp")
        parser.add_argument("--admin-password", default="admin")
        parser.add_argument("--policy", default="open", help="admission policy (registry name)")
        parser.add_argument("--min-peers", type=int, default=None)
        parser.add_argument("--task-extra", default=None,
                            help="JSON object merged into the run's task pins (e.g. data_sha256 from the worker's "
                                 "run_task_extra)")
        parser.add_argument("--json", action="store_true", help="print run id and tokens as JSON")

    @transaction.atomic
    def handle(self, *args, **opts):
        User = get_user_model()
        admin, created = User.objects.get_or_create(username="admin", defaults={
            "is_staff": True, "is_superuser": True, "email": "admin@localhost"})
        if created:
            admin.set_password(opts["admin_password"])
            admin.save()
        Volunteer.objects.get_or_create(user=admin)
        n = opts["volunteers"]
        extra = {**task_pins(opts["task"]), **parse_task_extra(opts["task_extra"])}
        info = task_info(opts["task"])
        run, _ = Run.objects.get_or_create(name=opts["run_name"], defaults={
            "task": opts["task"], "admission_policy": opts["policy"], "peers_per_group": max(2, n),
            "min_peers": opts["min_peers"] or max(2, min(n, 4)), "probation_steps": 2, "step_timeout": 60.0,
            "phase_timeout": 15.0, "batch_size": info.batch_size, "lr": info.lr, "checkpoint_every": 20,
            "extra": extra})
        tokens = []
        for i in range(n):
            user, created = User.objects.get_or_create(username=f"volunteer{i + 1}",
                                                       defaults={"email": f"volunteer{i + 1}@localhost"})
            if created:
                user.set_password(f"volunteer{i + 1}-password")
                user.save()
            Volunteer.objects.get_or_create(user=user)
            for old in WorkerToken.objects.filter(user=user, name=DEMO_TOKEN_NAME, revoked_at=None):
                from volunteers.services import revoke_worker_token

                revoke_worker_token(token=old, actor=user)
            issued = create_worker_token(user=user, name=DEMO_TOKEN_NAME)
            tokens.append({"username": user.username, "token": issued.raw})
        result = {"run_id": run.id, "run_name": run.name, "task": run.task, "extra": run.extra, "admin": "admin",
                  "tokens": tokens}
        if opts["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(f"run {run.name} (id {run.id}, task {run.task}); admin user 'admin'")
            for t in tokens:
                self.stdout.write(f"  {t['username']}: {t['token']}")
