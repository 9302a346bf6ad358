"""btard_wire.probation: which candidates a step checks, whether their step counts, promotion."""

from __future__ import annotations

import hashlib

from btard_wire.probation import probation_checks, probation_credited, ready_to_promote
from btard_wire.randomness import draw_probation_validators

MEMBERS = ["a", "b", "c", "d"]


def _r(i: int) -> bytes:
    return hashlib.sha256(b"r%d" % i).digest()


def test_it_checks_only_candidates_that_joined_before_the_randomness_existed():
    joined = {"early": 1.0, "late": 5.5}
    checks = probation_checks(_r(0), members=MEMBERS, joined_at=joined, randomness_opened_at=5.0)
    assert set(checks) == {"early"} and checks["early"] in MEMBERS
    both = probation_checks(_r(0), members=MEMBERS, joined_at=joined, randomness_opened_at=6.0)
    assert set(both) == {"early", "late"}
    # the draw is draw_probation_validators' over exactly the drawable candidates
    assert both == draw_probation_validators(_r(0), members=MEMBERS, candidates=["early", "late"])
    # the public chain (step 0, or after a step without an MPRNG output) draws every candidate
    assert probation_checks(_r(0), members=MEMBERS, joined_at=joined, randomness_opened_at=None) == both


def test_a_step_counts_only_when_drawn_reported_and_not_voided_by_its_own_validator():
    assert probation_credited(candidate="x", validator="a", reported=True, failures=[])
    assert not probation_credited(candidate="x", validator=None, reported=True, failures=[])  # not drawn
    assert not probation_credited(candidate="x", validator="a", reported=False, failures=[])
    assert not probation_credited(candidate="x", validator="a", reported=True, failures=[("a", "x")])
    # another member's failed check voids nothing (a Byzantine member cannot keep a newcomer out)
    assert probation_credited(candidate="x", validator="a", reported=True, failures=[("b", "x"), ("a", "y")])


def test_a_candidate_is_promoted_once_it_has_the_required_steps():
    assert not ready_to_promote(done=1, required=2)
    assert ready_to_promote(done=2, required=2) and ready_to_promote(done=0, required=0)
