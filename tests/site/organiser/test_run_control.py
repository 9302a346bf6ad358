"""Run control for organisers: creating a run from the task registry, pause, resume, finish, the minimum
worker version and announcements; one event and one audit entry per action; the join refusals."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from moderation.models import AuditLog
from organiser import services as control
from organiser.catalog import TASK_CATALOG
from organiser.forms import RunCreateForm
from organiser.models import Announcement, RunControl
from organiser.versions import older_than, parse_version
from runs import services as runs
from runs.models import Run, StepRecord

from btard_wire.control import CLOSE_NO_RUN, CLOSE_PROTOCOL_VERSION, CLOSE_RUN_FINISHED, Hello
from tests.factories import make_peer

pytestmark = pytest.mark.django_db


def types(events):
    return [e.type for e in events()]


def test_every_catalog_task_is_in_the_worker_registry_and_the_form_offers_the_registry():
    from worker_client.tasks.registry import discover

    assert set(TASK_CATALOG) <= set(discover())
    offered = {value for value, _ in RunCreateForm().fields["task"].choices}
    assert offered == set(discover())


def test_it_creates_a_run_with_the_task_defaults_and_audits_it(carol, events):
    run = control.create_run(actor=carol, name="fashion-1", task="fashion-cnn", tau=2.0)
    assert (run.state, run.task, run.batch_size, run.lr, run.tau) == ("open", "fashion-cnn", 64, 0.05, 2.0)
    assert RunControl.objects.get(run=run).min_worker_version == ""
    entry = AuditLog.objects.get()
    assert (entry.actor, entry.action, entry.details["task"]) == (carol, "run_create", "fashion-cnn")
    assert types(events) == ["run_control_changed"] and events()[0].action == "created"


@pytest.mark.parametrize("kw, message", [
    ({"task": "no-such-task"}, "unknown task"),
    ({"task": "digits-mlp", "name": " "}, "needs a name"),
    ({"task": "digits-mlp", "bogus": 1}, "unknown hyper-parameters"),
])
def test_it_refuses_a_bad_run_and_changes_nothing(kw, message, carol, events):
    kw.setdefault("name", "r1")
    with pytest.raises(control.ControlRefused, match=message):
        control.create_run(actor=carol, **kw)
    assert not Run.objects.exists() and not AuditLog.objects.exists() and events() == []


def test_only_staff_control_runs(alice, run):
    with pytest.raises(PermissionDenied):
        control.create_run(actor=alice, name="x", task="digits-mlp")
    for action in (control.pause_run, control.finish_run):
        with pytest.raises(PermissionDenied):
            action(run=run, actor=alice)
    with pytest.raises(PermissionDenied):
        control.post_announcement(run=run, actor=alice, text="hi")
    run.refresh_from_db()
    assert run.state == "open" and not AuditLog.objects.exists()


def test_the_form_checks_ranges_and_cross_field_rules():
    form = RunCreateForm(data={"name": "ok-run", "task": "digits-mlp", "aggregator": "btard", "peers_per_group": 4,
                               "min_peers": 6, "validators_per_step": 4, "tau": 1, "probation_steps": 5, "seed": 0,
                               "phase_timeout": 30, "step_timeout": 10, "epoch_steps": 50, "checkpoint_every": 0,
                               "admission_policy": "reputation", "max_new_per_window": 4,
                               "admission_window_seconds": 600, "max_candidate_fraction": 0.25,
                               "missed_deadlines_for_case": 3, "batch_size": 0})
    assert not form.is_valid()
    assert set(form.errors) == {"min_peers", "validators_per_step", "step_timeout", "batch_size"}


def test_pause_resume_finish_move_the_run_through_its_states_with_one_event_each(run, carol, events):
    control.pause_run(run=run, actor=carol, reason="maintenance")
    control.resume_run(run=run, actor=carol)
    control.finish_run(run=run, actor=carol, reason="target reached")
    run.refresh_from_db()
    assert run.state == "finished"
    assert [e.action for e in events()] == ["paused", "resumed", "finished"]
    assert "target reached" in events()[-1].message
    assert list(AuditLog.objects.order_by("id").values_list("action", flat=True)) == [
        "run_pause", "run_resume", "run_finish"]


@pytest.mark.parametrize("first, second", [("resume_run", None), ("finish_run", "pause_run"),
                                           ("finish_run", "resume_run"), ("finish_run", "finish_run")])
def test_an_action_the_state_does_not_allow_is_refused(first, second, run, carol):
    if second is None:
        with pytest.raises(control.ControlRefused, match="cannot be resumed"):
            getattr(control, first)(run=run, actor=carol)
        return
    getattr(control, first)(run=run, actor=carol)
    with pytest.raises(control.ControlRefused, match="is finished"):
        getattr(control, second)(run=run, actor=carol)


def test_a_paused_run_starts_no_step_and_a_finished_run_drops_the_step_in_progress(run, carol, alice, bob):
    make_peer(run=run, user=alice)
    make_peer(run=run, user=bob)
    control.pause_run(run=run, actor=carol)
    assert runs.start_step_if_ready(run=run) is None
    control.resume_run(run=run, actor=carol)
    assert runs.start_step_if_ready(run=run) is not None
    control.finish_run(run=run, actor=carol)
    run.refresh_from_db()
    record = StepRecord.objects.get(run=run)
    assert not run.step_in_progress and record.outcome == "dropped" and record.finished_at is not None


def hello(**kw):
    from btard_wire.envelope import Identity

    identity = Identity.from_seed(b"gate")
    return Hello(public_key=identity.public_key_b64, **kw)


def _join(token, h):
    return runs.join_run(token=token, hello=h)


def test_an_older_worker_is_refused_with_an_upgrade_message(run, carol, alice):
    from volunteers.services import create_worker_token

    token = create_worker_token(user=alice, name="w").token
    control.set_min_worker_version(run=run, actor=carol, version="0.2.0")
    for old in ("0.1.9", "", "0.2.0rc1"):
        with pytest.raises(runs.JoinRefused) as refused:
            _join(token, hello(client_version=old))
        assert refused.value.close_code == CLOSE_PROTOCOL_VERSION and ">= 0.2.0" in refused.value.reason
        assert "upgrade" in refused.value.reason and len(refused.value.reason.encode()) <= 120
    assert _join(token, hello(client_version="0.2.0")).role == "active"
    assert AuditLog.objects.get(action="run_min_version").details == {"before": "", "after": "0.2.0"}


def test_a_paused_or_finished_run_refuses_a_worker_asking_for_it_with_the_reason(run, carol, alice):
    from volunteers.services import create_worker_token

    token = create_worker_token(user=alice, name="w").token
    control.pause_run(run=run, actor=carol)
    with pytest.raises(runs.JoinRefused) as refused:
        _join(token, hello(run_id=run.pk))
    assert refused.value.close_code == CLOSE_NO_RUN and "paused" in refused.value.reason
    control.finish_run(run=run, actor=carol)
    with pytest.raises(runs.JoinRefused) as refused:
        _join(token, hello(run_id=run.pk))
    assert refused.value.close_code == CLOSE_RUN_FINISHED and "finished" in refused.value.reason


def test_a_worker_asking_for_any_run_hears_that_the_only_run_is_paused(run, carol, alice):
    from volunteers.services import create_worker_token

    token = create_worker_token(user=alice, name="w").token
    control.pause_run(run=run, actor=carol)
    with pytest.raises(runs.JoinRefused) as refused:
        _join(token, hello())
    assert refused.value.close_code == CLOSE_NO_RUN and f"run {run.name} is paused" in refused.value.reason
    control.finish_run(run=run, actor=carol)
    with pytest.raises(runs.JoinRefused) as refused:
        _join(token, hello())
    assert refused.value.reason == "no run is accepting workers right now"


def test_a_bad_minimum_version_is_refused(run, carol):
    with pytest.raises(control.ControlRefused, match="not a version"):
        control.set_min_worker_version(run=run, actor=carol, version="latest")
    assert not AuditLog.objects.exists()


@pytest.mark.parametrize("version, minimum, older", [
    ("0.1.0", "0.1.0", False), ("0.1.0", "0.1.1", True), ("1.0", "0.9.9", False), ("0.2.0.dev0", "0.2.0", True),
    ("garbage", "0.1.0", True), ("", "", False)])
def test_version_comparison(version, minimum, older):
    assert older_than(version, minimum) is older


def test_parse_version_orders_releases_after_their_prereleases():
    assert parse_version("1.2.3rc1") < parse_version("1.2.3") < parse_version("1.2.4")


def test_an_announcement_is_stored_audited_and_emitted(run, carol, events):
    a = control.post_announcement(run=run, actor=carol, text="  new   checkpoint at step 100 ")
    assert Announcement.objects.get().text == "new checkpoint at step 100" == a.text
    assert types(events) == ["announcement_posted"] and events()[0].text == a.text
    assert AuditLog.objects.get().action == "run_announce"
    with pytest.raises(control.ControlRefused):
        control.post_announcement(run=run, actor=carol, text=" ")
    with pytest.raises(control.ControlRefused, match="500"):
        control.post_announcement(run=run, actor=carol, text="x" * 501)


def test_run_control_events_reach_the_run_page_and_its_workers():
    from live import event_routing as routes
    from live import events as ev

    changed = ev.RunControlChanged(run_id=3, action="paused", state="paused")
    assert set(routes.live_groups(changed)) == {routes.run_live_group(3), routes.run_workers_group(3),
                                                routes.runs_group()}
    posted = ev.AnnouncementPosted(run_id=3, announcement_id=1, text="hi")
    assert set(routes.live_groups(posted)) == {routes.run_live_group(3), routes.run_workers_group(3)}
