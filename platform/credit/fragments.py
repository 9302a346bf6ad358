"""The leaderboard's live fragment (``/ws/live/?view=leaderboard``), registered in ``live.fragments``."""

from __future__ import annotations

from live.fragments import register

from .views import leaderboard_fragment


@register("leaderboard")
def leaderboard_push(event, *, run_id: int | None) -> str:
    """Steps and bans move the board (of every run, or of ``run_id`` only)."""
    if event.type not in ("step_advanced", "peer_banned", "peer_unbanned"):
        return ""
    if run_id is not None and getattr(event, "run_id", None) != run_id:
        return ""
    return leaderboard_fragment(run_id=run_id)
