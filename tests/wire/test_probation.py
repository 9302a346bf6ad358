"""btard_wire.probation: which candidates a step checks, whether their step counts, promotion."""

from __future__ import annotations

import hashlib

import pytest

from btard_wire.probation import (
    CREDIT,
    FAIL,
    OPEN,
    PASS,
    REJECT,
    SPLIT,
    panel_of,
    probation_decision,
    probation_outcome,
    probation_panels,
    ready_to_promote,
)
from btard_wire.randomness import draw_probation_panels

MEMBERS = ["a", "b", "c", "d"]


def _r(i: int) -> bytes:
    return hashlib.sha256(b"r%d" % i).digest()


def test_it_checks_only_candidates_that_joined_before_the_randomness_existed():
    joined = {"early": 1.0, "late": 5.5}
    panels = probation_panels(_r(0), members=MEMBERS, joined_at=joined, randomness_opened_at=5.0)
    assert set(panels) == {"early"} and set(panels["early"]) <= set(MEMBERS) and len(set(panels["early"])) == 2
    both = probation_panels(_r(0), members=MEMBERS, joined_at=joined, randomness_opened_at=6.0)
    assert set(both) == {"early", "late"}
    # the draw is draw_probation_panels' over exactly the drawable candidates
    assert both == draw_probation_panels(_r(0), members=MEMBERS, candidates=["early", "late"])
    # the public chain (step 0, or after a step without an MPRNG output) draws every candidate
    assert probation_panels(_r(0), members=MEMBERS, joined_at=joined, randomness_opened_at=None) == both


def test_a_step_counts_only_when_both_validators_pass_and_rejects_only_when_both_fail():
    panel = ["a", "b"]

    def outcome(*reports):
        return probation_outcome(candidate="x", panel=panel, reports=reports)

    assert outcome(("a", "x", True), ("b", "x", True)) == PASS
    assert outcome(("a", "x", False), ("b", "x", False)) == FAIL
    assert outcome(("a", "x", True), ("b", "x", False)) == SPLIT  # a disagreement: neither
    assert outcome(("a", "x", True)) == OPEN and outcome(("b", "x", False)) == OPEN and outcome() == OPEN
    # another member's report, a report on another candidate, a second report of a panel member: nothing
    assert outcome(("a", "x", True), ("c", "x", True)) == OPEN
    assert outcome(("a", "x", True), ("b", "y", True)) == OPEN
    assert outcome(("a", "x", True), ("b", "x", True), ("b", "x", False)) == PASS
    assert outcome(("a", "x", False), ("c", "x", False), ("d", "x", False)) == OPEN
    # a panel of one (a group of one member) decides nothing
    assert probation_outcome(candidate="x", panel=["a"], reports=[("a", "x", True)]) == OPEN
    assert probation_outcome(candidate="x", panel=["a", "a"], reports=[("a", "x", True)]) == OPEN


@pytest.mark.parametrize("reports, reported, decision", [
    ([("a", "x", True), ("b", "x", True)], True, CREDIT),
    ([("a", "x", True), ("b", "x", True)], False, None),  # the candidate did not report its step
    ([("a", "x", False), ("b", "x", False)], True, REJECT),
    ([("a", "x", False), ("b", "x", False)], False, None),  # a crashed candidate is not rejected
    ([("a", "x", True), ("b", "x", False)], True, None),
    ([("a", "x", False)], True, None),
])
def test_a_step_credits_or_rejects_a_candidate_only_on_two_agreeing_reports(reports, reported, decision):
    assert probation_decision(candidate="x", panel=["a", "b"], reported=reported, reports=reports) == decision


def test_a_step_drawn_from_the_public_chain_neither_credits_nor_rejects():
    """Step 0 (and a step after one without an MPRNG output) draws from the run's public chain, known to
    everyone before any key is chosen. A coalition of 7 of 16 grinding one Sybil key (20 tries) puts its own
    key on two accomplices, or, since that key moves the others in the candidate shuffle, an honest newcomer
    on two accomplices, for about 28 % of such steps (16 % blind); with a decision that would reject the
    honest newcomer. So such a step decides nothing."""
    members = [f"m{i:02d}" for i in range(16)]
    accomplices = set(members[:7])
    honest = hashlib.sha256(b"honest newcomer").hexdigest()[:40]
    keys = [hashlib.sha256(b"sybil %d" % k).hexdigest()[:40] for k in range(20)]
    steered = sum(any(set(draw_probation_panels(_r(i), members=members, candidates=[honest, k])[honest])
                      <= accomplices for k in keys) for i in range(300))
    assert steered / 300 > 0.2  # about 0.28
    passed, failed = [("a", "x", True), ("b", "x", True)], [("a", "x", False), ("b", "x", False)]
    for reports in (passed, failed):
        assert probation_decision(candidate="x", panel=["a", "b"], reported=True, reports=reports,
                                  public_chain=True) is None


def test_a_lone_byzantine_validator_can_neither_promote_a_bad_candidate_nor_reject_an_honest_one():
    """A rational Byzantine validator, drawn beside an honest one, says whatever serves it (pass its
    accomplice, fail an honest newcomer, or stay silent): the step never credits the bad candidate nor
    rejects the honest one."""
    for lie in (True, False, None):
        byz = [] if lie is None else [("byz", "x", lie)]
        bad = probation_decision(candidate="x", panel=["byz", "h"], reported=True, reports=byz + [("h", "x", False)])
        good = probation_decision(candidate="x", panel=["h", "byz"], reported=True, reports=byz + [("h", "x", True)])
        assert bad != CREDIT and good != REJECT


def test_a_candidate_entry_names_its_panel_or_its_one_validator():
    assert panel_of({"validators": ["a", "b"], "validator": "a"}) == ["a", "b"]
    assert panel_of({"validator": "a"}) == ["a"] and panel_of({}) == []


def test_a_candidate_is_promoted_once_it_has_the_required_steps():
    assert not ready_to_promote(done=1, required=2)
    assert ready_to_promote(done=2, required=2) and ready_to_promote(done=0, required=0)


def _withholding_coalition_promotes(*, n: int, b: int, required: int, seed: int, commit_first: bool,
                                    max_steps: int = 400) -> tuple[str, int, int]:
    """A never-computing candidate and a coalition of ``b`` of the ``n`` members, against the real draw
    (``draw_probation_panels`` over ``combine_reveals`` of the reveals held at the close) and the SR 14
    window (``next_withheld_steps``/``withholding_banned``): each step, an accomplice whose window allows
    withholds its reveal when the randomness without it gives the candidate a panel of two accomplices
    (one reveal fewer is another ``r``: ``b`` alternatives for one strike).

    ``commit_first=False`` is the site today: the panel is public before the candidate reports, so it
    skips (no decision) every step whose panel still holds an honest member. ``commit_first=True`` is the
    design of docs/threat-model.md (committed before ``r`` opens, no skip; a step whose reveal set misses
    a committed member decides no probation): the coalition withholds only to void a panel of two honest
    members, which would reject the candidate. Returns (outcome, steps, withheld reveals)."""
    import random

    from btard_wire.board import next_withheld_steps, withholding_banned
    from btard_wire.randomness import combine_reveals

    rng = random.Random(seed)
    members = [f"m{i:02d}" for i in range(n)]
    byz = members[:b]
    windows: dict[str, list[int]] = {k: [] for k in byz}
    credited = withheld = 0

    def may_withhold(k: str, step: int) -> bool:  # one more would still keep the key
        return not withholding_banned(next_withheld_steps(windows[k], step=step, withheld=True))

    for step in range(max_steps):
        xs = dict(zip(members, (rng.randbytes(32) for _ in members), strict=True))

        def panel(without: str | None = None, xs=xs) -> set[str]:
            r = combine_reveals([x for m, x in xs.items() if m != without])
            return set(draw_probation_panels(r, members=members, candidates=["cand"])["cand"])

        p, out = panel(), None
        if commit_first:
            if not p & set(byz):
                out = next((k for k in byz if may_withhold(k, step)), None)
        elif not p <= set(byz):
            out = next((k for k in byz if may_withhold(k, step) and panel(k) <= set(byz)), None)
        for k in byz:
            windows[k] = next_withheld_steps(windows[k], step=step, withheld=k == out)
            assert not withholding_banned(windows[k])  # every accomplice keeps its key
        if out is not None:
            withheld += 1
            if commit_first:
                continue  # a missing reveal: the step decides no probation
            p = panel(out)
        if p <= set(byz):
            credited += 1
            if ready_to_promote(done=credited, required=required):
                return "promoted", step + 1, withheld
        elif commit_first and not p & set(byz):
            return "rejected", step + 1, withheld
    return "open", max_steps, withheld


def test_withheld_reveals_let_a_coalition_steer_a_never_computing_candidates_panel_today():
    """The residual of docs/threat-model.md (probation row): today a candidate skips the steps whose
    public panel holds an honest member, and its coalition re-rolls the panel's randomness by withholding
    MPRNG reveals within the SR 14 window: at 7 of 16 it is promoted in every trial, far sooner than the
    ``required / p_a`` (29) steps of skipping alone, with no accomplice banned."""
    runs = [_withholding_coalition_promotes(n=16, b=7, required=5, seed=s, commit_first=False) for s in range(40)]
    assert all(o == "promoted" for o, _, _ in runs)
    mean_steps = sum(s for _, s, _ in runs) / len(runs)
    assert mean_steps < 12  # skipping alone: 5 / p_a = 28.6 steps


def test_a_commitment_before_the_randomness_stops_the_skip_only_for_a_small_coalition():
    """The design for the residual (docs/threat-model.md): committing before ``r`` opens removes the
    candidate's free skip, but the coalition's withheld reveals (each voiding one step) replace it: a
    small coalition (2 of 8) runs out of window long before it avoided every panel of two honest members,
    so its candidate is rejected; a large one (7 of 16) still gets it promoted, as slowly as by skipping
    (about ``required / p_a`` steps), with about ``required * p_h / p_a`` (8.6) withheld reveals."""
    small = [_withholding_coalition_promotes(n=8, b=2, required=5, seed=s, commit_first=True) for s in range(40)]
    assert sum(o == "promoted" for o, _, _ in small) <= 1 and all(o != "open" for o, _, _ in small)
    large = [_withholding_coalition_promotes(n=16, b=7, required=5, seed=s, commit_first=True) for s in range(40)]
    assert sum(o == "promoted" for o, _, _ in large) >= 38
    assert 18 < sum(s for _, s, _ in large) / len(large) < 45
