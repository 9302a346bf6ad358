"""The product pages: join box, human times, charts data, leaderboard, network status, trust page and
the organiser page, with the role matrix (anonymous, alice, bob, staff carol, banned dave)."""

from __future__ import annotations

import html
import json
import re

import pytest
from moderation import services as moderation
from moderation.models import AuditLog
from runs.models import Run

from tests.factories import UserFactory, make_peer
from tests.site.helpers import ROLES, client_for
from tests.site.product import play_step

pytestmark = pytest.mark.django_db


@pytest.fixture
def played(run, alice, bob):
    """Three applied steps by alice and bob, then a ban of a third peer (with addresses in its evidence)."""
    a, _ = make_peer(run=run, user=alice, p2p_addrs=["/ip4/203.0.113.7/tcp/31337"])
    b, _ = make_peer(run=run, user=bob, p2p_addrs=["/ip4/198.51.100.9/tcp/4000"])
    for _ in range(3):
        play_step(run, [a, b], accuracy=0.5)
    erin = UserFactory(username="erin")
    e, _ = make_peer(run=run, user=erin, role="candidate")
    ban = moderation.ban_peer(peer=e, reason="part does not match its commitment", evidence_kind="bad_commitment",
                              evidence={"verdicts": [{"sender": a.peer_id, "p2p_addrs": ["/ip4/203.0.113.7/tcp/1"]}]},
                              source="verdict", step=2)
    return {"alice": a, "bob": b, "erin": e, "ban": ban}


PUBLIC_NEW = ["/leaderboard/", "/api/leaderboard/", "/network/", "/trust/"]


@pytest.mark.parametrize("who", ROLES)
def test_the_new_public_pages_answer_everyone(who, users, client, run, played):
    client = client_for(client, users[who])
    for url in PUBLIC_NEW + [f"/leaderboard/?run={run.pk}", f"/trust/bans/{played['ban'].pk}/",
                             f"/runs/{run.pk}/"]:
        assert client.get(url).status_code == 200, url


def test_unknown_runs_and_bans_are_404(client, run):
    for url in ("/leaderboard/?run=999", "/leaderboard/?run=abc", "/trust/bans/999/", "/api/leaderboard/?run=9"):
        assert client.get(url).status_code == 404, url


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("alice", 403), ("bob", 403), ("carol", 200),
                                         ("dave", 403)])
def test_the_organiser_page_is_for_staff_only(who, status, users, client):
    response = client_for(client, users[who]).get("/organise/")
    assert response.status_code == status
    if who == "anonymous":
        assert response["Location"].startswith("/login/")


ACTIONS = ["pause", "resume", "finish", "min-version", "announce"]


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("alice", 403), ("bob", 403), ("dave", 403)])
def test_only_staff_can_post_run_control_actions(who, status, users, client, run):
    client = client_for(client, users[who])
    assert client.post("/organise/runs/new/", {"name": "x", "task": "digits-mlp"}).status_code == status
    for action in ACTIONS:
        assert client.post(f"/organise/runs/{run.pk}/{action}/", {"text": "hi", "version": "9"}).status_code == status
    run.refresh_from_db()
    assert run.state == "open" and Run.objects.count() == 1 and not AuditLog.objects.exists()


def create_data(**kw):
    data = {"name": "digits-2", "task": "digits-mlp", "aggregator": "btard", "batch_size": "", "lr": "",
            "peers_per_group": 8, "min_peers": 2, "validators_per_step": 1, "tau": 1.0, "probation_steps": 5,
            "seed": 0, "phase_timeout": 30, "step_timeout": 120, "epoch_steps": 50, "checkpoint_every": 50,
            "admission_policy": "reputation", "max_new_per_window": 4, "admission_window_seconds": 600,
            "max_candidate_fraction": 0.25, "missed_deadlines_for_case": 3}
    data.update(kw)
    return data


def test_staff_create_a_run_from_the_page_and_a_bad_one_is_shown_with_its_errors(carol, client):
    client.force_login(carol)
    response = client.post("/organise/runs/new/", create_data())
    assert response.status_code == 302 and response["Location"] == "/organise/"
    run = Run.objects.get(name="digits-2")
    assert (run.batch_size, run.lr, run.peers_per_group) == (32, 0.05, 8)
    bad = client.post("/organise/runs/new/", create_data(name="digits-3", min_peers=20, tau=-1))
    assert bad.status_code == 400
    page = bad.content.decode()
    assert "cannot exceed the group size" in page and 'value="digits-3"' in page
    assert not Run.objects.filter(name="digits-3").exists()
    again = client.post("/organise/runs/new/", create_data())
    assert again.status_code == 409 and "exists already" in again.content.decode()


def test_staff_pause_resume_finish_from_the_page_each_audited(carol, client, run):
    client.force_login(carol)
    for action, state in (("pause", "paused"), ("resume", "open"), ("finish", "finished")):
        assert client.post(f"/organise/runs/{run.pk}/{action}/", {"reason": "r"}).status_code == 302
        run.refresh_from_db()
        assert run.state == state
    assert client.post(f"/organise/runs/{run.pk}/pause/").status_code == 409
    assert client.post(f"/organise/runs/{run.pk}/explode/").status_code == 404
    assert AuditLog.objects.filter(action__startswith="run_").count() == 3
    page = client.get("/organise/").content.decode()
    assert "run_finish" in page and 'data-state="finished"' in page


def test_staff_set_the_minimum_version_and_announce_from_the_page(carol, client, run):
    client.force_login(carol)
    assert client.post(f"/organise/runs/{run.pk}/min-version/", {"version": "0.3.0"}).status_code == 302
    assert client.post(f"/organise/runs/{run.pk}/min-version/", {"version": "newest"}).status_code == 400
    assert client.post(f"/organise/runs/{run.pk}/announce/", {"text": ""}).status_code == 400
    assert client.post(f"/organise/runs/{run.pk}/announce/", {"text": "step 500 checkpoint"}).status_code == 302
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "step 500 checkpoint" in page and "0.3.0 or newer" in page


@pytest.mark.parametrize("who", ["anonymous", "alice"])
def test_the_join_box_has_the_commands_for_this_site(who, users, client, run, settings):
    settings.ALLOWED_HOSTS = ["swarm.example.org"]
    client = client_for(client, users[who])
    page = client.get(f"/runs/{run.pk}/", HTTP_HOST="swarm.example.org").content.decode()
    box = page[page.index('id="join-box"'):]
    commands = re.search(r'<pre id="join-commands"><code>(.*?)</code></pre>', box, re.DOTALL).group(1)
    assert "btard-worker doctor --server http://swarm.example.org" in commands
    assert f"btard-worker --server http://swarm.example.org --run {run.pk}" in commands
    assert "BTARD_TOKEN" in commands and "--token" not in commands
    assert "pip install" in commands
    assert 'data-copy-target="join-commands"' in box
    assert "digits-mlp" in box and "TCP port" in box and "Worker version" in box
    if who == "anonymous":
        assert 'id="join-token-link"' not in box and "/signup/" in box
    else:
        assert 'id="join-token-link"' in box and 'href="/tokens/"' in box


def test_the_join_box_points_at_the_wheel_the_site_serves(client, run, settings, tmp_path):
    from worker_client import __version__

    settings.ALLOWED_HOSTS = ["swarm.example.org", "testserver"]
    settings.WORKER_DIST_DIR = tmp_path
    wheel = f"btard_swarm-{__version__}-py3-none-any.whl"
    (tmp_path / wheel).write_bytes(b"PK-not-really-a-zip")
    page = html.unescape(client.get(f"/runs/{run.pk}/", HTTP_HOST="swarm.example.org").content.decode())
    assert f'pip install "btard-swarm[worker] @ http://swarm.example.org/dist/{wheel}"' in page
    download = client.get(f"/dist/{wheel}")
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"PK-not-really-a-zip"
    for name in ("../settings.py", "other.whl", "btard_swarm-9.9.9-py3-none-any.whl"):
        assert client.get(f"/dist/{name}").status_code == 404


def test_times_render_as_relative_with_the_absolute_time_in_the_title(client, run, played):
    page = client.get(f"/runs/{run.pk}/").content.decode()
    times = re.findall(r'<time class="when" datetime="([^"]+)" title="([^"]+) UTC">([^<]+)</time>', page)
    assert times, "no human times on the run page"
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", iso) for iso, _, _ in times)
    assert any(text.endswith("ago") or text == "just now" for _, _, text in times)


@pytest.mark.parametrize("seconds, text", [(2, "just now"), (12, "12 s ago"), (125, "2 min ago"),
                                           (3 * 3600 + 5, "3 h ago"), (86400 * 2 + 5, "2 days ago"),
                                           (-40, "in 40 s")])
def test_relative_times_read_like_people_write_them(seconds, text):
    from datetime import timedelta

    from btard_site.templatetags.btard_time import relative
    from django.utils import timezone

    now = timezone.now()
    assert relative(now - timedelta(seconds=seconds), now=now) == text


def test_the_run_page_carries_the_chart_series_with_bans(client, run, played):
    page = client.get(f"/runs/{run.pk}/").content.decode()
    data = json.loads(re.search(r'<script id="run-chart-data" type="application/json">(.*?)</script>', page,
                                re.DOTALL).group(1))
    assert data["step"] == [0, 1, 2] and data["loss"] == [1.0, 1.0, 1.0] and data["accuracy"] == [0.5] * 3
    assert all(v > 0 for v in data["throughput"])
    assert data["bans"] == [{"step": 2, "account": "erin", "kind": "bad_commitment",
                             "url": f"/trust/bans/{played['ban'].pk}/"}]
    assert 'id="run-charts" hx-preserve="true"' in page


def test_the_network_page_shows_versions_and_devices_but_no_addresses(client, run, played):
    from runs.models import Peer

    Peer.objects.filter(pk=played["alice"].pk).update(client_version="0.1.0", device="cuda:0 NVIDIA H200",
                                                       reachable=True)
    page = client.get("/network/").content.decode()
    assert "alice" in page and "0.1.0: 1" in page and "gpu: 1" in page and "Step time over the last 3 steps" in page
    assert "H200" not in page
    assert not re.search(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", page), "an IP address on the network page"
    assert "/ip4/" not in page


def test_the_trust_page_warns_against_scams_and_links_each_ban_to_its_evidence(client, run, played):
    ban = played["ban"]
    page = client.get("/trust/").content.decode()
    assert "Staff never ask for your worker token or your password" in page
    assert f'href="/trust/bans/{ban.pk}/"' in page and "How to appeal" in page
    evidence = client.get(f"/trust/bans/{ban.pk}/").content.decode()
    assert played["alice"].peer_id in evidence and "bad_commitment" in evidence
    assert "203.0.113.7" not in evidence


def test_no_page_carries_inline_scripts_styles_or_handlers(client, carol, run, played):
    """The site runs under a Content-Security-Policy without 'unsafe-inline'."""
    client.force_login(carol)
    for url in ["/", f"/runs/{run.pk}/", "/leaderboard/", "/network/", "/trust/", f"/trust/bans/{played['ban'].pk}/",
                "/organise/", "/me/", "/tokens/", "/bans/"]:
        page = client.get(url).content.decode()
        for script in re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.DOTALL):
            attrs, _body = script
            assert 'src="' in attrs or 'type="application/json"' in attrs, (url, script)
        assert not re.search(r"\sstyle=\"", page), url
        assert not re.search(r"\son[a-z]+=\"", page), url
        assert "<style" not in page, url
