"""Rational attackers (security review 2026-12): each registered behaviour overrides one hook and never
signs the evidence of its own deviation where an unprovable alternative exists. For every one, in memory
and in random delivery order: no honest peer is banned, every honest peer reaches the same outcome and
the same update in every step, the attacker is banned or its gain is bounded, and the run keeps applying
steps (docs/threat-model.md, "Protocol")."""

from __future__ import annotations

import pytest
import torch

from worker_client.btard import protocol as P
from worker_client.btard.attacks import ATTACKS, RATIONAL_ATTACKS

from ._swarm import Swarm

STEPS = 7


def _model(swarm: Swarm, peer: str | None = None) -> torch.Tensor:
    """The sum of the updates applied by ``peer`` (the first honest peer by default): the model's path."""
    total = torch.zeros(swarm.numel)
    for results in swarm.history:
        r = results.get(peer) if peer else next((results[p] for p in swarm.honest if p in results), None)
        if r is not None and r.outcome == "applied":
            total += r.update
    return total


def _assert_agreement(swarm: Swarm) -> None:
    for t, results in enumerate(swarm.history):
        honest = [results[p] for p in swarm.honest if p in results]
        assert len({r.outcome for r in honest}) == 1, (t, {p[:6]: results[p].outcome for p in results})
        updates = [r.update for r in honest if r.outcome == "applied"]
        assert all(torch.equal(u, updates[0]) for u in updates), t


def _run(attack: str, *, n: int = 7, byzantine=(1, 4), seed: int = 0, board_rules: bool = True,
         steps: int = STEPS, **kw) -> Swarm:
    swarm = Swarm(n=n, attack=attack, byzantine=byzantine, attack_start=1, shuffle=True, seed=seed,
                  params=P.ProtocolParams(validators=2), **kw)
    swarm.board.check_reports = board_rules
    swarm.run(steps)
    return swarm


@pytest.mark.parametrize("attack", RATIONAL_ATTACKS)
@pytest.mark.parametrize("seed", [0, 1])
def test_it_bans_no_honest_peer_keeps_honest_peers_agreed_and_bounds_the_attacker(attack, seed):
    swarm = _run(attack, seed=seed)
    assert not set(swarm.board.banned) - swarm.byzantine, swarm.board.banned
    _assert_agreement(swarm)
    removed = set(swarm.board.banned) | swarm.board.eliminated
    cls = ATTACKS[attack]
    if cls.outcome == "banned" or swarm.byzantine <= removed:
        assert swarm.byzantine <= removed, (attack, swarm.board.banned)
    else:  # gain bounded: no applied update is larger than ``bound`` times the clean run's typical one
        clean = Swarm(n=7, seed=seed, shuffle=True, params=P.ProtocolParams(validators=2))
        clean.run(STEPS)
        typical = sorted(float(r.update.norm()) for h in clean.history for r in h.values())[len(clean.ids) * STEPS // 2]
        worst = max((float(r.update.norm()) for h in swarm.history for p, r in h.items()
                     if p in swarm.honest and r.outcome == "applied"), default=0.0)
        assert worst <= cls.bound * typical, (attack, worst / typical)
    last = swarm.history[-2:]
    assert any(r.outcome == "applied" for results in last for r in results.values()), attack


def test_it_never_applies_a_step_whose_report_names_a_phantom_accusation_even_on_a_lax_board():
    """Invariant 1 in the core alone: with a board that relays the phantom report, every attacked step
    is dropped (the fixed-point check never ran), and the report is the reporter's provable fault."""
    swarm = _run("phantom_digest", byzantine=(2,), board_rules=False, steps=4)
    attacker = swarm.ids[2]
    assert set(swarm.board.banned) == {attacker}
    assert swarm.board.banned[attacker].kind == "bad_broadcast"
    _assert_agreement(swarm)
    attacked = swarm.history[1]
    assert {attacked[p].outcome for p in swarm.honest} == {"dropped"}
    assert {r.outcome for r in swarm.history[-1].values()} == {"applied"}


def test_a_board_refuses_a_report_that_names_a_phantom_digest_and_the_forgery_is_caught():
    swarm = _run("phantom_digest", byzantine=(2,), steps=4)
    attacker = swarm.ids[2]
    assert swarm.board.banned[attacker].kind == "bad_aggregate"
    assert any("does not hold" in why for who, why in swarm.board.rejected if who == attacker)


def test_two_signed_messages_in_one_slot_are_refused_by_the_board_and_ban_their_sender():
    swarm = _run("duplicate_slot", byzantine=(2,), steps=4)
    attacker = swarm.ids[2]
    assert set(swarm.board.banned) == {attacker}
    assert swarm.board.banned[attacker].kind == "equivocation"
    assert len(swarm.board.banned[attacker].evidence) == 2
    assert any("equivocation" in why for who, why in swarm.board.rejected if who == attacker)


@pytest.mark.parametrize("seed", range(4))
def test_on_a_board_that_relays_both_copies_the_peers_ban_the_equivocator_and_never_an_honest_aggregator(seed):
    swarm = _run("duplicate_slot", byzantine=(2,), board_rules=False, steps=3, seed=seed)
    attacker = swarm.ids[2]
    assert set(swarm.board.banned) == {attacker}
    assert swarm.board.banned[attacker].kind == "bad_broadcast"
    assert "equivocation" in swarm.board.banned[attacker].reason


@pytest.mark.parametrize("attack", ["late_accusation", "late_eliminate", "unlisted_accusation"])
@pytest.mark.parametrize("seed", range(6))
def test_a_late_accusation_or_eliminate_never_forks_the_honest_peers_even_on_a_lax_board(attack, seed):
    """Without the board's refusals the reports alone fix what decides the step: every honest peer
    counts the same accusations and ELIMINATEs, whatever the delivery order."""
    swarm = _run(attack, byzantine=(3,), board_rules=False, steps=3, seed=seed)
    assert not set(swarm.board.banned) - swarm.byzantine
    _assert_agreement(swarm)


def test_the_board_refuses_an_accusation_or_eliminate_after_its_senders_report():
    for attack in ("late_accusation", "late_eliminate"):
        swarm = _run(attack, byzantine=(3,), steps=3)
        attacker = swarm.ids[3]
        assert any("after the sender's own validation report" in why
                   for who, why in swarm.board.rejected if who == attacker), attack
        assert not swarm.board.banned and not swarm.board.eliminated
        assert all(r.outcome == "applied" for results in swarm.history for r in results.values())


def test_an_absorbed_forgery_passes_the_fixed_point_check_but_moves_each_step_at_most_the_aggregate_bound():
    """Invariant 3: without recalculation (m = 0) the absorber's forgery passes every aggregation-time
    check; without the bound any forged aggregate is applied, with it every step stays bounded."""
    def worst_update(bound: float) -> list[float]:
        swarm = Swarm(n=7, attack="absorber", byzantine=(4,), attack_start=1, seed=3,
                      params=P.ProtocolParams(validators=0, aggregate_bound=bound))
        swarm.run(8)
        assert not swarm.board.banned
        _assert_agreement(swarm)
        return [float(h[swarm.honest[0]].update.norm()) for h in swarm.history
                if h[swarm.honest[0]].outcome == "applied"]

    free, bounded = worst_update(0.0), worst_update(4.0)
    assert len(free) == 8 and min(free[1:]) > 50 * free[0]  # any aggregate is applied
    assert len(bounded) >= 6 and max(bounded) < 25 * bounded[0]


def test_a_just_in_time_staller_is_charged_alone_when_the_board_closes_phases():
    """With the site's closes, a broadcast held to the deadline is refused and only its sender is
    reported silent; it is banned for repeated silence, and the honest peers agree in every step."""
    swarm = Swarm(n=6, attack="just_in_time", byzantine=(2,), attack_start=1, shuffle=True,
                  params=P.ProtocolParams(validators=2, board_echo=True))
    swarm.memory.site_closes = True
    staller = swarm.ids[2]
    swarm.run(6)
    assert set(swarm.board.banned) == {staller} and swarm.board.banned[staller].kind == "silence"
    _assert_agreement(swarm)
    for results in swarm.history[1:4]:
        assert all(set(r.silent) == {staller} for p, r in results.items() if p != staller)
    assert {r.outcome for r in swarm.history[-1].values()} == {"applied"}


def test_a_timed_gradient_attacker_that_guesses_its_validators_is_caught_like_any_other():
    for seed in range(2):
        swarm = Swarm(n=7, attack="timed_alie", byzantine=(1, 4), attack_start=1, seed=seed,
                      params=P.ProtocolParams(validators=2))
        swarm.run(16)
        assert set(swarm.board.banned) == swarm.byzantine
        assert {b.kind for b in swarm.board.banned.values()} == {"recalc"}


@pytest.mark.parametrize("tau", [1e-3, 1e-2, 1e-1, 1.0, 10.0])
def test_the_aggregate_bound_never_drops_an_honest_step_for_any_tau(tau):
    swarm = Swarm(n=7, params=P.ProtocolParams(tau=tau, tau_rule="fixed", validators=2), shuffle=True)
    swarm.run(6)
    assert not swarm.board.banned
    assert all(r.outcome == "applied" for results in swarm.history for r in results.values())
    _assert_agreement(swarm)


def test_colluders_in_separate_processes_coordinate_through_one_shared_file(tmp_path):
    """Networked colluders each build their own peer: given the same file (``BTARD_COLLUSION``), they
    share its seed and learn each other's ids, and strike as one coalition object would (an ELIMINATE
    storm whose colluders each pick a different honest victim)."""
    from worker_client.collusion import SharedCollusion

    path = tmp_path / "coalition.json"
    path.write_text('{"seed": 41}')
    a, b = SharedCollusion(path), SharedCollusion(path)
    a.join("peer-a")
    assert b.members == {"peer-a"} and b.seed == 41
    b.join("peer-b")
    assert a.members == b.members == {"peer-a", "peer-b"}

    def storm(shared: bool) -> Swarm:
        swarm = Swarm(n=7, attack="eliminate_storm", byzantine=(1, 4), attack_start=1, seed=3,
                      params=P.ProtocolParams(validators=2))
        if shared:
            file = tmp_path / "storm.json"
            for p in swarm.byzantine:  # what each worker process does with BTARD_COLLUSION set
                swarm.peers[p].collusion = SharedCollusion(file)
                swarm.peers[p].collusion.join(p)
        swarm.run(3)
        return swarm

    together, apart = storm(shared=False), storm(shared=True)
    assert together.board.moderation_queue == apart.board.moderation_queue
    targets = {e["target"] for e in apart.board.moderation_queue}
    assert len(targets) == 2 and not targets & apart.byzantine  # two different honest victims


def test_a_worker_process_finds_its_coalition_in_the_environment(tmp_path):
    from btard_wire.envelope import Identity
    from worker_client.btard.attacks import make_peer
    from worker_client.collusion import COLLUSION_ENV, SharedCollusion, collusion_from_env

    path = tmp_path / "coalition.json"
    assert collusion_from_env({}) is None
    peers = [make_peer("absorber", Identity.from_seed(f"c{i}".encode()),
                       collusion=collusion_from_env({COLLUSION_ENV: str(path)})) for i in range(2)]
    assert all(isinstance(p.collusion, SharedCollusion) for p in peers)
    assert peers[0].collusion.members == {p.peer_id for p in peers}
