"""The bad uploads of tests/test_bad_input.py: each a package (or none), the form's fields
and what the user must read, as one table of cases."""

import io
import os
import re
import resource
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from scoring.models import PackageVersion, Quota
from scoring.packages import deployments
from tests.factories import packages

SANDBOX_MEMORY_MB = 256
UPLOAD, VALIDATION, SAFE = "refused at upload", "invalid after validation", "stored safely"
UI, API = "ui", "api"


# --- the packages --------------------------------------------------------------


def good() -> bytes:
    return packages.dumps(packages.function_package())


def padded(extra: int) -> bytes:
    """A real package grown by `extra` bytes of meta."""
    return packages.dumps(packages.function_package(meta={"pad": "x" * extra}))


def package_of(size: int) -> bytes:
    extra = size
    while len(data := padded(extra)) != size:
        extra += size - len(data)
    return data


@cache
def bad(name: str) -> bytes:
    """A package of tests/packages.bad_packages (none of those used here writes a marker)."""
    return packages.bad_packages(Path("/nonexistent"))[name][0]


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.pkl", b"\x80\x04not really")
    return buffer.getvalue()


def proba(value: float = 0.5, **keys) -> bytes:
    return packages.dumps({"model": packages.Proba(value), "features": ["age"], **keys})


NOT_A_PICKLE = (
    "this file is not a pickle: a .dill or .pkl package made with dill.dump starts "
    "with the pickle header (0x80 and a protocol from 2 to 5)"
)
TWICE_A_DAY = "0 6,18 * * *"


def fires_twice(prefix: str = "") -> re.Pattern:
    """The refusal of TWICE_A_DAY, on a day to come (tests/test_schedules.py says which)."""
    message = (
        f"{prefix}schedule '{TWICE_A_DAY}' fires twice on DAY (at 06:00 and 18:00), but a run "
        "scores a whole day's slice, so a second run that day would find it scored: pick one "
        "time a day, and to have a failed run tried again set 'max_attempts' and "
        "'retry_delay_minutes' in the package's params"
    )
    return re.compile(re.escape(message).replace("DAY", r"\d{4}-\d\d-\d\d"))


UNKNOWN_ZONE = "unknown time zone 'Mars/Olympus_Mons': use an IANA name such as 'Europe/London'"
INJECTED_EMAIL = "a@bank.example\r\nBcc: all@evil.example"
OVER_QUOTA = package_of(20 * 1024)


# --- the table -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    stage: str
    # What the user reads: exact text, a pattern where a figure varies, or one per channel.
    # For SAFE cases: the model's name.
    message: "str | re.Pattern | dict[str, str]"
    package: Callable[[], bytes | None] = good  # None: the form is sent without a file
    fields: dict = field(default_factory=dict)  # as the API names them; the UI maps a cron
    filename: str = "churn.dill"
    setup: Callable | None = None  # (user, settings) -> None, before the "nothing changed" look
    stored_as: str = ""  # SAFE: the only key in the bucket
    precondition: Callable | None = None  # (user, validated) -> None; may xfail the case


def same_file_first(user, settings) -> None:
    deploy_directly(user, good(), "churn")


def one_model_quota(user, settings) -> None:
    settings.QUOTA_ACTIVE_MODELS = 1
    deploy_directly(user, padded(10), "first")


def small_byte_quota(user, settings) -> None:
    Quota.objects.create(user=user, bytes=10 * 1024)


def sandbox_limits_processes(user, validated) -> None:
    """Send a fork bomb only to a sandbox with a process limit that counts its own processes:
    RLIMIT_NPROC counts per user, and does not bind root. A probe package tells."""
    load = packages.RunsAtLoad
    probe = proba(
        meta={"uid": load(os.getuid), "nproc": load(resource.getrlimit, resource.RLIMIT_NPROC)}
    )
    version = validated(deploy_directly(user, probe, "probe"))
    deployments.delete(version.deployment)
    meta = version.package["meta"]
    if meta["uid"] == 0 or meta["nproc"][0] == resource.RLIM_INFINITY:
        pytest.xfail(
            f"the sandbox has no process limit of its own (uid {meta['uid']}, RLIMIT_NPROC "
            f"{meta['nproc']}): a fork bomb is not sent to it"
        )


def package_limit(limit: int):
    def setup(user, settings) -> None:
        settings.MAX_PACKAGE_BYTES = limit

    return setup


# The cases refused at upload or stored made safe; those refused by validation are in
# tests/factories/invalid_packages.py.
CASES = [
    # -- refused at upload, before anything is stored --
    Case("random bytes", UPLOAD, NOT_A_PICKLE, lambda: bytes(range(13, 256)) * 40),
    Case("a text file", UPLOAD, NOT_A_PICKLE, lambda: b"model = churn\nfeatures = age\n"),
    Case("a zip file", UPLOAD, NOT_A_PICKLE, zip_file, filename="model.zip"),
    Case("an empty file", UPLOAD, "the file is empty", lambda: b""),
    Case(
        "no file at all",
        UPLOAD,
        {UI: "choose a .dill or .pkl package file to upload", API: "file: No file was submitted."},
        lambda: None,
        fields={"name": "churn"},
    ),
    Case(
        "a request over the package size limit",
        UPLOAD,
        "the file is larger than the limit of 64 KB (the upload is 2 MB)",
        lambda: b"\x80\x04" + b"\0" * 2 * 1024**2,
        setup=package_limit(64 * 1024),
    ),
    Case(
        "a file just over the size limit",  # the request passes the length check, the stream not
        UPLOAD,
        "the file is larger than the limit of 1 MB",
        lambda: b"\x80\x04" + b"\0" * 1024**2,
        setup=package_limit(1024**2),
    ),
    Case(
        "a package larger than the user's storage quota",
        UPLOAD,
        "this package (20 KB) would bring your storage to 20 KB of 10 KB: "
        "delete old versions or models first",
        lambda: OVER_QUOTA,
        setup=small_byte_quota,
    ),
    Case(
        "a new model over the active-model quota",
        UPLOAD,
        "you have 1 of 1 active models: pause or delete one before deploying another",
        setup=one_model_quota,
    ),
    Case(
        "the same file as the current version",
        UPLOAD,
        "this file is the same as the current version v1 of churn",
        fields={"name": "churn"},
        setup=same_file_first,
    ),
    Case(
        "a path in the name field",
        UPLOAD,
        "name '../../etc/passwd' must not contain '/', '\\' or '..'",
        fields={"name": "../../etc/passwd"},
    ),
    Case(
        "a name over 100 characters",
        UPLOAD,
        "name must be at most 100 characters",
        fields={"name": "churn" * 21},
    ),
    Case(
        "a name with a zero-width space",
        UPLOAD,
        "name must not contain control characters",
        fields={"name": "churn\u200bmodel"},
    ),
    Case(
        "a name with a right-to-left override",  # "churn\u202eldb.exe" shows as "churnexe.bdl"
        UPLOAD,
        "name must not contain control characters",
        fields={"name": "churn\u202eldb.exe"},
    ),
    Case(
        "a name of emoji only",
        UPLOAD,
        "name '🚀🔥' must contain at least one letter or digit",
        fields={"name": "🚀🔥"},
    ),
    Case(
        "a cron that fires twice a day",
        UPLOAD,
        fires_twice(),
        fields={"schedule": TWICE_A_DAY},
    ),
    Case(
        "a cron with a minute out of range",
        UPLOAD,
        "schedule '61 * * * *' is not a valid cron expression: Bad minute",
        fields={"schedule": "61 * * * *"},
    ),
    Case(
        "a schedule that is neither a preset nor a cron",
        UPLOAD,
        "schedule 'hourly' is neither a preset (daily, weekly, monthly) "
        "nor a 5-field cron expression (minute hour day month weekday)",
        fields={"schedule": "hourly"},
    ),
    Case("an unknown time zone", UPLOAD, UNKNOWN_ZONE, fields={"timezone": "Mars/Olympus_Mons"}),
    Case(
        "an email with an injected header",
        UPLOAD,
        f"email {INJECTED_EMAIL!r} is not a single valid address",
        fields={"email": INJECTED_EMAIL},
    ),
    # -- stored, but made safe --
    # A file name's folders are dropped (Django keeps the base name); the key is made by the
    # server. Names keep any script: letters and digits of any language, spaces, an emoji
    # beside letters (the slug, and so the key, drops it). Refused above: invisible control
    # or format characters (zero-width, bidi overrides) and names with no letter or digit.
    Case(
        "a path in the file name",
        SAFE,
        "x",
        filename="../../x.dill",
        stored_as="alice/x/v1.dill",
    ),
    Case(
        "a Windows path in the file name",
        SAFE,
        "evil",
        filename="..\\..\\evil.dill",
        stored_as="alice/evil/v1.dill",
    ),
    Case(
        "a Cyrillic name",
        SAFE,
        "Модель оттока",
        fields={"name": "Модель оттока"},
        stored_as="alice/модель-оттока/v1.dill",
    ),
    Case(
        "a right-to-left name",
        SAFE,
        "نموذج التسرب",
        fields={"name": "نموذج التسرب"},
        stored_as="alice/نموذج-التسرب/v1.dill",
    ),
    Case(
        "a name with an emoji",
        SAFE,
        "churn 🚀",
        fields={"name": "churn 🚀"},
        stored_as="alice/churn/v1.dill",
    ),
]


def params(cases):
    return [
        pytest.param(case, channel, id=f"{channel}: {case.name}")
        for case in cases
        for channel in (UI, API)
    ]


def deploy_directly(user, data: bytes, name: str) -> PackageVersion:
    return deployments.deploy(user, io.BytesIO(data), f"{name}.dill", len(data), name=name)
