"""A simulated run is reproducible byte for byte: the same seed gives the same envelopes (nonces from a
seeded source, MPRNG secrets from a seeded entropy), the same digests and the same summary."""

from __future__ import annotations

import json

import pytest

from tests.protocol._swarm import Swarm
from worker_client.sim import run_simulation

pytestmark = pytest.mark.usefixtures("one_thread")


def board_log(seed: int) -> list[str]:
    swarm = Swarm(n=5, attack="false_accuse", byzantine=(1,), seed=seed)
    log: list[str] = []
    post = swarm.board.post

    def recording_post(connection, envelope):
        log.append(envelope.model_dump_json())
        return post(connection, envelope)

    swarm.board.post = recording_post
    swarm.run(3)
    assert swarm.board.banned  # the log holds accusations and verdicts, not only the happy path
    return log


def test_it_gives_byte_identical_board_logs_for_the_same_seed():
    a, b = board_log(3), board_log(3)
    assert a == b
    assert a != board_log(4)


def _summary(**kw) -> str:
    out = run_simulation(task="digits-mlp", peers=5, byzantine=1, attack="false_accuse", steps=3,
                         eval_every=3, **kw)
    for key in ("seconds_per_step", "cpu_seconds_per_step"):  # wall-clock, not part of the run
        out.pop(key)
    assert out["bans"] and out["bans"][0]["evidence"]  # envelope digests: they depend on every nonce
    return json.dumps(out, sort_keys=True)


def test_it_gives_byte_identical_btard_sim_summaries_for_the_same_seed():
    assert _summary(seed=2) == _summary(seed=2)
