"""Celery tasks, the demo command, and admission limits under a flood of candidates."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone
from runs import services as runs
from runs import tasks
from runs.models import BroadcastLog, Peer, Run
from volunteers import services as volunteers
from volunteers import tasks as volunteer_tasks

from btard_wire.control import Hello
from btard_wire.envelope import Identity
from tests.factories import RunFactory, UserFactory, make_peer
from tests.site.helpers import envelope

pytestmark = pytest.mark.django_db


def test_the_beat_schedule_names_registered_tasks(settings):
    from btard_site.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]


def test_the_stale_peer_task_marks_silent_peers_offline(run, settings):
    settings.HEARTBEAT_TIMEOUT_SECONDS = 5
    peer, _ = make_peer(run=run)
    Peer.objects.filter(pk=peer.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=60))
    assert tasks.mark_stale_peers_offline.apply().get() == 1
    peer.refresh_from_db()
    assert not peer.online and peer.status_detail == "missed heartbeats"


def test_the_tick_task_closes_an_overdue_step_and_forms_the_next(run):
    peers = [make_peer(run=run, seed=f"k{i}")[0] for i in range(2)]
    runs.start_step_if_ready(run=run)
    Run.objects.filter(pk=run.pk).update(step_in_progress=True)
    from runs.models import StepRecord

    StepRecord.objects.filter(run=run).update(deadline=timezone.now() - timedelta(seconds=1))
    assert tasks.tick_runs.apply().get() == 1
    run.refresh_from_db()
    assert run.current_step == 1 and run.step_in_progress
    assert peers[0].user.reputation_events.get().kind == "missed_deadline"


def test_the_reputation_task_recomputes_from_history(alice):
    volunteers.adjust_reputation(user_ids=[alice.id], kind="missed_deadline")
    alice.volunteer.reputation = 10
    alice.volunteer.save()
    assert volunteer_tasks.recompute_reputation.apply().get() == 1
    alice.volunteer.refresh_from_db()
    assert alice.volunteer.reputation == -2.0


def test_the_promotion_task_promotes_ready_candidates(run):
    cand, _ = make_peer(run=run, role="candidate", probation_required=2, probation_done=2)
    assert tasks.promote_candidates.apply().get() == 1
    cand.refresh_from_db()
    assert cand.role == "active"


def test_the_expiry_task_deletes_logs_past_retention(run):
    peer, identity = make_peer(run=run, seed="e0")
    make_peer(run=run, seed="e1")
    runs.start_step_if_ready(run=run)
    runs.accept_broadcast(peer=peer, envelope=envelope(identity, run))
    BroadcastLog.objects.update(created_at=timezone.now() - timedelta(hours=run.broadcast_retention_hours + 1))
    assert tasks.expire_broadcasts.apply().get() == 1


def test_create_demo_run_is_idempotent_and_prints_usable_tokens():
    out = StringIO()
    call_command("create_demo_run", "--volunteers", "3", "--json", stdout=out)
    first = json.loads(out.getvalue())
    out = StringIO()
    call_command("create_demo_run", "--volunteers", "3", "--json", stdout=out)
    second = json.loads(out.getvalue())
    assert first["run_id"] == second["run_id"] and Run.objects.count() == 1
    assert [t["username"] for t in second["tokens"]] == ["volunteer1", "volunteer2", "volunteer3"]
    for t in second["tokens"]:
        assert volunteers.authenticate_worker_token(t["token"]).user.username == t["username"]
    with pytest.raises(volunteers.TokenRefused):
        volunteers.authenticate_worker_token(first["tokens"][0]["token"])  # superseded
    from django.contrib.auth import get_user_model

    assert get_user_model().objects.get(username="admin").is_superuser


def _flood(run, n: int, *, prefix: str) -> list[str]:
    roles = []
    for i in range(n):
        user = UserFactory(username=f"{prefix}{i}")
        token = volunteers.create_worker_token(user=user, name="sybil").token
        roles.append(runs.join_run(token=token, hello=Hello(public_key=Identity.from_seed(
            f"{prefix}-{i}".encode()).public_key_b64)).role)
    return roles


def test_a_flood_of_newcomers_is_held_to_the_window_and_fraction_limits():
    run = RunFactory(name="flood", max_new_per_window=5, max_candidate_fraction=0.25, peers_per_group=16)
    for i in range(16):
        make_peer(run=run, seed=f"active-{i}")
    Run.objects.filter(pk=run.pk).update(current_step=3)
    run.refresh_from_db()
    roles = _flood(run, 60, prefix="sybil")
    # 16 active -> at most floor(0.25 * 16) = 4 candidates, also under the window limit of 5
    assert roles.count("candidate") == 4 and roles.count("waiting") == 56
    # the window limit binds once there are enough active peers
    for i in range(40):
        make_peer(run=run, seed=f"more-{i}")
    assert len(runs.admit_waiting_peers(run=run)) == 1  # 5 per window, 4 already admitted
    assert Peer.objects.filter(run=run, role="candidate").count() == 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_joins_cannot_exceed_the_candidate_cap(postgres_url):
    run = RunFactory(name="race", max_new_per_window=3, max_candidate_fraction=1.0, peers_per_group=16)
    for i in range(8):
        make_peer(run=run, seed=f"a-{i}")
    Run.objects.filter(pk=run.pk).update(current_step=1)
    tokens = [volunteers.create_worker_token(user=UserFactory(username=f"racer{i}"), name="t").token
              for i in range(12)]
    barrier = threading.Barrier(6)

    def worker(chunk):
        barrier.wait()
        try:
            for i in chunk:
                runs.join_run(token=tokens[i], hello=Hello(public_key=Identity.from_seed(f"r{i}".encode())
                                                           .public_key_b64))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(range(k, 12, 6),)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Peer.objects.filter(run=run, role="candidate").count() == 3
    assert Peer.objects.filter(run=run, role="waiting").count() == 9
