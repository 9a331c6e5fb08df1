"""The model page's Online card: the switch (recorded, independent of the schedule), the two
URLs and the snippets, the row to try (from the latest run's sample, else the feature
source), Try it forwarded to the serving process as the signed-in user, and the last 24
hours of requests from the request log.

The serving process here is a small HTTP server of the test's that holds the portal to
the forwarding contract (the path, the body, the signed user); the serving process itself
answers the same contract in its own tests.
"""

import html
import json
import re
import threading
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from django.core import signing

from scoring import record
from scoring.models import Deployment
from scoring.online import request_log
from scoring.online.request_log import Entry
from scoring.runs import dispatch, lifecycle
from tests.factories import packages
from tests.factories.cast import session
from tests.factories.web import SECRET_NAME
from tests.faults import closed_port
from tests.flows import deploy, slice_frame, wait_for_runs

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("bucket", "default_quotas"),
]

SERVING = "http://serving.example:8001"
# Features in an order of the package's own, not the table's: the row keeps it.
FEATURES = ["region", "age", "plan"]


@pytest.fixture
def online_url(settings):
    settings.ONLINE_URL = SERVING + "/"  # a trailing slash makes no double slash
    return SERVING


def page_of(client, deployment_id: int) -> str:
    response = client.get(f"/models/{deployment_id}/")
    assert response.status_code == 200
    return response.content.decode()


def textarea(page: str) -> str:
    found = re.search(r'<textarea id="id_try_row"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, "no Try-it form on the page"
    return html.unescape(found.group(1))


def pre(page: str, element_id: str) -> str:
    found = re.search(rf'<pre id="{element_id}">(.*?)</pre>', page, re.S)
    assert found, f"no #{element_id} on the page"
    return html.unescape(found.group(1))


def csrf(client) -> dict:
    """The form's CSRF token, as the page gives it to a browser (none for a plain client)."""
    token = client.cookies.get("csrftoken")
    return {"csrfmiddlewaretoken": token.value} if token else {}


def switch(client, deployment_id: int, value: str):
    form = {"online": value, **csrf(client)}
    return client.post(f"/models/{deployment_id}/online/", form, follow=True)


# --- the switch ------------------------------------------------------------------------------


def test_a_model_is_offline_until_switched_and_the_card_says_how_to_call_it(
    alice, deployment, online_url
):
    page = page_of(alice, deployment.id)

    assert 'data-online="off"' in page
    assert ">Switch online</button>" in page
    assert f"POST {SERVING}/v2/models/{SECRET_NAME}/infer" in page
    assert f"POST {SERVING}/api/v1/models/{deployment.id}/predict" in page
    assert "Authorization: Token &lt;your token&gt;" in page
    assert 'href="/token/">your API token</a>' in page
    assert 'id="try-form"' not in page  # offline there is nothing to try
    curl = pre(page, "online-curl")
    assert curl.startswith(f"curl -X POST {SERVING}/api/v1/models/{deployment.id}/predict")
    assert "-H 'Authorization: Token <your token>'" in curl
    python = pre(page, "online-python")
    assert f'"{SERVING}/api/v1/models/{deployment.id}/predict"' in python
    assert '"Authorization": "Token <your token>"' in python
    compile(python, "snippet", "exec")  # it runs as it is copied


def test_the_owner_switches_it_online_and_off_on_the_page_recorded_with_her_name(
    browser, deployment
):
    url = f"/models/{deployment.id}/"

    switched_on = switch(browser, deployment.id, "on")

    assert switched_on.redirect_chain == [(f"{url}#online", 302)]
    assert Deployment.objects.get(id=deployment.id).online is True
    page = switched_on.content.decode()
    assert 'data-online="on"' in page and ">Switch off</button>" in page
    # Still validating: no version can answer yet, and the page says what the server does.
    assert "is switched online, but it has no valid version to answer with" in page
    assert "its endpoint answers 409 until one is valid" in page

    switched_off = switch(browser, deployment.id, "off")

    assert Deployment.objects.get(id=deployment.id).online is False
    assert f"{SECRET_NAME} no longer answers online; its schedule is as it was." in (
        switched_off.content.decode()
    )
    changes = [
        (e.actor.username, e.additional_data["via"], e.changes_dict["online"])
        for e in record.history(deployment.id)
        if "online" in e.changes_dict and e.changes_dict["online"][0] != "None"
    ]
    assert changes == [("alice", "web", ["True", "False"]), ("alice", "web", ["False", "True"])]


def test_the_switch_and_the_schedule_leave_each_other_as_they_are(alice, deployment):
    alice.post(f"/models/{deployment.id}/pause/")
    switch(alice, deployment.id, "on")
    deployment.refresh_from_db()
    assert (deployment.status, deployment.online) == (Deployment.Status.PAUSED, True)

    alice.post(f"/models/{deployment.id}/resume/")
    deployment.refresh_from_db()
    assert (deployment.status, deployment.online) == (Deployment.Status.ACTIVE, True)

    switch(alice, deployment.id, "off")
    deployment.refresh_from_db()
    assert (deployment.status, deployment.online) == (Deployment.Status.ACTIVE, False)
    assert deployment.next_run_at is not None


def test_a_switch_that_says_neither_on_nor_off_changes_nothing(alice, deployment):
    response = switch(alice, deployment.id, "maybe")

    assert "Say whether to switch it online (on) or off." in response.content.decode()
    assert Deployment.objects.get(id=deployment.id).online is False


def test_staff_switch_anothers_model_and_an_outsider_gets_a_404(deployment, staff, outsider):
    refused = session(outsider).post(f"/models/{deployment.id}/online/", {"online": "on"})
    assert refused.status_code == 404
    assert Deployment.objects.get(id=deployment.id).online is False

    assert switch(session(staff), deployment.id, "on").status_code == 200
    assert Deployment.objects.get(id=deployment.id).online is True


# --- the row to try --------------------------------------------------------------------------


@pytest.fixture
def scored(worker, owner, validated, feature_table) -> Deployment:
    """Alice's model of FEATURES, online, scored on today's slice by the worker."""
    package = {"model": packages.Proba(0.3), "features": FEATURES}
    model = deploy(owner, package, "churn", validated)
    dispatch.send_batch([lifecycle.request_run(model, date.today()).id])
    [run] = wait_for_runs([model.id])
    assert run.status == "succeeded", run.error
    Deployment.objects.filter(id=model.id).update(online=True)
    return model


def slice_row(feature_table, entity_id: int) -> dict:
    frame = slice_frame(feature_table, date.today())
    row = frame[frame["entity_id"] == entity_id].iloc[0]
    return {"entity_id": entity_id, **{name: row[name] for name in FEATURES}}


def test_the_row_to_try_comes_from_the_latest_runs_sample_in_the_packages_order(
    alice, scored, feature_table, settings
):
    settings.FEATURES_URI = ""  # not from the source: from what the run kept

    row = json.loads(textarea(page_of(alice, scored.id)))

    assert list(row) == ["entity_id", *FEATURES]
    assert row == slice_row(feature_table, row["entity_id"])


def test_without_a_run_the_row_to_try_is_the_feature_sources_first(
    alice, owner, worker, validated, feature_table, settings
):
    settings.FEATURES_URI = str(feature_table)
    model = deploy(owner, {"model": packages.Proba(0.3), "features": FEATURES}, "new", validated)
    Deployment.objects.filter(id=model.id).update(online=True)

    row = json.loads(textarea(page_of(alice, model.id)))

    first = int(slice_frame(feature_table, date.today())["entity_id"].iloc[0])
    assert row == slice_row(feature_table, first)


def test_without_a_run_or_a_source_the_row_to_try_has_blanks_to_fill(alice, deployment, settings):
    settings.FEATURES_URI = ""
    Deployment.objects.filter(id=deployment.id).update(online=True)
    deployment.versions.update(package={"features": ["monthly_spend"]})

    row = json.loads(textarea(page_of(alice, deployment.id)))

    assert row == {"entity_id": None, "monthly_spend": None}


# --- Try it ----------------------------------------------------------------------------------


class Serving(BaseHTTPRequestHandler):
    """The serving process's predict endpoint as the portal's forwarding contract has it:
    a `Portal` credential signed with the site's key, at most 60 s old."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind, _, credential = self.headers.get("Authorization", "").partition(" ")
        try:
            user = signing.loads(credential, salt="dropscore.online", max_age=60)["user"]
        except signing.BadSignature:
            user = None
        self.server.seen.append({"path": self.path, "body": body, "kind": kind, "user": user})
        status, answer = self.server.answer if user else (401, {"message": "who are you?"})
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def serving(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Serving)
    server.seen, server.answer = [], (200, {"predictions": [0.25]})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.ONLINE_URL = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()
    server.server_close()


def try_it(client, deployment_id: int, text: str):
    return client.post(f"/models/{deployment_id}/try/", {"row": text})


def test_try_it_sends_the_row_as_the_signed_in_user_and_shows_the_prediction(
    browser, owner, deployment, serving
):
    Deployment.objects.filter(id=deployment.id).update(online=True)
    row = {"entity_id": 7, "monthly_spend": 80.5}

    response = browser.post(
        f"/models/{deployment.id}/try/", {"row": json.dumps(row), **csrf(browser)}
    )

    assert response.status_code == 200
    assert serving.seen == [
        {
            "path": f"/api/v1/models/{deployment.id}/predict",
            "body": {"dataframe_records": [row]},
            "kind": "Portal",
            "user": owner.id,
        }
    ]
    page = response.content.decode()
    assert json.loads(pre(page, "try-predictions")) == [0.25]
    assert 'data-try="ok">Answered 200 in' in page
    assert json.loads(textarea(page)) == row  # the row stays in the form to change and resend


def test_try_it_sends_a_list_of_rows_as_they_are(alice, deployment, serving):
    Deployment.objects.filter(id=deployment.id).update(online=True)
    rows = [{"monthly_spend": 10.0}, {"monthly_spend": 90.0}]
    serving.answer = (200, {"predictions": [0.1, 0.9]})

    page = try_it(alice, deployment.id, json.dumps(rows)).content.decode()

    assert serving.seen[0]["body"] == {"dataframe_records": rows}
    assert json.loads(pre(page, "try-predictions")) == [0.1, 0.9]


def test_try_it_shows_the_servers_refusal_with_its_status_and_message(alice, deployment, serving):
    serving.answer = (409, {"error_code": "INVALID_STATE", "message": "no valid champion"})

    response = try_it(alice, deployment.id, '{"monthly_spend": 1}')

    assert response.status_code == 200
    assert "The online service answered 409: no valid champion" in response.content.decode()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{monthly_spend: 1}", "The row is not JSON: Expecting property name"),
        ("[1, 2]", "Give a row as a JSON object"),
        ("[]", "Give a row as a JSON object"),
        ("", "The row is not JSON"),
    ],
)
def test_a_row_that_is_not_a_json_object_is_refused_before_anything_is_sent(
    alice, deployment, serving, text, message
):
    Deployment.objects.filter(id=deployment.id).update(online=True)

    response = try_it(alice, deployment.id, text)

    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert serving.seen == []


def test_when_the_serving_process_is_down_try_it_says_so_and_never_fails(
    alice, deployment, settings
):
    settings.ONLINE_URL = f"http://127.0.0.1:{closed_port()}"
    Deployment.objects.filter(id=deployment.id).update(online=True)

    response = try_it(alice, deployment.id, '{"monthly_spend": 1}')

    assert response.status_code == 502
    page = html.unescape(response.content.decode())
    assert f"The online service at {settings.ONLINE_URL} did not answer: " in page
    assert "Connection refused" in page


def test_an_outsider_cannot_try_anothers_model(deployment, outsider, serving):
    assert try_it(session(outsider), deployment.id, '{"monthly_spend": 1}').status_code == 404
    assert serving.seen == []


# --- the last 24 hours -----------------------------------------------------------------------


def logged(model_id: int, request_id: str, latency_ms: float, status: int = 200) -> Entry:
    return Entry(
        time=datetime.now(UTC) - timedelta(minutes=5),
        request_id=request_id,
        model_id=model_id,
        version=1,
        role="champion",
        features=pa.table({"monthly_spend": [50.0]}),
        entity_ids=None,
        scores=None if status >= 400 else [0.4],
        latency_ms=latency_ms,
        status=status,
    )


def test_the_card_shows_the_last_24_hours_of_requests_from_the_log(alice, deployment, table):
    Deployment.objects.filter(id=deployment.id).update(online=True)
    request_log.append(
        request_log.rows_of(
            [
                logged(deployment.id, "a", 1.0),
                logged(deployment.id, "b", 3.0),
                logged(deployment.id, "c", 2.0, status=422),
                logged(deployment.id + 1, "another model's", 9.0, status=500),
            ]
        )
    )

    page = page_of(alice, deployment.id)

    assert '<div class="detail" data-traffic="requests">3 requests</div>' in page
    assert '<div class="figure" data-traffic="p50_ms">2.0 ms</div>' in page
    assert '<div class="figure" data-traffic="errors">1</div>' in page
    assert '<div class="figure" data-traffic="per_second">&lt; 0.001</div>' in page


def test_an_online_model_never_called_has_no_requests_yet(alice, deployment, table):
    Deployment.objects.filter(id=deployment.id).update(online=True)

    page = page_of(alice, deployment.id)

    assert '<div class="detail" data-traffic="requests">0 requests</div>' in page
    assert '<div class="figure" data-traffic="p99_ms">—</div>' in page
    assert '<div class="figure" data-traffic="per_second">0.000</div>' in page
