"""The serving process's HTTP side: an ASGI application (Starlette, run by uvicorn through
`manage.py serve_online`).

    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}            metadata: the features, their datatypes, the output
    GET  /v2/models/{name}/ready      200 once the champion is loaded (asking loads it)
    POST /v2/models/{name}/infer      the Open Inference Protocol
    POST /api/v1/models/{id}/predict  MLflow's scoring bodies -> {"predictions": [...]}

Auth is the API's tokens (`Authorization: Token <key>`); the model page's Try-it form
signs its user in (`Portal <signed>`). Another owner's model is a 404 on every URL.

The champion answers. A split challenger answers for the entities whose id hashes below
its share, by the batches' hash (scoring.engine.traffic), so an entity is on the same side
online and in batch; a shadow challenger scores the same rows once the answer is made,
never delaying it. After a promotion or a rollback the old champion answers until the new one is loaded, so
no request fails for it. Every request is logged in the background (request_log).
"""

import asyncio
import gc
import logging
import os
import socket
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager

import numpy as np
import orjson
import pyarrow as pa
import redis
from django.conf import settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scoring import redis_keys
from scoring.engine import traffic
from scoring.online import protocol, request_log
from scoring.online.directory import Caller, Directory, Model, Tokens, Version
from scoring.online.fleet import Fleet
from scoring.online.protocol import BadRequest, Rows
from scoring.online.runner import Refused, Runner

HEARTBEAT_SECONDS = 5.0
LAG_PROBE_SECONDS = 0.005
LAG_PROBES = 3
log = logging.getLogger(__name__)


class Failure(Exception):
    """An answer other than 200: its status, message and Retry-After."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RateLimit:
    """A token bucket a model: `rate` requests a second, bursts of a second's worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Service:
    """The serving process's state: the models it knows, its runners, its request log."""

    def __init__(self):
        self.directory = Directory()
        self.tokens = Tokens()
        self.fleet = Fleet(
            settings.ONLINE_MEMORY_BYTES,
            settings.ONLINE_QUEUE_ROWS,
            settings.ONLINE_MAX_WAIT_SECONDS,
        )
        self.lag = 0.0  # how late the event loop runs what is due: its own queue's wait
        self.background: set[asyncio.Task] = set()
        self.request_log = None
        if settings.ONLINE_LOG:
            self.request_log = request_log.RequestLog(
                settings.ONLINE_LOG_QUEUE_ROWS, settings.ONLINE_LOG_FLUSH_SECONDS
            ).start()
        self.answering: dict[int, Version] = {}  # model id: the champion that last answered
        self.limits: dict[int, RateLimit] = {}
        self.requests = 0
        self.in_flight = 0  # admitted, not answered yet
        self.started_at = request_log.now()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        self.directory.start()

    # --- who and what ----------------------------------------------------------------

    async def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization")
        if not header:
            raise Failure(401, "authentication credentials were not provided: Token <key>")
        known, caller = self.tokens.cached(header)
        if not known:
            caller = await asyncio.to_thread(self.tokens.look_up, header)
        if caller is None:
            raise Failure(401, "invalid token")
        return caller

    async def model(self, request: Request, name: str) -> Model:
        since = time.monotonic()
        caller = await self.caller(request)
        if not self.directory.loaded.is_set():
            await asyncio.to_thread(self.directory.loaded.wait, settings.ONLINE_LOAD_WAIT_SECONDS)
        model = self.directory.find(caller, name)
        if model is None or not model.online or model.champion is None:
            await asyncio.to_thread(self.directory.refresh_after_miss, since)
            model = self.directory.find(caller, name)
        if model is None:
            raise Failure(404, f"no model {name!r} among yours")
        if not model.online:
            raise Failure(
                409, f"{model.name} is not online: switch it on on its page or by the API"
            )
        if model.champion is None:
            raise Failure(409, f"{model.name} has no valid champion version to answer with")
        return model

    def allow(self, model: Model) -> None:
        """Refuse at once what would only wait: over the model's rate, past the requests in
        progress this process answers at once, or while its event loop runs late (more
        requests come than it can read)."""
        if self.in_flight >= settings.ONLINE_MAX_IN_FLIGHT:
            raise Failure(429, f"the online service is busy ({self.in_flight} requests)", 1)
        if self.lag > settings.ONLINE_MAX_WAIT_SECONDS:
            raise Failure(429, f"the online service is busy ({self.lag * 1000:.0f} ms behind)", 1)
        limit = self.limits.get(model.id)
        if limit is None:
            limit = self.limits[model.id] = RateLimit(settings.ONLINE_RATE_LIMIT)
        if not limit.take():
            raise Failure(429, f"{model.name} gets more requests than its rate limit", 1)

    # --- scoring ---------------------------------------------------------------------

    async def answering_runner(self, model: Model) -> tuple[Version, Runner]:
        """The champion's runner; while a new champion loads, the one that answered before."""
        runner = self.fleet.runner(model.champion, model.label)
        previous = self.answering.get(model.id)
        if not runner.ready and previous is not None and previous.id != model.champion.id:
            earlier = self.fleet.ready(previous)
            if earlier is not None:
                return previous, earlier
        await self.loaded(runner)
        self.answering[model.id] = model.champion
        return model.champion, runner

    async def loaded(self, runner: Runner) -> None:
        if runner.ready:
            return
        try:
            await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(runner.loaded)),
                settings.ONLINE_LOAD_WAIT_SECONDS,
            )
        except TimeoutError:
            raise Failure(503, f"{runner.label} is still loading; try again shortly", 2) from None
        except Refused as exc:  # its load failed: the next request tries a fresh one
            raise Failure(exc.status, str(exc), exc.retry_after or 5) from None

    async def scores(self, runner: Runner, rows: pa.Table) -> list[float]:
        try:
            return await asyncio.wrap_future(runner.submit(rows))
        except Refused as exc:
            raise Failure(exc.status, str(exc), exc.retry_after) from None

    async def score(self, model: Model, rows: Rows) -> tuple[list[float], list[tuple]]:
        """The answer's scores, and the parts that scored it: (version, role, row indices)."""
        version, runner = await self.answering_runner(model)
        side = self.challenger_side(model, rows)
        if side is None or not side.any():
            return await self.scores(runner, rows.features), [(version, "champion", None)]
        challenger = self.fleet.runner(model.challenger, model.label)
        await self.loaded(challenger)
        if side.all():
            answer = await self.scores(challenger, rows.features)
            return answer, [(model.challenger, "challenger", None)]
        theirs, ours = np.flatnonzero(side), np.flatnonzero(~side)
        champion_scores, challenger_scores = await asyncio.gather(
            self.scores(runner, rows.features.take(ours)),
            self.scores(challenger, rows.features.take(theirs)),
        )
        answer = np.empty(rows.count)
        answer[ours], answer[theirs] = champion_scores, challenger_scores
        return answer.tolist(), [
            (version, "champion", ours),
            (model.challenger, "challenger", theirs),
        ]

    def challenger_side(self, model: Model, rows: Rows) -> np.ndarray | None:
        """Which rows the split challenger answers: those whose entity hashes below its
        share, as in the batches. Rows without an id are the champion's."""
        if model.challenger is None or model.share is None or rows.entity_ids is None:
            return None
        ids = rows.entity_ids
        known = np.array([i is not None for i in ids])
        side = np.zeros(len(ids), dtype=bool)
        if known.any():
            try:
                array = pa.array([i for i in ids if i is not None])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                raise BadRequest(f"the ids ({model.champion.inputs.id_column}) mix types") from None
            side[known] = traffic.buckets(array) < round(model.share * traffic.BUCKETS)
        return side

    def in_background(self, work) -> None:
        """Run a coroutine beside the requests: not after the answer on its connection
        (Starlette's background tasks hold a keep-alive connection's next request)."""
        task = asyncio.create_task(work)
        self.background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self.background.discard)

    async def shadow(self, model: Model, rows: Rows, request_id: str) -> None:
        """Beside the answer: the shadow challenger scores the same rows, logged only; its
        rows join the challenger's queue, never the champion's."""
        start = time.perf_counter()
        status, scores, error = 200, None, None
        try:
            scores = await self.scores(
                self.fleet.runner(model.challenger, model.label), rows.features
            )
        except Failure as exc:
            status, error = exc.status, str(exc)
        self.log(
            model,
            model.challenger,
            "challenger",
            rows,
            None,
            scores,
            start,
            status,
            error,
            request_id,
        )

    # --- the log ---------------------------------------------------------------------

    def log(self, model, version, role, rows, indices, scores, start, status, error, request_id):
        if self.request_log is None:
            return
        features = None if rows is None else rows.features
        ids = None if rows is None else rows.entity_ids
        if indices is not None:
            features = features.take(indices)
            ids = [ids[i] for i in indices] if ids is not None else None
        self.request_log.put(
            request_log.Entry(
                time=request_log.now(),
                request_id=request_id,
                model_id=model.id,
                version=version.number,
                role=role,
                features=features,
                entity_ids=ids,
                scores=scores,
                latency_ms=request_log.elapsed_ms(start),
                status=status,
                error=error,
            )
        )

    # --- upkeep ----------------------------------------------------------------------

    async def watch_lag(self) -> None:
        """Measure how late the event loop wakes a sleeper: the time a request that came now
        would wait before it is read. The least of the last few probes: a moment's stall (a
        new version's sandbox loading beside) is not a backlog, and shedding for it would
        fail requests a promotion must not fail."""
        loop = asyncio.get_running_loop()
        recent = deque([0.0] * LAG_PROBES, maxlen=LAG_PROBES)
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            recent.append(loop.time() - start - LAG_PROBE_SECONDS)
            self.lag = min(recent)

    async def upkeep(self) -> None:
        """Every few seconds: let go the versions no model serves, keep memory bounded, and
        tell the status page how this process is."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            wanted = {v.id for v in self.answering.values()}
            for model in self.directory.models.values():
                if model.online:
                    wanted |= {v.id for v in (model.champion, model.challenger) if v is not None}
            self.fleet.let_go(wanted)
            self.fleet.trim()
            await asyncio.to_thread(self.publish, self.snapshot())

    def snapshot(self) -> dict:
        runners = {version_id: runner for version_id, runner in self.fleet.runners.items()}
        models = []
        for model in self.directory.models.values():
            for role, version in (("champion", model.champion), ("challenger", model.challenger)):
                if version is not None and version.id in runners:
                    runner = runners[version.id]
                    models.append(
                        {
                            "id": model.id,
                            "name": model.name,
                            "version": version.number,
                            "role": role,
                        }
                        | runner.describe()
                    )
        protections = {}
        for runner in runners.values():
            if runner.ready and runner.sandbox is not None:
                protections = runner.sandbox.protections
                break
        log_state = None
        if self.request_log is not None:
            log_state = {
                "queued": self.request_log.queued_rows,
                "dropped": self.request_log.dropped,
                "written": self.request_log.written,
                "last_error": self.request_log.last_error,
            }
        return {
            "url": settings.ONLINE_URL,
            "started_at": self.started_at.isoformat(),
            "models": models,
            "requests": self.requests,
            "log": log_state,
            "protections": protections,
            "directory_error": self.directory.error,
        }

    def publish(self, snapshot: dict) -> None:
        try:
            self.redis.set(
                redis_keys.online_process(self.name),
                orjson.dumps(snapshot),
                ex=int(HEARTBEAT_SECONDS * 6),
            )
        except redis.RedisError as exc:  # the status page misses us a while; serving goes on
            log.warning("could not tell Redis how this process is: %s", exc)

    def close(self) -> None:
        self.directory.stop()
        self.fleet.close()
        if self.request_log is not None:
            self.request_log.stop()


# --- HTTP ------------------------------------------------------------------------------


def json_response(content, status=200, retry_after=None, headers=None):
    headers = dict(headers or {}) | ({"Retry-After": str(retry_after)} if retry_after else {})
    body = content if isinstance(content, bytes) else orjson.dumps(content)
    return Response(body, status, headers, "application/json")


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 past ONLINE_MAX_BODY_BYTES before it is all read."""
    limit = settings.ONLINE_MAX_BODY_BYTES
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BadRequest(f"the body is larger than the {limit} bytes a request may send", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is larger than the {limit} bytes a request may send", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def answer(request: Request, name: str, parse, reply, error_body) -> Response:
    """One scoring request, whichever protocol: parse, score, answer, log."""
    service: Service = request.app.state.service
    service.requests += 1
    start = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    model = rows = None
    try:
        model = await service.model(request, name)
        service.allow(model)
        service.in_flight += 1
        try:
            body = await read_body(request)
            rows, extra = parse(body, model.champion.inputs)
            scores, parts = await service.score(model, rows)
        finally:
            service.in_flight -= 1
    except (Failure, BadRequest) as exc:
        retry_after = getattr(exc, "retry_after", None)
        if model is not None:
            version = service.answering.get(model.id, model.champion)
            service.log(
                model,
                version,
                "champion",
                rows,
                None,
                None,
                start,
                exc.status,
                str(exc),
                request_id,
            )
        return json_response(error_body(exc.status, str(exc)), exc.status, retry_after)
    if model.challenger is not None and model.share is None:
        service.in_background(service.shadow(model, rows, request_id))
    body, headers = reply(model, parts[0][0], extra, scores)
    response = json_response(body, headers=headers)
    for part_version, role, indices in parts:
        part_scores = scores if indices is None else [scores[i] for i in indices]
        service.log(
            model, part_version, role, rows, indices, part_scores, start, 200, None, request_id
        )
    return response


async def infer(request: Request) -> Response:
    return await answer(
        request,
        request.path_params["name"],
        lambda body, inputs: protocol.parse_v2(
            body, request.headers.get(protocol.BINARY_HEADER), inputs
        ),
        lambda model, version, v2_request, scores: protocol.v2_answer(
            model.name, version.number, v2_request, scores
        ),
        lambda status, message: {"error": message},
    )


async def predict(request: Request) -> Response:
    return await answer(
        request,
        str(request.path_params["id"]),
        lambda body, inputs: (protocol.parse_mlflow(body, inputs), None),
        lambda model, version, _, scores: (orjson.dumps({"predictions": scores}), {}),
        lambda status, message: {
            "error_code": ERROR_CODES.get(status, "INTERNAL_ERROR"),
            "message": message,
        },
    )


ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "INVALID_STATE",
    413: "REQUEST_LIMIT_EXCEEDED",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


async def metadata(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        model = await service.model(request, request.path_params["name"])
    except Failure as exc:
        return json_response({"error": str(exc)}, exc.status)
    return json_response(
        protocol.v2_metadata(model.name, model.champion.number, model.champion.inputs)
    )


async def model_ready(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        model = await service.model(request, request.path_params["name"])
        await service.answering_runner(model)
    except Failure as exc:
        return json_response({"error": str(exc)}, exc.status, exc.retry_after)
    return json_response({"name": model.name, "ready": True})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    loaded = request.app.state.service.directory.loaded.is_set()
    return json_response({"ready": loaded}, 200 if loaded else 503)


@asynccontextmanager
async def lifespan(app: Starlette):
    service = app.state.service = Service()
    # The libraries' and Django's hundred thousand objects, moved out of the collector's
    # sight: a full collection over them stopped every request for ~70 ms (the p99).
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(service.upkeep()), asyncio.create_task(service.watch_lag())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(service.close)


def application() -> Starlette:
    return Starlette(
        routes=[
            Route("/v2/health/live", live),
            Route("/v2/health/ready", ready),
            Route("/v2/models/{name}", metadata),
            Route("/v2/models/{name}/ready", model_ready),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/api/v1/models/{id:int}/predict", predict, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
