from django.contrib import admin
from django.template.loader import render_to_string

from scoring import record
from scoring.models import (
    ChampionChange,
    DeletedDeployment,
    Deployment,
    Membership,
    PackageVersion,
    Quota,
    ServiceToken,
    Team,
)
from scoring.packages import deployments


class VersionInline(admin.TabularInline):
    model = PackageVersion
    extra = 0
    fields = ["number", "filename", "size", "state", "message", "uploaded_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "team", "status", "schedule", "next_run_at"]
    list_filter = ["status", "team"]
    search_fields = ["name", "owner__username", "team__slug"]
    inlines = [VersionInline]

    # Deleted as the portal deletes: packages removed from S3, a tombstone for the scores.
    def delete_model(self, request, deployment: Deployment) -> None:
        deployments.delete(deployment)

    def delete_queryset(self, request, queryset) -> None:
        for deployment in queryset:
            deployments.delete(deployment)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "from_directory"]
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """A team's members and quotas (blank: the site's defaults); its pages do the rest."""

    list_display = ["name", "slug", "report_email", "active_models", "bytes"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(ServiceToken)
class ServiceTokenAdmin(admin.ModelAdmin):
    """Read only: made and revoked on the team's page (the key shown once there)."""

    list_display = ["user", "team", "role", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["team"]
    readonly_fields = ["user", "team", "name", "role", "created_by", "created_at"]
    readonly_fields += ["last_used_at", "revoked_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["user", "active_models", "bytes"]
    search_fields = ["user__username"]


@admin.register(DeletedDeployment)
class DeletedDeploymentAdmin(admin.ModelAdmin):
    """Deleted models, with their record of changes (it outlives them)."""

    list_display = ["name", "deployment_id", "deleted_at", "scores_removed_at"]
    search_fields = ["name", "owner__username"]
    fields = ["name", "deployment_id", "owner", "deleted_at", "scores_removed_at", "history"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="History")
    def history(self, tombstone: DeletedDeployment) -> str:
        entries = record.history(tombstone.deployment_id)
        return render_to_string("portal/_history.html", {"history": record.describe_all(entries)})


@admin.register(ChampionChange)
class ChampionChangeAdmin(admin.ModelAdmin):
    """Every promotion and rollback, for approvers to find the waiting ones: read only, as
    they are made and approved on the model page or through the API."""

    list_display = ["deployment", "kind", "version", "status", "requested_by", "approved_by"]
    list_filter = ["status", "kind"]
    search_fields = ["deployment__name", "requested_by__username", "reason"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
