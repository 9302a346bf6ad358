"""Run control for organisers (staff): create a run from the task registry, pause, resume, finish, set
the minimum worker version, post an announcement.

Keyword-only, atomic; each emits one typed event on commit and writes one audit-log entry
(``moderation.models.AuditLog``). The run page and the run's workers hear of every change
(``live.events.RunControlChanged`` / ``AnnouncementPosted`` become a ``RunNotice`` for workers).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from live.bus import emit
from live.events import AnnouncementPosted, RunControlChanged

from .catalog import available_tasks, task_info
from .models import Announcement, RunControl
from .versions import parse_version

# Hyper-parameters an organiser may set at creation (Run fields); everything else keeps its default.
RUN_FIELDS = ("tau", "peers_per_group", "validators_per_step", "probation_steps", "batch_size", "lr", "seed",
              "phase_timeout", "step_timeout", "min_peers", "epoch_steps", "checkpoint_every", "admission_policy",
              "max_new_per_window", "admission_window_seconds", "max_candidate_fraction",
              "missed_deadlines_for_case")


AUDIT_ACTIONS = {"paused": "run_pause", "resumed": "run_resume", "finished": "run_finish"}


class ControlRefused(ValueError):
    """The action cannot be done as asked (nothing changed); the message says why."""


def _require_staff(actor) -> None:
    if actor is None or not getattr(actor, "is_staff", False):
        raise PermissionDenied("only organisers (staff) can control runs")


def _audit(*, actor, action: str, run, reason: str = "", **details):
    from moderation.models import AuditLog

    return AuditLog.objects.create(actor=actor, action=action, target=f"run {run.pk} ({run.name})"[:100],
                                   reason=reason, details=details)


@transaction.atomic
def create_run(*, actor, name: str, task: str, reason: str = "", **hyperparameters):
    """A new open run of ``task`` (a name of the worker's task registry). Hyper-parameters not given take
    the task's defaults (batch size, learning rate) or the model's. The caller validated the ranges
    (``organiser.forms.RunCreateForm``); unknown names are refused here."""
    from runs.models import Run

    _require_staff(actor)
    name = (name or "").strip()
    if not name:
        raise ControlRefused("a run needs a name")
    known = available_tasks()
    if task not in known:
        raise ControlRefused(f"unknown task {task!r}; known: {', '.join(known)}")
    unknown = set(hyperparameters) - set(RUN_FIELDS)
    if unknown:
        raise ControlRefused(f"unknown hyper-parameters: {', '.join(sorted(unknown))}")
    if Run.objects.filter(name=name).exists():
        raise ControlRefused(f"a run named {name!r} exists already")
    info = task_info(task)
    values = {"batch_size": info.batch_size, "lr": info.lr, "peers_per_group": info.peers_per_group}
    values.update({k: v for k, v in hyperparameters.items() if v is not None})
    run = Run.objects.create(name=name, task=task, state="open", **values)
    RunControl.objects.create(run=run)
    _audit(actor=actor, action="run_create", run=run, reason=reason, task=task,
           hyperparameters={k: values[k] for k in sorted(values)})
    emit(RunControlChanged(run_id=run.id, action="created", state=run.state, message=f"run {run.name} created"))
    return run


def _set_state(*, run, actor, state: str, action: str, allowed_from: tuple[str, ...], message: str, reason: str):
    from runs.models import Run

    _require_staff(actor)
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.state not in allowed_from:
        raise ControlRefused(f"run {run.name} is {run.state}: it cannot be {action} now")
    before = run.state
    run.state = state
    run.save(update_fields=["state"])
    _audit(actor=actor, action=AUDIT_ACTIONS[action], run=run, reason=reason, before=before, after=state)
    emit(RunControlChanged(run_id=run.id, action=action, state=state, message=message))
    return run


@transaction.atomic
def pause_run(*, run, actor, reason: str = ""):
    """No new steps start; a step in progress still finishes. Workers stay connected and wait."""
    return _set_state(run=run, actor=actor, state="paused", action="paused", allowed_from=("open",), reason=reason,
                      message=f"run {run.name} is paused by its organisers: stay connected, it resumes here"
                              + (f" ({reason})" if reason else ""))


@transaction.atomic
def resume_run(*, run, actor, reason: str = ""):
    return _set_state(run=run, actor=actor, state="open", action="resumed", allowed_from=("paused",), reason=reason,
                      message=f"run {run.name} resumed: steps start again" + (f" ({reason})" if reason else ""))


@transaction.atomic
def finish_run(*, run, actor, reason: str = ""):
    """The run ends: a step in progress is dropped (nobody is charged for it), workers are told and their
    sockets close with ``CLOSE_RUN_FINISHED`` (the worker exits with a sentence)."""
    from runs.models import Run, StepRecord

    finished = _set_state(run=run, actor=actor, state="finished", action="finished", allowed_from=("open", "paused"),
                          reason=reason, message=f"run {run.name} has finished: thank you! The results stay on "
                                                 f"the run page" + (f" ({reason})" if reason else ""))
    StepRecord.objects.filter(run=finished, finished_at=None).update(outcome="dropped", finished_at=timezone.now())
    Run.objects.filter(pk=finished.pk).update(step_in_progress=False)
    finished.step_in_progress = False
    return finished


@transaction.atomic
def set_min_worker_version(*, run, actor, version: str, reason: str = ""):
    """Workers older than ``version`` are refused at join with an upgrade message (``""``: no minimum)."""
    _require_staff(actor)
    version = (version or "").strip()
    if version:
        try:
            parse_version(version)
        except ValueError as exc:
            raise ControlRefused(str(exc)) from None
    control, _ = RunControl.objects.select_for_update().get_or_create(run=run)
    before = control.min_worker_version
    control.min_worker_version = version
    control.save(update_fields=["min_worker_version", "updated_at"])
    _audit(actor=actor, action="run_min_version", run=run, reason=reason, before=before, after=version)
    emit(RunControlChanged(run_id=run.id, action="min_version", state=run.state, min_worker_version=version,
                           message=(f"run {run.name} now needs btard-worker {version} or newer: upgrade before "
                                    f"your next restart" if version else f"run {run.name} takes any worker version")))
    return control


@transaction.atomic
def post_announcement(*, run, actor, text: str):
    """Shown on the run page and in the terminal of every worker of the run."""
    _require_staff(actor)
    text = " ".join((text or "").split())
    if not text:
        raise ControlRefused("an announcement needs some text")
    if len(text) > 500:
        raise ControlRefused(f"an announcement has at most 500 characters (this one has {len(text)})")
    announcement = Announcement.objects.create(run=run, text=text, author=actor)
    _audit(actor=actor, action="run_announce", run=run, reason=text, announcement_id=announcement.id)
    emit(AnnouncementPosted(run_id=run.id, announcement_id=announcement.id, text=text))
    return announcement
