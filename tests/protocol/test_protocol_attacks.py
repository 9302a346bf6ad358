"""Each Byzantine behaviour of the registry is caught, and only the guilty peer pays (synthetic gradients)."""

from __future__ import annotations

import pytest
import torch

from worker_client.btard import protocol as P
from worker_client.btard.attacks import ATTACKS, GRADIENT_ATTACKS, PROTOCOL_ATTACKS

from ._swarm import Swarm

EXPECTED_KIND = {
    "wrong_aggregate": "bad_aggregate",
    "phantom_digest": "bad_aggregate",
    "duplicate_slot": "equivocation",
    "equivocate": "aggregate_mismatch",
    "bad_commitment": "part_mismatch",
    "lie_scalars": "wrong_scalar",
    "false_accuse": "false_accusation",
    "withhold_reveal": "silence",
    "replay": "silence",
}


def test_the_registry_covers_every_behaviour_of_the_spec():
    assert set(GRADIENT_ATTACKS) == {"sign_flip", "random_direction", "label_flip", "delayed", "ipm", "alie"}
    legacy = {a for a in PROTOCOL_ATTACKS if not ATTACKS[a].rational}
    assert legacy == {"wrong_aggregate", "equivocate", "bad_commitment", "lie_scalars", "false_accuse",
                      "withhold_part", "withhold_reveal", "replay", "reveal_dodger"}
    for name, cls in ATTACKS.items():
        # one hook of its own; a coalition role (the absorber) composes one other behaviour's hook
        own = [k for k in vars(cls) if k.startswith("hook_")]
        hooks = [k for k in dir(cls) if k.startswith("hook_") and getattr(cls, k) is not getattr(P.BtardPeer, k)]
        assert len(own) <= 1 and len(hooks) <= 2, f"{name} overrides {hooks}"
        assert len(hooks) == 1 or cls.__mro__[1] in ATTACKS.values(), name


def test_an_honest_swarm_applies_every_step_and_bans_nobody():
    swarm = Swarm(n=6)
    swarm.run(12)
    assert not swarm.board.banned and not swarm.board.eliminated
    for results in swarm.history:
        outcomes = {r.outcome for r in results.values()}
        assert outcomes == {"applied"}
        updates = [r.update for r in results.values()]
        assert all(torch.equal(u, updates[0]) for u in updates)
    # validators were drawn and validated someone in most steps
    roles = [r.role for results in swarm.history[1:] for r in results.values()]
    assert roles.count("validator") == len(swarm.history) - 1


@pytest.mark.parametrize("rule", ["fixed", "spread"])
def test_honest_aggregate_is_centered_clip_of_the_honest_gradients_with_the_rule_s_tau(rule):
    from worker_client.btard.aggregators import centered_clip
    from worker_client.btard.mprng import batch_seed, genesis_randomness
    from worker_client.btard.tau import part_tau

    from ._swarm import RUN, synthetic_gradient

    params = P.ProtocolParams(tau_rule=rule)
    swarm = Swarm(n=4, numel=40, params=params)
    results = swarm.step()
    update = next(iter(results.values())).update
    ctx = swarm.contexts()  # same group; step 0 had no validators, all contributed
    r0 = genesis_randomness(RUN, 0)
    grads = torch.stack([synthetic_gradient(0, batch_seed(r0, RUN, 0, p), 40) for p in swarm.ids])
    parts = []
    for a, b in P.part_bounds(40, 4):
        # the rule's tau from the distances to the published part: tau 1 (fixed), or 0.5 x the
        # majority-th distance (spread), which is then CenteredClip's own fixed point
        tau = part_tau(params, (grads[:, a:b] - update[a:b]).norm(dim=1).tolist())
        assert (tau == 1.0) == (rule == "fixed")
        parts.append(centered_clip(grads[:, a:b], tau=tau, eps=1e-7, max_iters=2000))
    assert torch.allclose(update, torch.cat(parts), atol=1e-5)
    assert len(ctx) == 4


@pytest.mark.parametrize("attack", [a for a in PROTOCOL_ATTACKS if a not in ("withhold_part", "withhold_reveal", "reveal_dodger")
                                    and not ATTACKS[a].rational])
def test_each_protocol_attack_bans_exactly_the_attacker(attack):
    swarm = Swarm(n=5, attack=attack, byzantine=(2,), attack_start=1)
    attacker = swarm.ids[2]
    for _ in range(6):
        swarm.step()
        if attacker in swarm.board.banned:
            break
    assert set(swarm.board.banned) == {attacker}, swarm.board.banned
    assert swarm.board.banned[attacker].kind == EXPECTED_KIND[attack]
    assert not swarm.board.eliminated
    # the step in which the ban happened was dropped by every honest peer, and they agree on the model
    last = swarm.history[-1]
    assert {last[p].outcome for p in swarm.honest} == {"dropped"}
    swarm.step()
    after = swarm.history[-1]
    assert attacker not in after and {r.outcome for r in after.values()} == {"applied"}


def test_a_false_accusation_bans_the_accuser_not_the_accused():
    swarm = Swarm(n=5, attack="false_accuse", byzantine=(0,), attack_start=0)
    swarm.step()
    ban = swarm.board.banned[swarm.ids[0]]
    assert ban.kind == "false_accusation" and ban.accuser == swarm.ids[0]
    assert len(swarm.board.banned) == 1


def test_withholding_a_part_eliminates_the_pair_and_queues_it_for_moderation():
    swarm = Swarm(n=5, attack="withhold_part", byzantine=(3,), attack_start=0,
                  params=P.ProtocolParams(validators=0))
    results = swarm.step()
    attacker = swarm.ids[3]
    victim = next(p for p in swarm.ids if p != attacker)
    assert {r.outcome for r in results.values()} == {"dropped"}
    assert swarm.board.moderation_queue[0]["eliminator"] == victim
    assert swarm.board.moderation_queue[0]["target"] == attacker
    assert swarm.board.eliminated == {victim, attacker}
    assert not swarm.board.banned
    results = swarm.step()
    assert set(results) == set(swarm.ids) - {victim, attacker}
    assert {r.outcome for r in results.values()} == {"applied"}


def test_withholding_a_reveal_is_silence_the_steps_apply_and_the_limit_bans_for_silence():
    from btard_wire.board import SILENCE_LIMIT

    swarm = Swarm(n=5, attack="withhold_reveal", byzantine=(1,), attack_start=0)
    attacker = swarm.ids[1]
    swarm.run(SILENCE_LIMIT)
    assert set(swarm.board.banned) == {attacker}
    assert swarm.board.banned[attacker].kind == EXPECTED_KIND["withhold_reveal"]
    assert all(results[p].outcome == "applied" for results in swarm.history for p in swarm.honest)


def test_replayed_messages_are_rejected_and_the_silent_peer_is_banned_after_repeated_silence():
    swarm = Swarm(n=5, attack="replay", byzantine=(4,), attack_start=1)
    swarm.run(5)
    attacker = swarm.ids[4]
    assert swarm.board.banned[attacker].kind == "silence"
    assert len(swarm.board.banned) == 1
    assert any(who == attacker for who, _ in swarm.board.rejected)


@pytest.mark.parametrize("attack", GRADIENT_ATTACKS)
def test_each_gradient_attack_is_caught_by_validation_by_recalculation(attack):
    swarm = Swarm(n=6, attack=attack, byzantine=(1, 4), attack_start=1,
                  params=P.ProtocolParams(validators=2), numel=60)
    for _ in range(25):
        swarm.step()
        if swarm.byzantine <= set(swarm.board.banned):
            break
    assert set(swarm.board.banned) == swarm.byzantine
    assert {b.kind for b in swarm.board.banned.values()} == {"recalc"}


def test_a_gradient_attacker_passes_every_aggregation_time_check():
    # sign flip with huge norm: commitments, scalars, distances and the fixed point all hold, so the step
    # is applied; only the recalculation at the next step can tell.
    swarm = Swarm(n=5, attack="sign_flip", byzantine=(2,), attack_start=0,
                  params=P.ProtocolParams(validators=0))
    results = swarm.step()
    assert {r.outcome for r in results.values()} == {"applied"}
    update = results[swarm.ids[0]].update
    assert torch.isfinite(update).all()
    assert not swarm.board.banned


def test_attackers_respect_attack_start_and_attack_every():
    swarm = Swarm(n=5, attack="lie_scalars", byzantine=(1,), attack_start=2, attack_every=3)
    peer = swarm.peers[swarm.ids[1]]
    assert [peer.active(t) for t in range(9)] == [False, False, True, False, False, True, False, False, True]
    swarm.run(2)
    assert not swarm.board.banned
    swarm.step()
    assert swarm.ids[1] in swarm.board.banned


class _MuteIn(P.BtardPeer):
    """Never posts its broadcast of one phase (a crashed or censored peer, not an attack in the registry)."""

    phase = "validation"

    def hook_outgoing_broadcast(self, envelope, s):
        return [] if envelope.phase == self.phase else [envelope]


@pytest.mark.parametrize("phase,outcome", [("validation", "applied"), ("scalars", "dropped"),
                                           ("agg_result", "dropped")])
def test_a_missing_broadcast_removes_the_silent_peer_from_the_step_and_reports_it(phase, outcome):
    swarm = Swarm(n=5, params=P.ProtocolParams(validators=0))
    mute_id = swarm.ids[2]
    mute = type("Mute", (_MuteIn,), {"phase": phase})(swarm.identities[2], swarm.params,
                                                       verifier=swarm.verifier)
    swarm.peers[mute_id] = mute
    swarm.byzantine = {mute_id}
    results = swarm.step()
    honest = [results[p] for p in swarm.honest]
    assert {r.outcome for r in honest} == {outcome}
    assert all(mute_id in r.silent for r in honest)
    assert not swarm.board.banned and not swarm.board.eliminated


class _Huge(P.BtardPeer):
    """Commits honestly to a gradient at the edge of float32 (not in the registry: a stress case)."""

    def hook_corrupt_gradient(self, gradient, s):
        out = torch.full_like(gradient, 3.4e38)
        out[::2] = -3.4e38
        return out


def test_a_gradient_at_the_float32_limit_neither_crashes_nor_poisons_the_step():
    swarm = Swarm(n=5, params=P.ProtocolParams(validators=0))
    huge_id = swarm.ids[1]
    swarm.peers[huge_id] = _Huge(swarm.identities[1], swarm.params, verifier=swarm.verifier)
    swarm.byzantine = {huge_id}
    results = swarm.step()
    honest = [results[p] for p in swarm.honest]
    assert {r.outcome for r in honest} == {"applied"}
    update = honest[0].update
    assert torch.isfinite(update).all() and float(update.abs().max()) < 10.0
    assert not swarm.board.banned


# behaviours that end banned (the rational ones whose gain is only bounded: test_rational_attacks)
CAUGHT = [a for a in PROTOCOL_ATTACKS if ATTACKS[a].outcome == "banned"]


@pytest.mark.parametrize("attack", CAUGHT)
def test_three_colluding_protocol_attackers_of_seven_are_all_removed_and_no_honest_peer_is_banned(attack):
    swarm = Swarm(n=7, attack=attack, byzantine=(1, 4, 5), attack_start=1, params=P.ProtocolParams(validators=2))
    swarm.run(5)
    removed = set(swarm.board.banned) | swarm.board.eliminated
    assert swarm.byzantine <= removed
    assert not set(swarm.board.banned) - swarm.byzantine
    if attack == "withhold_part":
        # every removed pair holds an attacker, so the honest share never drops
        effective = [e for e in swarm.board.moderation_queue if e["effective"]]
        assert all(e["target"] in swarm.byzantine for e in effective)
        assert len(effective) == 3
    # once they are gone, honest steps apply again
    assert {r.outcome for r in swarm.history[-1].values()} == {"applied"}


@pytest.mark.parametrize("attack", [None, *CAUGHT, "sign_flip"])
def test_outcomes_do_not_depend_on_the_delivery_order(attack):
    # messages, parts and aggregates delivered in random order (a part before its commitment, an
    # aggregate before H(a_j), a report before the accusation it lists, ...)
    byz = (2,) if attack else ()
    swarm = Swarm(n=5, attack=attack, byzantine=byz, attack_start=1, shuffle=True,
                  params=P.ProtocolParams(validators=2))
    # a gradient attack is caught when it is drawn as a target (2 of 5 per step, from r_t): 10 steps
    swarm.run(10 if attack == "sign_flip" else 5)
    assert not set(swarm.board.banned) - swarm.byzantine
    removed = set(swarm.board.banned) | swarm.board.eliminated
    if attack is not None:
        assert swarm.ids[2] in removed
    else:
        assert not removed
        assert all({r.outcome for r in h.values()} == {"applied"} for h in swarm.history)


def test_alie_derives_z_from_the_group_it_is_in_not_from_colluders_already_banned():
    from types import SimpleNamespace

    from worker_client.btard.attacks import ALIE, Collusion

    colluders = {f"b{i}" for i in range(7)}
    honest = [f"h{i}" for i in range(9)]
    attacker = SimpleNamespace(collusion=Collusion(members=set(colluders)), default_z=ALIE.default_z)
    full = honest + sorted(colluders)
    assert abs(ALIE.z_for_group(attacker, full) - 1.15) < 0.01  # Baruch et al. for n = 16, b = 7
    after_bans = honest + ["b0", "b1", "b2"]  # four colluders banned: n = 12, b = 3
    z = ALIE.z_for_group(attacker, after_bans)
    assert abs(z - ALIE.default_z(12, 3)) < 1e-12 and z < 1.0
    assert ALIE.default_z(12, 7) > 4.0  # what pairing the smaller group with all 7 colluders would give
