from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView
from rest_framework.routers import DefaultRouter

from portal import (
    departed_views,
    directory,
    oidc,
    online_views,
    report_views,
    status_views,
    team_views,
    views,
)
from portal.api import views as api

router = DefaultRouter(trailing_slash=True)
# No ".json" suffix URLs: the viewsets take no format argument (they answered 500), and
# ?format= is ours (csv or parquet scores), not DRF's renderer switch.
router.include_format_suffixes = False
router.register("models", api.DeploymentViewSet, basename="api-model")
router.register("runs", api.RunViewSet, basename="api-run")

urlpatterns = [
    path("", views.models_page, name="models"),
    path("models/status/", views.models_status, name="models-status"),
    path("models/upload/", views.upload, name="upload"),
    path("models/<int:deployment_id>/", views.model_page, name="model"),
    path(
        "models/<int:deployment_id>/versions/<int:number>/download/",
        views.version_download,
        name="version-download",
    ),
    # Before the model's actions: their pattern would take these names as actions.
    path("models/<int:deployment_id>/online/", online_views.switch, name="model-online"),
    path("models/<int:deployment_id>/try/", online_views.try_it, name="model-try"),
    path("models/<int:deployment_id>/<str:action>/", views.model_action, name="model-action"),
    path("runs/<int:run_id>/scores.<str:kind>", views.run_scores, name="run-scores"),
    path("reports/<int:report_id>/", report_views.report_page, name="report"),
    path(
        "reports/<int:report_id>/chart-<int:run_id>.png",
        report_views.report_chart,
        name="report-chart",
    ),
    path("status/", status_views.status_page, name="status"),
    path("status.json", status_views.status_json, name="status-json"),
    path("departed/", departed_views.departed_page, name="departed"),
    path("schedule-preview/", views.schedule_preview, name="schedule-preview"),
    path("token/", views.token_page, name="token"),
    path("teams/", team_views.teams_page, name="teams"),
    path("teams/<str:slug>/", team_views.team_page, name="team"),
    path("teams/<str:slug>/<str:action>/", team_views.team_action, name="team-action"),
    path("help/", views.help_page, name="help"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            authentication_form=directory.SignInForm, redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Sign-in through OpenID Connect (404 while OIDC_ENABLED is off); mozilla-django-oidc's names.
    path("oidc/authenticate/", oidc.SignIn.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.Callback.as_view(), name="oidc_authentication_callback"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(router.urls)),
    path("api/v1/status/", api.StatusView.as_view(), name="api-status"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="schema"), name="api-docs"),
]
