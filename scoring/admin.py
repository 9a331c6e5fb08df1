from django.contrib import admin

from scoring.models import ChampionChange, Deployment, PackageVersion, Quota


class VersionInline(admin.TabularInline):
    model = PackageVersion
    extra = 0
    fields = ["number", "filename", "size", "state", "message", "uploaded_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "status", "schedule", "next_run_at"]
    list_filter = ["status"]
    search_fields = ["name", "owner__username"]
    inlines = [VersionInline]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["user", "active_models", "bytes"]
    search_fields = ["user__username"]


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
