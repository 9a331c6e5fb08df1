"""The sandbox process's side: set its limits, confine itself, then load packages (one, or
several of one owner, each under its own key) and score the chunks the parent sends,
replying on its pipe.

It runs forked from the zygote (scoring.sandbox.zygote), which imported this module and
the libraries it needs before any package was read.
"""

import errno
import gc
import json
import os
import socket
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from scoring.packages import contract, environment
from scoring.sandbox import confinement, importance, native_rows
from scoring.sandbox.limits import FILE_KEYS, MAX_REQUEST_BYTES, Limits


def serve(
    requests: socket.socket,
    replies: TextIO,
    limits: Limits,
    workdir: Path,
    parent_variables: list[str],
) -> None:
    """The sandbox process: confine itself, then serve requests."""
    protections = apply_limits(limits, workdir, parent_variables)
    state: dict[str, Any] = {"limits": limits}
    while True:
        message, fds, _, _ = socket.recv_fds(requests, MAX_REQUEST_BYTES, len(FILE_KEYS))
        if not message:  # the parent closed its end
            return
        request = json.loads(message)
        files = dict(zip([key for key in FILE_KEYS if key in request], fds, strict=True))
        try:
            reply = handle(request, files, state, replies)
            reply["ok"] = True
        except BaseException as exc:  # the package may raise anything, even SystemExit
            reply = {"ok": False, "error": describe_error(exc, request["cmd"], limits)}
        finally:
            for fd in files.values():  # those the request did not take
                os.close(fd)
        if request["cmd"] == "hello":
            reply["protections"] = protections
        tell(replies, reply)


def apply_limits(limits: Limits, workdir: Path, parent_variables: list[str]) -> dict[str, dict]:
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(limits.nice)
    if limits.threads:
        limit_threads(limits.threads)
    protections = confinement.confine(workdir, limits.processes, parent_variables)
    memory = f"{limits.memory_bytes // 1024**2} MB of memory of its own, watched by the worker"
    protections["memory"] = confinement.entry(True, memory)
    time_limits = f"{limits.timeout_seconds:g} s per request, {limits.cpu_seconds} s of CPU"
    protections["time"] = confinement.entry(True, time_limits)
    return protections


def limit_threads(threads: int) -> None:
    """Cap the OpenMP and BLAS threads of the libraries loaded (LightGBM, XGBoost and numpy
    start one a core), before the confinement hides /proc/self/maps that threadpoolctl reads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an environment of the package's own without it
        return
    threadpool_limits(limits=threads)


def probe() -> None:
    """Confine this process as a sandbox confines itself, and print what it found.

    Run as `python -I -c "from scoring.sandbox.child import probe; probe()"` in a bare
    environment and an empty folder, with {"limits": ..., "variables": the names of the
    caller's variables} on stdin (scoring.engine.worker_probe does, for the status page)."""
    import sys

    given = json.loads(sys.stdin.read())
    print(json.dumps(apply_limits(Limits(**given["limits"]), Path.cwd(), given["variables"])))


def handle(request: dict[str, Any], files: dict[str, int], state: dict[str, Any], replies) -> dict:
    command = request["cmd"]
    if command == "hello":
        return {}
    if command == "load":
        import dill

        with os.fdopen(files.pop("path"), "rb") as file:
            modules = referenced_modules(file)
            with environment.heard_while_loading() as heard:
                obj = dill.load(file)
        package = contract.parse_package(obj)
        contract.check_environment(package, obj, modules, heard)
        state.setdefault("models", {})[request.get("key", 0)] = (obj["model"], package)
        if package.reference_scores_count and "reference" in files:
            with os.fdopen(files.pop("reference"), "wb") as sink:
                write_scores(obj["reference_scores"], sink)
        return {"package": package.to_json()}
    if command == "requirements":
        with os.fdopen(files.pop("path"), "rb") as file:
            declared = environment.declared_requirements(file)
        return {"requirements": contract.check_requirements(declared)}
    if command == "predict":
        if not state.get("frozen"):
            # An online sandbox keeps its model as long as it lives: its objects too, out of
            # the collector's sight (a batch sandbox, which lets models go, never freezes).
            gc.freeze()
            state["frozen"] = True
        return {"scores": predict(state, files.pop("input"), request.get("key", 0))}
    if command == "importance":
        return {"importance": feature_importance(state, files.pop("input", None))}
    if command == "score":
        keys = request.get("keys", [0])
        output = score_file(state, files.pop("input"), files.pop("output"), keys, replies)
        if request.get("release"):  # the models' turn is over: their memory goes to the next
            for key in keys:
                state.get("models", {}).pop(key, None)
            gc.collect()
        return output
    raise ValueError(f"unknown request {command!r}")


def referenced_modules(file: BinaryIO) -> set[str]:
    """The libraries the pickle names; the file is left at its start for dill. A pickle that
    cannot be read through names none: dill.load then says what is wrong with it."""
    try:
        return environment.referenced_modules(file)
    except (ValueError, EOFError):
        return set()
    finally:
        file.seek(0)


def score_file(state: dict[str, Any], input_fd: int, output_fd: int, keys: list, replies) -> dict:
    """Score a chunk with each of the models `keys` names, in turn, into one Arrow file: one
    record batch of scores per model that scored. Each model's outcome is told at once (a
    progress line), so the parent knows which model a crash or a timeout belongs to, and
    a model that raises fails alone."""
    import mmap

    import pyarrow as pa

    with os.fdopen(output_fd, "wb") as sink:
        # Mapped, not read: the columns stay in the page cache the worker wrote them to.
        # The mapping lives as long as the frame's buffers do.
        try:
            mapped = mmap.mmap(input_fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(input_fd)
        table = pa.ipc.open_file(pa.py_buffer(mapped)).read_all()
        schema = pa.schema([("score", pa.float64())])
        scored = []
        with pa.ipc.new_file(sink, schema) as writer:
            for key in keys:
                if key not in state.get("models", {}):  # its load failed, or it failed before
                    tell(
                        replies, {"ok": False, "key": key, "progress": True, "error": "not loaded"}
                    )
                    continue
                model, package = state["models"][key]
                try:
                    # Arrow dictionaries become pandas categories: CatBoost scores them ~2x
                    # faster than strings. split_blocks: each column stays its own block,
                    # mostly straight from the mapped file, instead of being copied into one
                    # 2-D block (10-15% of a CatBoost model's CPU per chunk).
                    frame = table.select(package.features).to_pandas(split_blocks=True)
                    scores = contract.score(
                        model, package.method, frame, package.params.get("positive_class")
                    )
                    contract.check_scores(scores, table.num_rows, package.method)
                except BaseException as exc:  # the package may raise anything: it fails alone
                    del state["models"][key]  # it never scores again in this sandbox
                    error = describe_error(exc, "score", state["limits"])
                    tell(replies, {"ok": False, "key": key, "progress": True, "error": error})
                    continue
                writer.write_batch(score_batch(scores))
                scored.append(key)
                tell(replies, {"ok": True, "key": key, "progress": True})
    return {"rows": table.num_rows, "scored": scored}


def predict(state: dict[str, Any], input_fd: int, key: int) -> list[float]:
    """An online request's scores: the rows (an Arrow stream in a memory file) scored as a
    batch chunk is, categories and all, so a row scores the same online and in batch (a few
    rows of a bare CatBoost or LightGBM straight from Arrow: native_rows). A
    model that raises fails this request only: it stays loaded for the next."""
    import mmap

    import pyarrow as pa

    try:
        mapped = mmap.mmap(input_fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(input_fd)
    table = pa.ipc.open_stream(pa.py_buffer(mapped)).read_all()
    model, package = state["models"][key]
    positive_class = package.params.get("positive_class")
    try:
        raw = native_rows.raw_scores(model, package, table)
    except Exception:  # what the model's own input could not do, the frame does as in batch
        raw = None
    if raw is None:
        frame = table.select(package.features).to_pandas(split_blocks=True)
        scores = contract.score(model, package.method, frame, positive_class)
    else:
        scores = contract.scores_of(model, package.method, raw, positive_class)
    contract.check_scores(scores, table.num_rows, package.method)
    return scores.tolist()


def feature_importance(state: dict[str, Any], input_fd: int | None) -> dict | None:
    """The one loaded model's importance of its features (scoring.sandbox.importance), by
    permutation on the rows of `input_fd` where the model has no measure of its own."""
    model, package = state["models"][0]
    frame = None
    if input_fd is not None:
        with os.fdopen(input_fd, "rb") as source:
            frame = read_features(source.read(), package.features)

    def score(rows):
        return contract.score(model, package.method, rows, package.params.get("positive_class"))

    return importance.measure(model, package.features, frame, score)


def read_features(data: bytes, features: list[str]):
    import pyarrow as pa

    return pa.ipc.open_file(pa.py_buffer(data)).read_all().select(features).to_pandas()


def score_batch(scores):
    import numpy as np
    import pyarrow as pa

    return pa.record_batch([pa.array(np.asarray(scores, dtype=np.float64))], names=["score"])


def tell(replies: TextIO, reply: dict) -> None:
    replies.write(json.dumps(reply, default=str) + "\n")


def write_scores(scores, sink: BinaryIO) -> None:
    import pyarrow as pa

    result = score_batch(scores)
    with pa.ipc.new_file(sink, result.schema) as writer:
        writer.write_batch(result)


def describe_error(exc: BaseException, command: str, limits: Limits) -> str:
    if isinstance(exc, contract.ContractError):
        return str(exc)
    stage = {"load": "loading", "score": "predicting", "predict": "predicting"}.get(
        command, command
    )
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # A fork or a thread refused for want of resources: the process limit's doing.
    if (isinstance(exc, OSError) and exc.errno == errno.EAGAIN) or "new thread" in str(exc):
        return (
            f"{text} while {stage}: the package reached the sandbox's limit of "
            f"{limits.processes} processes and threads"
        )
    return f"{text} while {stage}"
