"""Long lists of models on the pages ("My models", the status page): the query string that
filters, searches, sorts and pages them, read and checked, and the links of a page that
keep it. The database filters, sorts, counts and slices; a page holds PER_PAGE rows.
"""

from urllib.parse import urlencode

from django import forms
from django.core.paginator import Page, Paginator
from django.db.models import F, QuerySet, Subquery
from django.db.models.functions import Lower
from django.http import QueryDict

from portal import dashboard

PER_PAGE = 50

# "My models" sorted by: name, the latest finished run (newest first), the level (worst
# first: failed, alert, warning, ok, none), the next run (soonest first). Each ends with
# the id, so a page boundary never splits ties differently from one request to the next.
MODEL_SORTS = {
    "name": "name",
    "last_run": "last run",
    "status": "status, worst first",
    "next_run": "next run",
}

BY_NAME = (Lower("name").asc(), "id")


class BadQuery(ValueError):
    """A query string the page cannot answer: the message says which parameter and why."""


class ListQuery(forms.Form):
    """What every paged list reads from the query string; blank means no filter."""

    q = forms.CharField(required=False, max_length=100, strip=True)
    status = forms.ChoiceField(required=False)
    page = forms.IntegerField(required=False, min_value=1)

    def __init__(self, data: QueryDict, statuses: tuple[str, ...]):
        super().__init__(data)
        self.fields["status"].choices = [("", "all"), *((s, s) for s in statuses)]


class ModelsQuery(ListQuery):
    sort = forms.ChoiceField(required=False, choices=list(MODEL_SORTS.items()))
    # "me" (the user's own models) or a team's slug; blank: all of them.
    owner = forms.SlugField(required=False, max_length=100, allow_unicode=True)


class StatusQuery(ListQuery):
    """The status page's: its quality table pages by `page`, its failures by `failures_page`."""

    failures_page = forms.IntegerField(required=False, min_value=1)


def read(form: forms.Form) -> dict:
    """The form's cleaned values (blank ones as ""), or BadQuery saying what is wrong."""
    if not form.is_valid():
        raise BadQuery(
            "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        )
    return {name: "" if value is None else value for name, value in form.cleaned_data.items()}


def link(query: dict, **changes) -> str:
    """A link to the same list with `changes` made to its query (they come last in it);
    blank values are left out."""
    kept = {name: value for name, value in query.items() if name not in changes}
    params = {name: value for name, value in {**kept, **changes}.items() if value != ""}
    return "?" + urlencode(params)


def page_of(
    queryset: QuerySet,
    number: int | str,
    query: dict,
    param: str = "page",
    count: int | None = None,
) -> dict:
    """The page `number` of the queryset (the last page when past it) and its links;
    `count`, when the caller knows how many rows the queryset holds, spares a query."""
    paginator = Paginator(queryset, PER_PAGE)
    if count is not None:
        paginator.count = count  # a cached_property: set, it is never asked of the database
    page: Page = paginator.get_page(number or 1)
    return {
        "page": page,
        "rows": list(page.object_list),
        "count": paginator.count,
        "pages": paginator.num_pages,
        "previous": link(query, **{param: page.number - 1}) if page.has_previous() else "",
        "next": link(query, **{param: page.number + 1}) if page.has_next() else "",
        "links": [
            {"number": n, "url": link(query, **{param: n}), "current": n == page.number}
            if n != paginator.ELLIPSIS
            else {"number": n, "url": "", "current": False}
            for n in paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)
        ],
    }


def listed_count(counts: dict[str, int], status: str) -> int:
    """How many rows the list filtered by `status` holds, from the counts of its levels."""
    return counts[status] if status else sum(counts.values())


def status_options(counts: dict[str, int], query: dict) -> list[dict]:
    """The status filter's options, each with its count and a link that keeps the search
    and the sort and goes back to the first page."""
    everything = {"status": "", "count": sum(counts.values())}
    return [
        {
            **option,
            "url": link(query, status=option["status"], page=""),
            "current": option["status"] == query["status"],
        }
        for option in [everything, *({"status": s, "count": n} for s, n in counts.items())]
    ]


def sorted_models(deployments: QuerySet, sort: str) -> QuerySet:
    """The deployments (aliased with their `level`) in the order of MODEL_SORTS[sort], by
    name when blank."""
    if sort == "last_run":
        latest = dashboard.latest_finished_runs().values("finished_at")[:1]
        return deployments.alias(last_finished_at=Subquery(latest)).order_by(
            F("last_finished_at").desc(nulls_last=True), *BY_NAME
        )
    if sort == "status":
        return worst_first(deployments, "level")
    if sort == "next_run":
        return deployments.order_by(F("next_run_at").asc(nulls_last=True), *BY_NAME)
    return deployments.order_by(*BY_NAME)


def worst_first(deployments: QuerySet, level: str) -> QuerySet:
    """The deployments worst first by their level in the alias `level`, then by name."""
    return deployments.alias(rank=dashboard.severity_rank(level)).order_by(
        F("rank").desc(), *BY_NAME
    )
