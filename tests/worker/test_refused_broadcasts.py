"""A broadcast the site refused is named by step and digest (btard_wire.control.ErrorMessage): the worker
tells the volunteer and hands the digest to the core, which takes it out of its validation report (the slow
host of the cross-host tests sat in validation when its refused ELIMINATE stayed in its report)."""

from __future__ import annotations

from btard_wire.control import ErrorMessage
from btard_wire.envelope import Identity
from worker_client.worker import Worker, WorkerConfig

DIGEST = "ab" * 32


class RecordingPeer:
    """Stands in for the core's BtardPeer: the step it is in and what it was told."""

    def __init__(self, step: int):
        self.step, self.waiting_for, self.finished = step, None, True
        self.refused: list[tuple] = []

    def on_broadcast_refused(self, step, digest, code=""):
        self.refused.append((step, digest, code))
        return ["re-signed report"]


class RecordingView:
    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def event(self, kind, message, **fields):
        self.events.append((kind, message))

    def update(self, status):
        pass


def _worker(step: int) -> tuple[Worker, RecordingPeer, list]:
    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"refused")))
    worker.peer, worker.view = RecordingPeer(step), RecordingView()
    executed: list = []

    async def execute(actions):
        executed.extend(actions)

    worker.steps.execute = execute
    return worker, worker.peer, executed


async def test_a_refused_broadcast_of_this_step_goes_to_the_core_and_the_volunteer_is_told_why():
    worker, peer, executed = _worker(step=4)
    await worker._handle(ErrorMessage(code="eliminate_limit", message="the account already used its ELIMINATE",
                                      step=4, digest=DIGEST))
    assert peer.refused == [(4, DIGEST, "eliminate_limit")]
    assert executed == ["re-signed report"]  # what the core answered is carried out
    assert [k for k, m in worker.view.events if "eliminate_limit" in m] == ["refused"]


async def test_a_refusal_for_another_step_or_without_a_digest_changes_nothing_in_the_core():
    worker, peer, executed = _worker(step=5)
    await worker._handle(ErrorMessage(code="eliminate_limit", message="old", step=4, digest=DIGEST))
    await worker._handle(ErrorMessage(code="replay", message="a byte-identical resend"))
    assert peer.refused == [] and executed == []
    assert [k for k, _ in worker.view.events] == ["refused", "error"]
