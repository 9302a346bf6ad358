"""Bans, the staff moderation queue and the audit log of every staff action."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Ban(models.Model):
    SOURCES = [("verdict", "protocol verdict"), ("staff", "staff decision")]
    SCOPES = [("account", "account"), ("key", "worker key only")]

    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="bans")
    run_peer = models.ForeignKey("runs.Peer", null=True, blank=True, on_delete=models.SET_NULL, related_name="bans")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="bans")
    peer_id = models.CharField(max_length=40, db_index=True)
    step = models.IntegerField(null=True, blank=True)
    reason = models.TextField()
    evidence_kind = models.CharField(max_length=64)
    evidence = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16, choices=SOURCES)
    # "account": every key of the account is banned and its tokens refused; "key": only this worker key
    # (a fault an honest crash also produces; see moderation.services.KEY_ONLY_KINDS)
    scope = models.CharField(max_length=8, choices=SCOPES, default="account")
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lift_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"ban {self.peer_id[:8]} ({self.evidence_kind})"

    @property
    def is_active(self) -> bool:
        return self.lifted_at is None


class ModerationCase(models.Model):
    KINDS = [("eliminate", "ELIMINATE pair"), ("timeouts", "repeated timeouts"),
             ("crash", "crash or abort (worker key banned)"), ("escalated", "repeat eliminator")]
    STATUSES = [("open", "open"), ("banned", "ban confirmed"), ("cleared", "cleared")]

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="cases")
    kind = models.CharField(max_length=16, choices=KINDS)
    step = models.IntegerField(null=True, blank=True)
    peers = models.ManyToManyField("runs.Peer", related_name="cases")
    summary = models.CharField(max_length=300)
    evidence = models.JSONField(default=dict, blank=True)
    # reputation events charged by the incident, reversed when staff clear a peer
    reputation_event_ids = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=STATUSES, default="open")
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    resolution_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["status", "-created_at"]

    def __str__(self) -> str:
        return f"case #{self.pk} {self.kind} ({self.status})"


class AuditLog(models.Model):
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=32)
    target = models.CharField(max_length=100)
    reason = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
