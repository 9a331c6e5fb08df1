"""The model page and My models as laid out in a real browser: the Versions table keeps its
Download buttons inside its card, and a model that cannot be scored asks before deletion."""

import hashlib

import pytest

from scoring.models import Deployment, PackageVersion
from tests.factories.browser import log_in
from tests.factories.runs import make_models

pytestmark = pytest.mark.django_db(transaction=True)


def add_version(model: Deployment, number: int, state: str, message: str) -> None:
    PackageVersion.objects.create(
        deployment=model,
        number=number,
        file=f"alice/{model.slug}/v{number}.dill",
        filename=f"{model.slug}_catboost_retrained_2026_11.dill",  # no place to break
        size=48_000_000,
        sha256=hashlib.sha256(str(number).encode()).hexdigest(),
        state=state,
        message=message,
    )


def test_the_versions_download_buttons_stay_inside_their_card_at_1400_px(
    page, live_server, owner, artifacts, errors
):
    [model] = make_models(owner, 1, prefix="churn")
    add_version(model, 2, "valid", "smoke test: scored 200 rows")
    add_version(model, 3, "invalid", "model has no predict_proba or predict " * 4)
    page.set_viewport_size({"width": 1400, "height": 900})

    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{model.id}/")

    card = page.locator(".card", has=page.locator("h2", has_text="Versions"))
    box = card.bounding_box()
    buttons = card.locator("a.btn", has_text="Download")
    assert buttons.count() == 3
    for index in range(3):
        button = buttons.nth(index).bounding_box()
        assert box["x"] <= button["x"], f"Download of row {index + 1} starts left of the card"
        assert button["x"] + button["width"] <= box["x"] + box["width"], (
            f"Download of row {index + 1} ends {button['x'] + button['width'] - box['x'] - box['width']:.0f} px "
            "right of its card"
        )
    card.screenshot(path=f"{artifacts}/model-versions-1400.png")
    assert errors == []


def test_my_models_offers_a_fix_for_a_model_that_cannot_be_scored_and_asks_before_deleting_it(
    page, live_server, owner, bucket, errors
):
    [broken, fine] = make_models(owner, 2, prefix="churn")
    broken.versions.update(state="invalid", message="model has no predict_proba or predict")
    row = f'tr[data-model="{broken.name}"]'

    log_in(page, live_server)

    assert "cannot be scored" in page.inner_text(row)
    assert page.locator(f"{row} button", has_text="Pause").count() == 0
    assert page.locator(f'tr[data-model="{fine.name}"] button', has_text="Pause").count() == 1
    page.click(f"{row} >> text=Upload a fixed version")
    page.wait_for_url(f"**/models/{broken.id}/#upload-form")
    page.go_back()

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click(f"{row} button:has-text('Delete')")
    assert asked == [
        f"Delete {broken.name} and all 1 of its package versions? This cannot be undone."
    ]
    assert Deployment.objects.filter(id=broken.id).exists()  # dismissed: nothing changed

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.click(f"{row} button:has-text('Delete')")
    assert f"{broken.name} and its packages were deleted." in page.inner_text("body")
    assert page.locator(row).count() == 0
    assert not Deployment.objects.filter(id=broken.id).exists()
    assert errors == []
