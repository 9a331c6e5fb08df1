"""The API's list of models (GET /api/v1/models/) read as rows, not model instances, in
DeploymentSerializer's shape field for field (tests/test_list_queries.py holds them equal).

A page of 50 of a fleet's models is two queries of the columns it shows: the models with
their owner's name and their champion's and challenger's numbers, then each one's latest
version alone with its package as the database's JSON text, which goes into the answer
unparsed (orjson.Fragment, portal.api.renderers). Model instances, a prefetch and DRF's
fields for 50 rows took twice the CPU of this (~15 ms against ~9 ms a page); every version
of every model with its package, before, took ~70 ms and answered 37 requests a second
where a run's page answered 481.
"""

import orjson
from django.db.models import F, OuterRef, QuerySet, Subquery, TextField
from django.db.models.functions import Cast
from rest_framework.fields import DateTimeField

from scoring.models import Deployment, PackageVersion
from scoring.packages import owners

DATETIME = DateTimeField()  # the serializers' format of a time
SHOWN = [
    *("id", "name", "team_id", "status", "schedule", "timezone", "email", "next_run_at"),
    *("max_slice_age_days", "created_at", "challenger_share", "online"),
]
VERSION_SHOWN = [
    *("deployment_id", "number", "filename", "size", "sha256", "uploaded_at", "validated_at"),
    *("state", "message", "dropped_as"),
]


def visible_rows(user) -> QuerySet:
    """The models the user sees (owners.visible), by name, as rows of what the list shows."""
    return (
        Deployment.objects.filter(owners.visible(user))
        .order_by("name", "id")
        .values(
            *SHOWN,
            owner_username=F("owner__username"),
            team_slug=F("team__slug"),
            champion_number=number_of("champion_id"),
            challenger_number=number_of("challenger_id"),
        )
    )


def number_of(version_id: str) -> Subquery:
    """A version's number, by the outer row's column. A subquery, not a join: PostgreSQL
    reads it for the page's rows only, after the sort and the limit, where a join hashed
    every version of the table at each request."""
    versions = PackageVersion.objects.filter(id=OuterRef(version_id)).order_by()
    return Subquery(versions.values("number")[:1])


def latest_versions(deployment_ids: list[int]) -> dict[int, dict]:
    """Each model's latest version, by the model's id, its package as JSON text."""
    newest = PackageVersion.objects.filter(deployment=OuterRef("deployment")).order_by("-number")
    rows = PackageVersion.objects.filter(
        deployment__in=deployment_ids, number=Subquery(newest.values("number")[:1])
    ).values(*VERSION_SHOWN, package_json=Cast("package", TextField()))
    return {row["deployment_id"]: row for row in rows}


def shown(rows: list[dict]) -> list[dict]:
    """The page's rows as DeploymentSerializer shows each model."""
    versions = latest_versions([row["id"] for row in rows])
    return [model(row, versions.get(row["id"])) for row in rows]


def model(row: dict, version: dict | None) -> dict:
    if row["team_id"]:
        owner = f"team/{row['team_slug']}"
    else:  # Deployment.owner_name
        owner = row["owner_username"] or "(deleted)"
    return {
        "id": row["id"],
        "name": row["name"],
        "owner": owner,
        "team": row["team_slug"],
        "status": row["status"],
        "schedule": row["schedule"],
        "timezone": row["timezone"],
        "email": row["email"],
        "next_run_at": time(row["next_run_at"]),
        "max_slice_age_days": row["max_slice_age_days"],
        "created_at": time(row["created_at"]),
        "latest_version": version and latest_version(version),
        "current_version": row["champion_number"],
        "challenger_version": row["challenger_number"],
        "challenger_share": row["challenger_share"],
        "online": row["online"],
    }


def latest_version(version: dict) -> dict:
    """VersionSerializer's shape."""
    return {
        "number": version["number"],
        "filename": version["filename"],
        "size": version["size"],
        "sha256": version["sha256"],
        "uploaded_at": time(version["uploaded_at"]),
        "validated_at": time(version["validated_at"]),
        "validation": {"state": version["state"], "message": version["message"]},
        "dropped_as": version["dropped_as"],
        "package": orjson.Fragment(version["package_json"]),
    }


def time(value) -> str | None:
    return None if value is None else DATETIME.to_representation(value)
