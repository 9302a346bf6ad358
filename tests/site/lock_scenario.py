"""Concurrent writers on the site's database, as Daphne, Celery and a checkpoint upload produce them:
step reports of a whole group, heartbeats, a checkpoint upload, a ban and a slow writer holding the write
lock, each in its own thread with its own connection, through the same code paths the consumers and views
use (``live.consumers.common.db``'s retry). Used by ``tests/site/btard_site/test_database_locks.py``, in-process
on PostgreSQL and in a subprocess on a file SQLite database (``python tests/site/lock_scenario.py``), where
the embedded default's locking really happens (the test database of SQLite is an in-memory one)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

MEMBERS = 6
STEP = 1  # checkpoint_every = 2: the state after step 1 is a checkpoint


def setup_run(tmp_dir: Path):
    from django.conf import settings
    from runs import services as runs
    from runs.models import Run
    from volunteers import services as volunteers

    from btard_wire.control import StepReport
    from tests.factories import RunFactory, UserFactory, make_peer

    settings.CHECKPOINT_DIR = tmp_dir / "checkpoints"
    run = RunFactory(name=f"locks-{time.monotonic_ns()}", min_peers=MEMBERS, peers_per_group=MEMBERS,
                     checkpoint_every=2)
    Run.objects.filter(pk=run.pk).update(current_step=STEP)
    members = []
    for i in range(MEMBERS):
        user = UserFactory()
        issued = volunteers.create_worker_token(user=user, name="box")
        peer, _ = make_peer(run=run, user=user, seed=f"lock-{run.pk}-{i}", token=issued.token)
        members.append((peer, issued.token))
    # not a member: the group is drawn at random from the eligible (online, active) peers
    outsider, _ = make_peer(run=run, seed=f"lock-outsider-{run.pk}", role="candidate")
    assert runs.start_step_if_ready(run=run).step == STEP
    return run, members, outsider, StepReport


def run_scenario(tmp_dir: Path) -> dict:
    import torch
    from btard_site.retry import retry_transient
    from django.db import connections, transaction
    from live.consumers import worker as consumers
    from moderation.models import Ban
    from moderation.services import ban_peer
    from runs.checkpoints import store_checkpoint
    from runs.models import Checkpoint, Peer, Run, StepRecord, StepReportRecord
    from runs.services import Rejected
    from torch import nn

    from btard_wire.control import Heartbeat
    from worker_client.checkpoint import state_bytes, state_digest

    run, members, outsider, StepReport = setup_run(tmp_dir)
    torch.manual_seed(0)
    data = state_bytes(nn.Linear(4, 3))
    sha = state_digest(data)
    errors: list[str] = []
    start = threading.Barrier(4 + len(members))

    def thread(fn):
        def body():
            try:
                start.wait()
                fn()
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
            finally:
                connections.close_all()
        return threading.Thread(target=body)

    def reporter(peer):
        def report():
            msg = StepReport(step=STEP, outcome="applied", loss=1.0, samples=32, state_sha256=sha)
            retry_transient(consumers._step_report)(peer, msg)
        report.__name__ = f"report_{peer.peer_id[:6]}"
        return report

    def heartbeats():
        for i in range(30):
            peer = members[i % len(members)][0]
            retry_transient(consumers._heartbeat)(peer, Heartbeat(status="training", detail=f"beat {i}"))

    def upload():
        for _ in range(400):  # a worker retries "unconfirmed" until its group has reported
            try:
                retry_transient(store_checkpoint)(token=members[0][1], run_id=run.pk, step=STEP, data=data)
                return
            except Rejected as exc:
                if exc.code != "unconfirmed":
                    raise
                time.sleep(0.02)
        raise AssertionError("the checkpoint was never confirmed")

    def ban():
        retry_transient(ban_peer)(peer=outsider, reason="test", evidence_kind="part_mismatch", evidence={},
                                  source="verdict", step=STEP)

    def slow_writer():
        for _ in range(4):  # a long write transaction, as a large checkpoint row or a busy tick makes
            @retry_transient
            def hold():
                with transaction.atomic():
                    Run.objects.filter(pk=run.pk).update(extra={"held": time.time()})
                    time.sleep(0.2)
            hold()

    threads = [thread(f) for f in (heartbeats, upload, ban, slow_writer)] + [thread(reporter(p)) for p, _ in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    record = StepRecord.objects.get(run=run, step=STEP)
    return {
        "errors": errors,
        "reports": StepReportRecord.objects.filter(step_record=record).count(),
        "members": len(members),
        "checkpoints": Checkpoint.objects.filter(run=run, step=STEP).count(),
        "banned": Ban.objects.filter(peer_id=outsider.peer_id).count(),
        "heartbeat_detail": sorted(set(Peer.objects.filter(run=run).exclude(pk=outsider.pk)
                                       .values_list("status_detail", flat=True))),
        "step_closed": Run.objects.get(pk=run.pk).current_step == STEP + 1,
        "vendor": connections["default"].vendor,
        "journal": _journal_mode(),
    }


def _journal_mode() -> str:
    from django.db import connection

    if connection.vendor != "sqlite":
        return ""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        return cursor.fetchone()[0]


def main() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    print(json.dumps(run_scenario(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
