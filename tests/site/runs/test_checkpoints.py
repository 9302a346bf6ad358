"""Checkpoints: stored only when a strict majority of the step's group reported the uploaded state."""

from __future__ import annotations

import pytest
import torch
from runs import services as runs
from runs.models import Checkpoint, Run
from torch import nn
from volunteers import services as volunteers

from btard_wire.control import StepReport
from tests.factories import UserFactory, make_peer
from worker_client.checkpoint import state_bytes, state_digest

pytestmark = pytest.mark.django_db
STEP = 1  # checkpoint_every = 2: the state after step 1 is a checkpoint


def model_bytes(seed: int, *, poison: bool = False) -> bytes:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    if poison:
        with torch.no_grad():
            model.weight[0, 0] = float("nan")
    return state_bytes(model)


@pytest.fixture
def swarm(run, settings, tmp_path):
    """Three members with worker tokens in the group of checkpoint step 1."""
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    Run.objects.filter(pk=run.pk).update(checkpoint_every=2, current_step=STEP)
    members = []
    for i in range(3):
        user = UserFactory()
        issued = volunteers.create_worker_token(user=user, name="box")
        peer, _ = make_peer(run=run, user=user, seed=f"ck{i}", token=issued.token)
        members.append((peer, issued.raw))
    assert runs.start_step_if_ready(run=run).step == STEP
    return members


def report(peer, sha):
    runs.record_step_report(peer=peer, report=StepReport(step=STEP, outcome="applied", samples=32, state_sha256=sha))


def upload(client, run, raw, data, step=STEP):
    return client.post(f"/api/runs/{run.pk}/checkpoints/{step}/", data=data, content_type="application/octet-stream",
                       HTTP_AUTHORIZATION=f"Bearer {raw}")


def test_an_upload_confirmed_by_a_majority_is_stored_and_only_staff_download_it(run, swarm, client, carol, alice,
                                                                                events):
    data = model_bytes(0)
    for peer, _ in swarm[:2]:
        report(peer, state_digest(data))
    answer = upload(client, run, swarm[0][1], data)
    assert answer.status_code == 201, answer.json()
    assert answer.json()["confirmations"] == 2 and answer.json()["group_size"] == 3
    assert [e.type for e in events()][-1] == "checkpoint_stored"
    state = client.get(f"/api/runs/{run.pk}/").json()
    assert state["checkpoint"]["step"] == STEP and state["checkpoint"]["sha256"] == state_digest(data)
    assert client.get(f"/runs/{run.pk}/checkpoint/").status_code == 302  # anonymous: to the login
    client.force_login(alice)
    assert client.get(f"/runs/{run.pk}/checkpoint/").status_code == 302  # a volunteer is not staff
    client.force_login(carol)
    download = client.get(f"/runs/{run.pk}/checkpoint/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == data
    assert download["X-Checkpoint-SHA256"] == state_digest(data)
    assert "download (safetensors)" in client.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()


def test_an_upload_the_group_did_not_report_is_refused_and_nothing_is_written(run, swarm, client, settings):
    for peer, _ in swarm:
        report(peer, state_digest(model_bytes(0)))
    answer = upload(client, run, swarm[2][1], model_bytes(1))  # one peer's own, different model
    assert answer.status_code == 409 and answer.json()["code"] == "mismatch"
    assert not Checkpoint.objects.exists() and not any(settings.CHECKPOINT_DIR.rglob("*.safetensors"))


def test_an_upload_before_the_group_has_reported_asks_to_retry(run, swarm, client):
    data = model_bytes(0)
    report(swarm[0][0], state_digest(data))
    answer = upload(client, run, swarm[0][1], data)
    assert answer.status_code == 409 and answer.json()["code"] == "unconfirmed"
    report(swarm[1][0], state_digest(data))
    assert upload(client, run, swarm[0][1], data).status_code == 201


@pytest.mark.parametrize("case, status, code", [
    ("not safetensors", 400, "format"),
    ("nan", 400, "not_finite"),
    ("too large", 413, "too_large"),
    ("no token", 401, "token"),
    ("revoked token", 403, "token"),
    ("outsider", 403, "not_in_group"),
    ("not a checkpoint step", 400, "not_checkpoint_step"),
])
def test_bad_uploads_get_a_clear_error_and_store_nothing(case, status, code, run, swarm, client, settings):
    data = model_bytes(0)
    for peer, _ in swarm:
        report(peer, state_digest(data))
    raw, step = swarm[0][1], STEP
    if case == "not safetensors":
        data = b"\x80\x04pickle? no thanks"
    elif case == "nan":
        data = model_bytes(0, poison=True)
    elif case == "too large":
        settings.CHECKPOINT_MAX_BYTES = len(data) - 1
    elif case == "no token":
        raw = ""
    elif case == "revoked token":
        volunteers.revoke_worker_token(token=swarm[0][0].token, actor=swarm[0][0].user)
    elif case == "outsider":
        raw = volunteers.create_worker_token(user=UserFactory(), name="x").raw
    elif case == "not a checkpoint step":
        step = STEP + 1
    answer = upload(client, run, raw, data, step=step)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.json()
    assert answer.json()["reason"] and not Checkpoint.objects.exists()


def test_only_the_latest_checkpoints_are_kept(run, swarm, client, settings):
    settings.CHECKPOINTS_KEPT = 1
    data = model_bytes(0)
    for peer, _ in swarm:
        report(peer, state_digest(data))
    assert upload(client, run, swarm[0][1], data).status_code == 201
    first = Checkpoint.objects.get()
    runs.close_step(run=run, force=True)
    Run.objects.filter(pk=run.pk).update(current_step=3)
    assert runs.start_step_if_ready(run=run).step == 3
    newer = model_bytes(2)
    for peer, _ in swarm:
        runs.record_step_report(peer=peer, report=StepReport(step=3, outcome="applied", samples=32,
                                                             state_sha256=state_digest(newer)))
    assert upload(client, run, swarm[1][1], newer, step=3).status_code == 201
    assert list(Checkpoint.objects.values_list("step", flat=True)) == [3]
    from pathlib import Path

    assert not Path(first.path).exists()
