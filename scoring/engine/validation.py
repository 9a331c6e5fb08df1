"""Validating an uploaded package: load it in a sandbox, check it, smoke-predict.

Runs in a Celery worker, never in the web process.
"""

import logging
import tempfile
from datetime import date
from pathlib import Path

import pyarrow as pa
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from scoring import record
from scoring.engine import environments, features, sources
from scoring.engine.limits import sandbox_limits
from scoring.models import Deployment, PackageVersion
from scoring.packages import deployments, roles, storage
from scoring.quality import samples
from scoring.sandbox.client import Sandbox
from scoring.sandbox.limits import REFERENCE_SCORES_FILE, SandboxError

log = logging.getLogger(__name__)


def validate_version(version_id: int) -> None:
    version = PackageVersion.objects.filter(
        id=version_id, state=PackageVersion.State.PENDING
    ).first()
    if version is None:
        return  # already validated, or deleted meanwhile: nothing to do
    with tempfile.TemporaryDirectory(prefix="dropscore-validate-") as workdir:
        try:
            package, note = check_in_sandbox(version, Path(workdir))
        except SandboxError as exc:
            finish(version, PackageVersion.State.INVALID, str(exc), {})
        else:
            finish(version, PackageVersion.State.VALID, note, package)


def check_in_sandbox(version: PackageVersion, workdir: Path) -> tuple[dict, str]:
    """Load the package in a sandbox and smoke-predict on a sample of the feature source.

    Storage or feature-source failures raise their own errors (the task retries);
    only what the package did wrong raises SandboxError.
    """
    package_path = workdir / "package.dill"
    with open(package_path, "wb") as file:
        storage.download(version.file.name, version.sha256, file)
    with package_sandbox(package_path, workdir) as sandbox:
        package = sandbox.load(package_path)
        if package.get("reference_scores_count"):
            keep_reference_scores(version, workdir / REFERENCE_SCORES_FILE)
        source = sources.configured()
        if source is None:
            measure_importance(sandbox, package, None)
            return package, "not smoke-tested: no feature source is configured"
        try:
            slice_date = source.latest_slice(date.today())
            missing = source.missing(slice_date, package["features"])
        except features.FeatureSourceError as exc:
            measure_importance(sandbox, package, None)
            return package, f"not smoke-tested: {exc}"
        if missing:
            raise SandboxError(
                f"{len(missing)} features are missing from the feature source "
                f"(slice {slice_date}): {', '.join(missing[:20])}"
            )
        sample = source.sample(slice_date, package["features"], settings.SMOKE_SAMPLE_ROWS)
        package["input_types"] = input_types(sample.schema)
        sample_path, scores_path = workdir / "sample.arrow", workdir / "scores.arrow"
        with (
            pa.OSFile(str(sample_path), "wb") as sink,
            pa.ipc.new_file(sink, sample.schema) as writer,
        ):
            writer.write_table(sample)
        rows = sandbox.score(sample_path, scores_path)
        measure_importance(sandbox, package, sample_path)
    return package, f"smoke test: scored {rows} rows of slice {slice_date}"


# The Open Inference Protocol's names of the source's column types (its metadata says them).
V2_TYPES = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "halffloat": "FP16",
    "float": "FP32",
    "double": "FP64",
}


def input_types(schema: pa.Schema) -> dict[str, str]:
    """Each feature's type in the feature source, as online requests must send it: text
    and categories are BYTES, numbers their width; dates and the rest as text."""
    types = {}
    for field in schema:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        types[field.name] = V2_TYPES.get(str(kind), "BYTES")
    return types


def package_sandbox(package_path: Path, workdir: Path) -> Sandbox:
    """The sandbox the package runs in: the worker's own, or one started from the environment
    of the libraries it pins (built now if this worker has none yet). The pins are read in a
    sandbox too, without running the package: it may not load anywhere but its environment."""
    with Sandbox(workdir, sandbox_limits()) as reader:
        requirements = reader.requirements(package_path)
    return Sandbox(workdir, sandbox_limits(), environments.prepare(requirements))


def measure_importance(sandbox: Sandbox, package: dict, sample_path: Path | None) -> None:
    """Kept with the package: the quality checks rank drifting features by it. A model
    whose importance cannot be measured is no less valid: the page says why."""
    try:
        package["importance"] = sandbox.importance(sample_path)
    except SandboxError as exc:
        package["warnings"].append(f"feature importance was not measured: {exc}")


def keep_reference_scores(version: PackageVersion, path: Path) -> None:
    """The baseline of the model's first run's quality checks (scoring.quality.assessment)."""
    with pa.memory_map(str(path)) as source:
        values = pa.ipc.open_file(source).read_all().column("score").to_numpy()
    samples.save_reference(version.id, values)


def finish(version: PackageVersion, state: str, message: str, package: dict) -> None:
    with transaction.atomic():
        updated = PackageVersion.objects.filter(
            id=version.id, state=PackageVersion.State.PENDING
        ).update(state=state, message=message, package=package, validated_at=timezone.now())
        if not updated:
            return
        record.log_update(version, validation_changes(version, state, message))
        deployment = Deployment.objects.select_for_update().get(id=version.deployment_id)
        if state == PackageVersion.State.VALID:
            apply_package_defaults(version, deployment, package)
            roles.take_role(PackageVersion.objects.get(id=version.id), deployment)
        keep_schedule(deployment)


def validation_changes(version: PackageVersion, state: str, message: str) -> dict:
    """The pending version's state and message before, and what validation found."""
    changes = {"state": (version.state, state)}
    if message != version.message:
        changes["message"] = (version.message, message)
    return changes


def apply_package_defaults(version: PackageVersion, deployment: Deployment, package: dict) -> None:
    """A new deployment takes the package's settings where the upload form gave none.

    The package's time zone goes with its schedule (a cron is read in it). Only the first
    version does this: later the deployment's settings are the user's, made on the model
    page or through the API, and a new version never overrides them.
    """
    if version.number != 1:
        return
    changed = []
    if package.get("email") and not version.form_email:
        deployment.email = package["email"]
        changed.append("email")
    if not version.form_schedule and (package.get("schedule") or package.get("timezone")):
        deployment.schedule = package.get("schedule") or deployment.schedule
        deployment.timezone = package.get("timezone") or deployment.timezone
        deployment.next_run_at = deployments.next_fire_time(deployment)
        changed += ["schedule", "timezone", "next_run_at"]
    if changed:
        deployment.save(update_fields=changed)


def keep_schedule(deployment: Deployment) -> None:
    """Scheduled only while a version can score: an invalid package leaves nothing to run,
    and the model page and the API then show no next run instead of one that would not come.
    A validation that changes which is the case brings the next run back in step."""
    if (deployment.next_run_at is None) == deployments.can_score(deployment):
        deployments.schedule_next_run(deployment)
        deployment.save(update_fields=["next_run_at"])
