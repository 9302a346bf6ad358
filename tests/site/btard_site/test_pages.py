"""Pages and JSON for the role matrix (anonymous, alice, bob, staff carol, banned dave): public pages and the
permission matrix of private pages."""

from __future__ import annotations

import pytest

from tests.site.helpers import ROLE_MATRIX, ROLES, client_for

pytestmark = pytest.mark.django_db

PUBLIC = ["/", "/bans/", "/api/runs/", "/api/bans/", "/login/", "/signup/", "/password-reset/"]


@pytest.mark.parametrize("who", ROLES)
def test_public_pages_answer_everyone(who, users, client, run):
    client = client_for(client, users[who])
    for url in PUBLIC + [f"/runs/{run.pk}/", f"/api/runs/{run.pk}/"]:
        response = client.get(url)
        if who != "anonymous" and url == "/signup/":
            assert response.status_code == 302
        else:
            assert response.status_code == 200, url


@pytest.mark.parametrize("who", ROLES)
def test_the_permission_matrix_of_private_pages(who, users, client):
    row = ROLE_MATRIX[who]
    client = client_for(client, users[who])
    assert client.get("/me/").status_code == row["me"]
    assert client.get("/tokens/").status_code == row["tokens"]
    assert client.get("/moderation/").status_code == row["moderation"]
    if who == "anonymous":
        assert client.get("/me/")["Location"].startswith("/login/")
