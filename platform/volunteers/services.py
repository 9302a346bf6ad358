"""Writes for volunteers: sign-up, worker tokens, reputation and contribution.

Each public function is keyword-only, atomic, and emits one typed event on commit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from live.bus import emit
from live.events import ReputationChanged, TokenCreated, TokenRevoked, VolunteerSignedUp

from btard_wire.errors import CodedError

from .models import ContributionEvent, ReputationEvent, Volunteer, WorkerToken

TOKEN_PREFIX = "btard"

# What each reputation event is worth (published on the volunteer page).
REPUTATION_DELTAS = {
    "validated_step": 1.0,
    "probation_step": 1.0,
    "eliminated": -5.0,
    "missed_deadline": -2.0,
}


class SignupLimited(Exception):
    """Too many sign-ups from this address or overall; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class TokenRefused(CodedError):
    """A worker token cannot be used; ``close_code`` (also ``code``) is one of ``btard_wire.control.CLOSE_*``."""

    def __init__(self, close_code: int, reason: str):
        super().__init__(close_code, reason)
        self.close_code = close_code
        self.reason = reason

    @property
    def http_status(self) -> int:
        """401 for a missing or unknown token, 403 for a known one that may not work (revoked, banned)."""
        from btard_wire.control import CLOSE_BAD_TOKEN, CLOSE_NO_TOKEN

        return 401 if self.close_code in (CLOSE_NO_TOKEN, CLOSE_BAD_TOKEN) else 403


def volunteer_for(user) -> Volunteer:
    volunteer, _ = Volunteer.objects.get_or_create(user=user)
    return volunteer


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def check_signup_allowed(*, address: str) -> None:
    """Count one sign-up attempt for ``address`` and globally; raise :class:`SignupLimited` past a limit.

    Counters live in the cache (Redis in production) with a fixed window.
    """
    window = settings.SIGNUP_LIMIT_WINDOW_SECONDS
    bucket = int(timezone.now().timestamp()) // window
    retry_after = window - int(timezone.now().timestamp()) % window
    for key, limit, what in (
        (f"signup:addr:{address}:{bucket}", settings.SIGNUP_LIMIT_PER_ADDRESS, "from your address"),
        (f"signup:global:{bucket}", settings.SIGNUP_LIMIT_GLOBAL, "on the site"),
    ):
        cache.add(key, 0, timeout=window)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)
            count = 1
        if count > limit:
            minutes = max(1, retry_after // 60)
            raise SignupLimited(
                f"Too many sign-ups {what} right now (limit {limit} per {window // 60} minutes). "
                f"Please try again in about {minutes} minute{'s' if minutes != 1 else ''}.",
                retry_after,
            )


@transaction.atomic
def sign_up(*, username: str, email: str, password: str):
    """Create a user and its volunteer profile. The caller validated the form and the rate limit."""
    user = get_user_model().objects.create_user(username=username, email=email, password=password)
    Volunteer.objects.create(user=user)
    emit(VolunteerSignedUp(user_id=user.id, username=user.username))
    return user


class TokenLimit(Exception):
    """No more worker tokens for this account (or from this address) right now; the message says why."""


@dataclass
class IssuedToken:
    token: WorkerToken
    raw: str  # shown to the volunteer once, never stored


@transaction.atomic
def create_worker_token(*, user, name: str) -> IssuedToken:
    """Issue a token ``btard_<prefix>_<secret>``; only its SHA-256 and the public prefix are stored."""
    volunteer = volunteer_for(user)
    if volunteer.is_banned:
        raise PermissionError("banned accounts cannot create worker tokens")
    limit = settings.MAX_LIVE_TOKENS_PER_ACCOUNT
    if WorkerToken.objects.select_for_update().filter(user=user, revoked_at=None).count() >= limit:
        raise TokenLimit(f"An account holds at most {limit} live worker tokens; revoke one you no longer use "
                         f"first.")
    name = (name or "").strip()[:64] or "worker"
    while True:
        prefix = secrets.token_hex(4)
        if not WorkerToken.objects.filter(prefix=prefix).exists():
            break
    raw = f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    token = WorkerToken.objects.create(user=user, name=name, prefix=prefix, token_hash=hash_token(raw))
    emit(TokenCreated(token_id=token.id, user_id=user.id, prefix=prefix))
    return IssuedToken(token=token, raw=raw)


@transaction.atomic
def revoke_worker_token(*, token: WorkerToken, actor) -> WorkerToken:
    """Revoke a token; its live worker connection is closed with ``CLOSE_REVOKED_TOKEN``."""
    if actor.pk != token.user_id and not actor.is_staff:
        raise PermissionError("only the owner or staff can revoke a token")
    token = WorkerToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    emit(TokenRevoked(token_id=token.id, user_id=token.user_id, prefix=token.prefix))
    return token


def authenticate_bearer(authorization: str | None) -> WorkerToken:
    """:func:`authenticate_worker_token` for an HTTP ``Authorization: Bearer <token>`` header value."""
    header = authorization or ""
    raw = header[7:].strip() if header.lower().startswith("bearer ") else None
    return authenticate_worker_token(raw)


def authenticate_worker_token(raw: str | None) -> WorkerToken:
    """Return the token for a ``Bearer`` value or raise :class:`TokenRefused` with the close code.

    Read-only apart from ``last_used_at`` (not a state change anyone watches, so no event).
    """
    from btard_wire.control import (
        CLOSE_BAD_TOKEN,
        CLOSE_BANNED,
        CLOSE_NO_TOKEN,
        CLOSE_REASONS,
        CLOSE_REVOKED_TOKEN,
    )

    if not raw:
        raise TokenRefused(CLOSE_NO_TOKEN, CLOSE_REASONS[CLOSE_NO_TOKEN])
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenRefused(CLOSE_BAD_TOKEN, CLOSE_REASONS[CLOSE_BAD_TOKEN])
    token = WorkerToken.objects.select_related("user").filter(prefix=parts[1]).first()
    if token is None or not hmac.compare_digest(token.token_hash, hash_token(raw.strip())):
        raise TokenRefused(CLOSE_BAD_TOKEN, CLOSE_REASONS[CLOSE_BAD_TOKEN])
    if token.revoked_at is not None:
        raise TokenRefused(CLOSE_REVOKED_TOKEN,
                           f"token revoked: {token.name} (btard_{token.prefix}_...) was revoked on "
                           f"{token.revoked_at:%Y-%m-%d %H:%M} UTC; create a new one on your /tokens/ page")
    volunteer = volunteer_for(token.user)
    if volunteer.is_banned or not token.user.is_active:
        reason = volunteer.ban_reason or "account disabled"
        raise TokenRefused(CLOSE_BANNED, f"banned: {reason[:80]}; see /bans/ for the evidence")
    WorkerToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token


def record_reputation_event(*, user_id: int, kind: str, run=None, step: int | None = None,
                            delta: float | None = None, note: str = "") -> ReputationEvent:
    """Write one reputation event and move the account's score; emits nothing (a building block of the
    services that do: ``adjust_reputation``, ``runs`` and ``moderation``, whose own event covers it)."""
    delta = REPUTATION_DELTAS[kind] if delta is None else delta
    event = ReputationEvent.objects.create(user_id=user_id, run=run, step=step, kind=kind, delta=delta,
                                           note=note[:200])
    Volunteer.objects.get_or_create(user_id=user_id)
    from django.db.models import F

    Volunteer.objects.filter(user_id=user_id).update(reputation=F("reputation") + delta)
    return event


@transaction.atomic
def adjust_reputation(*, user_ids: list[int], kind: str, run=None, step: int | None = None,
                      delta: float | None = None, note: str = "") -> list[ReputationEvent]:
    """Record one reputation event per account (``delta`` defaults to the published table)."""
    events = [record_reputation_event(user_id=uid, kind=kind, run=run, step=step, delta=delta, note=note)
              for uid in user_ids]
    emit(ReputationChanged(user_ids=list(user_ids)))
    return events


@transaction.atomic
def credit_step(*, run, step: int, samples_by_user: dict[int, int], validated_user_ids: list[int],
                probation_user_ids: list[int], quiet: bool = False) -> None:
    """Credit an accepted step: samples to contribution, +reputation for validated and probation work.

    ``quiet`` skips the event when a caller's own event (``StepAdvanced``) already covers the change.
    """
    for user_id, samples in samples_by_user.items():
        _, created = ContributionEvent.objects.get_or_create(user_id=user_id, run=run, step=step,
                                                             defaults={"samples": samples})
        if created:
            from django.db.models import F

            Volunteer.objects.get_or_create(user_id=user_id)
            Volunteer.objects.filter(user_id=user_id).update(
                contribution_samples=F("contribution_samples") + samples,
                validated_steps=F("validated_steps") + 1)
    for user_id in validated_user_ids:
        record_reputation_event(user_id=user_id, kind="validated_step", run=run, step=step)
    for user_id in probation_user_ids:
        record_reputation_event(user_id=user_id, kind="probation_step", run=run, step=step)
    if not quiet:
        emit(ReputationChanged(user_ids=sorted(set(samples_by_user) | set(validated_user_ids)
                                               | set(probation_user_ids))))


def apply_missed_deadline_quietly(*, user_id: int, run, step: int) -> ReputationEvent:
    """Building block for ``runs.services.close_step`` (whose ``StepAdvanced`` event covers it)."""
    return record_reputation_event(user_id=user_id, kind="missed_deadline", run=run, step=step,
                             note=f"no step report for step {step} of {run.name}")


@transaction.atomic
def recompute_reputation() -> int:
    """Make every profile's reputation and contribution equal the sum of its history; return fixes."""
    from live.events import HousekeepingDone

    rep = dict(ReputationEvent.objects.values("user_id").annotate(total=Sum("delta")).values_list("user_id", "total"))
    contrib = dict(ContributionEvent.objects.values("user_id").annotate(total=Sum("samples"))
                   .values_list("user_id", "total"))
    fixed = 0
    for volunteer in Volunteer.objects.select_for_update():
        want_rep = float(rep.get(volunteer.user_id) or 0.0)
        want_contrib = int(contrib.get(volunteer.user_id) or 0)
        if abs(volunteer.reputation - want_rep) > 1e-9 or volunteer.contribution_samples != want_contrib:
            volunteer.reputation = want_rep
            volunteer.contribution_samples = want_contrib
            volunteer.save(update_fields=["reputation", "contribution_samples"])
            fixed += 1
    emit(HousekeepingDone(task="recompute_reputation", count=fixed))
    return fixed
