"""``python manage.py create_demo_run``: an admin, a demo run and N volunteers with worker tokens.

Idempotent: users and the run are reused; each call issues fresh tokens for the demo volunteers
(raw tokens are never stored, so they cannot be printed again) and revokes their older demo tokens.
"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from volunteers.models import Volunteer, WorkerToken
from volunteers.services import create_worker_token

from runs.models import Run

DEMO_TOKEN_NAME = "demo-worker"


class Command(BaseCommand):
    help = "Create (or reuse) the admin user, a demo run and demo volunteers with worker tokens."

    def add_arguments(self, parser):
        parser.add_argument("--volunteers", type=int, default=4)
        parser.add_argument("--run-name", default="demo")
        parser.add_argument("--task", default="digits-mlp")
        parser.add_argument("--admin-password", default="admin")
        parser.add_argument("--policy", default="open", help="admission policy (registry name)")
        parser.add_argument("--min-peers", type=int, default=None)
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
        run, _ = Run.objects.get_or_create(name=opts["run_name"], defaults={
            "task": opts["task"], "admission_policy": opts["policy"], "peers_per_group": max(2, n),
            "min_peers": opts["min_peers"] or max(2, min(n, 4)), "probation_steps": 2, "step_timeout": 60.0,
            "phase_timeout": 15.0, "batch_size": 32, "lr": 0.05, "checkpoint_every": 20})
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
        result = {"run_id": run.id, "run_name": run.name, "task": run.task, "admin": "admin", "tokens": tokens}
        if opts["json"]:
            self.stdout.write(json.dumps(result))
        else:
            self.stdout.write(f"run {run.name} (id {run.id}, task {run.task}); admin user 'admin'")
            for t in tokens:
                self.stdout.write(f"  {t['username']}: {t['token']}")
