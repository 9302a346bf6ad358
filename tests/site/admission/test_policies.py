"""admission.policies: probation length and founders, per policy."""

from __future__ import annotations

import pytest

from tests.factories import RunFactory

pytestmark = pytest.mark.django_db


def test_high_reputation_shortens_probation():
    from admission.policies import get_policy

    run = RunFactory.build(probation_steps=5)
    policy = get_policy("reputation")
    assert policy.probation_steps(run, reputation=0) == 5
    assert policy.probation_steps(run, reputation=45) == 3
    assert policy.probation_steps(run, reputation=1000) == 1
    assert get_policy("open").probation_steps(run, reputation=0) == 0


@pytest.mark.parametrize("name", sorted(__import__("admission.policies", fromlist=["POLICIES"]).POLICIES))
def test_every_admission_policy_admits_founders_and_respects_its_own_probation(name):
    from admission.policies import get_policy

    policy = get_policy(name)
    run = RunFactory.build(probation_steps=3, current_step=0, step_in_progress=False, peers_per_group=4)
    assert policy.founders_active(run, active_count=0)
    steps = policy.probation_steps(run, reputation=0.0)
    assert 0 <= steps <= run.probation_steps
    assert policy.probation_steps(run, reputation=1e6) <= steps  # reputation never lengthens probation
