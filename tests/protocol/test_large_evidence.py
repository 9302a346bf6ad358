"""Evidence larger than an envelope (security review, finding 4): parts of 50,000 floats (0.8M
parameters over 16 peers, a synthetic linear task) cannot travel inline in an accusation. Judges fetch
the contested part by its committed hash and abstain until they hold it; nobody is convicted on
missing evidence, and a case whose evidence nobody serves ends without punishing the honest side."""

from __future__ import annotations

import pytest
import torch

from btard_wire.payloads import MAX_INLINE_FLOATS
from worker_client.btard import protocol as P
from worker_client.btard.attacks import ATTACKS, RATIONAL_ATTACKS

from ._swarm import Swarm

NUMEL = 800_000
PEERS = 16


def _swarm(attack: str, **kw) -> Swarm:
    swarm = Swarm(n=PEERS, attack=attack, byzantine=(5,), numel=NUMEL, attack_start=1,
                  params=P.ProtocolParams(validators=2), **kw)
    assert NUMEL // PEERS > MAX_INLINE_FLOATS  # the contested part cannot be inlined
    return swarm


@pytest.mark.parametrize("attack,kind", [("lie_scalars", "wrong_scalar"), ("false_accuse", "false_accusation")])
def test_judges_fetch_a_part_too_large_to_inline_and_convict_only_the_liar(attack, kind):
    swarm = _swarm(attack)
    swarm.run(2)
    attacker = swarm.ids[5]
    assert set(swarm.board.banned) == {attacker}, swarm.board.banned
    assert swarm.board.banned[attacker].kind == kind
    attacked = swarm.history[1]
    honest = [attacked[p] for p in swarm.honest]
    assert {r.outcome for r in honest} == {"dropped"}
    swarm.step()
    assert {r.outcome for r in swarm.history[-1].values()} == {"applied"}


def test_a_case_whose_evidence_nobody_serves_drops_the_step_and_bans_nobody():
    swarm = _swarm("false_accuse")
    swarm.memory.serve_evidence = False
    swarm.run(2)
    assert not swarm.board.banned  # only the two holders could judge; the others abstained
    honest = [swarm.history[1][p] for p in swarm.honest]
    assert {r.outcome for r in honest} == {"dropped"}
    assert swarm.history[0][swarm.honest[0]].outcome == "applied"


@pytest.mark.parametrize("attack", RATIONAL_ATTACKS)
def test_every_rational_attack_on_parts_larger_than_an_envelope_bans_no_honest_peer(attack):
    swarm = _swarm(attack)
    swarm.run(3)
    assert not set(swarm.board.banned) - swarm.byzantine, swarm.board.banned
    for results in swarm.history:
        honest = [results[p] for p in swarm.honest if p in results]
        assert len({r.outcome for r in honest}) == 1
        updates = [r.update for r in honest if r.outcome == "applied"]
        assert all(torch.equal(u, updates[0]) for u in updates)
    if ATTACKS[attack].outcome == "banned":
        assert swarm.byzantine <= set(swarm.board.banned) | swarm.board.eliminated
