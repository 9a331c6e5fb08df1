"""The status page asks the workers on the roll and waits for no one else: a real Celery
worker and Redis (scoring.engine.worker_roll)."""

import time

import pytest

from portal import health
from scoring import redis_keys
from scoring.engine import worker_roll

pytestmark = pytest.mark.django_db(transaction=True)


def roll() -> set[str]:
    return {name.decode() for name in worker_roll.client().smembers(redis_keys.worker_roll())}


def test_a_ready_worker_is_on_the_roll_and_the_status_page_stops_at_its_answers(
    client, owner, worker, celery_app_configured
):
    _, queue = celery_app_configured
    client.force_login(owner)
    assert any(name.startswith(f"{queue}-") for name in roll()), roll()

    client.get("/status.json")  # takes off any worker another test left dead on the roll
    started = time.monotonic()
    workers = client.get("/status.json").json()["services"]["workers"]
    seconds = time.monotonic() - started

    assert workers["ok"] and f"{queue}-" in workers["detail"]
    assert workers["sandbox"]["hosts"], "the sandboxes' report came with the answers"
    assert seconds < 1.0, f"{seconds:.2f} s: the page waited out the workers' 1 s timeout"


def test_a_worker_that_died_on_the_roll_is_taken_off_by_the_first_ping_it_misses(worker):
    worker_roll.client().sadd(redis_keys.worker_roll(), "celery@died-without-leaving")

    assert "live" in health.workers()

    assert "celery@died-without-leaving" not in roll()
