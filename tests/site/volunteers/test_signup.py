"""volunteers.services: sign-up limits."""

from __future__ import annotations

import pytest
from volunteers import services as volunteers

pytestmark = pytest.mark.django_db


def test_sign_up_is_limited_per_address_and_globally(settings):
    settings.SIGNUP_LIMIT_PER_ADDRESS = 2
    settings.SIGNUP_LIMIT_GLOBAL = 3
    volunteers.check_signup_allowed(address="10.0.0.1")
    volunteers.check_signup_allowed(address="10.0.0.1")
    with pytest.raises(volunteers.SignupLimited, match="from your address"):
        volunteers.check_signup_allowed(address="10.0.0.1")
    volunteers.check_signup_allowed(address="10.0.0.2")
    with pytest.raises(volunteers.SignupLimited, match="on the site"):
        volunteers.check_signup_allowed(address="10.0.0.3")
