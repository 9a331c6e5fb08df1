from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from portal import health
from portal.api.serializers import (
    DeploymentDetailSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    UploadSerializer,
)
from portal.views import deployments_for
from scoring import deployments
from scoring.deployments import DeployError


class DeploymentViewSet(viewsets.GenericViewSet):
    """Deployments of the signed-in user (staff see all); another user's is a 404."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]
    serializer_class = DeploymentSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return deployments_for(self.request.user)

    def list(self, request):
        return Response(DeploymentSerializer(self.get_queryset(), many=True).data)

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
        )
        deployment = self.get_queryset().get(id=version.deployment_id)
        return Response(DeploymentDetailSerializer(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=DeploymentDetailSerializer)
    def retrieve(self, request, pk=None):
        return Response(DeploymentDetailSerializer(self.get_object()).data)

    @extend_schema(request=DeploymentUpdateSerializer, responses=DeploymentDetailSerializer)
    def partial_update(self, request, pk=None):
        deployment = self.get_object()
        form = DeploymentUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        deployments.update(deployment, **form.validated_data)
        return Response(DeploymentDetailSerializer(self.get_object()).data)

    def destroy(self, request, pk=None):
        deployments.delete(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class StatusView(APIView):
    """Health of the database, broker, storage and workers."""

    def get(self, request):
        report = health.check_all()
        code = status.HTTP_200_OK if report["ok"] else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(report, status=code)
