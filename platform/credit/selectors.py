"""Credit from what the site knows (``credit.rules``): the samples ``runs.services.close_step`` credited
for each applied step (the batch size the site assigned per member, ``runs.services.samples_per_peer``;
never more than that, whatever a worker claims), and the site's own clock. One query per column, merged
per account: the leaderboard, the volunteer's page and ``/api/leaderboard/`` read the same rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Sum


@dataclass
class CreditRow:
    user_id: int
    username: str
    samples: int = 0
    steps: int = 0
    online: timedelta = field(default_factory=timedelta)
    bans: int = 0
    rank: int = 0

    @property
    def online_seconds(self) -> int:
        return int(self.online.total_seconds())


def leaderboard(*, run=None, limit: int | None = 100) -> list[CreditRow]:
    """Accounts ranked by validated contribution in ``run`` (every run when ``None``)."""
    from django.contrib.auth import get_user_model
    from moderation.models import Ban
    from runs.models import StepReportRecord
    from volunteers.models import ContributionEvent

    rows: dict[int, CreditRow] = {}

    def row(user_id: int) -> CreditRow:
        if user_id not in rows:
            rows[user_id] = CreditRow(user_id=user_id, username="")
        return rows[user_id]

    credited = ContributionEvent.objects.all() if run is None else ContributionEvent.objects.filter(run=run)
    for r in credited.values("user_id").annotate(samples=Sum("samples"), steps=Count("id")):
        entry = row(r["user_id"])
        entry.samples, entry.steps = int(r["samples"] or 0), int(r["steps"])
    took_part = StepReportRecord.objects.exclude(step_record__finished_at=None)
    if run is not None:
        took_part = took_part.filter(step_record__run=run)
    duration = ExpressionWrapper(F("step_record__finished_at") - F("step_record__started_at"),
                                 output_field=DurationField())
    for r in took_part.values("peer__user_id").annotate(online=Sum(duration)):
        row(r["peer__user_id"]).online = r["online"] or timedelta()
    bans = Ban.objects.filter(lifted_at=None).exclude(user=None)
    if run is not None:
        bans = bans.filter(run=run)
    for r in bans.values("user_id").annotate(n=Count("id")):
        if r["user_id"] in rows:
            rows[r["user_id"]].bans = r["n"]
    names = dict(get_user_model().objects.filter(pk__in=list(rows)).values_list("pk", "username"))
    for entry in rows.values():
        entry.username = names.get(entry.user_id, "?")
    ranked = sorted(rows.values(), key=lambda e: (-e.samples, -e.steps, e.username))
    for i, entry in enumerate(ranked, start=1):
        entry.rank = i
    return ranked[:limit] if limit else ranked


def credit_of(user, *, run=None) -> CreditRow:
    """The account's row as the leaderboard has it (rank 0: not on the leaderboard yet)."""
    for entry in leaderboard(run=run, limit=None):
        if entry.user_id == user.pk:
            return entry
    return CreditRow(user_id=user.pk, username=user.username)


def history_of(user) -> list[dict]:
    """Per run: the account's credit, steps, time online and rank in that run, newest run first."""
    from runs.models import Run, StepReportRecord

    run_ids = set(StepReportRecord.objects.filter(peer__user=user).values_list("step_record__run_id", flat=True))
    history = []
    for run in Run.objects.filter(pk__in=run_ids).order_by("-created_at"):
        board = leaderboard(run=run, limit=None)
        mine = next((e for e in board if e.user_id == user.pk), None)
        if mine is not None:
            history.append({"run": run, "row": mine, "of": len(board)})
    return history
