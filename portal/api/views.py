from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.pagination import LimitOffsetPagination, PageNumberPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import health
from portal.api import model_list
from portal.api.renderers import FastJSONRenderer
from portal.api.serializers import (
    ChampionChangeSerializer,
    ChangeRequestSerializer,
    ComparisonSerializer,
    DeploymentDetailSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    HandOverSerializer,
    HistoryEntrySerializer,
    RunRequestSerializer,
    RunSerializer,
    ShareChangeSerializer,
    UploadSerializer,
)
from portal.downloads import stream_package, stream_scores
from portal.views import allow, changes_of, comparisons_of, deployments_for, runs_for
from scoring import record
from scoring.models import ChampionChange, Deployment, ScoringRun
from scoring.packages import deployments, handover, roles
from scoring.packages.deployments import DeployError
from scoring.packages.roles import RoleError
from scoring.runs import dispatch

# What each route of a model does, as owners.ACTIONS names it (the rest: "view"; approve
# and withdraw are the asker's and the approvers', as scoring.packages.roles says).
ACTION_OF = {
    "partial_update": "settings",
    "destroy": "delete",
    "download": "download",
    "promote": "promote",
    "rollback": "rollback",
    "share": "share",
    "hand_over": "hand_over",
}


class FleetPagination(LimitOffsetPagination):
    """`?limit=N&offset=M` pages a fleet's list ({count, next, previous, results}); without
    `limit` the whole list comes, as before, so a script written for a few models still works."""

    default_limit = None
    max_limit = 1000


class DeploymentViewSet(viewsets.GenericViewSet):
    """Deployments of the signed-in user (staff see all); another user's is a 404."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]
    serializer_class = DeploymentSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    # For the schema only (it reads the model from here); requests use get_queryset.
    queryset = Deployment.objects.none()
    # The list writes its packages unparsed (portal.api.model_list); the browsable API's
    # page shows what the first one writes.
    renderer_classes = [FastJSONRenderer, BrowsableAPIRenderer]

    def get_queryset(self):
        return deployments_for(self.request.user)

    def get_object(self) -> Deployment:
        """The model, or 404 when the user does not see it; 403 when their role does not
        allow what the request does (owners.ACTIONS)."""
        deployment = super().get_object()
        action = ACTION_OF.get(self.action, "view")
        if self.action == "runs" and self.request.method == "POST":
            action = "score"
        allow(self.request.user, deployment, action)
        return deployment

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description="models a page (at most 1,000)"),
            OpenApiParameter("offset", int, description="models before the page"),
        ]
    )
    @extend_schema(responses=DeploymentSerializer(many=True))
    def list(self, request):
        """DeploymentSerializer's shape, read as rows (portal.api.model_list)."""
        models = model_list.visible_rows(request.user)
        paginator = FleetPagination()
        page = paginator.paginate_queryset(models, request, view=self)
        if page is None:
            return Response(model_list.shown(list(models)))
        return paginator.get_paginated_response(model_list.shown(page))

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},
        responses={201: DeploymentDetailSerializer},
    )
    def create(self, request):
        form = UploadSerializer(data=request.data)  # parses the upload
        upload_error = getattr(request, "upload_error", None)
        if upload_error:
            raise DeployError(upload_error)
        form.is_valid(raise_exception=True)
        file = form.validated_data["file"]
        version = deployments.deploy(
            request.user,
            file,
            file.name,
            file.size,
            name=form.validated_data.get("name"),
            email=form.validated_data.get("email"),
            schedule=form.validated_data.get("schedule"),
            timezone=form.validated_data.get("timezone"),
            max_slice_age_days=form.validated_data.get("max_slice_age_days"),
            role=form.validated_data.get("role"),
            share=form.validated_data.get("share"),
            team=form.validated_data.get("team"),
        )
        deployment = self.get_queryset().get(id=version.deployment_id)
        return Response(DeploymentDetailSerializer(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=DeploymentDetailSerializer)
    def retrieve(self, request, pk=None):
        return Response(DeploymentDetailSerializer(self.get_object()).data)

    @extend_schema(request=DeploymentUpdateSerializer, responses=DeploymentDetailSerializer)
    def partial_update(self, request, pk=None):
        deployment = self.get_object()
        # partial: a form body without `online` leaves it (DRF reads an absent form
        # checkbox as false otherwise).
        form = DeploymentUpdateSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        deployments.update(deployment, **form.validated_data)
        return Response(DeploymentDetailSerializer(self.get_object()).data)

    def destroy(self, request, pk=None):
        deployments.delete(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(methods=["GET"], responses=RunSerializer(many=True))
    @extend_schema(methods=["POST"], request=RunRequestSerializer, responses={202: RunSerializer})
    @action(detail=True, methods=["get", "post"])
    def runs(self, request, pk=None):
        """GET: the run history. POST: score now, optionally for {"date": "YYYY-MM-DD"}
        (and "allow_older_slice": true to take an older slice than the package accepts)."""
        deployment = self.get_object()
        if request.method == "GET":
            return Response(
                RunSerializer(deployment.runs.select_related("version")[:500], many=True).data
            )
        form = RunRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        run = dispatch.score_now(
            deployment, form.validated_data.get("date"), form.validated_data["allow_older_slice"]
        )
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=HistoryEntrySerializer(many=True))
    @action(detail=True, methods=["get"])
    def history(self, request, pk=None):
        """The model's record of changes, newest first, a page (`?page=N`) at a time."""
        deployment = self.get_object()
        pages = HistoryPagination()
        page = pages.paginate_queryset(record.history(deployment.id), request, view=self)
        rows = record.describe_all(page)
        return pages.get_paginated_response(HistoryEntrySerializer(rows, many=True).data)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(
        detail=True,
        methods=["get"],
        url_path=r"versions/(?P<number>[0-9]+)/download",
        url_name="version-download",
    )
    def download(self, request, pk=None, number=None):
        """The version's package file, exactly as uploaded; its sha256 in the headers
        X-Package-SHA256 (hex) and Repr-Digest."""
        version = get_object_or_404(self.get_object().versions, number=int(number))
        return stream_package(version)

    @extend_schema(request=ChangeRequestSerializer, responses={200: ChampionChangeSerializer})
    @action(detail=True, methods=["post"], url_path=r"versions/(?P<number>\d+)/promote")
    def promote(self, request, pk=None, number=None):
        """Make the challenger (version `number`) the champion from the next run on."""
        return self.change_champion(request, number, ChampionChange.Kind.PROMOTE)

    @extend_schema(request=ChangeRequestSerializer, responses={200: ChampionChangeSerializer})
    @action(detail=True, methods=["post"], url_path=r"versions/(?P<number>\d+)/rollback")
    def rollback(self, request, pk=None, number=None):
        """Make an earlier valid version (`number`) the champion again from the next run on."""
        return self.change_champion(request, number, ChampionChange.Kind.ROLLBACK)

    def change_champion(self, request, number: str, kind: str) -> Response:
        deployment = self.get_object()
        version = deployment.versions.filter(number=number).first()
        if version is None:
            raise NotFound(f"{deployment.name} has no version {number}")
        form = ChangeRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if roles.change_kind(deployment, version) != kind:
            if kind == ChampionChange.Kind.PROMOTE:
                raise RoleError(f"v{version.number} is not the challenger: roll back to it instead")
            raise RoleError(f"v{version.number} is the challenger: promote it instead")
        change = roles.request_change(
            deployment, version, form.validated_data["reason"], request.user
        )
        return Response(ChampionChangeSerializer(change).data)

    @extend_schema(request=ShareChangeSerializer, responses={200: DeploymentDetailSerializer})
    @action(detail=True, methods=["post"])
    def share(self, request, pk=None):
        """Change the challenger's traffic split from the next run on (null: shadow), with a
        reason kept in the record; runs already made keep the split they were made with."""
        deployment = self.get_object()
        form = ShareChangeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        roles.change_share(deployment, form.validated_data["share"], form.validated_data["reason"])
        return Response(DeploymentDetailSerializer(self.get_object()).data)

    @extend_schema(request=HandOverSerializer, responses={200: DeploymentDetailSerializer})
    @action(detail=True, methods=["post"])
    def hand_over(self, request, pk=None):
        """Make the model a team's (one you manage), with a reason kept in its record: its
        versions, runs, scores and history stay; its packages move to the team's folder."""
        deployment = self.get_object()
        form = HandOverSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        team = handover.team_named(request.user, form.validated_data["team"])
        handover.hand_over(deployment, team, form.validated_data["reason"], request.user)
        return Response(DeploymentDetailSerializer(self.get_object()).data)

    @extend_schema(responses=ChampionChangeSerializer(many=True))
    @action(detail=True, methods=["get"])
    def changes(self, request, pk=None):
        """Promotions and rollbacks of the champion, newest first, with who and why."""
        deployment = self.get_object()
        return Response(ChampionChangeSerializer(changes_of(deployment), many=True).data)

    @extend_schema(request=None, responses={200: ChampionChangeSerializer})
    @action(detail=True, methods=["post"], url_path=r"changes/(?P<change_id>\d+)/approve")
    def approve(self, request, pk=None, change_id=None):
        """A second person approves a waiting change (REQUIRE_APPROVAL)."""
        change = get_object_or_404(self.get_object().champion_changes, id=change_id)
        return Response(ChampionChangeSerializer(roles.approve(change, request.user)).data)

    @extend_schema(request=None, responses={200: ChampionChangeSerializer})
    @action(detail=True, methods=["post"], url_path=r"changes/(?P<change_id>\d+)/withdraw")
    def withdraw(self, request, pk=None, change_id=None):
        """The one who asked, or an approver, drops a waiting change: the champion stays."""
        change = get_object_or_404(self.get_object().champion_changes, id=change_id)
        return Response(ChampionChangeSerializer(roles.withdraw(change, request.user)).data)

    @extend_schema(responses=ComparisonSerializer(many=True))
    @action(detail=True, methods=["get"])
    def comparisons(self, request, pk=None):
        """The challenger against the champion, for each day both scored (newest first)."""
        deployment = self.get_object()
        return Response(ComparisonSerializer(comparisons_of(deployment)[:500], many=True).data)


class HistoryPagination(PageNumberPagination):
    page_size = 50


class RunViewSet(viewsets.GenericViewSet):
    """Runs of the user's deployments (staff see all); another user's is a 404."""

    serializer_class = RunSerializer
    queryset = ScoringRun.objects.none()  # for the schema, as above

    def get_queryset(self):
        return runs_for(self.request.user)

    def retrieve(self, request, pk=None):
        return Response(RunSerializer(self.get_object()).data)

    @extend_schema(
        parameters=[OpenApiParameter("format", enum=["csv", "parquet"], default="csv")],
        responses={(200, "text/csv"): bytes, (200, "application/vnd.apache.parquet"): bytes},
    )
    @action(detail=True, methods=["get"], url_path="scores", url_name="scores")
    def scores(self, request, pk=None):
        """The run's scores (entity_id, score), streamed as CSV or Parquet."""
        run = self.get_object()
        kind = request.query_params.get("format", "csv")
        if kind not in ("csv", "parquet"):
            raise DeployError("format must be csv or parquet")
        if run.status != run.Status.SUCCEEDED:
            raise NotFound(f"run {run.id} has no committed scores (it is {run.status})")
        return stream_scores(run, kind)


class StatusView(APIView):
    """Health of the database, broker, storage and workers."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT})
    def get(self, request):
        report = health.check_all()
        code = status.HTTP_200_OK if report["ok"] else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(report, status=code)
