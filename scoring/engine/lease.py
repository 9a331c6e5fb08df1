"""A batch's hold on its runs: a heartbeat that keeps their lease alive while it works."""

import logging
import threading

from django.conf import settings
from django.db import DatabaseError, close_old_connections

from scoring.models import ScoringRun
from scoring.runs import lifecycle

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Keeps the runs' lease alive while the batch works, from a thread of its own."""

    def __init__(self, held: list[ScoringRun]):
        super().__init__(daemon=True)
        self.held = held
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(settings.HEARTBEAT_SECONDS):
                try:
                    lifecycle.heartbeat(self.held)
                except DatabaseError as exc:
                    # A dropped connection (a restart, a failover) must not end the heartbeat:
                    # tick would take the runs back while they still score. Closed, the
                    # connection is made again at the next beat.
                    log.warning("heartbeat of runs %s failed: %s", [r.id for r in self.held], exc)
                    close_old_connections()
        finally:
            close_old_connections()

    def __enter__(self) -> "Heartbeat":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.join()
