from django.contrib import admin

from .models import ContributionEvent, ReputationEvent, Volunteer, WorkerToken


@admin.register(Volunteer)
class VolunteerAdmin(admin.ModelAdmin):
    list_display = ("user", "reputation", "contribution_samples", "validated_steps", "banned_at")
    search_fields = ("user__username", "user__email")
    readonly_fields = ("reputation", "contribution_samples", "validated_steps", "banned_at", "ban_reason")


@admin.register(WorkerToken)
class WorkerTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    search_fields = ("user__username", "prefix", "name")
    readonly_fields = ("prefix", "token_hash", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    @admin.action(description="Revoke the selected tokens (closes their workers)")
    def revoke(self, request, queryset):
        from .services import revoke_worker_token

        for token in queryset:
            revoke_worker_token(token=token, actor=request.user)


@admin.register(ReputationEvent)
class ReputationEventAdmin(admin.ModelAdmin):
    list_display = ("user", "kind", "delta", "run", "step", "created_at")
    list_filter = ("kind",)


admin.site.register(ContributionEvent)
