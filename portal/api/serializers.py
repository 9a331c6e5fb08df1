from rest_framework import serializers

from scoring.models import Deployment, PackageVersion


class ValidationSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=[s for s, _ in PackageVersion.STATES])
    message = serializers.CharField()


class VersionSerializer(serializers.ModelSerializer):
    validation = serializers.SerializerMethodField()

    class Meta:
        model = PackageVersion
        fields = [
            "number",
            "filename",
            "size",
            "sha256",
            "uploaded_at",
            "validated_at",
            "validation",
            "package",
        ]

    def get_validation(self, version: PackageVersion) -> dict:
        return ValidationSerializer({"state": version.state, "message": version.message}).data


class DeploymentSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "owner",
            "status",
            "schedule",
            "timezone",
            "email",
            "next_run_at",
            "created_at",
            "latest_version",
        ]

    def get_latest_version(self, deployment: Deployment) -> dict | None:
        version = deployment.latest_version
        return VersionSerializer(version).data if version else None


class DeploymentDetailSerializer(DeploymentSerializer):
    versions = VersionSerializer(many=True, read_only=True)

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "versions"]


class UploadSerializer(serializers.Serializer):
    """POST /api/v1/models/: a package file and optional settings (they override the package's)."""

    file = serializers.FileField(allow_empty_file=True)  # deploy() says "the file is empty"
    name = serializers.CharField(required=False, allow_blank=True)
    email = serializers.CharField(required=False, allow_blank=True)
    schedule = serializers.CharField(required=False, allow_blank=True)
    timezone = serializers.CharField(required=False, allow_blank=True)


class DeploymentUpdateSerializer(serializers.Serializer):
    email = serializers.CharField(required=False, allow_blank=True)
    schedule = serializers.CharField(required=False)
    timezone = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=[s for s, _ in Deployment.STATUSES], required=False)
