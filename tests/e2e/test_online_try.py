"""The Online card against the real serving process, in a real browser: a user switches a
model online, sends the row the card offers with Try it, sees the model's own prediction,
and sees the request counted from the request log."""

import json

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests import flows, online
from tests.factories import packages
from tests.factories.browser import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_switch_online_try_it_and_see_the_request_counted(
    page, live_server, owner, worker, validated, online_server, feature_table, settings, errors
):
    settings.FEATURES_URI = str(feature_table)  # the card offers a row of the latest slice
    package = packages.catboost_package()
    deployment = flows.deploy(owner, package, "churn-online", validated)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{deployment.id}/")
    expect(page.locator("[data-online]")).to_have_text("off")

    page.click("#online-switch button")

    expect(page.locator("[data-online]")).to_have_text("on")
    row = json.loads(page.locator("#id_try_row").input_value())
    assert list(row) == ["entity_id", *package["features"]]
    assert None not in row.values()

    page.click("#try-form button")

    expect(page.locator("[data-try=ok]")).to_contain_text("Answered 200")
    predictions = json.loads(page.locator("#try-predictions").inner_text())
    expected = online.own_scores(package, pd.DataFrame([row]).astype({"region": str, "plan": str}))
    assert predictions == pytest.approx(list(expected), abs=1e-9)

    def counted() -> bool:
        page.goto(f"{live_server.url}/models/{deployment.id}/")  # not reload: it posts again
        return page.locator('[data-traffic="requests"]').inner_text() == "1 request"

    flows.wait_until(counted, "the request on the card", timeout=30)
    assert page.locator('[data-traffic="errors"]').inner_text() == "0"
    assert errors == []
