"""The status page: are the services up, is beat ticking, what runs and fails, how is quality,
and which protections the workers' sandboxes get.

Staff see every user's models and runs here; others see their own. The page renders the
same report that /status.json gives, and refreshes its figures by polling that view.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from portal import dashboard, health, listing
from portal.views import deployments_for, runs_for
from scoring.models import ScoringRun

# The checks that leave the process; the workers ping ends once every worker on the roll
# answers (scoring.engine.worker_roll), or at its 1 s timeout.
REMOTE_CHECKS = {"broker": health.broker, "storage": health.s3, "workers": health.workers}
SERVICE_NAMES = {
    "database": "Database",
    "broker": "Redis",
    "storage": "S3 storage",
    "workers": "Workers",
}
# What each sandbox protection is called on the page, in the page's order.
PROTECTION_NAMES = {
    "environment": "Secrets hidden from its environment",
    "files": "Files read-only outside its folder",
    "other_processes": "Other processes hidden",
    "network": "Network cut",
    "memory": "Memory limit",
    "time": "Time limit",
    "process_limit": "Process limit",
    "user": "Unprivileged user",
}


def tick_report(now) -> dict:
    try:
        at = health.last_tick()
    except Exception as exc:  # Redis is down: the broker check says so too
        return {"at": None, "age_seconds": None, "ok": False, "detail": f"unknown: {exc}"}
    if at is None:
        return {"at": None, "age_seconds": None, "ok": False, "detail": "no tick yet"}
    ok = now - at <= dashboard.TICK_STALE_AFTER
    detail = "beat ticks every minute" if ok else "stale: is celery beat running?"
    return {
        "at": at,
        "age_seconds": max(0, round((now - at).total_seconds())),
        "ok": ok,
        "detail": detail,
    }


def protection_order(key: str) -> int:
    """The page's order; a protection this portal has no name for goes last."""
    order = list(PROTECTION_NAMES)
    return order.index(key) if key in order else len(order)


def sandbox_report() -> dict:
    """The workers' reports of their sandboxes' protections; workers that report the same
    (most often: all of them, on one host or alike hosts) share one entry."""
    try:
        reports = health.sandbox_protections()
    except Exception as exc:  # Redis is down: the broker check says so too
        return {"ok": False, "detail": f"unknown: {type(exc).__name__}: {exc}", "hosts": []}
    hosts: dict[str, dict] = {}
    for worker, report in sorted(reports.items()):
        host = host_entry(report)
        same = json.dumps([host["protections"], host["error"]], sort_keys=True)
        hosts.setdefault(same, host)["workers"].append(worker)
    return {
        "ok": bool(hosts) and not any(host["error"] for host in hosts.values()),
        "detail": "" if hosts else "no worker answered",
        "hosts": list(hosts.values()),
    }


def host_entry(report: dict) -> dict:
    """One worker's report as the page shows it: the protections named, in the page's order."""
    if "protections" not in report:  # a worker of an older release: no such command
        return {"workers": [], "probed_at": None, "error": str(report), "protections": []}
    found = report["protections"]
    return {
        "workers": [],
        "probed_at": datetime.fromisoformat(report["probed_at"]),
        "error": report["error"],
        "protections": [
            {"key": key, "name": PROTECTION_NAMES.get(key, key), **found[key]}
            for key in sorted(found, key=protection_order)
        ],
    }


def environments_report() -> dict:
    """The environments of pinned libraries on the workers' disks; workers sharing a folder
    (one host) report the same ones, listed once with every worker that reported them."""
    try:
        reports = health.sandbox_environments()
    except Exception as exc:  # Redis is down: the broker check says so too
        return {"detail": f"unknown: {type(exc).__name__}: {exc}", "environments": []}
    found: dict[tuple, dict] = {}
    for worker, report in sorted(reports.items()):
        for environment in report.get("environments", []):
            key = (environment["key"], environment["built_at"])
            entry = found.setdefault(key, {**environment, "workers": []})
            entry["workers"].append(worker)
            entry["last_used"] = max(entry["last_used"], environment["last_used"])
    rows = sorted(found.values(), key=lambda row: row["last_used"], reverse=True)
    for row in rows:
        row["last_used"] = datetime.fromisoformat(row["last_used"])
        row["built_at"] = datetime.fromisoformat(row["built_at"])
    errors = [f"{worker}: {r['error']}" for worker, r in sorted(reports.items()) if r.get("error")]
    return {"detail": "; ".join(errors), "environments": rows}


NO_SERVING_PROCESS = (
    "No online serving process is running (start one with `manage.py serve_online`)"
)


def online_report() -> dict:
    """The serving processes as they last wrote of themselves to Redis (every few seconds,
    with a short expiry: a process gone drops off the list by itself)."""
    try:
        found = health.online_processes()
    except Exception as exc:  # Redis is down: the broker check says so too
        return {"detail": f"unknown: {type(exc).__name__}: {exc}", "read": False, "processes": []}
    return {
        "detail": "" if found else NO_SERVING_PROCESS,
        "read": True,
        "processes": [readable_entry(name, found[name]) for name in sorted(found)],
    }


def readable_entry(name: str, report) -> dict:
    """A serving process's entry; one of another release that this page cannot read is
    listed with why, and never fails the page."""
    try:
        return process_entry(name, report)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return {
            **process_entry(name, {}),
            "error": f"its report cannot be read: {type(exc).__name__}: {exc}",
        }


def process_entry(name: str, report: dict) -> dict:
    """One serving process as the page shows it: its models, its log, its protections named."""
    log = report.get("log")  # None: it logs no requests (ONLINE_LOG off)
    dropped = (log or {}).get("dropped") or 0
    protections = report.get("protections") or {}
    return {
        "name": name,
        "url": report.get("url", ""),
        "started_at": datetime.fromisoformat(report["started_at"]) if report else None,
        "requests": report.get("requests", 0),
        "models": [model for model in report.get("models") or [] if isinstance(model, dict)],
        "log": log,
        "dropped": dropped_text(dropped),
        "error": report.get("directory_error") or "",
        "protections": [
            {"key": key, "name": PROTECTION_NAMES.get(key, key), **protections[key]}
            for key in sorted(protections, key=protection_order)
        ],
    }


def dropped_text(rows: int) -> str:
    """What the log's bounded queue lost, plainly: answers went out, their rows did not."""
    if not rows:
        return ""
    what = "1 request row was" if rows == 1 else f"{rows} request rows were"
    return f"{what} dropped from the log: its writer fell behind."


def visible_models(online: dict, user) -> dict:
    """The report with only the models the user may see listed (staff: all); the others
    are counted, never named. One query, and none when no process serves a model."""
    served = {m.get("id") for process in online["processes"] for m in process["models"]}
    if user.is_staff or not served:
        seen = served
    else:
        seen = set(deployments_for(user).filter(id__in=served).values_list("id", flat=True))
    for process in online["processes"]:
        listed = [model for model in process["models"] if model.get("id") in seen]
        process["others"] = len(process["models"]) - len(listed)
        process["models"] = listed
    return online


def failure_entry(run) -> dict:
    return {
        "run": run.id,
        "model": run.deployment.name,
        "model_id": run.deployment_id,
        "owner": run.deployment.owner_name,
        "date": run.date,
        "finished_at": run.finished_at,
        "status": run.status,
        "attempts": run.attempts,
        "max_attempts": run.max_attempts,
        "next_attempt_at": run.next_attempt_at,
        "error": run.error[:300],
        "url": reverse("model", args=[run.deployment_id]) + f"#run-{run.id}",
    }


WAITING_GROUPS = 50


def waiting_table(runs) -> list[dict]:
    """The runs waiting for a feature slice, by what they wait for ("waiting for the slice
    of 2026-12-03; latest is 2026-12-02"): the models of one slice start together."""
    groups: dict[str, dict] = {}
    waiting = runs.filter(status=ScoringRun.Status.WAITING).select_related("deployment")
    for run in waiting.order_by("date", "waiting_since")[: WAITING_GROUPS * 20]:
        group = groups.setdefault(
            run.waiting_for,
            {"waiting_for": run.waiting_for, "since": run.waiting_since, "models": []},
        )
        group["models"].append(
            {
                "name": run.deployment.name,
                "url": reverse("model", args=[run.deployment_id]) + f"#run-{run.id}",
            }
        )
    return list(groups.values())[:WAITING_GROUPS]


def quality_table(deployments, query: dict) -> dict:
    """A page of the quality table, worst first, as the query string filters and searches
    it, with the count of each light: four queries however many models."""
    if query["q"]:
        deployments = deployments.filter(name__icontains=query["q"])
    names = (*dashboard.LIGHTS, dashboard.NO_VERDICT)
    counts = dashboard.level_counts(deployments, dashboard.checked_level(), names)
    listed = deployments.alias(light=dashboard.checked_level())
    if query["status"]:
        listed = listed.filter(light=query["status"])
    listed = dashboard.with_latest_check(listing.worst_first(listed, "light"))
    table = listing.page_of(
        listed, query["page"], query, count=listing.listed_count(counts, query["status"])
    )
    table["rows"] = dashboard.quality_rows(table["rows"])
    for model in table["rows"]:
        model["url"] = reverse("model", args=[model["id"]])
    return {"counts": counts, "options": listing.status_options(counts, query), **table}


def failures_table(runs, now, query: dict) -> dict:
    """A page of the failed attempts of the last 24 hours, newest first, searched by the
    model's name like the quality table: two queries."""
    failed = dashboard.recent_failures(runs, now)
    if query["q"]:
        failed = failed.filter(deployment__name__icontains=query["q"])
    table = listing.page_of(failed, query["failures_page"], query, param="failures_page")
    table["rows"] = [failure_entry(run) for run in table["rows"]]
    return table


def page_facts(table: dict) -> dict:
    """Where a page is in its list, for status.js (the rows are the list's own key)."""
    return {"number": table["page"].number, "pages": table["pages"], "count": table["count"]}


def status_report(request: HttpRequest) -> tuple[dict, dict]:
    """Everything the status page shows, in a fixed number of queries, without waiting for
    the workers beyond their answers (a worker gone silent costs the ping's 1 s, once):
    the report that status.json gives, and the pages of its tables with their links (what
    only the page draws). BadQuery when the query string (search, filter, pages) is wrong.

    Times are datetimes: the page formats them, JsonResponse writes them as ISO 8601.
    """
    now = timezone.now()
    user = request.user
    query = listing.read(
        listing.StatusQuery(request.GET, (*dashboard.LIGHTS, dashboard.NO_VERDICT))
    )
    # The remote checks run side by side, and beside the database work: the report waits
    # for the slowest (most often the workers' answers), not for their sum.
    with ThreadPoolExecutor(max_workers=len(REMOTE_CHECKS) + 3) as pool:
        remote = {name: pool.submit(health.timed, check) for name, check in REMOTE_CHECKS.items()}
        tick = pool.submit(tick_report, now)
        sandbox = pool.submit(sandbox_report)
        online = pool.submit(online_report)
        environments = pool.submit(environments_report)
        services = {"database": health.timed(health.database)}
        runs = runs_for(user)
        counts = dashboard.run_counts(runs, now)
        waiting = waiting_table(runs)
        failures = failures_table(runs, now, query)
        quality = quality_table(deployments_for(user), query)
        services.update({name: future.result() for name, future in remote.items()})
        tick = tick.result()
        # The workers report them: beside the workers' check, not a service of its own.
        services["workers"]["sandbox"] = sandbox.result()
        services["workers"]["environments"] = environments.result()
    for name, check in services.items():
        check["name"] = SERVICE_NAMES[name]
    return {
        "ok": all(check["ok"] for check in services.values()) and tick["ok"],
        "checked_at": now,
        "scope": "all" if user.is_staff else "own",
        "services": services,
        "last_tick": tick,
        "runs": counts,
        "waiting": waiting,
        "failures": failures["rows"],
        "quality": {"counts": quality["counts"], "models": quality["rows"]},
        # Not a service the batches need: no serving process leaves the report ok.
        "online": visible_models(online.result(), user),
        "pages": {"failures": page_facts(failures), "quality": page_facts(quality)},
    }, {"failures": failures, "quality": quality, "query": query}


@login_required
@require_GET
def status_page(request: HttpRequest) -> HttpResponse:
    try:
        report, tables = status_report(request)
    except listing.BadQuery as exc:
        messages.error(request, f"That list cannot be shown: {exc}")
        return redirect("status")
    return render(request, "portal/status.html", {"report": report, **tables})


@login_required
@require_GET
def status_json(request: HttpRequest) -> JsonResponse:
    """What the status page polls, with the page's own query string; always 200 when it
    could answer, the body says what is down."""
    try:
        report, _ = status_report(request)
    except listing.BadQuery as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(report)
