from django.conf import settings
from django.core.files.storage import storages
from django.db import models
from django.utils.text import slugify
from django.utils.timezone import now

from scoring import record


class TeamRole(models.TextChoices):
    """What a person (or a service token) may do with a team's models (scoring.packages.owners
    holds the rules): a viewer reads, a member also changes, a manager also approves and
    manages the team."""

    VIEWER = "viewer"
    MEMBER = "member"
    MANAGER = "manager"


class Team(models.Model):
    """People who own models together; its packages live under `teams/<slug>/`."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    report_email = models.EmailField(
        blank=True, help_text="A mailing list that gets the team's reports (blank: its members)."
    )
    # Quotas of the team's models, as a person's (blank: the site's defaults).
    active_models = models.PositiveIntegerField(null=True, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def max_active_models(self) -> int:
        return settings.QUOTA_ACTIVE_MODELS if self.active_models is None else self.active_models

    @property
    def max_bytes(self) -> int:
        return settings.QUOTA_BYTES if self.bytes is None else self.bytes


class Membership(models.Model):
    """A person's (or a service token's account's) role in a team."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=TeamRole)
    # Given by a directory group at sign-in (scoring.packages.owners.apply_directory_groups),
    # so taken away when the group is; one given in the portal stays.
    from_directory = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")
        ]
        ordering = ["team__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"


class ServiceToken(models.Model):
    """A team's API token for a pipeline or a dashboard: it belongs to the team, not to a
    person. Its account (`user`, named `<team>/<name>`, no password) holds the token's key
    and a membership with the token's role, so every rule and record reads it as any user."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tokens")
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="service_token"
    )
    name = models.CharField(max_length=100)
    role = models.CharField(
        max_length=10, choices=[(r, r.label) for r in (TeamRole.VIEWER, TeamRole.MEMBER)]
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(default=now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="one_token_name_per_team")
        ]
        ordering = ["team__name", "name"]

    def __str__(self) -> str:
        return self.user.username


class Deployment(models.Model):
    """A model put on scheduled scoring, owned by a person or by a team (exactly one of
    `owner` and `team`); its packages are its versions."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"

    # A person's own model; null for a team's (a deleted person's own models are deleted
    # with their packages first: scoring.packages.owner_deletion).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deployments",
    )
    # A team's model: it outlives any one member (a team with models cannot be deleted).
    team = models.ForeignKey(
        Team, on_delete=models.PROTECT, null=True, blank=True, related_name="deployments"
    )
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100)
    email = models.EmailField(blank=True, help_text="Where reports and error emails go.")
    schedule = models.CharField(max_length=100, default="daily")
    timezone = models.CharField(max_length=64, default="UTC")
    status = models.CharField(max_length=10, choices=Status, default=Status.ACTIVE)
    next_run_at = models.DateTimeField(null=True, blank=True)
    max_slice_age_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days older than its date a run's feature slice may be (blank: the package's).",
    )
    created_at = models.DateTimeField(default=now)
    # The live version: its scores are the model's (role "champion" in the scores table). An
    # explicit choice, made by a validated upload, a promotion or a rollback
    # (scoring.packages.roles), never implied by version numbers.
    champion = models.ForeignKey(
        "PackageVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # At most one challenger at a time: scored beside the champion in the same batches and
    # compared with it (scoring.quality.comparison), until promoted or replaced.
    challenger = models.ForeignKey(
        "PackageVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    challenger_share = models.FloatField(
        null=True,
        blank=True,
        help_text="A traffic split: the share of entities (by a stable hash of their id) the "
        "challenger scores, the champion the rest. Blank: both score every entity (shadow).",
    )
    # Served online (scoring.online) besides its schedule: neither stops the other.
    online = models.BooleanField(
        default=False, help_text="Answers HTTP requests (/v2/models/<name>/infer, /predict)."
    )
    # What its name reads (owner_name): the record of changes names rows with it.
    named_with = ("owner", "team")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "slug"],
                condition=models.Q(team__isnull=True),
                name="unique_slug_per_owner",
            ),
            models.UniqueConstraint(
                fields=["team", "slug"],
                condition=models.Q(team__isnull=False),
                name="unique_slug_per_team",
            ),
            models.CheckConstraint(
                condition=models.Q(owner__isnull=True) | models.Q(team__isnull=True),
                name="owned_by_a_person_or_a_team",
            ),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.owner_name}/{self.name}"

    @property
    def owner_name(self) -> str:
        """Who owns it, as pages and the API say it: a username, or `team/<slug>`."""
        if self.team_id:
            return f"team/{self.team.slug}"
        return self.owner.username if self.owner else "(deleted)"

    @property
    def owner_key(self) -> str:
        """One per owner: the packages of two owners never share a sandbox."""
        return f"team:{self.team_id}" if self.team_id else f"user:{self.owner_id}"

    @staticmethod
    def slug_for(name: str) -> str:
        # allow_unicode keeps non-Latin names readable; the key is still safe.
        return slugify(name, allow_unicode=True)[:100]

    @property
    def latest_version(self) -> "PackageVersion | None":
        versions = list(self.versions.all())  # uses prefetch_related when present
        return max(versions, key=lambda v: v.number) if versions else None

    @property
    def cannot_be_scored(self) -> bool:
        """Every version is invalid: no run can be made until a fixed one is uploaded
        (deployments.can_score, read from the prefetched versions for a list of models)."""
        versions = list(self.versions.all())
        return bool(versions) and all(v.state == PackageVersion.State.INVALID for v in versions)


class Role(models.TextChoices):
    """What a version's scores are: the model's (champion) or a candidate's beside them."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"


def package_storage():
    """STORAGES["packages"], the models bucket (a callable: migrations name it, not an instance)."""
    return storages["packages"]


class PackageVersion(models.Model):
    """One uploaded package file of a deployment; `file.name` is its key in the models bucket,
    made by the server (scoring.packages.storage.package_key); `filename` is the uploaded
    file's name, shown and never used to store it."""

    class State(models.TextChoices):
        PENDING = "pending"
        VALID = "valid"
        INVALID = "invalid"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    file = models.FileField(storage=package_storage, max_length=400, unique=True)
    filename = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_at = models.DateTimeField(default=now)
    state = models.CharField(max_length=10, choices=State, default=State.PENDING)
    message = models.TextField(blank=True)
    package = models.JSONField(
        default=dict, blank=True, help_text="What validation read from the package."
    )
    # Values the upload form gave; the package's own email/schedule apply only where these are blank.
    form_email = models.CharField(max_length=254, blank=True)
    form_schedule = models.CharField(max_length=100, blank=True)
    dropped_as = models.CharField(
        max_length=10,
        choices=Role,
        default=Role.CHAMPION,
        help_text="The role the upload asked for; it takes it once valid.",
    )
    dropped_share = models.FloatField(
        null=True, blank=True, help_text="A challenger's traffic split the upload asked for."
    )
    validation_queued_at = models.DateTimeField(default=now)
    validated_at = models.DateTimeField(null=True, blank=True)
    named_with = ("deployment__owner", "deployment__team")  # as Deployment's

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"], name="unique_version_number")
        ]
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"{self.deployment} v{self.number}"


class Batch(models.Model):
    """Runs due at one moment, scored together: their features are read once."""

    created_at = models.DateTimeField(default=now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"batch {self.id}"


class BatchPart(models.Model):
    """A unit of a batch's plan: a shard of its runs × a range of a slice's row groups (or
    the whole slice), scored by whichever worker takes it.

    The units of one shard are joined in the database: the worker that finishes the last
    of them commits the shard's runs in one transaction; the last shard to commit closes
    the batch.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"  # its files are written, waiting for the other units of its shard
        COMMITTED = "committed"  # unit 0 of a shard only: its worker won the shard's commit
        ABANDONED = "abandoned"  # its worker died; tick took its runs back into a new batch

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="parts")
    date = models.DateField()
    slice_date = models.DateField()
    shard = models.PositiveIntegerField(default=0)
    index = models.PositiveIntegerField(help_text="Which rows: the index of the row part.")
    run_ids = models.JSONField(default=list, blank=True, help_text="The runs of its shard.")
    rows = models.JSONField(
        null=True,
        blank=True,
        help_text="Its part of the slice (the source's row_parts), or null: every row.",
    )
    status = models.CharField(max_length=10, choices=Status, default=Status.QUEUED)
    queued_at = models.DateTimeField(default=now, help_text="When its task was last sent.")
    worker = models.CharField(max_length=200, blank=True)
    files = models.JSONField(
        default=dict, blank=True, help_text="run id -> the scores files this part wrote"
    )
    profiles = models.JSONField(
        default=dict, blank=True, help_text="run id -> the profile of the scores it wrote"
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "date", "shard", "index"], name="unique_unit")
        ]

    def __str__(self) -> str:
        return f"unit {self.shard}.{self.index} of {self.batch} for {self.date}"


class SliceCopy(models.Model):
    """A part of a batch's slice from a source that ships every row per read (PostgreSQL),
    kept as Parquet on S3 by the first unit that reads it, for the units of the other
    shards (scoring.engine.slice_copies)."""

    class Status(models.TextChoices):
        PLANNED = "planned"
        WRITING = "writing"  # a unit reads the source and keeps the copy as it goes
        READY = "ready"
        FAILED = "failed"  # its unit stopped before the end: the others read the source

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="slice_copies")
    date = models.DateField()
    index = models.PositiveIntegerField(help_text="Which rows: the index of the row part.")
    columns = models.JSONField(default=list, help_text="The id and every shard's features.")
    status = models.CharField(max_length=10, choices=Status, default=Status.PLANNED)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "date", "index"], name="unique_slice_copy")
        ]

    def __str__(self) -> str:
        return f"copy of part {self.index} of {self.batch} for {self.date}"


class ScoringRun(models.Model):
    """One scoring of one version for one date; the ledger of what must run.

    At most one per (version, date): two ticks, two beats or a retry can never double it.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        RETRYING = "retrying"
        WAITING = "waiting"  # for a fresh enough feature slice (scoring.runs.waiting)

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        MANUAL = "manual"

    # Every change of status a run may make, in one place (scoring.runs.lifecycle moves
    # runs only along these): a worker claims a queued run; a running one succeeds, fails
    # for good, waits to retry, or is taken back when its worker goes silent; a retry
    # comes due, and a failed run is asked for again. A worker that finds no fresh enough
    # slice puts its run to wait; tick queues it once the slice lands, or fails it at the
    # deadline (a failed attempt like any other: retried, or given up).
    TRANSITIONS = {
        Status.QUEUED: {Status.RUNNING},
        Status.RUNNING: {
            Status.SUCCEEDED,
            Status.FAILED,
            Status.RETRYING,
            Status.QUEUED,
            Status.WAITING,
        },
        Status.WAITING: {Status.QUEUED, Status.RETRYING, Status.FAILED},
        Status.RETRYING: {Status.QUEUED, Status.FAILED},
        Status.FAILED: {Status.QUEUED},
        Status.SUCCEEDED: set(),
    }

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="runs")
    version = models.ForeignKey(PackageVersion, on_delete=models.CASCADE, related_name="runs")
    batch = models.ForeignKey(
        Batch, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    date = models.DateField(
        help_text="The run scores the latest feature slice on or before this date."
    )
    slice_date = models.DateField(null=True, blank=True, help_text="The slice it read.")
    allow_older_slice = models.BooleanField(
        default=False,
        help_text="Score the latest slice on or before the date however old (score now only).",
    )
    # While it waits: the oldest slice it accepts, the latest the source had, since when.
    awaited_slice = models.DateField(null=True, blank=True)
    latest_slice = models.DateField(null=True, blank=True)
    waiting_since = models.DateTimeField(null=True, blank=True)
    trigger = models.CharField(max_length=10, choices=Trigger, default=Trigger.SCHEDULE)
    # The role its version had when the run was made: its rows carry it in the scores table.
    role = models.CharField(max_length=10, choices=Role, default=Role.CHAMPION)
    # The challenger's share under a traffic split when the run was made (scoring.engine.
    # traffic): the challenger keeps the entities hashed below it, the champion the rest.
    split_share = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    rows = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=now)
    queued_at = models.DateTimeField(default=now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Data quality against the previous run (or the package's reference scores), computed
    # after the run commits; the shape is documented in scoring/quality/metrics.py.
    quality = models.JSONField(null=True, blank=True)
    quality_status = models.CharField(max_length=10, blank=True, help_text="ok, warning or alert")
    # A small profile of its scores, kept while they were written (shape in
    # scoring/quality/profiles.py): the next run's checks compare with it, not the scores.
    profile = models.JSONField(null=True, blank=True)
    # How well its scores ranked the outcomes once they matured (scoring.quality.ground_truth,
    # shape documented there), recomputed while more labels land.
    performance = models.JSONField(null=True, blank=True)
    performance_status = models.CharField(max_length=10, blank=True)
    performance_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "date"], name="one_run_per_version_and_date")
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["deployment", "-finished_at"]),
        ]
        ordering = ["-date", "-id"]

    def __str__(self) -> str:
        return f"run {self.id} of {self.version} for {self.date}"

    @property
    def waiting_for(self) -> str:
        """What a waiting run waits for, in the words the page, the API and emails use."""
        if self.status != self.Status.WAITING or self.awaited_slice is None:
            return ""
        wanted = slice_wanted(self.awaited_slice, self.date)
        return f"waiting for {wanted}; latest is {self.latest_slice or 'none'}"

    @property
    def kept_share(self) -> float:
        """The share of the slice's entities it scores: all, or its side of a traffic split
        (the challenger the hashes below the share, the champion the rest)."""
        if self.split_share is None:
            return 1.0
        return self.split_share if self.role == Role.CHALLENGER else 1.0 - self.split_share

    @property
    def side(self) -> str:
        """Its side in the page's words: a shadow scores every entity beside the live ones
        (into scores_shadow); under a split, the share of the entities it scored."""
        if self.split_share is not None:
            return f"{self.kept_share:.0%} of entities"
        return "shadow" if self.role == Role.CHALLENGER else ""

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


def slice_wanted(oldest, day) -> str:
    """ "the slice of 2026-12-03", or a range when a run accepts older ones."""
    if oldest == day:
        return f"the slice of {day}"
    return f"a slice from {oldest} to {day}"


class QueuedEmail(models.Model):
    """An email in the database send queue (scoring.reports.outbox): sent once, and a mail
    server that is slow or down only delays it (tick sends it again, backing off)."""

    created_at = models.DateTimeField(default=now)
    sent_at = models.DateTimeField(null=True, blank=True)
    send_attempts = models.PositiveIntegerField(default=0)
    send_error = models.TextField(blank=True)
    # Set when a sender claims the email: it is both the retry backoff and a lease, so two
    # senders (a worker sending it at once, and tick) never send the same email twice.
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class Report(QueuedEmail):
    """One report per recipient per batch: a person's (`owner`), or a team's report address
    (`team`); the email, and the same as a page in the portal."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="reports")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="reports",
    )
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, null=True, blank=True, related_name="reports"
    )
    runs = models.ManyToManyField(ScoringRun, related_name="reports")
    status = models.CharField(
        max_length=10, help_text="the worst of its runs: ok, warning, alert or failed"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["batch", "owner"],
                condition=models.Q(team__isnull=True),
                name="one_report_per_user_and_batch",
            ),
            models.UniqueConstraint(
                fields=["batch", "team"],
                condition=models.Q(team__isnull=False),
                name="one_report_per_team_and_batch",
            ),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"report of {self.batch} for {self.team or self.owner}"


class MaturedReport(QueuedEmail):
    """The email that tells an owner how their runs ranked once the outcomes were known
    (scoring.quality.ground_truth): runs that matured, or whose Gini status changed."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="matured_reports",
    )
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, null=True, blank=True, related_name="matured_reports"
    )
    runs = models.ManyToManyField(ScoringRun, related_name="matured_reports")
    status = models.CharField(max_length=10, help_text="the worst of its runs' Gini statuses")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"ground-truth report {self.id} for {self.team or self.owner}"


class Notification(QueuedEmail):
    """The email that tells a model's owner one attempt of a run failed, or that it gave up.

    Written in the same transaction as the failure, and sent from the queue: the batch never
    waits for a mail server. It keeps what the email says about that attempt, since the email
    may go out after the next attempt has begun.
    """

    run = models.ForeignKey(ScoringRun, on_delete=models.CASCADE, related_name="notifications")
    # The batch the attempt ran in: an address gets one email for the failures of one batch
    # at one moment, and a retry's failure (another batch) never merges into it.
    batch = models.ForeignKey(
        Batch, on_delete=models.SET_NULL, null=True, blank=True, related_name="notifications"
    )
    attempt = models.PositiveIntegerField()
    # With the attempt number, names one attempt: "Score now" on a failed run counts from 1 again.
    started_at = models.DateTimeField(help_text="When the failed attempt started.")
    gave_up = models.BooleanField(help_text="The last attempt: no retry follows.")
    error = models.TextField()
    slice_date = models.DateField(null=True, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="When the next attempt is.")
    # Blank: the model's own address, else its team's (scoring.reports.recipients). A team's
    # model with neither is told to each of the team's people: a row each, so each person
    # gets it in their one email of the batch, with their own models' failures.
    address = models.EmailField(blank=True, help_text="The team's person this row is for.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "attempt", "started_at", "address"],
                name="one_email_per_failed_attempt_and_person",
            )
        ]
        # Tick looks for unsent emails every minute; the sent ones pile up for good.
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=models.Q(sent_at__isnull=True),
                name="unsent_notifications",
            )
        ]

    def __str__(self) -> str:
        return f"failure email of {self.run} (attempt {self.attempt})"


class Quota(models.Model):
    """Per-user overrides of the default quotas; blank means the site default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota"
    )
    active_models = models.PositiveIntegerField(null=True, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"quota of {self.user}"

    @property
    def max_active_models(self) -> int:
        return settings.QUOTA_ACTIVE_MODELS if self.active_models is None else self.active_models

    @property
    def max_bytes(self) -> int:
        return settings.QUOTA_BYTES if self.bytes is None else self.bytes


def stale_validations(older_than):
    """Versions still pending whose validation message may have been lost."""
    return PackageVersion.objects.filter(
        state=PackageVersion.State.PENDING, validation_queued_at__lt=older_than
    )


class DeletedDeployment(models.Model):
    """What stays of a deleted deployment beside its record (django-auditlog's entries, which
    name its id and who deleted it): when, and whether its scores' partitions, kept for
    DELETED_SCORES_RETENTION_DAYS after the deletion, were removed from the table."""

    deployment_id = models.BigIntegerField(
        unique=True, help_text="Its id: the model_id of its partitions and of its record."
    )
    name = models.CharField(max_length=220, help_text="owner/name when it was deleted")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    deleted_at = models.DateTimeField(default=now)
    scores_removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-deleted_at"]

    def __str__(self) -> str:
        return f"{self.name} (deleted)"


class Comparison(models.Model):
    """A challenger's scores of a day against the champion's of the same day and slice
    (scoring.quality.comparison documents `metrics`); their Ginis, once the outcomes
    matured, are the two runs' own `performance`."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="comparisons")
    date = models.DateField()
    champion_run = models.ForeignKey(ScoringRun, on_delete=models.CASCADE, related_name="+")
    challenger_run = models.ForeignKey(ScoringRun, on_delete=models.CASCADE, related_name="+")
    metrics = models.JSONField()
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["champion_run", "challenger_run"], name="one_comparison_per_pair"
            )
        ]
        ordering = ["-date", "-id"]

    def __str__(self) -> str:
        return f"comparison of {self.deployment} on {self.date}"


class ChampionChange(models.Model):
    """A request to make another version the champion, with its reason: a promotion of the
    challenger, or a rollback to an earlier valid version. With REQUIRE_APPROVAL it waits
    for a second person of the approvers' group (scoring.packages.roles): four eyes."""

    class Kind(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"

    class Status(models.TextChoices):
        WAITING = "waiting"  # for approval
        DONE = "done"  # the version is champion from the next run on
        WITHDRAWN = "withdrawn"  # while waiting, by the one who asked or an approver

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="champion_changes"
    )
    version = models.ForeignKey(PackageVersion, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind)
    reason = models.CharField(max_length=500)
    status = models.CharField(max_length=10, choices=Status, default=Status.WAITING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    requested_at = models.DateTimeField(default=now)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Blank when no approval was required.",
    )
    withdrawn_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    done_at = models.DateTimeField(null=True, blank=True, help_text="When done or withdrawn.")
    # The champion it replaced, once done: what a rollback of this change goes back to.
    replaced = models.ForeignKey(
        PackageVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"],
                condition=models.Q(status="waiting"),
                name="one_waiting_change_per_deployment",
            )
        ]
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} of {self.deployment} to v{self.version.number}"


class OnlineCheck(models.Model):
    """A day of a model's online traffic compared with its batch run of that day or the day
    before (scoring.online.skew): training-serving skew, as the batch checks compare runs."""

    class Status(models.TextChoices):
        OK = "ok"
        WARNING = "warning"
        ALERT = "alert"
        NO_TRAFFIC = "no traffic"
        NO_BATCH = "no batch"

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="online_checks"
    )
    date = models.DateField(help_text="The day of traffic compared.")
    run = models.ForeignKey(
        ScoringRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    requests = models.BigIntegerField(default=0, help_text="Logged rows compared.")
    # As a run's quality (scoring/quality/metrics.py), its baseline the batch run:
    # {"status", "psi", "psi_status", "features": [...], "adversarial_auc", ...}.
    quality = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status)
    checked_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "date"], name="one_online_check_a_day")
        ]
        ordering = ["-date"]

    def __str__(self) -> str:
        return f"online check of {self.deployment} on {self.date}"


# What the record of changes holds (scoring.record): a field left out never makes an entry.
record.register(
    Deployment,
    [
        "name",
        "email",
        "schedule",
        "timezone",
        "status",
        "max_slice_age_days",
        "champion",
        "challenger",
        "challenger_share",
        "online",
        "owner",
        "team",
    ],
    deployment="id",
)
record.register(
    PackageVersion,
    ["number", "filename", "size", "sha256", "state", "message", "dropped_as", "dropped_share"],
)
record.register(
    ChampionChange,
    ["version", "kind", "reason", "status", "requested_by", "approved_by", "withdrawn_by"],
)
