from django.contrib import admin

from .models import BroadcastLog, Peer, Run, StepRecord


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "state", "current_step", "step_in_progress", "aggregator", "admission_policy")
    list_filter = ("state", "task")
    readonly_fields = ("current_step", "step_in_progress", "step_started_at", "step_deadline", "created_at")
    fieldsets = [
        (None, {"fields": ("name", "task", "state")}),
        ("Hyper-parameters", {"fields": ("aggregator", "tau", "peers_per_group", "validators_per_step",
                                         "batch_size", "lr", "seed", "phase_timeout", "step_timeout", "min_peers",
                                         "epoch_steps", "extra")}),
        ("Admission", {"fields": ("admission_policy", "probation_steps", "max_new_per_window",
                                  "admission_window_seconds", "max_candidate_fraction", "missed_deadlines_for_case",
                                  "broadcast_retention_hours")}),
        ("State", {"fields": ("current_step", "step_in_progress", "step_started_at", "step_deadline",
                              "created_at")}),
    ]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "admission_policy":
            from admission.policies import POLICIES
            from django import forms

            return forms.ChoiceField(choices=[(n, n) for n in sorted(POLICIES)], initial="reputation")
        return super().formfield_for_dbfield(db_field, request, **kwargs)


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    list_display = ("peer_id", "user", "run", "role", "online", "status", "last_heartbeat")
    list_filter = ("role", "online", "run")
    search_fields = ("peer_id", "user__username")


@admin.register(StepRecord)
class StepRecordAdmin(admin.ModelAdmin):
    list_display = ("run", "step", "outcome", "loss", "accuracy", "samples", "started_at", "finished_at")
    list_filter = ("run", "outcome")


@admin.register(BroadcastLog)
class BroadcastLogAdmin(admin.ModelAdmin):
    list_display = ("run", "step", "phase", "sender_peer_id", "created_at")
    list_filter = ("phase",)
    readonly_fields = ("envelope",)
