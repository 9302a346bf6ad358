"""The organisers' say in ``runs.services.join_run``: a paused or finished run and a too-old worker are
refused with a sentence that says what to do."""

from __future__ import annotations

from btard_wire.control import CLOSE_NO_RUN, CLOSE_PROTOCOL_VERSION, CLOSE_RUN_FINISHED

from .versions import older_than


def refusal_for_run(run_id: int | None):
    """The ``JoinRefused`` for a worker asking for a run that takes no workers now, or ``None``."""
    from runs.models import Run
    from runs.services import JoinRefused

    if run_id is None:  # the worker takes the newest open run: say so when the newest one is paused
        run = Run.objects.exclude(state="finished").order_by("-created_at").first()
        if run is None or run.state != "paused":
            return None
    else:
        run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return None
    if run.state == "paused":
        return JoinRefused(CLOSE_NO_RUN, f"run {run.name[:40]} is paused by its organisers; retrying until "
                                         f"they resume it")
    if run.state == "finished":
        return JoinRefused(CLOSE_RUN_FINISHED, f"run {run.name[:40]} has finished; see the site for open runs")
    return None


def check_worker_version(*, run, client_version: str) -> None:
    """Raise ``JoinRefused`` (``CLOSE_PROTOCOL_VERSION``: the worker exits with code 3) for a worker older
    than the run's minimum."""
    from runs.services import JoinRefused

    from .models import RunControl

    minimum = RunControl.objects.filter(run=run).values_list("min_worker_version", flat=True).first() or ""
    if older_than(client_version, minimum):
        raise JoinRefused(CLOSE_PROTOCOL_VERSION,
                          f"this run needs btard-worker >= {minimum}, this is {client_version or 'older'}: "
                          f"upgrade it (the run page has the command)")
