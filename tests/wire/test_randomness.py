"""Shared randomness without torch (btard_wire.randomness): the one validator draw and its timing."""

from __future__ import annotations

import hashlib
import math
import random
import subprocess
import sys
from collections import Counter

import pytest

from btard_wire import board as rules
from btard_wire.randomness import (
    combine_reveals,
    draw_validators,
    genesis_randomness,
    keyed_shuffle,
    mprng_commitment,
    skipped_randomness,
)

GROUP = [f"p{i}" for i in range(8)]


def _r(i: int) -> bytes:
    return random.Random(i).randbytes(32)


def test_the_wire_randomness_and_board_import_without_torch():
    code = ("import sys, btard_wire.randomness, btard_wire.board; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_core_uses_the_wire_functions():
    from worker_client.btard import mprng

    assert mprng.genesis_randomness is genesis_randomness and mprng.skipped_randomness is skipped_randomness
    assert mprng.mprng_commitment is mprng_commitment and mprng.combine_reveals is combine_reveals
    assert mprng.select_validators(_r(1), GROUP, GROUP, 2) == draw_validators(_r(1), group=GROUP, targets=GROUP, m=2)


def test_a_shuffle_is_a_permutation_and_every_item_lands_everywhere_equally_often():
    items = ["a", "b", "c", "d"]
    trials = 4000
    at = Counter()
    for i in range(trials):
        out = keyed_shuffle(_r(i), b"test", items)
        assert sorted(out) == items
        at.update((item, pos) for pos, item in enumerate(out))
    expected = trials / len(items)
    bound = 5 * math.sqrt(expected * (1 - 1 / len(items)))  # 5 sigma of a binomial count
    assert all(abs(at[(item, pos)] - expected) <= bound for item in items for pos in range(4)), at
    assert keyed_shuffle(_r(0), b"test", items) == keyed_shuffle(_r(0), b"test", items)
    assert any(keyed_shuffle(_r(i), b"test", items) != keyed_shuffle(_r(i), b"other", items) for i in range(20))


@pytest.mark.parametrize("seed", range(20))
def test_a_draw_gives_distinct_targets_never_the_validator_itself(seed):
    targets = GROUP[:5] + ["gone"]  # a contributor of the previous step no longer in the group
    got = draw_validators(_r(seed), group=GROUP, targets=targets, m=3)
    assert len(got) == 3
    assert all(v in GROUP and t in GROUP[:5] and v != t for v, t in got.items())
    assert len(set(got.values())) == 3
    assert draw_validators(_r(seed), group=GROUP[::-1], targets=targets[::-1], m=3) == got  # order-free


def test_a_draw_is_empty_when_there_is_nothing_to_validate():
    assert draw_validators(_r(0), group=GROUP, targets=GROUP, m=0) == {}
    assert draw_validators(_r(0), group=GROUP, targets=["x"], m=2) == {}
    assert draw_validators(_r(0), group=["p0"], targets=["p0"], m=2) == {}
    assert draw_validators(_r(0), group=["p0", "p1"], targets=["p0"], m=2) == {"p1": "p0"}


def _step(rng: random.Random, step: int, run: str = "r"):
    secrets = {p: rng.randbytes(32) for p in GROUP}
    commits = {p: mprng_commitment(x, run=run, step=step, sender=p) for p, x in secrets.items()}
    return secrets, commits


def test_an_attacker_knowing_every_public_value_before_the_scalars_predicts_its_check_at_chance_rate():
    """Issue 12, invariant 2: a gradient attacker of step t-1 decides whether to attack while step t-1's
    scalars are not yet on the board. It knows r_{t-1}, the groups, its own MPRNG secret of step t and
    (more than it can) every commitment of step t. Whatever it computes from that, the draw from r_t is
    independent of it: when it believes it is safe, it is checked at the base rate."""
    rng = random.Random(2026)
    attacker, m, trials = "p3", 2, 4000
    # [believed safe, then checked]; the oracle knows r_t, which nobody does yet: it shows the statistic
    # detects a prediction that works
    checked = {"old rule (r_{t-1})": [0, 0], "commitments for secrets": [0, 0], "oracle": [0, 0]}
    base = 0
    exact = Counter()  # predictor -> trials in which it guessed the whole assignment
    actuals = Counter()
    for t in range(trials):
        r_prev = rng.randbytes(32)
        secrets, commits = _step(rng, t)
        actual = rules.validator_assignment(run="r", step=t, group=GROUP, commitments=commits,
                                            reveals={p: x.hex() for p, x in secrets.items()},
                                            prev_contributors=GROUP, m=m)
        target = attacker in actual.values()
        base += target
        guesses = {
            "old rule (r_{t-1})": draw_validators(r_prev, group=GROUP, targets=GROUP, m=m),
            "commitments for secrets": draw_validators(combine_reveals(
                [secrets[p] if p == attacker else bytes.fromhex(commits[p]) for p in GROUP]),
                group=GROUP, targets=GROUP, m=m),
            "oracle": actual,
        }
        actuals[tuple(sorted(actual.items()))] += 1
        for name, guess in guesses.items():
            exact[name] += guess == actual
            if attacker not in guess.values():
                checked[name][0] += 1
                checked[name][1] += target
    p = base / trials
    assert 0.15 < p < 0.35  # about m / n
    # guessing the whole assignment: no better than always naming the most frequent one
    chance = max(actuals.values()) / trials
    assert all(exact[name] <= trials * chance + 4 * math.sqrt(trials * chance) for name in exact if name != "oracle")
    assert exact["oracle"] == trials
    oracle_safe, oracle_caught = checked.pop("oracle")
    assert oracle_safe > trials / 2 and oracle_caught == 0
    for name, (safe, caught) in checked.items():
        sigma = math.sqrt(p * (1 - p) / safe)
        assert abs(caught / safe - p) <= 4 * sigma, (name, safe, caught, p)


def test_the_assignment_changes_when_any_honest_reveal_changes():
    rng = random.Random(5)
    secrets, commits = _step(rng, 9)
    reveals = {p: x.hex() for p, x in secrets.items()}
    before = rules.validator_assignment(run="r", step=9, group=GROUP, commitments=commits, reveals=reveals,
                                        prev_contributors=GROUP, m=2)
    for honest in GROUP:
        seen = set()
        for _ in range(40):
            x = rng.randbytes(32)
            c2 = {**commits, honest: mprng_commitment(x, run="r", step=9, sender=honest)}
            r2 = {**reveals, honest: x.hex()}
            after = rules.validator_assignment(run="r", step=9, group=GROUP, commitments=c2, reveals=r2,
                                               prev_contributors=GROUP, m=2)
            assert after == draw_validators(combine_reveals([bytes.fromhex(r2[p]) for p in GROUP]), group=GROUP,
                                            targets=GROUP, m=2)
            seen.add(tuple(sorted(after.items())))
        assert len(seen) > 10 and len(before) == 2


def test_probation_panels_are_two_distinct_members_spread_evenly_and_a_key_cannot_choose_them():
    from btard_wire.randomness import draw_probation_panels

    members, candidates = GROUP[:4], ["c0", "c1", "c2", "c3", "c4", "c5"]
    got = draw_probation_panels(_r(0), members=members, candidates=candidates + ["p0"])
    assert set(got) == set(candidates)  # a member is never its own candidate
    assert all(len(panel) == 2 and len(set(panel)) == 2 and set(panel) <= set(members) for panel in got.values())
    load = Counter(v for panel in got.values() for v in panel)
    assert set(load) == set(members) and max(load.values()) - min(load.values()) <= 1
    # over the steps' randomness, one candidate's panel is every pair of members about equally often
    pairs = Counter(frozenset(draw_probation_panels(_r(i), members=members, candidates=["c0"])["c0"])
                    for i in range(3000))
    assert len(pairs) == 6 and all(abs(c - 500) <= 5 * math.sqrt(3000 / 6 * 5 / 6) for c in pairs.values())
    # a group of one member: a panel of one (which decides nothing, btard_wire.probation.probation_outcome)
    assert draw_probation_panels(_r(0), members=["p0"], candidates=["c0"]) == {"c0": ["p0"]}
    assert draw_probation_panels(_r(0), members=[], candidates=["c0"]) == {}


def test_the_group_order_is_a_keyed_shuffle_and_a_rotation_picks_a_random_subset():
    from btard_wire.randomness import group_order

    members = [f"k{i}" for i in range(6)]
    first = Counter(group_order(_r(i), members)[0] for i in range(1200))
    assert set(first) == set(members) and all(abs(c - 200) <= 5 * math.sqrt(1200 / 6 * 5 / 6) for c in first.values())
    assert group_order(_r(3), members) == group_order(_r(3), members[::-1])  # input order does not matter
    picked = Counter(p for i in range(600) for p in group_order(_r(i), members, size=3))
    assert len(group_order(_r(0), members, size=3)) == 3 and set(picked) == set(members)
    assert all(abs(c - 300) <= 5 * math.sqrt(600 * 0.25) for c in picked.values())


def test_a_candidate_that_knows_the_randomness_grinds_accomplices_as_validators_so_it_is_not_drawn():
    """Key grinding (finding 10): with the draw's randomness known, a Sybil tries keys (or waits for a
    step) until both validators of its panel are accomplices; the board rule draws only keys that joined
    before the MPRNG producing that randomness opened, when no key could be ground against it."""
    from btard_wire.board import probation_drawable
    from btard_wire.randomness import draw_probation_panels

    members = [f"m{i}" for i in range(8)]
    accomplices = set(members[:2])

    honest = hashlib.sha256(b"honest newcomer").hexdigest()[:40]
    keys = [hashlib.sha256(b"sybil %d" % k).hexdigest()[:40] for k in range(20)]  # peer ids of 20 keys

    def ground(r: bytes) -> bool:  # some key of 20 gets a panel of two accomplices beside one honest candidate
        return any(set(draw_probation_panels(r, members=members, candidates=[honest, k])[k]) <= accomplices
                   for k in keys)

    # knowing each step's r before choosing its key and its step, it gets one within a few steps
    wins = sum(ground(_r(i)) for i in range(1000))
    assert wins / 1000 > 0.055  # about 2/28 = 0.071 (the key picks one of the two panels), 1/28 = 0.036 blind
    assert next(i for i in range(200) if ground(_r(i))) < 30
    # the rule: a key drawn with a step's randomness joined before that step opened
    assert probation_drawable(joined_at=10.0, randomness_opened_at=11.0)
    assert not probation_drawable(joined_at=11.5, randomness_opened_at=11.0)  # could have ground its key
    # the public chain (step 0, a step after one without r) is known to all: no joining time helps, the
    # step checks everyone (the bounded residual)
    assert probation_drawable(joined_at=10.0, randomness_opened_at=None)
