"""The probation validator (an active member) recomputes a candidate's gradient and reports in its own
``probation`` phase, never in its step's ``validation`` slot (two signed messages there are equivocation)."""

from __future__ import annotations

import pytest
import torch

from btard_wire import payloads as M
from btard_wire.control import RunInfo
from btard_wire.envelope import Identity
from worker_client.net.server import Traffic
from worker_client.tasks import get_task
from worker_client.worker import ModelState, Worker, WorkerConfig

CANDIDATE = Identity.from_seed(b"candidate")
STEP, SEED = 3, 11


class FakePlane:
    def __init__(self, data: bytes, header: dict):
        self.served = (data, header)
        self.traffic = Traffic()

    def set_directory(self, peers, *, step=None):
        pass

    async def fetch_bytes_with_header(self, peer, **kw):
        return self.served


class FakeSite:
    def __init__(self):
        self.sent = []
        self.bytes_sent = self.bytes_received = 0

    def send(self, message):
        self.sent.append(message)


def validator_with(gradient: torch.Tensor) -> tuple[Worker, FakeSite]:
    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"validator")))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", batch_size=8)
    worker.run_name = "1"
    worker.state = ModelState(get_task("digits-mlp"), seed=0, lr=0.05, device="cpu")
    worker.state.snapshot(STEP)
    data = gradient.numpy().astype("<f4").tobytes()
    header = M.sign_tensor_header(CANDIDATE, run="1", step=STEP, kind="part", part=0, data=data)
    worker.plane, worker.site = FakePlane(data, header.model_dump()), FakeSite()
    worker.probation.checks = [{"peer_id": CANDIDATE.peer_id, "public_key": CANDIDATE.public_key_b64,
                                "seed": SEED, "validator": worker.identity.peer_id}]
    return worker, worker.site


@pytest.mark.parametrize("cheat, ok", [(False, True), (True, False)])
async def test_the_validator_reports_its_recomputation_in_the_probation_phase(cheat, ok):
    honest = ModelState(get_task("digits-mlp"), seed=0, lr=0.05, device="cpu")
    honest.snapshot(STEP)
    g, _ = honest.gradient(STEP, SEED, 8)
    worker, site = validator_with(-g if cheat else g)
    await worker.probation.validate_candidates(STEP)
    (message,) = site.sent
    env = message.envelope
    assert (env.phase, env.step, env.sender) == ("probation", STEP, worker.identity.peer_id)
    report = M.ProbationPayload.model_validate(env.payload)
    assert report.candidate == CANDIDATE.peer_id and report.ok is ok
    assert ("differs" in report.reason) is cheat
    assert worker.probation.checks == []  # each candidate is checked once per step
