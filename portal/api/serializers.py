from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scoring.engine import scores
from scoring.models import (
    ChampionChange,
    Comparison,
    Deployment,
    OnlineCheck,
    PackageVersion,
    Role,
    ScoringRun,
)
from scoring.packages import handover, roles


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
            "dropped_as",
            "package",
        ]

    @extend_schema_field(ValidationSerializer)
    def get_validation(self, version: PackageVersion) -> dict:
        # ValidationSerializer's shape, without making a serializer for each version.
        return {"state": version.state, "message": version.message}


class DeploymentSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(
        source="owner_name", read_only=True, help_text="A username, or team/<team slug>."
    )
    team = serializers.CharField(
        source="team.slug", read_only=True, allow_null=True, help_text="null: a person's own."
    )
    # A field made once for many models, not a serializer made for each (its fields are
    # built anew each time: a third of the list's time when it serialized instances).
    latest_version = VersionSerializer(read_only=True, allow_null=True)
    current_version = serializers.SerializerMethodField(
        help_text="The number of the live version, the champion (null: none yet)."
    )
    challenger_version = serializers.SerializerMethodField(
        help_text="The number of the challenger scored beside it (null: none)."
    )

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "owner",
            "team",
            "status",
            "schedule",
            "timezone",
            "email",
            "next_run_at",
            "max_slice_age_days",
            "created_at",
            "latest_version",
            "current_version",
            "challenger_version",
            "challenger_share",
            "online",
        ]

    def get_current_version(self, deployment: Deployment) -> int | None:
        return deployment.champion.number if deployment.champion else None

    def get_challenger_version(self, deployment: Deployment) -> int | None:
        return deployment.challenger.number if deployment.challenger else None


class OnlineCheckSerializer(serializers.ModelSerializer):
    psi = serializers.FloatField(
        source="quality.psi",
        default=None,
        allow_null=True,
        help_text="PSI of the logged scores in the batch run's bins (null: nothing compared).",
    )

    class Meta:
        model = OnlineCheck
        fields = ["date", "status", "psi", "requests"]


class DeploymentDetailSerializer(DeploymentSerializer):
    versions = VersionSerializer(many=True, read_only=True)
    online_check = serializers.SerializerMethodField(
        help_text="The latest day of online traffic checked against the batch run (null: none)."
    )

    class Meta(DeploymentSerializer.Meta):
        fields = [*DeploymentSerializer.Meta.fields, "versions", "online_check"]

    @extend_schema_field(OnlineCheckSerializer(allow_null=True))
    def get_online_check(self, deployment: Deployment) -> dict | None:
        check = deployment.online_checks.first()
        return OnlineCheckSerializer(check).data if check else None


SLICE_AGE = "How old a feature slice a run accepts, in days (0: its own date's slice)"


def slice_age_field(
    unset: str = "by default the package's params.max_slice_age_days", allow_null=False
) -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False,
        allow_null=allow_null,
        min_value=0,
        max_value=366,
        help_text=f"{SLICE_AGE}; {unset}.",
    )


class UploadSerializer(serializers.Serializer):
    """POST /api/v1/models/: a package file and optional settings (they override the package's)."""

    file = serializers.FileField(allow_empty_file=True)  # deploy() says "the file is empty"
    name = serializers.CharField(required=False, allow_blank=True)
    email = serializers.CharField(required=False, allow_blank=True)
    schedule = serializers.CharField(required=False, allow_blank=True)
    timezone = serializers.CharField(required=False, allow_blank=True)
    max_slice_age_days = slice_age_field()
    role = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="'champion' (default: live once valid) or 'challenger' (scored beside it).",
    )
    share = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="With role 'challenger': the share of entities it scores (0 < share <= 1, "
        "by a stable hash of their id), the champion the rest. Blank: both score all.",
    )
    team = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="The team (its slug or name) whose model this is; blank: your own (a team "
        "token's: its team).",
    )


class DeploymentUpdateSerializer(serializers.Serializer):
    email = serializers.CharField(required=False, allow_blank=True)
    schedule = serializers.CharField(required=False)
    timezone = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=Deployment.Status.values, required=False)
    max_slice_age_days = slice_age_field(
        "null: the package's params.max_slice_age_days again", allow_null=True
    )
    online = serializers.BooleanField(
        required=False,
        help_text="Serve it online (/v2/models/{name}/infer, /api/v1/models/{id}/predict) "
        "besides its schedule; independent of status.",
    )


class RunSerializer(serializers.ModelSerializer):
    model = serializers.IntegerField(source="deployment_id", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    waiting_for = serializers.CharField(
        read_only=True,
        help_text='While waiting: "waiting for the slice of 2026-12-03; latest is 2026-12-02".',
    )
    scores_table = serializers.SerializerMethodField(
        help_text="The Delta table its rows are in: scores (the live scores) or scores_shadow "
        "(a shadow challenger's)."
    )

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
            "allow_older_slice",
            "waiting_for",
            "awaited_slice",
            "latest_slice",
            "waiting_since",
            "rows",
            "error",
            "trigger",
            "role",
            "split_share",
            "scores_table",
            "created_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            "next_attempt_at",
            "quality",
            "performance",
            "performance_status",
        ]
        extra_kwargs = {
            "role": {"help_text": "champion (the model's scores) or challenger (beside them)."},
            "split_share": {
                "help_text": "Under a traffic split, the challenger's share of the entities "
                "(the champion scored the rest); null: each scored every entity."
            },
            "quality": {
                "help_text": "Data quality against the previous run or the reference scores "
                "(null until checked): status, psi, psi_status, adversarial_auc, "
                "adversarial_status, features, rows_change, histogram, ..."
            },
            "performance": {
                "help_text": "How the scores ranked the outcomes once they matured (null until "
                "then): target, gini, gini_interval, auc, ks, positive_share, calibration, "
                "joined, unlabelled_share, complete, expected_gini, status; or error."
            },
        }

    def get_scores_table(self, run: ScoringRun) -> str:
        return scores.table_of(run)


class RunRequestSerializer(serializers.Serializer):
    date = serializers.DateField(
        required=False,
        help_text="Score the slice of this date (default: today), or one as old as the "
        "package accepts; the run waits for it if it has not landed.",
    )
    allow_older_slice = serializers.BooleanField(
        default=False,
        help_text="Score the latest slice on or before the date, however old, instead of waiting.",
    )


class ChangeSerializer(serializers.Serializer):
    field = serializers.CharField()
    before = serializers.CharField(allow_null=True)
    after = serializers.CharField(allow_null=True)


class HistoryEntrySerializer(serializers.Serializer):
    """One change of a model's record (portal.history.describe)."""

    at = serializers.DateTimeField()
    actor = serializers.CharField(help_text='The username, or "system" for a task\'s change.')
    via = serializers.CharField(help_text="web, api, admin or system")
    action = serializers.CharField(help_text="create, update or delete")
    object = serializers.CharField(help_text='What changed: the model, or one version ("v2").')
    changes = ChangeSerializer(many=True)
    reason = serializers.CharField(allow_blank=True)


class ComparisonSerializer(serializers.ModelSerializer):
    champion_version = serializers.IntegerField(source="champion_run.version.number")
    challenger_version = serializers.IntegerField(source="challenger_run.version.number")
    ginis = serializers.SerializerMethodField(
        help_text="Each side's Gini with its interval once the outcomes matured (else null)."
    )

    class Meta:
        model = Comparison
        fields = [
            "date",
            "champion_version",
            "challenger_version",
            "champion_run",
            "challenger_run",
            "metrics",
            "ginis",
        ]
        extra_kwargs = {
            "metrics": {
                "help_text": "champion_rows, challenger_rows, shared_rows, psi, spearman, "
                "top_decile_overlap, top_percent_overlap, decile_moved_2"
            }
        }

    def get_ginis(self, compared: Comparison) -> dict:
        return {
            "champion": gini_of(compared.champion_run),
            "challenger": gini_of(compared.challenger_run),
        }


def gini_of(run: ScoringRun) -> dict | None:
    performance = run.performance or {}
    if performance.get("gini") is None:
        return None
    return {"gini": performance["gini"], "interval": performance["gini_interval"]}


class ChangeRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=roles.MAX_REASON, help_text="Why: kept with the change, shown to approvers."
    )


class HandOverSerializer(serializers.Serializer):
    """POST /api/v1/models/{id}/hand_over/: the model becomes a team's, with a reason."""

    team = serializers.CharField(help_text="The slug (or name) of a team you manage.")
    reason = serializers.CharField(
        max_length=handover.MAX_REASON, help_text="Why: kept with the change in the record."
    )


class ShareChangeSerializer(serializers.Serializer):
    """POST /api/v1/models/{id}/share/: the challenger's traffic split, changed with a reason."""

    share = serializers.CharField(
        allow_null=True,
        allow_blank=True,
        help_text="The share of entities the challenger scores from the next run on (0 < share "
        "<= 1, by a stable hash of their id), the champion the rest; null: a shadow challenger, "
        "scoring every entity beside the champion. Runs already made keep their split.",
    )
    reason = serializers.CharField(
        max_length=roles.MAX_REASON, help_text="Why: kept with the change in the record."
    )

    def validate_share(self, share: str | None) -> float | None:
        try:
            return roles.check_share(share, Role.CHALLENGER)
        except roles.RoleError as exc:
            raise serializers.ValidationError(str(exc)) from None


class ChampionChangeSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")
    replaced_version = serializers.IntegerField(
        source="replaced.number", allow_null=True, default=None
    )
    requested_by = serializers.CharField(source="requested_by.username", default=None)
    approved_by = serializers.CharField(source="approved_by.username", default=None)
    withdrawn_by = serializers.CharField(source="withdrawn_by.username", default=None)
    waiting_for = serializers.SerializerMethodField(
        help_text="While waiting: who may approve it (staff of the approvers' group)."
    )

    class Meta:
        model = ChampionChange
        fields = [
            "id",
            "kind",
            "version",
            "replaced_version",
            "reason",
            "status",
            "requested_by",
            "requested_at",
            "approved_by",
            "withdrawn_by",
            "done_at",
            "waiting_for",
        ]

    def get_waiting_for(self, change: ChampionChange) -> list[str]:
        if change.status != ChampionChange.Status.WAITING:
            return []
        return roles.approvers(change)
