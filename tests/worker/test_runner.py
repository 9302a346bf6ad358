"""The networked runner: real workers (hivemind data plane + websocket control plane) in one process,
driving the unchanged protocol core against a small fake site (tests/worker/fakesite.py)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from btard_wire.envelope import Identity
from worker_client.worker import Worker, WorkerConfig

from .fakesite import FakeSite

pytestmark = pytest.mark.usefixtures("clean_hivemind_sockets")


def make_worker(site: FakeSite, index: int, *, behaviour: str | None = None, max_steps: int) -> Worker:
    config = WorkerConfig(server=site.url, token=f"token-{index}", identity=Identity.from_seed(b"runner-%d" % index),
                          device="cpu", host_maddrs=["/ip4/127.0.0.1/tcp/0"], allow_private=True, behaviour=behaviour,
                          max_steps=max_steps, threads=1, heartbeat_interval=1.0, evaluate_every=0)
    return Worker(config)


async def run_all(workers: list[Worker], timeout: float) -> list[int]:
    return await asyncio.wait_for(asyncio.gather(*(w.run() for w in workers)), timeout)


async def test_honest_workers_train_in_lockstep_and_stay_bit_identical():
    torch.set_num_threads(1)
    async with FakeSite(group_size=3, phase_timeout=20.0) as site:
        workers = [make_worker(site, i, max_steps=3) for i in range(3)]
        codes = await run_all(workers, 120)
    assert codes == [0, 0, 0]
    params = [w.state.params() for w in workers]
    assert all(torch.equal(params[0], p) for p in params[1:])
    assert not torch.equal(params[0], workers[0].state.snapshots[0])  # the model did move
    assert all(w.status.steps_applied == 3 for w in workers)
    assert site.banned == set()
    assert all(w.status.bytes_sent > 0 and w.status.bytes_received > 0 for w in workers)
    statuses = {hb.status.value for _, hb in site.heartbeats}
    assert statuses & {"training", "aggregating", "waiting_for_group"}


async def test_a_relay_lost_while_the_socket_stays_up_is_fetched_again_at_the_phase_deadline():
    """One worker never gets another's MPRNG commitment (dropped on the way, the socket stays up); the
    others pass the phase and never ask to close it. At its phase deadline the worker asks the site for
    the missing broadcast and the step goes on: nobody waits for the step deadline, nobody is banned."""
    torch.set_num_threads(1)
    dropped = []

    def drop(env, member):
        if env.phase == "mprng_commit" and env.step == 0 and not dropped and member != env.sender:
            dropped.append((env.sender, member))
            return True
        return False

    async with FakeSite(group_size=3, phase_timeout=3.0, drop_relay=drop) as site:
        workers = [make_worker(site, i, max_steps=2) for i in range(3)]
        codes = await run_all(workers, 120)
    assert codes == [0, 0, 0] and site.banned == set()
    ((sender, receiver),) = dropped
    assert any(p == receiver and m.phase == "mprng_commit" and sender in m.senders for p, m in site.board_requests)
    params = [w.state.params() for w in workers]
    assert all(torch.equal(params[0], p) for p in params[1:])
    assert all(w.status.steps_applied == 2 for w in workers)


async def test_it_bans_the_aggregator_that_lies_about_its_result():
    torch.set_num_threads(1)
    async with FakeSite(group_size=4, phase_timeout=15.0) as site:
        honest = [make_worker(site, i, max_steps=3) for i in range(3)]
        liar = make_worker(site, 9, behaviour="wrong_aggregate", max_steps=3)
        codes = await run_all(honest + [liar], 150)
    assert liar.identity.peer_id in site.banned
    assert not ({w.identity.peer_id for w in honest} & site.banned)
    assert codes[:3] == [0, 0, 0] and codes[3] == 3  # the liar is told it is banned and exits
    params = [w.state.params() for w in honest]
    assert all(torch.equal(params[0], p) for p in params[1:])
    assert all(liar.identity.peer_id in w.status.bans_seen for w in honest)


async def test_networked_validators_drawn_from_r_t_catch_a_gradient_attacker():
    """No site assigns validators: every worker draws them from the step's r_t (what the fake site
    computes from its board too), recomputes its target and the group bans the sign flipper."""
    torch.set_num_threads(1)
    async with FakeSite(group_size=4, validators=3, phase_timeout=15.0) as site:
        honest = [make_worker(site, i, max_steps=6) for i in range(3)]
        flipper = make_worker(site, 8, behaviour="sign_flip", max_steps=6)
        await run_all(honest + [flipper], 300)
    assert flipper.identity.peer_id in site.banned
    assert not ({w.identity.peer_id for w in honest} & site.banned)
    drawn = site.validators_for(1)
    assert len(drawn) == 3 and all(v != t and {v, t} <= set(site.groups[1]) for v, t in drawn.items())
    assert site.validators_for(0) == {}  # nothing to validate at the first step


async def test_judges_fetch_evidence_too_large_to_inline_by_its_hash_and_ban_only_the_false_accuser(monkeypatch):
    """Invariant 4 over the real data plane: with the inline cap below a digits-mlp part (about 1,200
    floats at 4 peers), the false accusation names the part by its committed hash only; the judges that
    do not hold it fetch it from the group, verify the hash and find the accused innocent."""
    from btard_wire import payloads

    monkeypatch.setattr(payloads, "MAX_INLINE_FLOATS", 64)
    torch.set_num_threads(1)
    async with FakeSite(group_size=4, phase_timeout=15.0) as site:
        honest = [make_worker(site, i, max_steps=1) for i in range(3)]
        accuser = make_worker(site, 7, behaviour="false_accuse", max_steps=1)
        codes = await run_all(honest + [accuser], 150)
    assert site.banned == {accuser.identity.peer_id}
    assert codes[:3] == [0, 0, 0]
    assert sum(w.steps.evidence.fetched for w in honest) >= 1  # a judge without the part fetched it
    params = [w.state.params() for w in honest]
    assert all(torch.equal(params[0], p) for p in params[1:])


def test_a_downloaded_state_with_momentum_makes_the_next_update_bit_identical():
    from worker_client.tasks import get_task
    from worker_client.worker import ModelState

    torch.set_num_threads(1)
    task = get_task("digits-mlp")
    donor = ModelState(task, seed=3, lr=0.05, device="cpu")
    donor.snapshot(0)
    for step in range(2):  # momentum buffers are non-zero after an update
        g, _ = donor.gradient(step, seed=step, batch_size=8)
        donor.apply(g, step + 1)
    newcomer = ModelState(task, seed=99, lr=0.05, device="cpu")  # a different initial model
    newcomer.load_full_state(donor.full_state(), step=2)
    assert torch.equal(newcomer.params(), donor.params())
    update, _ = donor.gradient(2, seed=7, batch_size=8)
    donor.apply(update, 3)
    newcomer.apply(update, 3)
    assert torch.equal(newcomer.params(), donor.params())
    # and a worker recomputes another's gradient of an earlier step from its snapshot
    again, _ = newcomer.gradient(2, seed=7, batch_size=8)
    assert torch.equal(again, update)



def test_phase_deadlines_come_from_the_group_then_the_run_and_a_cli_override_wins():
    from btard_wire.control import Group, RunInfo

    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"deadlines")))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", phase_timeout=30.0)
    assert worker.steps.phase_timeout("parts") == 30.0  # no group yet: the run's value
    worker.current_group = Group(step=3, peers=[], deadlines={"step": 1e10, "phase_timeout": 75.0})
    assert worker.steps.phase_timeout("parts") == 75.0  # the site raised it from the measured step time
    worker.config.phase_timeout = 5.0
    assert worker.steps.phase_timeout("parts") == 5.0


def test_concurrent_gradients_on_different_states_match_sequential_ones():
    """A validator computes its own gradient and its target's at once, in two threads, on one scratch model."""
    from concurrent.futures import ThreadPoolExecutor

    from worker_client.tasks import get_task
    from worker_client.worker import ModelState

    state = ModelState(get_task("digits-mlp"), seed=0, lr=0.05, device="cpu")
    state.snapshot(0)
    state.apply(torch.randn(state.numel) * 0.1, 1)  # a second, different model state
    jobs = [(step, seed) for seed in range(12) for step in (0, 1)]
    expected = {job: state.gradient(job[0], job[1], 64)[0] for job in jobs}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            results = dict(zip(jobs, pool.map(lambda job: state.gradient(job[0], job[1], 64)[0], jobs)))
            assert all(torch.equal(results[job], expected[job]) for job in jobs)


def test_a_run_with_an_unusable_global_batch_is_refused_with_the_reason():
    from btard_wire.control import RunInfo

    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"bad-extra")))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={"global_batch": "lots"})
    with pytest.raises(ValueError, match="global_batch must be a whole number.*'lots'"):
        worker._make_peer()
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={"global_batch": 512})
    assert worker._make_peer().params.global_batch == 512


def test_a_run_names_its_tau_rule_in_its_settings_and_an_unknown_rule_is_refused():
    from btard_wire.control import RunInfo

    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"tau-rule")))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={"tau_rule": "spread", "tau_spread": 0.25})
    params = worker._make_peer().params
    assert (params.tau_rule, params.tau_spread) == ("spread", 0.25)
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={"tau_rule": "largest"})
    with pytest.raises(ValueError, match="unknown tau rule 'largest'"):
        worker._make_peer()


def test_a_run_sets_the_alarm_factor_in_its_settings_and_an_unusable_one_is_refused():
    from btard_wire.control import RunInfo

    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"alarm")))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={"alarm_factor": 1})
    assert worker._make_peer().params.alarm_factor == 1
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={})
    assert worker._make_peer().params.alarm_factor == 2  # the protocol's default
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", extra={"alarm_factor": "often"})
    with pytest.raises(ValueError, match="alarm_factor must be a whole number >= 1.*'often'"):
        worker._make_peer()


async def test_a_tensor_send_whose_dial_failed_is_tried_again_within_the_deadline():
    """Two peers dialling each other at the same instant can fail libp2p's handshake: the send goes again
    (up to SEND_ATTEMPTS, within the phase deadline) instead of waiting for the receiver's ELIMINATE; a
    refusal is not retried."""
    from types import SimpleNamespace

    from worker_client.btard.actions import SendTensor
    from worker_client.net import DataPlaneError
    from worker_client.worker.steps import SEND_ATTEMPTS, StepDriver

    class Plane:
        def __init__(self, failures: list[str]):
            self.failures, self.calls = list(failures), 0

        async def send(self, to, **kwargs):
            self.calls += 1
            if self.failures:
                raise DataPlaneError(self.failures.pop(0), "dial failed", peer=to)

    def driver(plane):
        worker = SimpleNamespace(plane=plane, config=SimpleNamespace(phase_timeout=5.0), run_info=None,
                                 current_group=None)
        d = StepDriver.__new__(StepDriver)
        d.worker = worker
        return d

    action = SendTensor(kind="part", to="peer-b", part=1, data=b"\0" * 8)
    flaky = Plane(["unreachable"])
    await driver(flaky).send_tensor(action, 0)
    assert flaky.calls == 2  # failed once, then delivered
    down = Plane(["unreachable"] * 5)
    await driver(down).send_tensor(action, 0)
    assert down.calls == SEND_ATTEMPTS
    refused = Plane(["refused"])
    await driver(refused).send_tensor(action, 0)
    assert refused.calls == 1
