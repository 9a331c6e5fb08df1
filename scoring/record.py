"""The record of changes: who changed what, when, from what to what, from where and why.

django-auditlog keeps it: one `LogEntry` per change with the actor, the time and each
changed field's value before and after, in one table that outlives the rows it speaks of
(a deleted model's record stays). This module is the project's side of it:

- `register(Model, fields=[...])` records a model's changes, each entry tied to the
  deployment whose history shows it (one line per model);
- `reason("...")` attaches a reason to the changes made inside it (a promotion's);
- `context(via=...)` says where changes come from: the portal's middleware says "web",
  "api" or "admin"; anything outside a request (a Celery task: validation) is "system";
- `log_update` records a change written by a conditional update, which sends no signal.

The actor is set by auditlog's own context (the portal's middleware), never nested here:
auditlog 3.4.1 leaks a signal receiver per nested `set_actor` (jazzband/django-auditlog#846).
"""

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from types import MappingProxyType

from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist
from django.db import models

SYSTEM = "system"
# Where the changes made now come from, and why: copied into each entry's additional_data.
# A mapping never changed in place: each context sets a new one.
_context: ContextVar[MappingProxyType] = ContextVar(
    "record_context", default=MappingProxyType({"via": SYSTEM})
)


@contextlib.contextmanager
def context(**values: str) -> Iterator[None]:
    """Entries made inside carry these values (`via`, `reason`), restored on the way out."""
    token = _context.set(MappingProxyType({**_context.get(), **values}))
    try:
        yield
    finally:
        _context.reset(token)


def reason(text: str) -> contextlib.AbstractContextManager:
    """Attach `text` as the reason of every change recorded inside (`with record.reason(...)`)."""
    return context(reason=text)


def entry_data(deployment_id: int | None) -> dict:
    """What an entry carries beside the change: its deployment, where it came from, why."""
    data = {**_context.get()}
    if deployment_id is not None:
        data["deployment"] = deployment_id
    return data


def register(model: type[models.Model], fields: list[str], deployment: str = "deployment_id"):
    """Record every create, change (of `fields`) and delete of `model`'s rows, each in the
    history of the deployment its attribute `deployment` names."""

    def get_additional_data(instance) -> dict:
        return entry_data(getattr(instance, deployment))

    # auditlog reads an entry's additional_data from this method of the instance.
    model.get_additional_data = get_additional_data
    auditlog.register(model, include_fields=fields)


def log_update(instance: models.Model, changes: dict[str, tuple]) -> LogEntry:
    """Record `changes` (field -> (before, after)) that sent no signal: a row written by
    `QuerySet.update`, or something that is not a row of its own, as a change of `instance`
    (a user's API token, of its user: the key is the token's primary key, so a token is
    never an entry's object)."""
    data = getattr(instance, "get_additional_data", None)
    return LogEntry.objects.log_create(
        instance,
        action=LogEntry.Action.UPDATE,
        changes={field: [str(before), str(after)] for field, (before, after) in changes.items()},
        additional_data=data() if data else entry_data(None),
    )


def history(deployment_id: int):
    """Every entry of a deployment's history (its own, its versions', ...), newest first."""
    return (
        LogEntry.objects.filter(additional_data__deployment=deployment_id)
        .select_related("actor", "content_type")
        .order_by("-timestamp", "-id")
    )


# auditlog writes a missing value (before a create, after a delete) as the text "None".
ABSENT = "None"


def actor_of(entry: LogEntry) -> str:
    """The username; the email it had once the user is gone; "system" for a task's change."""
    if entry.actor is not None:
        return entry.actor.get_username()
    return entry.actor_email or SYSTEM


def foreign_key(entry: LogEntry, field_name: str) -> models.ForeignKey | None:
    """The entry's field when it names another row (auditlog keeps that row's id)."""
    # get_for_id: from ContentType's cache, not a query per entry.
    model = ContentType.objects.get_for_id(entry.content_type_id).model_class()
    try:
        field = model._meta.get_field(field_name)
    except (AttributeError, FieldDoesNotExist):  # a model or field gone since
        return None
    return field if field.many_to_one else None


def named_rows(entries: list[LogEntry]) -> dict[tuple[type, str], str]:
    """The rows the entries' foreign keys name, as people read them ("churn v2"), by (model,
    id): one query per kind of row, however many entries. A row gone since is left out."""
    wanted: dict[type, set[str]] = defaultdict(set)
    for entry in entries:
        for field_name, values in entry.changes_dict.items():
            field = foreign_key(entry, field_name)
            if field is not None:
                wanted[field.related_model].update(v for v in values if v != ABSENT)
    names = {}
    for model, ids in wanted.items():
        # The names of rows (a version's) read the rows they belong to: `named_with` says
        # which where a name reads a nullable one (a model's owner), else every non-null one.
        rows = model._default_manager.select_related(*getattr(model, "named_with", ()))
        for row in rows.filter(pk__in=ids):
            names[(model, str(row.pk))] = str(row)
    return names


def describe_all(entries: Iterable[LogEntry]) -> list[dict]:
    """The entries as people read them, a foreign key as the row it names, while it exists."""
    entries = list(entries)
    names = named_rows(entries)
    return [describe(entry, names) for entry in entries]


def readable(entry: LogEntry, field_name: str, value: str, names: dict) -> str | None:
    if value == ABSENT:
        return None
    field = foreign_key(entry, field_name)
    return value if field is None else names.get((field.related_model, value), value)


def describe(entry: LogEntry, names: dict | None = None) -> dict:
    """An entry as people read it: when, who, from where, what changed from what to what, why;
    a foreign key as `names` (from named_rows) names it, else as its id."""
    data = entry.additional_data or {}
    names = names or {}
    return {
        "at": entry.timestamp,
        "actor": actor_of(entry),
        "via": data.get("via", ""),
        "action": entry.get_action_display(),
        "object": entry.object_repr,
        "changes": [
            {
                "field": field,
                "before": readable(entry, field, before, names),
                "after": readable(entry, field, after, names),
            }
            for field, (before, after) in entry.changes_dict.items()
            # A create lists every field, unset and blank ones too.
            if before != after and not (before == ABSENT and after == "")
        ],
        "reason": data.get("reason", ""),
    }
