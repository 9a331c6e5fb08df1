"""The roll of live workers in Redis, so that asking them all (the status page's ping and
its reports of their sandboxes) ends once every worker on the roll has answered, instead
of always waiting out the timeout (1 s: the whole of the page's time).

A worker puts itself on the roll when it is ready and takes itself off when it stops. A
worker that died without doing so is taken off by the first question it leaves
unanswered; one that answers and is not on the roll (started before the roll existed) is
put on it.

The worker imports this module through the CELERY_IMPORTS setting.
"""

from collections.abc import Callable

import redis
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from scoring import redis_keys


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


@worker_ready.connect
def enrol(sender, **_) -> None:
    client().sadd(redis_keys.worker_roll(), sender.hostname)


@worker_shutdown.connect
def leave(sender, **_) -> None:
    client().srem(redis_keys.worker_roll(), sender.hostname)


def ask(question: Callable[[int | None], dict]) -> dict:
    """`question(limit)` asks every worker and returns {worker: answer} once `limit` have
    answered (None: at its timeout). Asked with the roll's length; the roll is then set
    right by who answered."""
    redis_ = client()
    roll_key = redis_keys.worker_roll()
    roll = {name.decode() for name in redis_.smembers(roll_key)}
    answers = question(len(roll) or None)
    if answers:
        redis_.sadd(roll_key, *answers)
    silent = roll - set(answers)
    if silent and len(answers) < len(roll):  # it waited out its timeout for them
        redis_.srem(roll_key, *silent)
    return answers
