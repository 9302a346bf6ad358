"""F1 / F7 (site security review): a step report is a bounded self-claim. One member's absurd numbers
neither halt its run (integer overflow in ``close_step``) nor buy credit nor put ``Infinity`` in the
public JSON; and one run whose tick raises does not stop the beat task from ticking the others."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from runs.models import Run, StepRecord
from volunteers.models import Volunteer

from tests.factories import RunFactory, StepRecordFactory, make_peer
from tests.site.wsclient import join, receive_type, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="reports-run", min_peers=2, peers_per_group=4, batch_size=32)


async def two_members(alice, bob):
    a = await join(alice, b"alice-r")
    b = await join(bob, b"bob-r")
    for comm, _, _ in (a, b):
        assert (await receive_type(comm, "group"))["step"] == 0
    return a, b


def report(step=0, **fields):
    return {"type": "step_report", "step": step, "outcome": "applied", "loss": 2.0, "accuracy": 0.5,
            "samples": 32, **fields}


def largest_integer_the_database_stores() -> int:
    return 2**63 - 1 if connection.vendor == "sqlite" else 2**31 - 1


async def test_it_keeps_the_run_going_when_a_member_reports_an_overflowing_sample_count(run, alice, bob):
    (ca, _, _), (cb, _, _) = await two_members(alice, bob)
    huge = await database_sync_to_async(largest_integer_the_database_stores)()
    await send(ca, report(samples=huge))
    error = await receive_type(ca, "error")
    assert error["code"] == "samples"  # a clear refusal, not ``internal``
    await send(ca, report())  # the honest retry is taken
    await send(cb, report())
    assert (await receive_type(ca, "group"))["step"] == 1  # the step closed and the next group formed
    record = await database_sync_to_async(StepRecord.objects.get)(run=run, step=0)
    assert record.outcome == "applied" and record.samples == 64
    for comm in (ca, cb):
        await comm.disconnect()


async def test_it_credits_the_batch_size_it_knows_not_the_claimed_sample_count(run, alice, bob):
    (ca, _, _), (cb, _, _) = await two_members(alice, bob)
    await send(ca, report(samples=32 * 1000))  # within the bound, still a lie
    await send(cb, report())
    await receive_type(ca, "group")
    contribution = await database_sync_to_async(
        lambda: Volunteer.objects.get(user=alice).contribution_samples)()
    assert contribution == 32
    for comm in (ca, cb):
        await comm.disconnect()


@pytest.mark.parametrize("loss", [1e308, -1e308, 1e10])
async def test_it_refuses_a_loss_that_is_not_a_bounded_finite_number(run, alice, bob, loss, client):
    (ca, _, _), (cb, _, _) = await two_members(alice, bob)
    await send(ca, report(loss=loss))
    assert (await receive_type(ca, "error"))["code"] == "loss"
    await send(ca, report(loss=1.0))
    await send(cb, report(loss=3.0))
    await receive_type(ca, "group")
    body = (await database_sync_to_async(client.get)(f"/api/runs/{run.pk}/")).content.decode()
    state = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} in the public JSON"))
    assert state["curve"][0]["loss"] == 2.0
    for comm in (ca, cb):
        await comm.disconnect()


async def test_a_non_finite_loss_in_raw_json_is_refused_without_an_internal_error(run, alice, bob):
    (ca, _, _), (cb, _, _) = await two_members(alice, bob)
    await ca.send_to(text_data='{"type": "step_report", "step": 0, "outcome": "applied", "loss": NaN}')
    error = await receive_type(ca, "error")
    assert error["code"] in {"loss", "schema", "malformed"}
    assert await database_sync_to_async(StepRecord.objects.filter(run=run, step=0).get)()
    for comm in (ca, cb):
        await comm.disconnect()


def test_the_beat_task_ticks_every_other_run_when_one_runs_tick_raises(db, monkeypatch):
    from runs import services, tasks

    poisoned = RunFactory(name="poisoned")
    healthy = RunFactory(name="healthy")
    ticked = []
    real = services.tick_run

    def tick(*, run):
        if run.pk == poisoned.pk:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        ticked.append(run.pk)
        return real(run=run)

    monkeypatch.setattr(services, "tick_run", tick)
    Run.objects.filter(pk=poisoned.pk).update(created_at=healthy.created_at.replace(year=2100))  # first in order
    for p in range(2):
        make_peer(run=healthy, seed=f"healthy{p}")
    assert tasks.tick_runs() == 1  # one run ticked, the poisoned one did not stop the loop
    assert ticked == [healthy.pk]
    # the healthy run really went forward after the poisoned one raised: its first group formed
    assert StepRecord.objects.filter(run=healthy, step=0).exists()
    assert not StepRecord.objects.filter(run=poisoned).exists()


def test_a_step_that_cannot_be_closed_is_dropped_once_overdue_and_the_run_goes_on(db, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone
    from runs import services
    from runs.services import steps

    run = RunFactory(name="unclosable", min_peers=2)
    for i in range(2):
        make_peer(run=run, seed=f"uc{i}")
    assert services.start_step_if_ready(run=run).step == 0

    def broken(**kwargs):
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(steps, "credit_step", broken)  # close_step's call into volunteers fails
    StepRecord.objects.filter(run=run, step=0).update(deadline=timezone.now() - timedelta(seconds=1))
    services.tick_run(run=run)
    record = StepRecord.objects.get(run=run, step=0)
    assert record.outcome == "dropped" and record.finished_at is not None and record.samples == 0
    assert Run.objects.get(pk=run.pk).current_step == 1
    assert StepRecord.objects.filter(run=run, step=1).exists()  # the next group formed


def test_a_non_finite_value_stored_earlier_never_reaches_the_public_json(db, client):

    run = RunFactory(name="legacy-inf")
    StepRecordFactory(run=run, step=0, loss=float("inf"), accuracy=float("nan"))  # stored before the bounds
    body = client.get(f"/api/runs/{run.pk}/").content.decode()
    state = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} in the public JSON"))
    assert state["curve"][0]["loss"] is None and state["curve"][0]["accuracy"] is None
    assert client.get(f"/runs/{run.pk}/").status_code == 200
