from rest_framework import serializers

from scoring.models import Deployment, PackageVersion, ScoringRun


class ValidationSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=PackageVersion.State.values)
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
    current_version = serializers.SerializerMethodField(
        help_text="The number of the version that scores: the latest valid one (null: none yet)."
    )

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
            "current_version",
        ]

    def get_latest_version(self, deployment: Deployment) -> dict | None:
        version = deployment.latest_version
        return VersionSerializer(version).data if version else None

    def get_current_version(self, deployment: Deployment) -> int | None:
        version = deployment.current_version
        return version.number if version else None


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
    status = serializers.ChoiceField(choices=Deployment.Status.values, required=False)


class RunSerializer(serializers.ModelSerializer):
    model = serializers.IntegerField(source="deployment_id", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = ScoringRun
        fields = [
            "id",
            "model",
            "version",
            "status",
            "attempts",
            "max_attempts",
            "date",
            "slice_date",
            "rows",
            "error",
            "trigger",
            "created_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            "next_attempt_at",
            "quality",
        ]
        extra_kwargs = {
            "quality": {
                "help_text": "Data quality against the previous run or the reference scores "
                "(null until checked): status, psi, psi_status, adversarial_auc, "
                "adversarial_status, features, rows_change, histogram, ..."
            }
        }


class RunRequestSerializer(serializers.Serializer):
    date = serializers.DateField(
        required=False, help_text="Score the latest slice on or before this date (default: today)."
    )
