"""Workers hear the organisers: a pause, a resume and an announcement arrive as ``run_notice``; finishing
the run sends the sentence and closes the socket with ``CLOSE_RUN_FINISHED`` (the worker exits)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from organiser import services as control

from btard_wire.control import CLOSE_RUN_FINISHED, parse_site_message
from tests.factories import RunFactory
from tests.site.wsworker import expect_close, join, receive_type, token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def run(db):
    return RunFactory(name="notice-run", min_peers=3, peers_per_group=4)


async def test_a_worker_is_told_of_pause_announcement_resume_and_finish(run, alice, carol):
    raw = await database_sync_to_async(token_for)(alice)
    comm, _, _ = await join(raw, b"alice-notice")
    await database_sync_to_async(control.pause_run)(run=run, actor=carol, reason="moving servers")
    notice = await receive_type(comm, "run_notice")
    assert notice["kind"] == "paused" and "moving servers" in notice["message"]
    assert parse_site_message(__import__("json").dumps(notice)).kind == "paused"
    await database_sync_to_async(control.post_announcement)(run=run, actor=carol, text="back at 10:00 UTC")
    notice = await receive_type(comm, "run_notice")
    assert (notice["kind"], notice["message"]) == ("announcement", "back at 10:00 UTC")
    await database_sync_to_async(control.resume_run)(run=run, actor=carol)
    assert (await receive_type(comm, "run_notice"))["kind"] == "resumed"
    await database_sync_to_async(control.finish_run)(run=run, actor=carol, reason="done")
    notice = await receive_type(comm, "run_notice")
    assert notice["kind"] == "finished" and "thank you" in notice["message"]
    assert "finished" in await expect_close(comm, CLOSE_RUN_FINISHED)


async def test_a_worker_of_another_run_hears_nothing(run, alice, carol):
    raw = await database_sync_to_async(token_for)(alice)
    comm, _, _ = await join(raw, b"alice-other")
    other = await database_sync_to_async(RunFactory)(name="other-run", state="paused")
    await database_sync_to_async(control.post_announcement)(run=other, actor=carol, text="not for you")
    assert await comm.receive_nothing(timeout=1)
    await comm.disconnect()


class _RecordingView:
    def __init__(self):
        self.events = []

    def event(self, kind, message, **fields):
        self.events.append((kind, message, fields))

    def update(self, status):
        pass


@pytest.mark.parametrize("kind, shown_as", [("announcement", "announcement"), ("paused", "run"),
                                            ("finished", "run")])
async def test_the_worker_shows_a_run_notice_to_the_volunteer(kind, shown_as):
    from btard_wire.control import RunNotice
    from btard_wire.envelope import Identity
    from worker_client.worker import Worker, WorkerConfig

    view = _RecordingView()
    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"notice")),
                    view=view)
    await worker._dispatch(RunNotice(run_id=1, kind=kind, message=f"the run is {kind}"))
    assert (shown_as, f"the run is {kind}", {"run_kind": kind}) in view.events


async def test_a_worker_joining_later_hears_the_latest_announcement(run, alice, carol):
    await database_sync_to_async(control.post_announcement)(run=run, actor=carol, text="old news")
    await database_sync_to_async(control.post_announcement)(run=run, actor=carol, text="use --new-key after a ban")
    raw = await database_sync_to_async(token_for)(alice)
    comm, _, _ = await join(raw, b"alice-late")
    notice = await receive_type(comm, "run_notice")
    assert (notice["kind"], notice["message"]) == ("announcement", "use --new-key after a ban")
    await comm.disconnect()


def test_the_worker_asks_for_the_run_of_the_join_box():
    from worker_client.cli import build_parser

    assert build_parser().parse_args(["--server", "http://x", "--run", "7"]).run_id == 7
    assert build_parser().parse_args([]).run_id is None
