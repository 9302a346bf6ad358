"""Credit and the leaderboard: counted from what the site knows (applied steps, the batch size it assigned,
its own clock), never from what a worker claims; the volunteer's page and the leaderboard agree; live."""

from __future__ import annotations

import re

import pytest
from credit.selectors import credit_of, history_of, leaderboard
from moderation import services as moderation

from tests.factories import RunFactory, make_peer
from tests.site.product import play_step

pytestmark = pytest.mark.django_db


@pytest.fixture
def trio(run, alice, bob, carol):
    peers = [make_peer(run=run, user=u)[0] for u in (alice, bob, carol)]
    return peers


def test_credit_is_the_assigned_batch_size_of_applied_steps_not_the_claimed_samples(run, trio, alice):
    run.batch_size = 16
    run.save()
    play_step(run, trio, claimed_samples=999)
    play_step(run, trio, claimed_samples=16_000)
    row = credit_of(alice)
    assert (row.samples, row.steps) == (32, 2)


def test_with_a_global_batch_a_member_earns_its_share(run, trio, alice):
    run.extra = {"global_batch": 96}
    run.save()
    play_step(run, trio)  # three members: 32 each
    assert credit_of(alice).samples == 32


def test_a_dropped_step_credits_nobody(run, trio, alice):
    play_step(run, trio, outcome="dropped")
    assert credit_of(alice).samples == 0 and leaderboard(run=run)[0].steps == 0


def test_a_member_that_did_not_report_gets_no_credit_for_the_step(run, trio, alice, carol):
    carol_peer = trio[2]
    play_step(run, trio, skip=[carol_peer])
    assert credit_of(alice).steps == 1 and credit_of(carol).steps == 0


def test_the_board_ranks_by_credit_then_steps_then_name_and_counts_time_and_bans(run, trio, alice, bob, carol):
    play_step(run, trio)
    play_step(run, trio[:2])  # carol silent
    moderation.ban_peer(peer=trio[1], reason="bad part", evidence_kind="bad_commitment", evidence={},
                        source="verdict", step=1)
    board = leaderboard(run=run)
    assert [(e.username, e.rank) for e in board] == [("alice", 1), ("bob", 2), ("carol", 3)]
    assert [e.steps for e in board] == [2, 2, 1] and [e.bans for e in board] == [0, 1, 0]
    # every test step lasted one hour on the site's clock (closed at +1 h): reported steps only
    assert board[0].online_seconds >= 2 * 3600 - 5 and board[2].online_seconds < board[0].online_seconds


def test_across_runs_and_per_run(alice, bob):
    run_a, run_b = RunFactory(name="a", batch_size=10), RunFactory(name="b", batch_size=100)
    a1, b1 = make_peer(run=run_a, user=alice)[0], make_peer(run=run_a, user=bob)[0]
    a2, b2 = make_peer(run=run_b, user=alice)[0], make_peer(run=run_b, user=bob)[0]
    play_step(run_a, [a1, b1])
    play_step(run_a, [a1, b1], skip=[b1])  # bob silent: alice's report alone applies the step
    play_step(run_b, [a2, b2], skip=[a2])
    totals = {e.username: e.samples for e in leaderboard()}
    assert totals == {"alice": 20, "bob": 110}
    assert [e.username for e in leaderboard(run=run_b)] == ["bob"]
    history = {h["run"].name: (h["row"].samples, h["row"].rank, h["of"]) for h in history_of(alice)}
    assert history == {"a": (20, 1, 2)}  # alice never reported in run b


def test_the_volunteer_page_shows_the_leaderboard_numbers(run, trio, alice, client):
    for _ in range(3):
        play_step(run, trio)
    client.force_login(alice)
    page = client.get("/me/").content.decode()
    row = credit_of(alice)
    assert re.search(rf'id="contribution">\s*{row.samples}\s*<', page)
    assert re.search(rf'id="my-rank">#{row.rank}<', page)
    assert 'id="my-history"' in page and run.name in page
    board = client.get("/api/leaderboard/").json()["leaderboard"]
    mine = next(e for e in board if e["account"] == "alice")
    assert (mine["samples"], mine["rank"], mine["steps"]) == (row.samples, row.rank, row.steps)


def test_the_leaderboard_page_lists_the_rules_and_highlights_me(run, trio, alice, client):
    play_step(run, trio)
    client.force_login(alice)
    page = client.get(f"/leaderboard/?run={run.pk}").content.decode()
    assert "How credit is counted" in page and "the samples the site assigned" in page
    assert 'class="me" data-account="alice"' in page


def test_a_finished_step_pushes_the_board_to_leaderboard_viewers(run, trio):
    from live import event_routing as routes
    from live import events as ev
    from live.fragments import render_fragment

    play_step(run, trio)
    event = ev.StepAdvanced(run_id=run.pk, finished_step=0, step=1, outcome="applied")
    assert routes.runs_group() in routes.live_groups(event)
    html = render_fragment(event, view="leaderboard", run_id=None)
    assert 'id="leaderboard" hx-swap-oob="true"' in html and "alice" in html
    assert render_fragment(event, view="leaderboard", run_id=run.pk + 1) == ""
    other = RunFactory(name="other")
    assert "alice" not in render_fragment(ev.StepAdvanced(run_id=other.pk, finished_step=0, step=1,
                                                          outcome="dropped"), view="leaderboard", run_id=other.pk)


def test_the_run_page_shows_its_top_contributors(run, trio, client):
    play_step(run, trio)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    table = page[page.index('id="run-leaderboard"'):]
    assert table.index("alice") < table.index("</table>")
