"""`manage.py serve_online`: a serving process of online scoring (scoring.online.app).

Stateless: it loads packages from S3 through the package cache, so an operator runs
several behind a load balancer, each on its own port or host. It listens on loopback
by default (ONLINE_HOST, ONLINE_PORT).
"""

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the models switched online (Open Inference Protocol and MLflow's bodies)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.ONLINE_HOST)
        parser.add_argument("--port", type=int, default=settings.ONLINE_PORT)

    def handle(self, *args, host: str, port: int, **options):
        from scoring.online.app import application

        self.stdout.write(f"serving online models on http://{host}:{port}")
        uvicorn.run(
            application(),
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            # Keep-alive connections of a load balancer or a client pool stay open.
            timeout_keep_alive=75,
        )
