"""The model page's Online card in a real browser: a wide row and long snippets stay inside
the page on a desktop and a phone, Copy puts a snippet on the clipboard, and the switch
turns the card on and off.

Try it against a running serving process: the serving process's own browser test."""

import pytest
from playwright.sync_api import expect

from scoring.models import Deployment, PackageVersion
from tests.factories.browser import log_in
from tests.factories.runs import make_models

pytestmark = pytest.mark.django_db(transaction=True)

# A package of many long feature names: its row and its snippets are wide.
WIDE = [
    f"bureau_enquiries_last_{days}_days_all_lenders_{kind}" for days in range(30) for kind in "ab"
]

# The right edge of the widest element inside the one a selector names.
WIDEST = """(selector) => Math.max(...[...document.querySelectorAll(`${selector} *`)]
    .map((element) => element.getBoundingClientRect().right))"""


@pytest.fixture
def online_model(owner, table, settings) -> Deployment:
    settings.FEATURES_URI = ""  # the row to try has blanks: no slice to read here
    [model] = make_models(owner, 1, prefix="churn", online=True)
    PackageVersion.objects.filter(deployment=model).update(
        package={"features": WIDE, "method": "predict_proba"}
    )
    return model


@pytest.mark.parametrize("width", [1400, 390])
def test_the_online_card_stays_inside_the_page(
    page, live_server, online_model, artifacts, errors, width
):
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{online_model.id}/")

    card = page.locator("#online")
    box = card.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    # Nothing in it reaches past its right edge: the snippets wrap inside their boxes.
    assert page.evaluate(WIDEST, "#online") <= box["x"] + box["width"]
    assert page.locator("#id_try_row").input_value().count('": null') == len(WIDE) + 1
    card.screenshot(path=f"{artifacts}/model-online-card-{width}.png")
    assert errors == []


def test_copy_puts_the_curl_snippet_on_the_clipboard(page, live_server, online_model, errors):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{online_model.id}/")

    page.click('[data-copy="online-curl"]')

    expect(page.locator('[data-copy="online-curl"]')).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#online-curl").inner_text()
    assert copied.startswith("curl -X POST ")
    assert errors == []


def test_the_switch_turns_the_card_off_and_on(page, live_server, online_model, errors):
    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{online_model.id}/")

    page.click("#online-switch button")

    expect(page.locator("[data-online]")).to_have_text("off")
    assert page.locator("#try-form").count() == 0
    assert Deployment.objects.get(id=online_model.id).online is False

    page.click("#online-switch button")

    expect(page.locator("[data-online]")).to_have_text("on")
    assert page.locator("#try-form").count() == 1
    assert errors == []
