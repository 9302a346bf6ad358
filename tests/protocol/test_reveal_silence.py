"""A reveal missing at the site's close of ``mprng_reveal`` is silence, not a ban (issue 13; SR finding 14).

r_t then combines the reveals the board holds at the close, in group order, on every peer and on the board
(``btard_wire.board.mprng_output`` with the closed sender set); the step is not dropped; consecutive silence
still bans at ``SILENCE_LIMIT``; a reveal that does not match its commitment is still a provable fault.
"""

from __future__ import annotations

import torch

from btard_wire import board as rules
from btard_wire.randomness import combine_reveals
from worker_client.btard import protocol as P
from worker_client.btard.attacks import WithholdReveal

from ._swarm import Swarm


def _site_swarm(n: int = 5, **kw) -> Swarm:
    swarm = Swarm(n=n, params=P.ProtocolParams(tau=1.0, validators=1, board_echo=True), **kw)
    swarm.memory.site_closes = True
    return swarm


def _agree(results: dict[str, P.StepResult], peers) -> bool:
    rs = {results[p].r for p in peers}
    updates = [results[p].update for p in peers]
    return len(rs) == 1 and all(u is not None and torch.equal(u, updates[0]) for u in updates)


def _revealed_secrets(swarm: Swarm, peers) -> list[bytes]:
    reveals = swarm.board._mprng["mprng_reveal"]
    return [bytes.fromhex(reveals[p]) for p in swarm.board.group if p in peers]


def test_it_counts_an_honest_reveal_that_misses_the_close_as_silence_and_applies_the_step():
    swarm = _site_swarm()
    slow = swarm.ids[-1]
    swarm.memory.late = lambda sender, env: sender == slow and env.phase == "mprng_reveal" and env.step == 0
    first = swarm.step()
    assert swarm.board.banned == {}
    assert {r.outcome for r in first.values()} == {"applied"}
    assert _agree(first, swarm.ids)  # the slow peer too: it applied the site's close like everyone
    assert slow not in swarm.board.closed["mprng_reveal"]
    others = [p for p in swarm.ids if p != slow]
    assert first[others[0]].r == combine_reveals(_revealed_secrets(swarm, others))
    assert all(slow in r.silent for r in first.values())
    assert swarm.board.silence[slow] == 1
    swarm.run(3)  # it speaks again: its own next steps proceed and its silence count resets
    assert swarm.board.banned == {} and swarm.board.silence[slow] == 0
    assert all(r.outcome == "applied" for results in swarm.history for r in results.values())


def test_the_board_draws_the_same_validators_as_the_peers_when_a_reveal_is_missing():
    swarm = _site_swarm()
    swarm.step()
    slow = swarm.ids[1]
    swarm.memory.late = lambda sender, env: sender == slow and env.phase == "mprng_reveal"
    results = swarm.step()
    board_r = rules.mprng_output(run=swarm.board.run, step=1, members=swarm.board.group,
                                 commitments=swarm.board._mprng["mprng_commit"],
                                 reveals=swarm.board._mprng["mprng_reveal"],
                                 revealed=swarm.board.closed["mprng_reveal"])
    assert board_r is not None and {r.r for r in results.values()} == {board_r}
    drawn = {p for p, r in results.items() if r.role == "validator"}
    assert drawn == set(swarm.board.validators(swarm.params.validators))


def test_a_withheld_reveal_is_silence_and_the_third_consecutive_one_bans_for_silence():
    swarm = Swarm(n=5, attack="withhold_reveal", byzantine=(1,), attack_start=0)
    attacker = swarm.ids[1]
    for step in range(rules.SILENCE_LIMIT):
        results = swarm.step()
        assert {results[p].outcome for p in swarm.honest} == {"applied"}, step
        assert _agree(results, swarm.honest)
        if step < rules.SILENCE_LIMIT - 1:
            assert attacker not in swarm.board.banned and swarm.board.silence[attacker] == step + 1
    assert set(swarm.board.banned) == {attacker}
    assert swarm.board.banned[attacker].kind == "silence"


def test_a_withholder_that_reveals_in_between_resets_its_silence_count():
    swarm = Swarm(n=5, attack="withhold_reveal", byzantine=(1,), attack_start=0, attack_every=2)
    swarm.run(5)
    attacker = swarm.ids[1]
    assert swarm.board.banned == {}
    assert swarm.board.silence[attacker] == 1  # silent at 0, 2, 4; spoke at 1, 3
    assert all(r.outcome == "applied" for results in swarm.history for p, r in results.items()
               if p in swarm.honest)


def test_a_reveal_that_does_not_match_its_commitment_still_bans():
    class BadReveal(WithholdReveal):
        name = "bad_reveal_test"

        def hook_reveal(self, secret, s):
            return bytes(32) if self.active(s.ctx.step) else secret

    swarm = Swarm(n=5)
    bad = swarm.ids[2]
    old = swarm.peers[bad]
    peer = BadReveal(old.identity, swarm.params, collusion=swarm.collusion)
    peer.entropy, peer.verifier = old.entropy, old.verifier
    swarm.peers[bad] = swarm.memory.peers[bad] = peer
    swarm.byzantine.add(bad)
    results = swarm.step()
    assert swarm.board.banned[bad].kind == "bad_reveal"
    assert {results[p].outcome for p in swarm.honest} == {"dropped"}


def _dodger_swarm(n: int, m: int, seed: int = 0) -> Swarm:
    return Swarm(n=n, attack="reveal_dodger", byzantine=(1,), attack_start=0, seed=seed,
                 params=P.ProtocolParams(tau=1.0, validators=m))


def test_a_reveal_dodger_is_banned_for_silence_and_nobody_honest_is_and_honest_peers_agree():
    swarm = _dodger_swarm(n=5, m=4)  # four of five contributors checked: it is a target most steps
    dodger = swarm.ids[1]
    for _ in range(12):
        results = swarm.step()
        honest = [p for p in results if p in swarm.honest]
        assert len({results[p].outcome for p in honest}) == 1
        assert _agree(results, honest) or {results[p].outcome for p in honest} == {"dropped"}
        if dodger in swarm.board.banned:
            break
    peer = swarm.peers[dodger]
    assert set(swarm.board.banned) == {dodger} and swarm.board.banned[dodger].kind == "silence"
    # banned at its SILENCE_LIMIT-th consecutive withheld reveal, never later
    last = swarm.step_no - 1
    assert peer.dodged[-rules.SILENCE_LIMIT:] == list(range(last - rules.SILENCE_LIMIT + 1, last + 1))
    assert all(r.outcome == "applied" for results in swarm.history for p, r in results.items() if p in swarm.honest)


def test_a_reveal_dodger_escapes_a_check_only_when_the_draw_without_it_misses_it_too():
    from btard_wire.board import checkable_targets
    from worker_client.btard.mprng import select_validators

    swarm = _dodger_swarm(n=6, m=2, seed=3)
    dodger = swarm.ids[1]
    swarm.run(10)
    peer = swarm.peers[dodger]
    assert not [p for p in swarm.board.banned if p != dodger]
    assert peer.dodged and set(peer.escaped) <= set(peer.dodged)
    honest = swarm.honest[0]
    for t in peer.dodged:  # a withheld step: r_t came from the others, and every honest peer used it
        results = swarm.history[t]
        assert dodger in results[honest].silent and _agree(results, swarm.honest)
        prev = swarm.history[t - 1][honest].record
        draw = select_validators(results[honest].r, list(results), checkable_targets(
            contributors=prev.contributors, scalars_senders=prev.scalars), 2)
        assert (dodger not in draw.values()) == (t in peer.escaped)
