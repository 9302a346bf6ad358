"""runs.admin: staff create runs in the admin."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PUBLIC = ["/", "/bans/", "/api/runs/", "/api/bans/", "/login/", "/signup/", "/password-reset/"]


def test_staff_create_runs_in_the_admin(client):
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    assert client.get("/admin/runs/run/add/").status_code == 200
    assert 'value="reputation"' in client.get("/admin/runs/run/add/").content.decode()
