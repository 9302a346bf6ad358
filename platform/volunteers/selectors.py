"""Reads for the volunteer page and token list."""

from __future__ import annotations

from .models import ContributionEvent, ReputationEvent, WorkerToken
from .services import REPUTATION_DELTAS, volunteer_for


def tokens_of(user):
    return WorkerToken.objects.filter(user=user).order_by("revoked_at", "-created_at")


def volunteer_page(user) -> dict:
    from moderation.selectors import bans_of_user
    from runs.selectors import peers_of_user

    return {
        "volunteer": volunteer_for(user),
        "tokens": tokens_of(user),
        "peers": peers_of_user(user),
        "reputation_history": ReputationEvent.objects.filter(user=user).select_related("run")[:50],
        "contributions": ContributionEvent.objects.filter(user=user).select_related("run")[:50],
        "bans": bans_of_user(user),
        "reputation_table": REPUTATION_DELTAS,
    }
