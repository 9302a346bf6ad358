"""F9 / F12 (site security review): request bodies are limited per path before they are read (in Daphne
itself and in front of Django), the checkpoint upload checks the token and the group before it reads a
byte, and the uploader is the token's key that is in the group."""

from __future__ import annotations

import os
import socket

import pytest
from channels.testing import ApplicationCommunicator, HttpCommunicator
from runs import services as runs
from runs.models import Checkpoint, Run
from volunteers import services as volunteers

from btard_wire.control import StepReport
from tests.conftest import ROOT
from tests.factories import UserFactory, make_peer
from tests.site.helpers import running_daphne
from tests.site.runs.test_checkpoints import model_bytes, report, upload
from worker_client.checkpoint import state_digest

STEP = 1


def asgi_app():
    from btard_site.asgi import application

    return application


@pytest.mark.django_db
async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(settings):
    settings.BTARD_MAX_BODY_BYTES = 4096
    comm = HttpCommunicator(asgi_app(), "POST", "/signup/", body=b"",
                            headers=[(b"content-length", b"50000000"), (b"host", b"testserver")])
    response = await comm.get_response(timeout=10)
    assert response["status"] == 413


@pytest.mark.django_db
async def test_a_streamed_body_over_the_limit_is_cut_off_with_413(settings):
    settings.BTARD_MAX_BODY_BYTES = 4096
    comm = ApplicationCommunicator(asgi_app(), {
        "type": "http", "http_version": "1.1", "method": "POST", "path": "/api/worker/check", "raw_path": b"/",
        "query_string": b"", "headers": [(b"host", b"testserver")], "scheme": "http", "root_path": ""})
    for _ in range(3):
        await comm.send_input({"type": "http.request", "body": b"x" * 3000, "more_body": True})
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await comm.receive_output(timeout=10)
    assert start["type"] == "http.response.start" and start["status"] == 413


def test_the_checkpoint_path_gets_its_own_larger_limit(settings):
    from btard_site.security import BodySizeLimit

    settings.BTARD_MAX_BODY_BYTES, settings.CHECKPOINT_MAX_BYTES = 1024, 10 ** 8
    assert BodySizeLimit.limit_for("/api/runs/3/checkpoints/49/") == 10 ** 8
    assert BodySizeLimit.limit_for("/signup/") == BodySizeLimit.limit_for("/api/runs/3/checkpoints/x/") == 1024


@pytest.fixture
def swarm(run, settings, tmp_path):
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    Run.objects.filter(pk=run.pk).update(checkpoint_every=2, current_step=STEP)
    members = []
    for i in range(3):
        user = UserFactory()
        issued = volunteers.create_worker_token(user=user, name="box")
        peer, _ = make_peer(run=run, user=user, seed=f"bd{i}", token=issued.token)
        members.append((peer, issued.raw))
    assert runs.start_step_if_ready(run=run).step == STEP
    return members


@pytest.mark.django_db
def test_an_outsiders_upload_is_refused_before_its_body_is_read(run, swarm, client, monkeypatch, bob):
    from django.core.handlers.wsgi import WSGIRequest

    outsider = volunteers.create_worker_token(user=bob, name="x").raw
    reads = []
    real_read = WSGIRequest.read
    monkeypatch.setattr(WSGIRequest, "read", lambda self, *a: reads.append(a) or real_read(self, *a))
    answer = upload(client, run, outsider, b"\0" * 100_000)
    assert answer.status_code == 403 and answer.json()["code"] == "not_in_group"
    assert reads == []


@pytest.mark.django_db
def test_the_uploader_is_the_tokens_key_in_the_group_not_its_newest_key(run, swarm, client):
    data = model_bytes(0)
    for peer, _ in swarm[:2]:
        report(peer, state_digest(data))
    member, raw = swarm[0]
    make_peer(run=run, user=member.user, seed="same-token-new-key", token=member.token)  # newer, not in the group
    answer = upload(client, run, raw, data)
    assert answer.status_code == 201, answer.json()
    assert Checkpoint.objects.get().uploaded_by_id == member.pk


@pytest.mark.timeout(120)
def test_daphne_refuses_an_over_long_body_before_buffering_it(tmp_path):
    env = {**os.environ, "BTARD_VAR_DIR": str(tmp_path), "BTARD_MAX_BODY_BYTES": "65536",
           "DJANGO_SETTINGS_MODULE": "btard_site.settings", "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"}
    env.pop("DATABASE_URL", None), env.pop("REDIS_URL", None)
    with running_daphne(env=env, log_path=tmp_path / "daphne.log", timeout=60) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /signup/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 200000000\r\n\r\n" + b"x" * 1000)
            sock.settimeout(10)
            answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


_ = StepReport
