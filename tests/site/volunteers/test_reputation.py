"""volunteers.services: reputation events and the recompute from history."""

from __future__ import annotations

import pytest
from volunteers import services as volunteers

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_recompute_reputation_repairs_drift(alice):
    volunteers.adjust_reputation(user_ids=[alice.id], kind="validated_step")
    alice.volunteer.reputation = 99
    alice.volunteer.save()
    assert volunteers.recompute_reputation() == 1
    alice.volunteer.refresh_from_db()
    assert alice.volunteer.reputation == 1.0


def test_a_new_volunteer_starts_with_no_reputation_contribution_or_ban():
    volunteer = UserFactory(username="zed").volunteer
    assert (volunteer.reputation, volunteer.contribution_samples, volunteer.is_banned) == (0.0, 0, False)
