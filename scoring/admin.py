from django.contrib import admin

from scoring.models import Deployment, PackageVersion, Quota


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
