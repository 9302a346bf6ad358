"""The same staff actions as /moderation/, with the reason typed next to the action menu."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from . import services
from .models import AuditLog, Ban, ModerationCase


class ReasonActionForm(ActionForm):
    reason = forms.CharField(required=False, label="Reason (required)", max_length=500)


def _reason(modeladmin, request) -> str | None:
    reason = request.POST.get("reason", "").strip()
    if not reason:
        modeladmin.message_user(request, "A reason is required for moderation actions.", messages.ERROR)
        return None
    return reason


@admin.register(ModerationCase)
class ModerationCaseAdmin(admin.ModelAdmin):
    action_form = ReasonActionForm
    list_display = ("id", "kind", "run", "step", "status", "summary", "created_at")
    list_filter = ("status", "kind")
    readonly_fields = ("evidence", "reputation_event_ids", "resolved_at", "resolved_by", "resolution_reason")
    actions = ["confirm_ban", "clear"]

    @admin.action(description="Confirm a ban of every peer of the selected cases")
    def confirm_ban(self, request, queryset):
        reason = _reason(self, request)
        if reason is None:
            return
        for case in queryset.filter(status="open"):
            for peer in case.peers.all():
                case.refresh_from_db()
                if case.status == "open":
                    services.confirm_case_ban(case=case, peer=peer, actor=request.user, reason=reason)
                else:
                    services.ban_peer(peer=peer, reason=reason, evidence_kind=f"staff:{case.kind}", source="staff",
                                      step=case.step, evidence={"case": case.pk}, actor=request.user)

    @admin.action(description="Clear the selected cases (restores reputation)")
    def clear(self, request, queryset):
        reason = _reason(self, request)
        if reason is None:
            return
        for case in queryset.filter(status="open"):
            services.clear_case(case=case, actor=request.user, reason=reason)


@admin.register(Ban)
class BanAdmin(admin.ModelAdmin):
    action_form = ReasonActionForm
    list_display = ("peer_id", "user", "run", "step", "evidence_kind", "source", "created_at", "lifted_at")
    list_filter = ("source", "evidence_kind")
    search_fields = ("peer_id", "user__username")
    readonly_fields = ("evidence", "lifted_at", "lifted_by", "lift_reason")
    actions = ["unban"]

    @admin.action(description="Unban the selected peers")
    def unban(self, request, queryset):
        reason = _reason(self, request)
        if reason is None:
            return
        for ban in queryset.filter(lifted_at=None):
            services.unban(ban=ban, actor=request.user, reason=reason)


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "target", "reason")

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
