"""Online scoring through the real serving process: real HTTP, real sandboxes, a real S3
server, the clients others wrote for the protocol (tritonclient) and MLflow's bodies."""

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import numpy as np
import orjson
import polars as pl
import psutil
import pytest
import requests
import tritonclient.http as triton
from django.conf import settings

from deploy import services
from scoring.models import Deployment
from scoring.packages import roles
from scoring.runs import dispatch
from tests import flows, online
from tests.factories import packages
from tests.factories.features import CATEGORICAL

pytestmark = pytest.mark.django_db(transaction=True)


def triton_inputs(frame, features) -> list:
    """One input per feature, as a pandas user of tritonclient sends them (binary data)."""
    inputs = []
    for feature in features:
        text = feature in CATEGORICAL
        values = frame[feature].astype(object if text else "float64").to_numpy()
        tensor = triton.InferInput(feature, [len(frame)], "BYTES" if text else "FP64")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(
    "make",
    [
        packages.catboost_package,
        packages.lightgbm_package,
        packages.sklearn_package,
        packages.function_package,
    ],
    ids=["catboost", "lightgbm", "sklearn", "function"],
)
def test_clients_of_both_protocols_get_the_models_own_predictions(
    make, owner, worker, validated, online_server, feature_table
):
    package = make()
    deployment = online.online(owner, package, f"online-{make.__name__}", validated)
    token = online.token_of(owner)
    frame = online.slice_rows(feature_table, 40)
    expected = online.own_scores(package, frame)

    client = triton.InferenceServerClient(online_server.url.removeprefix("http://"))
    headers = {"Authorization": f"Token {token}"}
    assert client.is_model_ready(deployment.name, headers=headers)
    result = client.infer(
        deployment.name, triton_inputs(frame, package["features"]), headers=headers
    )
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=0, atol=1e-9)

    split = {"columns": list(frame.columns), "data": frame.astype(object).values.tolist()}
    answer = online.predict(online_server, deployment.id, token, {"dataframe_split": split})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], expected, rtol=0, atol=1e-9)


def test_bad_requests_get_a_clear_4xx_naming_what_is_wrong(
    owner, outsider, worker, validated, online_server, feature_table, settings
):
    package = packages.catboost_package()
    deployment = online.online(owner, package, "strict", validated)
    token, url = online.token_of(owner), online_server.url
    row = online.records(online.slice_rows(feature_table, 1))[0]

    def post(body, **headers):
        return requests.post(
            f"{url}/api/v1/models/{deployment.id}/predict",
            data=body,
            headers={"Authorization": f"Token {token}", **headers},
            timeout=30,
        )

    def expect(response, status, *words):
        assert response.status_code == status, response.text
        message = response.json().get("message") or response.json().get("error")
        for word in words:
            assert word in message, message

    expect(post(b"{not json"), 400, "not valid JSON")
    expect(post(b'{"rows": []}'), 400, "dataframe_records")
    without_spend = {k: v for k, v in row.items() if k != "monthly_spend"}
    expect(post(orjson.dumps({"dataframe_records": [without_spend]})), 400, "monthly_spend")
    expect(post(orjson.dumps({"dataframe_records": [row | {"age": "old"}]})), 400, "age", "'old'")
    expect(post(orjson.dumps({"dataframe_records": [row | {"region": 3}]})), 400, "region", "text")
    too_many = {"dataframe_records": [row] * 10_001}
    expect(post(orjson.dumps(too_many)), 413, "10001 rows", "10000")
    expect(post(b" " * (16 * 1024**2 + 1)), 413, "larger than")
    expect(
        requests.post(f"{url}/api/v1/models/{deployment.id}/predict", json={}, timeout=30),
        401,
        "credentials",
    )
    expect(
        requests.post(
            f"{url}/v2/models/{deployment.name}/infer",
            json={
                "inputs": [
                    {
                        "name": name,
                        "shape": [1],
                        "datatype": "BYTES" if isinstance(value, str) else "FP64",
                        "data": ["x" if name == "age" else value],
                    }
                    for name, value in row.items()
                ]
            },
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        ),
        400,
        "age",
    )
    one_tensor = {"inputs": [{"name": "x", "shape": [1, 7], "datatype": "FP64", "data": [0] * 7}]}
    expect(
        requests.post(
            f"{url}/v2/models/{deployment.name}/infer",
            json=one_tensor,
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        ),
        400,
        "'region' is text",
    )

    # Another's model, or none: a 404 on every online URL, whether it exists or not.
    stranger = online.token_of(outsider)
    for name in (deployment.name, str(deployment.id), "no-such-model"):
        for method, path in online.urls(name if not name.isdigit() else name):
            response = requests.request(
                method, f"{url}{path}", json={}, headers={"Authorization": f"Token {stranger}"}
            )
            expect(response, 404, "no model")

    # A switch takes effect within the second the serving process reads the models in.
    body = orjson.dumps({"dataframe_records": [row]})
    Deployment.objects.filter(id=deployment.id).update(online=False)
    flows.wait_until(lambda: post(body).status_code == 409, "the switch-off", timeout=5)
    expect(post(body), 409, "not online")
    Deployment.objects.filter(id=deployment.id).update(online=True, champion=None)
    flows.wait_until(lambda: "champion" in post(body).text, "the champion's loss", timeout=5)
    expect(post(body), 409, "no valid champion")


def test_a_hung_or_killed_sandbox_fails_only_the_request_it_held(
    owner, worker, validated, online_server
):
    deployment = online.online(owner, online.moody_package(), "moody", validated)
    token = online.token_of(owner)

    def ask(age):
        return online.predict(
            online_server, deployment.id, token, {"dataframe_records": [{"age": age}]}
        )

    assert ask(50).json() == {"predictions": [0.5]}

    started = time.monotonic()
    hung = ask(-1)
    assert hung.status_code == 504, hung.text
    assert "timed out after 3 s" in hung.json()["message"]
    assert time.monotonic() - started < 10
    assert ask(40).json() == {"predictions": [0.4]}, "a fresh sandbox serves the next"

    raised = ask(-3)
    assert raised.status_code == 422 and "age must not be -3" in raised.json()["message"]
    assert ask(30).json() == {"predictions": [0.3]}, "the model stays loaded"

    # Busy with one request, the model takes one more: the queue's bound (fixture: 100 rows)
    # answers the rest at once.
    with ThreadPoolExecutor(3) as pool:
        busy = pool.submit(ask, -2)
        online.busy_sandbox(online_server)
        many = {"dataframe_records": [{"age": 10}] * 80}
        more = [
            pool.submit(online.predict, online_server, deployment.id, token, many) for _ in range(2)
        ]
        assert busy.result().status_code == 200
        statuses = sorted(response.result().status_code for response in more)
    assert statuses == [200, 429]
    refused = next(response.result() for response in more if response.result().status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert "80 rows are waiting" in refused.json()["message"]

    # Nor does a request queue behind one that has waited ONLINE_MAX_WAIT_SECONDS (1 s here).
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(ask, -2)
        online.busy_sandbox(online_server)
        waiting = pool.submit(ask, 10)
        time.sleep(1.2)
        late = ask(10)
        assert busy.result().status_code == waiting.result().status_code == 200
    assert late.status_code == 429 and "1 rows are waiting" in late.json()["message"]

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(ask, -2)
        online.busy_sandbox(online_server).kill()
        killed = held.result()
    assert killed.status_code == 503, killed.text
    assert "killed by signal SIGKILL" in killed.json()["message"]
    assert ask(20).json() == {"predictions": [0.2]}, "a fresh sandbox serves the next"


def test_a_shadow_challenger_is_logged_never_answering_and_a_promotion_fails_no_request(
    owner, worker, validated, online_server, feature_table
):
    first = packages.function_returning("frame['age'].to_numpy() / 100")
    second = packages.function_returning("frame['age'].to_numpy() / 200")
    deployment = online.online(owner, first, "promoted", validated)
    flows.deploy(owner, second, "promoted", validated, role="challenger")
    challenger = deployment.versions.get(number=2)
    token = online.token_of(owner)
    rows = online.records(online.slice_rows(feature_table, 3)[["entity_id", "age"]])
    ages = np.array([row["age"] for row in rows])

    body = {"dataframe_records": rows}

    def logged(role: str, at_least: int) -> bool:
        frame = online.logged_rows(deployment.id)
        return frame.filter((pl.col("role") == role) & (pl.col("status") == 200)).height >= at_least

    # The serving process knows the shadow: a first request's rows are scored by it too.
    assert online.predict(online_server, deployment.id, token, body).status_code == 200
    flows.wait_until(lambda: logged("challenger", 3), "the shadow's first rows", timeout=30)

    answers, promoted_at = [], []

    def keep_asking():  # a bounded loop of requests, as a client under way
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = online.predict(
                online_server, deployment.id, token, {"dataframe_records": rows}
            )
            answers.append((response.status_code, response.json().get("predictions")))
            if promoted_at and len(answers) > promoted_at[0] + 30 and answers[-1][1] is not None:
                if np.allclose(answers[-1][1], ages / 200):
                    return

    with ThreadPoolExecutor(1) as pool:
        loop = pool.submit(keep_asking)
        flows.wait_until(lambda: len(answers) >= 20, "answers of the champion", timeout=30)
        promoted_at.append(len(answers))
        roles.request_change(deployment, challenger, "the new one is better", owner)
        loop.result()

    assert [status for status, _ in answers] == [200] * len(answers)
    versions = [
        1 if np.allclose(a, ages / 100) else 2 if np.allclose(a, ages / 200) else None
        for _, a in answers
    ]
    assert None not in versions
    switch = versions.index(2)
    assert versions[:switch] == [1] * switch and versions[switch:] == [2] * (len(versions) - switch)
    assert switch >= 20, "the champion answered until the promotion"

    # The log: every answer (the first request's and the loop's), and the shadow's scores of
    # the same rows, never sent.
    answered = 3 * (1 + len(answers))
    flows.wait_until(lambda: logged("champion", answered), "every answer logged", timeout=30)
    frame = online.logged_rows(deployment.id)
    before = frame.filter(pl.col("version") == 1)
    assert set(before["role"]) == {"champion"} and set(before["status"]) == {200}
    assert before.height >= 3 * 21
    shadow = frame.filter((pl.col("role") == "challenger") & (pl.col("version") == 2))
    assert shadow.height >= 3 and set(shadow["request_id"]) <= set(before["request_id"])
    for row in shadow.head(6).iter_rows(named=True):
        features = orjson.loads(row["features"])
        assert row["score"] == pytest.approx(features["age"] / 200)
        assert row["entity_id"] is not None
        assert 0 < row["latency_ms"] < 5000


def test_a_split_challenger_answers_for_the_entities_it_scores_in_batch(
    owner, worker, validated, online_server, feature_table
):
    first = packages.function_returning("frame['age'].to_numpy() / 100")
    second = packages.function_returning("frame['age'].to_numpy() / 200")
    deployment = online.online(owner, first, "split-online", validated)
    flows.deploy(owner, second, "split-online", validated, role="challenger", share="0.3")
    deployment.refresh_from_db()
    dispatch.score_now(deployment, date.today())
    runs = flows.wait_for_runs([deployment.id])
    assert [run.status for run in runs] == ["succeeded"] * 2, [run.error for run in runs]
    batch = flows.table_rows(deployment.id, date.today())
    batch_side = dict(zip(batch["entity_id"].to_list(), batch["role"].to_list(), strict=True))

    frame = online.slice_rows(feature_table, 200)[["entity_id", "age"]]
    response = online.predict(
        online_server,
        deployment.id,
        online.token_of(owner),
        {"dataframe_records": online.records(frame)},
    )
    assert response.status_code == 200, response.text
    answered = np.array(response.json()["predictions"])
    online_side = np.where(np.isclose(answered, frame["age"] / 200), "challenger", "champion")
    assert 20 < (online_side == "challenger").sum() < 100, "about 30% of 200"
    for entity, side in zip(frame["entity_id"], online_side, strict=True):
        assert batch_side[entity] == side, (
            f"entity {entity}: {side} online, {batch_side[entity]} in batch"
        )

    # Rows without an id are the champion's.
    no_ids = online.predict(
        online_server,
        deployment.id,
        online.token_of(owner),
        {"dataframe_records": online.records(frame[["age"]])},
    )
    np.testing.assert_allclose(no_ids.json()["predictions"], frame["age"] / 100)


def test_a_model_loads_at_first_use_over_its_rate_limit_gets_429_and_idle_ones_are_let_go(
    owner, worker, validated, worker_env, state_dir
):
    slow = packages.function_returning("frame['age'].to_numpy() / 100")
    slow["slow_to_load"] = packages.RunsAtLoad(time.sleep, 3)
    first = online.online(owner, slow, "slow-to-load", validated)
    second = online.online(owner, packages.function_package(), "second", validated)
    token = online.token_of(owner)
    env = worker_env | {
        "ONLINE_LOAD_WAIT_SECONDS": "0.1",
        "ONLINE_RATE_LIMIT": "1",
        "ONLINE_MEMORY_BYTES": "1",  # no room for a model that is not in use
    }
    server = services.serve_online(env, state_dir / "online-limits.log", services.free_port())
    try:
        body = {"dataframe_records": [{"age": 50, "monthly_spend": 60.0}]}
        loading = online.predict(server, first.id, token, body)
        assert loading.status_code == 503, loading.text
        assert "still loading" in loading.json()["message"]
        assert int(loading.headers["Retry-After"]) > 0
        flows.wait_until(lambda: online.ready(server, first.name, token), "the load", 30)

        statuses = [online.predict(server, first.id, token, body).status_code for _ in range(5)]
        assert statuses[0] == 200 and 429 in statuses, statuses
        refused = online.predict(server, first.id, token, body)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"

        flows.wait_until(lambda: online.ready(server, second.name, token), "the second", 30)
        flows.wait_until(
            lambda: online.served(server, worker_env) == {("second", 1)}, "the first let go", 30
        )
        time.sleep(1)  # the rate limit's second
        flows.wait_until(lambda: online.ready(server, first.name, token), "a reload", 30)
        assert online.predict(server, first.id, token, body).json() == {"predictions": [0.5]}
    finally:
        server.stop()


def test_a_serving_process_answers_429_past_the_requests_it_has_in_progress(
    owner, worker, validated, worker_env, state_dir
):
    """More requests than a process answers at once are refused at once, not queued: the
    admitted ones are answered as fast as ever."""
    deployment = online.online(owner, online.moody_package(), "in-progress", validated)
    token = online.token_of(owner)
    env = worker_env | {
        "ONLINE_MAX_IN_FLIGHT": "1",
        "ONLINE_LOAD_WAIT_SECONDS": "30",
        "ONLINE_TIMEOUT_SECONDS": "10",
    }
    server = services.serve_online(env, state_dir / "online-in-flight.log", services.free_port())

    def ask(age):
        return online.predict(server, deployment.id, token, {"dataframe_records": [{"age": age}]})

    try:
        assert ask(50).json() == {"predictions": [0.5]}
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(ask, -2)  # 2.5 s of the model's own work
            online.busy_sandbox(server)
            refused = ask(10)
            assert busy.result().json() == {"predictions": [-0.02]}
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert "busy (1 requests)" in refused.json()["message"]
        assert ask(10).json() == {"predictions": [0.1]}, "answered again once the first was"
    finally:
        server.stop()


SNOOP_CELL = """
import os
import numpy as np

def snoop(frame):
    if (frame["age"].to_numpy() == -7).any():
        secrets = [k for k in os.environ if k.startswith(("SECRET", "DATABASE", "REDIS", "S3_"))]
        if secrets:
            raise RuntimeError("secrets " + " ".join(secrets))
        try_all(ATTEMPTS)
    return np.zeros(len(frame))
"""


def test_an_online_package_gains_nothing_of_the_serving_process(
    owner, worker, validated, online_server, state_dir
):
    server = psutil.Process(online_server.process.pid)
    target = state_dir / "online-target.txt"
    target.write_text("the server's")
    target.chmod(0o666)
    attempts = [
        ["read", f"/proc/{server.pid}/environ"],
        ["read", str(settings.BASE_DIR / "portal" / "settings.py")],
        ["read", str(online_server.log)],
        ["write", str(target)],
    ]
    cell = {**packages.CELL, "ATTEMPTS": attempts}
    cell["ACTIONS"] = {
        **cell["ACTIONS"],
        "env": lambda names: None if names == "none" else os.stat("/" + names),
    }
    exec(SNOOP_CELL, cell)
    deployment = online.online(
        owner, {"model": cell["snoop"], "features": ["age"]}, "snoop", validated
    )

    response = online.predict(
        online_server, deployment.id, online.token_of(owner), {"dataframe_records": [{"age": -7}]}
    )
    assert response.status_code == 422, response.text
    found = re.search(r"outcomes (\{.*\})", response.json()["message"])
    assert found, response.json()["message"]
    outcomes = orjson.loads(found.group(1))
    assert set(outcomes.values()) <= {"EACCES", "EROFS"}, outcomes
    assert target.read_text() == "the server's"
