"""A step closes as soon as it can no longer gain a report: every member reported or left the step (offline
past the grace, rejoined without the step's state, banned), not at its deadline (issue 13, step recovery)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from runs import services as runs
from runs.models import Peer, Run, StepRecord
from runs.selectors import LEFT_STEP_GRACE_SECONDS

from btard_wire.board import step_closable
from btard_wire.control import StepReport
from tests.factories import WorkerTokenFactory
from tests.site.helpers import hello_for

pytestmark = pytest.mark.django_db


def _report(peer, step=0, outcome="applied"):
    runs.record_step_report(peer=peer, report=StepReport(step=step, outcome=outcome, samples=8))


def _step(run) -> int:
    return Run.objects.get(pk=run.pk).current_step


def test_the_rule_waits_for_members_still_in_the_step_and_for_a_first_report():
    members = ["a", "b", "c"]
    assert step_closable(members=members, reported=["a", "b", "c"], gone=[])
    assert step_closable(members=members, reported=["a", "b"], gone=["c"])
    assert not step_closable(members=members, reported=["a", "b"], gone=[])
    assert not step_closable(members=members, reported=["a"], gone=["c"])  # b is still working
    assert not step_closable(members=members, reported=[], gone=["a", "b", "c"])  # the site may have restarted
    assert not step_closable(members=members, reported=["x"], gone=["a", "b", "c"])  # not a member's report


def test_a_member_whose_socket_closed_is_waited_for_during_the_grace_only(run, group, events):
    (p0, _), (p1, _), (dead, _) = group
    _report(p0)
    _report(p1)
    runs.disconnect_peer(peer=dead)
    assert runs.close_step(run=run) is None  # a reconnect comes within the grace
    assert _step(run) == 0
    later = timezone.now() + timedelta(seconds=LEFT_STEP_GRACE_SECONDS + 1)
    record = runs.close_step(run=run, now=later)
    assert record is not None and record.outcome == "applied"
    assert record.finished_at < record.deadline  # well before the step deadline
    assert _step(run) == 1 and events()[-1].missing == [dead.peer_id]  # charged as at the deadline


def test_a_member_that_reconnects_within_the_grace_keeps_the_step_open(run, group):
    (p0, _), (p1, _), (blip, identity) = group
    _report(p0)
    _report(p1)
    runs.disconnect_peer(peer=blip)
    runs.join_run(token=WorkerTokenFactory(user=blip.user), hello=hello_for(identity))
    later = timezone.now() + timedelta(seconds=LEFT_STEP_GRACE_SECONDS + 1)
    assert runs.close_step(run=run, now=later) is None
    assert StepRecord.objects.get(run=run, step=0).left == []
    _report(blip)
    assert runs.close_step(run=run).outcome == "applied"


def test_a_member_that_rejoins_after_the_grace_has_left_the_step(run, group):
    (p0, _), (p1, _), (restarted, identity) = group
    runs.disconnect_peer(peer=restarted)
    Peer.objects.filter(pk=restarted.pk).update(left_at=timezone.now() - timedelta(seconds=LEFT_STEP_GRACE_SECONDS + 1))
    runs.join_run(token=WorkerTokenFactory(user=restarted.user), hello=hello_for(identity))  # online again, without the step's state
    assert StepRecord.objects.get(run=run, step=0).left == [restarted.peer_id]
    _report(p0)
    assert runs.close_step(run=run) is None  # p1 still works on the step
    _report(p1)
    record = runs.close_step(run=run)
    assert record is not None and record.outcome == "applied" and _step(run) == 1


def test_a_member_banned_during_the_step_is_not_waited_for(run, group):
    (p0, _), (p1, _), (banned, _) = group
    Peer.objects.filter(pk=banned.pk).update(role="banned")
    _report(p0)
    _report(p1)
    assert runs.close_step(run=run).outcome == "applied"


def test_a_step_whose_members_all_went_offline_waits_for_its_deadline(run, group):
    for peer, _ in group:
        runs.disconnect_peer(peer=peer)
    later = timezone.now() + timedelta(seconds=LEFT_STEP_GRACE_SECONDS + 1)
    assert runs.close_step(run=run, now=later) is None
    deadline = Run.objects.get(pk=run.pk).step_deadline
    assert runs.close_step(run=run, now=deadline + timedelta(seconds=1)).outcome == "dropped"


def test_a_peer_marked_stale_has_left_from_then(run, group):
    (p0, _), (p1, _), (stale, _) = group
    Peer.objects.filter(pk=stale.pk).update(last_heartbeat=timezone.now() - timedelta(hours=1))
    assert runs.mark_stale_peers_offline(run=run) == [stale.peer_id]
    assert Peer.objects.get(pk=stale.pk).left_at is not None
    _report(p0)
    _report(p1)
    later = timezone.now() + timedelta(seconds=LEFT_STEP_GRACE_SECONDS + 1)
    assert runs.close_step(run=run, now=later).outcome == "applied"


def test_state_donors_are_the_members_that_kept_reporting_not_one_that_came_back(run, events):
    """A worker whose site process was down missed applied steps and holds an older state: a peer that fell
    behind must not be told to download from it (the two-Daphne scenario of tests/e2e)."""
    from tests.factories import make_peer

    peers = [make_peer(run=run, seed=f"d{i}")[0] for i in range(4)]
    run.peers_per_group = 4
    run.save(update_fields=["peers_per_group"])
    # the peer that comes first in step 3's group order (so members[:3] would name it)
    from runs.services.steps import _step_randomness

    from btard_wire.randomness import group_order

    first = group_order(_step_randomness(run, 3), [p.peer_id for p in peers], size=4)[0]
    away = next(p for p in peers if p.peer_id == first)
    for step in range(3):
        record = runs.start_step_if_ready(run=run)
        assert record is not None and record.step == step
        for p in peers:
            if p != away or step == 0:  # ``away`` reported step 0 only
                _report(p, step=step)
        runs.close_step(run=run, force=True)
    assert runs.start_step_if_ready(run=run).members[0] == away.peer_id
    donors = [p.peer_id for p in events()[-1].group.state_donors]
    assert len(donors) == 3 and away.peer_id not in donors
    assert set(donors) == {p.peer_id for p in peers if p != away}


def _report_missing(peer, step, missing):
    runs.record_step_report(peer=peer, report=StepReport(step=step, outcome="applied", samples=8, missing=missing))


def test_a_restarted_workers_catch_up_silence_is_excused_once_then_counted(run, group):
    """The soak's honest key ban: silent in the step it died in, then while it catches up after its rejoin.
    The rejoin's step is excused once per btard_wire.board.SILENCE_EXCUSE_EVERY steps, then charged."""
    (p0, _), (p1, _), (restarted, identity) = group
    runs.disconnect_peer(peer=restarted)
    Peer.objects.filter(pk=restarted.pk).update(left_at=timezone.now() - timedelta(seconds=LEFT_STEP_GRACE_SECONDS + 1))
    runs.join_run(token=WorkerTokenFactory(user=restarted.user), hello=hello_for(identity))  # left step 0
    _report_missing(p0, 0, [restarted.peer_id])
    _report_missing(p1, 0, [restarted.peer_id])
    assert runs.close_step(run=run) is not None
    restarted.refresh_from_db()
    assert (restarted.silent_steps, restarted.silence_excused_step) == (0, 0)  # excused
    runs.start_step_if_ready(run=Run.objects.get(pk=run.pk))
    _report_missing(p0, 1, [restarted.peer_id])
    _report_missing(p1, 1, [restarted.peer_id])
    runs.close_step(run=Run.objects.get(pk=run.pk), force=True)
    restarted.refresh_from_db()
    assert restarted.silent_steps == 1  # the next silent step counts: once per SILENCE_EXCUSE_EVERY steps
