"""The probation validators (two active members per candidate, its panel) each recompute a candidate's
gradient and report in their own ``probation`` phase, never in their step's ``validation`` slot (two signed
messages there are equivocation); the candidate serves its gradient to both."""

from __future__ import annotations

import pytest
import torch

from btard_wire import payloads as M
from btard_wire.control import Group, RunInfo
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


def test_a_member_checks_every_candidate_whose_panel_names_it_in_either_seat():
    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"validator")))
    me = worker.identity.peer_id
    group = Group(step=STEP, peers=[], candidates=[
        {"peer_id": "c1", "validator": "x", "validators": ["x", me]},
        {"peer_id": "c2", "validator": me, "validators": [me, "y"]},
        {"peer_id": "c3", "validator": "x", "validators": ["x", "y"]},
        {"peer_id": "c4", "validator": me}])  # a site naming one validator
    worker.probation.assign(group)
    assert [c["peer_id"] for c in worker.probation.checks] == ["c1", "c2", "c4"]


class PublishingPlane(FakePlane):
    def __init__(self):
        super().__init__(b"", {})
        self.published = []

    def publish(self, step, kind, key, data, *, allowed=None, header=None):
        self.published.append((step, kind, key, allowed))


async def test_a_candidate_serves_its_probation_gradient_to_both_validators_of_its_panel_only():
    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=CANDIDATE))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", batch_size=8)
    worker.run_name = "1"
    worker.state = ModelState(get_task("digits-mlp"), seed=0, lr=0.05, device="cpu")
    worker.state.snapshot(STEP)
    worker.plane, worker.site = PublishingPlane(), FakeSite()
    mine = {"peer_id": CANDIDATE.peer_id, "seed": SEED, "validator": "v1", "validators": ["v1", "v2"],
            "probation_left": 2}
    await worker.probation.candidate_step(Group(step=STEP, peers=[], candidates=[mine]), mine)
    assert worker.plane.published == [(STEP, "probation", CANDIDATE.peer_id, ["v1", "v2"])]
    assert [m.outcome for m in worker.site.sent] == ["probation"]
