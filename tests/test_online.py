"""Online scoring through the real serving process: real HTTP, real sandboxes, a real S3
server, the clients others wrote for the protocol (tritonclient) and MLflow's bodies."""

import numpy as np
import orjson
import pytest
import requests
import tritonclient.http as triton

from scoring.models import Deployment
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
            json={"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": ["x"]}]},
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
