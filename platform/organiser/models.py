"""What organisers set on a run besides its hyper-parameters: the minimum worker version and the
announcements shown on the run page and in every worker's terminal."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class RunControl(models.Model):
    run = models.OneToOneField("runs.Run", on_delete=models.CASCADE, related_name="control")
    min_worker_version = models.CharField(max_length=32, blank=True,
                                          help_text="workers older than this are refused with an upgrade message")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"control of {self.run}"


class Announcement(models.Model):
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="announcements")
    text = models.CharField(max_length=500)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.run}: {self.text[:40]}"
