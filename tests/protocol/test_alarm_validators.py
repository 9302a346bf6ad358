"""More validators after a recalculation ban (ProtocolParams.alarm_factor; docs/protocol.md, "More validators
after a ban"): a step that follows a step with a ban for a wrong recomputation draws twice the validators.

A recalculation ban proves a coalition is attacking now, and colluders attack together: the members still
unchecked face twice the checks in the next step, while a run nobody attacks pays nothing. Every peer draws
the number from its record of the previous step, so they all agree, and so does the board."""

from __future__ import annotations

import pytest

from btard_wire.errors import ProtocolError
from btard_wire.randomness import ALARM_FACTOR, validators_for_step
from worker_client.btard import protocol as P

from ._swarm import Swarm


def _drawn(swarm: Swarm, results: dict[str, P.StepResult]) -> dict[str, str]:
    views = {p: dict(swarm.peers[p]._s.validators) for p in results if p not in swarm.byzantine}
    first = next(iter(views.values()))
    assert all(v == first for v in views.values())  # every honest peer drew the same validators
    return first


def _run(alarm_factor: int, steps: int = 14):
    swarm = Swarm(n=9, attack="sign_flip", byzantine=(2, 5, 7), attack_start=1,
                  params=P.ProtocolParams(validators=2, alarm_factor=alarm_factor))
    counts = []
    for _ in range(steps):
        results = swarm.step()
        if swarm.step_no == 1:
            continue  # step 0 has nothing to validate
        drawn = _drawn(swarm, results)
        assert swarm.board.validators(2, alarm_factor=alarm_factor) == drawn  # the board's rule gives the same
        after_ban = any(b.step == swarm.step_no - 2 and b.kind == "recalc" for b in swarm.board.banned.values())
        counts.append((after_ban, len(drawn)))
    return swarm, counts


def test_a_step_after_a_recalculation_ban_draws_twice_the_validators_and_every_peer_and_the_board_agree():
    swarm, counts = _run(ALARM_FACTOR)
    assert any(after for after, _ in counts)  # the attackers were caught while others still attacked
    assert all(n == (4 if after else 2) for after, n in counts)
    assert set(swarm.board.banned) == swarm.byzantine  # every attacker banned, no honest peer
    assert {b.kind for b in swarm.board.banned.values()} == {"recalc"}


def test_with_the_alarm_turned_off_every_step_draws_the_same_number_of_validators():
    swarm, counts = _run(1)
    assert any(after for after, _ in counts)
    assert {n for _, n in counts} == {2}
    assert not set(swarm.board.banned) - swarm.byzantine


def test_the_alarm_rule_multiplies_only_after_a_recalculation_ban_and_refuses_a_bad_factor():
    assert validators_for_step(4, prev_recalc_ban=True, alarm_factor=2) == 8
    assert validators_for_step(4, prev_recalc_ban=False, alarm_factor=2) == 4
    assert validators_for_step(0, prev_recalc_ban=True, alarm_factor=2) == 0  # validation off stays off
    assert validators_for_step(4, prev_recalc_ban=True, alarm_factor=1) == 4
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ProtocolError, match="alarm_factor"):
            validators_for_step(4, prev_recalc_ban=True, alarm_factor=bad)
        with pytest.raises(ValueError, match="alarm_factor"):
            P.ProtocolParams(alarm_factor=bad)
