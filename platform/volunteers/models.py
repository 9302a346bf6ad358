"""Volunteer accounts: profile (reputation, validated contribution, ban state), worker tokens, and the
histories that explain the numbers."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Volunteer(models.Model):
    """The account-level state of a volunteer. Reputation belongs here, never to a key (a lost worker
    key costs a probation, not the account)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="volunteer")
    reputation = models.FloatField(default=0.0)
    contribution_samples = models.BigIntegerField(default=0)
    validated_steps = models.IntegerField(default=0)
    banned_at = models.DateTimeField(null=True, blank=True)
    ban_reason = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.user.username} (rep {self.reputation:g})"

    @property
    def is_banned(self) -> bool:
        return self.banned_at is not None


class WorkerToken(models.Model):
    """A bearer token for ``btard-worker``. Only its SHA-256 is stored; ``prefix`` is public."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="worker_tokens")
    name = models.CharField(max_length=64)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (btard_{self.prefix}_...)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class ReputationEvent(models.Model):
    """One change of an account's reputation; the account's value is the sum of its events."""

    KINDS = [
        ("validated_step", "validated step"),
        ("probation_step", "probation step validated"),
        ("eliminated", "eliminated"),
        ("missed_deadline", "missed deadline"),
        ("restored", "restored by staff"),
        ("staff", "staff adjustment"),
    ]
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reputation_events")
    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL)
    step = models.IntegerField(null=True, blank=True)
    kind = models.CharField(max_length=32, choices=KINDS)
    delta = models.FloatField()
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "created_at"])]


class ContributionEvent(models.Model):
    """Samples an account contributed to one accepted (applied) step."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="contributions")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE)
    step = models.IntegerField()
    samples = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "run", "step"], name="one_credit_per_step")]
