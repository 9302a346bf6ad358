"""runs.views: the public API and the htmx partials."""

from __future__ import annotations

import pytest
from moderation import services as moderation

from tests.factories import make_peer

pytestmark = pytest.mark.django_db

PUBLIC = ["/", "/bans/", "/api/runs/", "/api/bans/", "/login/", "/signup/", "/password-reset/"]


def test_the_public_api_lists_runs_peers_and_bans(run, alice, bob, client):
    peer, _ = make_peer(run=run, user=alice, status="training")
    bad, _ = make_peer(run=run, user=bob)
    moderation.ban_peer(peer=bad, reason="wrong CenteredClip result", evidence_kind="bad_aggregate",
                        evidence={}, source="verdict", step=7)
    assert client.get("/api/runs/").json()["runs"][0]["name"] == run.name
    detail = client.get(f"/api/runs/{run.pk}/").json()
    assert detail["step"] == 0 and "curve" in detail and "accuracy" in detail
    assert {p["peer_id"]: p["status"] for p in detail["peers"]}[peer.peer_id] == "training"
    (ban,) = client.get("/api/bans/").json()["bans"]
    assert (ban["peer"], ban["account"], ban["run"], ban["step"], ban["evidence_kind"]) == \
        (bad.peer_id, "bob", run.pk, 7, "bad_aggregate")
    assert ban["reason"] and ban["time"]
    assert "bob" in client.get("/bans/").content.decode()


def test_partials_answer_htmx_polling(run, client):
    assert 'id="ban-list"' in client.get("/bans/?partial=rows").content.decode()
    body = client.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert body.startswith('<div id="run-dashboard"') and "every 5s" in body
