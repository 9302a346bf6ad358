"""A broadcast that reaches the board after its phase's deadline: the board's view decides, for everyone.

The networked site closes a board phase once a majority of the group passed its deadline, names who had
posted, and refuses the rest; peers with ``board_echo`` count their own broadcast only once the board
stored it. The in-memory swarm models exactly that with ``site_closes=True``.
"""

from __future__ import annotations

import pytest
import torch

from worker_client.btard import protocol as P

from ._swarm import Swarm


def _late_swarm(late_phase: str, *, site_closes: bool, n: int = 4) -> Swarm:
    params = P.ProtocolParams(tau=1.0, validators=1, board_echo=site_closes)
    swarm = Swarm(n=n, params=params)
    slow = swarm.ids[-1]
    swarm.memory.site_closes = site_closes
    swarm.memory.late = lambda sender, env: sender == slow and env.phase == late_phase and env.step == 0
    return swarm


def _same_update(results: dict[str, P.StepResult]) -> bool:
    updates = [r.update for r in results.values()]
    return all(u is not None and torch.equal(u, updates[0]) for u in updates)


def test_a_late_mprng_commit_leaves_its_sender_out_of_the_randomness_on_every_peer_and_bans_nobody():
    swarm = _late_swarm("mprng_commit", site_closes=True)
    slow = swarm.ids[-1]
    first = swarm.step()
    assert {r.outcome for r in first.values()} == {"applied"}
    assert len({r.r for r in first.values()}) == 1  # one shared randomness, the slow peer's value left out
    assert _same_update(first)
    assert swarm.board.closed["mprng_commit"] == sorted(swarm.ids[:-1])
    assert any("mprng_commit of step 0 is closed" in why for who, why in swarm.board.rejected if who == slow)
    swarm.run(3)
    assert swarm.board.banned == {}
    assert all(r.outcome == "applied" for results in swarm.history for r in results.values())


def test_with_per_peer_deadlines_the_same_late_commit_gets_the_honest_sender_banned():
    """What the site's close prevents: each peer deciding alone who was late splits the randomness."""
    swarm = _late_swarm("mprng_commit", site_closes=False)
    swarm.step()
    assert list(swarm.board.banned) == [swarm.ids[-1]]


def test_a_late_gradient_commitment_drops_only_that_contribution():
    swarm = _late_swarm("commit", site_closes=True)
    slow = swarm.ids[-1]
    first = swarm.step()
    assert {r.outcome for r in first.values()} == {"applied"}
    assert _same_update(first)
    assert all(slow not in r.record.contributors for r in first.values())
    assert all(slow in r.silent for r in first.values())
    swarm.run(2)
    assert swarm.board.banned == {}


@pytest.mark.parametrize("phase", ["agg_result", "scalars"])
def test_a_late_result_or_scalars_drops_the_step_on_every_peer_alike(phase):
    swarm = _late_swarm(phase, site_closes=True)
    first = swarm.step()
    assert {r.outcome for r in first.values()} == {"dropped"}
    swarm.run(2)
    assert swarm.board.banned == {}
    assert all(r.outcome == "applied" for results in swarm.history[1:] for r in results.values())
