"""A Spark job that failed as a whole, told in one line.

What pyspark raises carries the executor's Python traceback and, with pyspark's JVM stack
traces on, the JVM's whole stack: hundreds of lines that would reach the run's owner in the
page and the email. The owner reads the exception's class and first line, and the executor
when known; the worker's log keeps the whole (scoring.engine.spark.job).
"""

import re

MAX_LINE = 300
# Where a task was lost, as Spark says: "Lost task 0.3 in stage 2.0 (TID 7) (10.0.0.5 executor
# 3)", and as a task's Python exception notes it (pyspark's error keeps no executor).
SPARK_EXECUTOR = re.compile(r"\(([^()\s]+) executor ([^()\s]+)\)")
NOTED_EXECUTOR = re.compile(r"^raised on the executor at (\S+)$", re.MULTILINE)
PY4J_CALL = "An error occurred while calling "


class SparkJobFailed(RuntimeError):
    """The job's tasks failed Spark's attempts: the message is short, the trace is logged."""


def short_message(error: BaseException) -> str:
    """The failure's class and first line (the Python exception's, when an executor's
    Python raised it), and which executor when the text says."""
    text = str(error)
    line = python_exception_line(text) or first_line(text)
    if not re.match(r"[\w.$]+(: |$)", line):  # not "Class: message" already
        line = f"{type(error).__name__}: {line}"
    if len(line) > MAX_LINE:
        line = line[: MAX_LINE - 3] + "..."
    if spark := SPARK_EXECUTOR.search(text):
        return f"{line} (on executor {spark[2]} at {spark[1]})"
    if noted := NOTED_EXECUTOR.search(text):
        return f"{line} (on the executor at {noted[1]})"
    return line


def executor_note(host: str) -> str:
    """What a task adds to its exception: the line short_message finds."""
    return f"raised on the executor at {host}"


def python_exception_line(text: str) -> str | None:
    """The line that names the exception after the last Python traceback in `text`."""
    _, traceback, after = text.rpartition("Traceback (most recent call last):")
    if not traceback:
        return None
    for line in after.splitlines():
        if line.strip() and not line[0].isspace():
            return line.strip()
    return None


def first_line(text: str) -> str:
    """The first line that says something, past py4j's "An error occurred while calling"."""
    for line in text.splitlines():
        line = line.strip().removeprefix(": ")
        if line and not line.startswith(PY4J_CALL):
            return line
    return "no message"
