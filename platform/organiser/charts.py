"""The run page's chart series: loss, accuracy and throughput against step, and the bans to mark."""

from __future__ import annotations

CHART_POINTS = 500


def chart_series(run, *, points: int = CHART_POINTS) -> dict:
    """Columns for uPlot: ``step``, ``loss``, ``accuracy`` (null where no peer evaluated), ``throughput`` in
    samples per second (the samples the site credited for the step, at most its assigned batch per member,
    over the step's wall time; 0 for a dropped step), plus ``bans`` as ``{step, account, kind, url}``."""
    from moderation.models import Ban
    from runs.models import StepRecord

    records = list(StepRecord.objects.filter(run=run).exclude(finished_at=None).order_by("-step")[:points])
    records.reverse()
    steps, loss, accuracy, throughput = [], [], [], []
    for r in records:
        steps.append(r.step)
        loss.append(r.loss)
        accuracy.append(r.accuracy)
        seconds = max((r.finished_at - r.started_at).total_seconds(), 1e-3)
        samples = r.samples if r.outcome == "applied" else 0
        throughput.append(round(samples / seconds, 2))
    first = steps[0] if steps else 0
    bans = [{"step": b["step"], "account": b["user__username"] or "", "kind": b["evidence_kind"],
             "url": f"/trust/bans/{b['id']}/"}
            for b in Ban.objects.filter(run=run, step__gte=first).exclude(step=None)
            .values("id", "step", "user__username", "evidence_kind").order_by("step")[:100]]
    return {"step": steps, "loss": loss, "accuracy": accuracy, "throughput": throughput, "bans": bans,
            "batch_size": run.batch_size}
