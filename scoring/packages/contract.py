"""The model package format (format 1): parsing, checks, defaults, and a notebook helper.

A package is a dict serialized with dill. Its optional `requirements` pin libraries
("scikit-learn==1.5.2") it runs with, in an environment of its own
(scoring.sandbox.environments); `check_requirements` says what is accepted. This module never unpickles anything
itself: `parse_package` takes the dict after the sandbox has loaded it. It has
no Django import, so the sandbox child can use it.

In a notebook:

    from scoring.packages.contract import save_package
    save_package("churn.dill", model, features=X.columns, schedule="daily",
                 meta={"author": "ana", "gini_oot": 0.61})
"""

import difflib
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from scoring.packages import environment
from scoring.packages.schedules import ScheduleError, check_schedule, check_timezone

FORMAT = 1
KNOWN_KEYS = (
    "model",
    "features",
    "name",
    "email",
    "schedule",
    "timezone",
    "params",
    "meta",
    "reference_scores",
    "format",
    "environment",
    "requirements",
)
METHODS = ("predict_proba", "predict", "decision_function")
CALL = "__call__"  # the method name recorded for a plain callable
# Models whose own method takes no DataFrame, and the one that does the same on a frame:
# xgboost.Booster.predict wants a DMatrix; inplace_predict reads the frame (categories too).
FRAME_METHODS = {("xgboost.core.Booster", "predict"): "inplace_predict"}

# The format's defaults: what a run uses where neither the package nor the site's settings
# say otherwise (scoring.packages.params). They are never written into a package.
PARAM_DEFAULTS: dict[str, Any] = {
    "method": None,  # None: predict_proba if the model has it, else predict, else call it
    "positive_class": None,  # None: the last of model.classes_
    "chunk_rows": 100_000,
    "max_attempts": 3,
    "retry_delay_minutes": 30,
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
    # Fresh slices: a run scores a slice at most this many days older than its date, and
    # waits this long for it before failing (WAIT_FOR_SLICE_HOURS on the site by default).
    "max_slice_age_days": 0,
    "wait_for_slice_hours": 6,
    # Ground truth: the column of LABELS_URI holding the outcome, how many days after the
    # scoring date it is known, and the Gini levels below which a matured run warns or
    # alerts (default: meta.gini_oot, and 0.1 below it).
    "target": None,
    "label_lag_days": 30,
    "gini_warn": None,
    "gini_alert": None,
}
THRESHOLD_PAIRS = (("psi_warn", "psi_alert"), ("adversarial_warn", "adversarial_alert"))
THRESHOLD_PAIRS_FLAT = tuple(key for pair in THRESHOLD_PAIRS for key in pair)
MAX_NAME_LENGTH = 100
MAX_REQUIREMENTS = 50
MAX_FEATURES = 10_000
# One address, no display name: anything with a line break or a comma is refused,
# so a package can never smuggle extra mail headers or recipients.
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class ContractError(ValueError):
    """A package breaks the contract; the message says how, in the user's words."""


@dataclass
class Package:
    """What the portal keeps of a valid package (all JSON-able)."""

    features: list[str]
    method: str
    model_type: str
    name: str | None = None
    email: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    classes: list[Any] | None = None
    reference_scores_count: int | None = None
    format: int = FORMAT
    extra_keys: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # What it was made with beside what the portal runs (scoring.packages.environment).
    environment: dict[str, Any] = field(default_factory=dict)
    # Set at validation: {"method", "features": [{"name", "share"}]} (scoring.sandbox.importance).
    importance: dict[str, Any] | None = None
    # Pinned libraries it runs with, in an environment of its own ("scikit-learn==1.5.2").
    requirements: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise ContractError(f"name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise ContractError("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ContractError(f"name must be at most {MAX_NAME_LENGTH} characters")
    if any(c in name for c in "/\\") or ".." in name:
        raise ContractError(f"name {name!r} must not contain '/', '\\' or '..'")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ContractError("name must not contain control characters")
    if not any(c.isalnum() for c in name):
        raise ContractError(f"name {name!r} must contain at least one letter or digit")
    return name


def check_email(email: object) -> str:
    if not isinstance(email, str):
        raise ContractError(f"email must be text, got {type(email).__name__}")
    email = email.strip()
    if len(email) > 254 or not EMAIL_RE.match(email):
        raise ContractError(f"email {email[:80]!r} is not a single valid address")
    return email


def check_features(features: object) -> list[str]:
    message = "'features' must be a non-empty list of column names"
    if isinstance(features, str | bytes | dict) or not hasattr(features, "__iter__"):
        raise ContractError(f"{message}, got {type(features).__name__}")
    features = list(features)
    if not features:
        raise ContractError(message)
    if len(features) > MAX_FEATURES:
        raise ContractError(f"'features' has {len(features)} columns; at most {MAX_FEATURES}")
    bad = [f for f in features if not isinstance(f, str) or not f.strip()]
    if bad:
        raise ContractError(f"{message}; these are not: {', '.join(repr(b) for b in bad[:5])}")
    seen: set[str] = set()
    duplicates = sorted({f for f in features if f in seen or seen.add(f)})
    if duplicates:
        raise ContractError(f"'features' has duplicate column names: {', '.join(duplicates[:10])}")
    return features


def check_params(params: object) -> tuple[dict[str, Any], list[str]]:
    """The params the package sets, checked; unknown keys are kept and reported.

    Defaults are not merged in: where a package sets nothing, a run takes the site's
    setting (scoring.packages.params), so changing the site changes every such package.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ContractError(f"'params' must be a dict, got {type(params).__name__}")
    checked = dict(params)
    method = checked.get("method")
    if method is not None and method not in METHODS:
        raise ContractError(f"params.method must be one of {', '.join(METHODS)}, got {method!r}")
    integers = (
        ("chunk_rows", 1_000, 10_000_000),
        ("max_attempts", 1, 20),
        ("max_slice_age_days", 0, 366),
        ("label_lag_days", 0, 3660),
    )
    for key, low, high in integers:
        if key in checked:
            _check_int(checked, key, low, high)
    numbers = (
        ("retry_delay_minutes", 7 * 24 * 60),
        ("wait_for_slice_hours", 7 * 24),
        ("gini_warn", 1),
        ("gini_alert", 1),
        *((key, 10) for key in THRESHOLD_PAIRS_FLAT),
    )
    for key, high in numbers:
        if key in checked:
            _check_number(checked, key, 0, high)
    target = checked.get("target")
    if "target" in checked and (not isinstance(target, str) or not target.strip()):
        raise ContractError(f"params.target must be a column name, got {target!r}")
    if "gini_warn" in checked and "gini_alert" in checked:
        if checked["gini_alert"] > checked["gini_warn"]:
            raise ContractError(
                f"params.gini_alert ({checked['gini_alert']}) must not exceed "
                f"params.gini_warn ({checked['gini_warn']}): an alert is a lower Gini"
            )
    for warn, alert in THRESHOLD_PAIRS:
        if warn in checked and alert in checked and checked[warn] > checked[alert]:
            raise ContractError(f"params.{warn} ({checked[warn]}) must not exceed params.{alert}")
    unknown = sorted(set(params) - set(PARAM_DEFAULTS))
    warnings = [f"params.{key} is not a known parameter and is ignored" for key in unknown]
    return checked, warnings


def _check_int(params: dict, key: str, low: int, high: int) -> None:
    value = params[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise ContractError(
            f"params.{key} must be a whole number from {low} to {high}, got {value!r}"
        )
    params[key] = int(value)


def _check_number(params: dict, key: str, low: float, high: float) -> None:
    value = params[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ContractError(f"params.{key} must be a number from {low} to {high}, got {value!r}")
    params[key] = float(value)


def resolve_method(model: object, requested: str | None) -> str:
    if isinstance(model, type):
        raise ContractError(
            f"model is the class {model.__module__}.{model.__qualname__}, not a fitted model: "
            "put the fitted instance under 'model'"
        )
    if requested is not None:
        if not callable(getattr(model, requested, None)):
            raise ContractError(f"params.method is {requested!r} but the model has no {requested}")
        return requested
    for method in ("predict_proba", "predict"):
        if callable(getattr(model, method, None)):
            return method
    if callable(model):
        return CALL
    raise ContractError(
        f"model has no predict_proba or predict and is not a function (it is a {type_name(model)})"
    )


def model_classes(model: object) -> list[Any] | None:
    classes = getattr(model, "classes_", None)
    if classes is None:
        return None
    try:
        return [c.item() if isinstance(c, np.generic) else c for c in list(classes)]
    except TypeError:
        return None


def type_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def parse_package(obj: object) -> Package:
    """Check a loaded package dict against format 1 and return what the portal keeps."""
    if not isinstance(obj, dict):
        raise ContractError(
            f"the package must be a dict with 'model' and 'features', got a {type_name(obj)}"
        )
    non_text = [k for k in obj if not isinstance(k, str)]
    if non_text:
        raise ContractError(f"package keys must be text, got {non_text[0]!r}")
    if "model" not in obj:
        raise ContractError(
            "'model' is missing: put the fitted model, pipeline or function under 'model'"
            + misspelled_as("model", obj)
        )
    if "features" not in obj:
        raise ContractError(
            "'features' is missing: list the column names the model consumes"
            + misspelled_as("features", obj)
        )
    features = check_features(obj["features"])

    version = obj.get("format", FORMAT)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ContractError(f"'format' must be a whole number from 1, got {version!r}")
    params, warnings = check_params(obj.get("params"))
    if version > FORMAT:
        warnings.insert(
            0,
            f"format {version} is newer than this portal's {FORMAT}: "
            "keys it does not know are kept and ignored",
        )

    model = obj["model"]
    method = resolve_method(model, params.get("method"))
    params["method"] = method  # what the sandbox will call, resolved once
    classes = model_classes(model)
    if (
        method == "predict_proba"
        and params.get("positive_class") is not None
        and classes is not None
    ):
        if params["positive_class"] not in classes:
            raise ContractError(
                f"params.positive_class {params['positive_class']!r} is not one of the model's "
                f"classes {classes}"
            )

    if obj.get("environment") is not None and not isinstance(obj["environment"], dict):
        raise ContractError(
            "'environment' is what save_package records of the libraries the package was made "
            f"with: a dict, got {type(obj['environment']).__name__}; leave it to save_package"
        )

    meta = {} if obj.get("meta") is None else obj["meta"]
    if not isinstance(meta, dict):
        raise ContractError(f"'meta' must be a dict, got {type(meta).__name__}")

    schedule, timezone = obj.get("schedule"), obj.get("timezone")
    if schedule is not None and not isinstance(schedule, str):
        raise ContractError(
            "'schedule' must be text: 'daily', 'weekly', 'monthly' or a 5-field cron expression, "
            f"got {type(schedule).__name__} {short_repr(schedule, 40)}"
        )
    try:
        timezone = check_timezone(timezone) if timezone is not None else None
    except ScheduleError as exc:
        raise ContractError(f"'timezone': {exc}") from None
    try:
        schedule = check_schedule(schedule, timezone or "UTC") if schedule is not None else None
    except ScheduleError as exc:
        raise ContractError(f"'schedule': {exc}") from None
    extra_keys = [k for k in obj if k not in KNOWN_KEYS]
    warnings += [
        f"'{key}' is not a key of the package format and is ignored: did you mean '{known}'?"
        for key in extra_keys
        if (known := closest_key(key))
    ]

    return Package(
        features=features,
        method=method,
        model_type=type_name(model),
        name=check_name(obj["name"]) if obj.get("name") is not None else None,
        email=check_email(obj["email"]) if obj.get("email") is not None else None,
        schedule=schedule,
        timezone=timezone,
        params=params,
        meta=jsonable(meta),
        classes=jsonable(classes),
        reference_scores_count=check_reference_scores(obj.get("reference_scores")),
        format=version,
        extra_keys={k: short_repr(obj[k]) for k in extra_keys},
        warnings=warnings,
        requirements=check_requirements(obj.get("requirements")),
    )


def check_requirements(requirements: object) -> list[str]:
    """The libraries a package pins, each `name==version`, normalized and sorted: the key of
    the environment it runs in (scoring.sandbox.environments). Ranges are refused: the same
    package must get the same libraries on every worker and every day."""
    if requirements is None:
        return []
    example = "a list of pinned requirements such as ['scikit-learn==1.5.2']"
    if isinstance(requirements, str | bytes | dict) or not isinstance(requirements, list | tuple):
        raise ContractError(f"'requirements' must be {example}, got {type(requirements).__name__}")
    if len(requirements) > MAX_REQUIREMENTS:
        raise ContractError(
            f"'requirements' has {len(requirements)} entries; at most {MAX_REQUIREMENTS}"
        )
    pins: dict[str, str] = {}
    for item in requirements:
        if not isinstance(item, str):
            raise ContractError(
                f"'requirements' must be {example}; {short_repr(item, 40)} is not text"
            )
        name, pin = check_pin(item)
        if name in pins:
            raise ContractError(f"'requirements' pins {name} twice: {pins[name]} and {pin}")
        pins[name] = pin
    return sorted(pins.values())


def check_pin(item: str) -> tuple[str, str]:
    """(canonical name, normalized pin) of one `name==version`; ContractError otherwise."""
    try:
        requirement = Requirement(item)
    except InvalidRequirement as exc:
        raise ContractError(
            f"'requirements': {item!r} is not a valid requirement: {str(exc).splitlines()[0]}"
        ) from None
    name = canonicalize_name(requirement.name)
    specifiers = list(requirement.specifier)
    if (
        requirement.url
        or requirement.marker
        or len(specifiers) != 1
        or specifiers[0].operator != "=="
        or "*" in specifiers[0].version
    ):
        raise ContractError(
            f"'requirements': {item!r} is not pinned: name exactly one version, as in "
            f"'{name}==1.2.3' (no ranges, wildcards, URLs or markers)"
        )
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return name, f"{name}{extras}=={specifiers[0].version}"


def check_environment(package: Package, obj: dict, modules: set[str], heard: list) -> None:
    """Compare what the package was made with to what loaded it (in the sandbox): a version
    too far apart breaks the contract; a smaller gap is one more warning."""
    try:
        found = environment.compare(obj.get("environment"), modules, heard)
    except environment.EnvironmentMismatch as exc:
        raise ContractError(str(exc)) from None
    package.warnings += found.pop("warnings")
    package.environment = found
    unmet = environment.unmet_pins(package.requirements)
    if unmet:
        raise ContractError(
            f"the package pins {', '.join(unmet)} but its sandbox runs "
            + ", ".join(
                f"{pin.split('==')[0]} {environment.installed_version(pin)}" for pin in unmet
            )
            + ": its pins could not be read before it was loaded, so its environment was not used"
        )


def closest_key(key: str) -> str | None:
    """The known key a mistyped one most likely meant ('feature', 'Features', 'shedule')."""
    matches = difflib.get_close_matches(key.lower(), KNOWN_KEYS, n=1, cutoff=0.75)
    return matches[0] if matches and matches[0] != key else None


def misspelled_as(required: str, obj: dict) -> str:
    """' (the package has 'feature': a typo?)' when a key of the package is close to `required`."""
    typos = [k for k in obj if k not in KNOWN_KEYS and closest_key(k) == required]
    return f" (the package has {typos[0]!r}: a typo?)" if typos else ""


def check_reference_scores(scores: object) -> int | None:
    if scores is None:
        return None
    array = np.asarray(scores)
    if array.dtype.kind not in "iuf" or array.ndim != 1 or array.size == 0:
        raise ContractError(
            "'reference_scores' must be a non-empty one-dimensional list of numbers"
        )
    non_finite = int((~np.isfinite(array)).sum())
    if non_finite:
        raise ContractError(f"'reference_scores' has {non_finite} NaN or infinite values")
    return int(array.size)


def score(model: object, method: str, frame: Any, positive_class: Any = None) -> np.ndarray:
    """Call the model as the package says and return one float per row."""
    if method == CALL:
        raw = model(frame)
    else:
        raw = getattr(model, FRAME_METHODS.get((type_name(model), method), method))(frame)
    return scores_of(model, method, raw, positive_class)


def scores_of(model: object, method: str, raw: Any, positive_class: Any = None) -> np.ndarray:
    """One float per row from what the model's method returned."""
    out = np.asarray(raw)
    if method == "predict_proba":
        if out.ndim != 2:
            raise ContractError(
                f"predict_proba returned shape {out.shape}; expected (rows, classes)"
            )
        classes = model_classes(model)
        column = out.shape[1] - 1
        if positive_class is not None and classes is not None:
            column = classes.index(positive_class)
        out = out[:, column]
    elif out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    called = "the model function" if method == CALL else method
    if out.ndim != 1:
        raise ContractError(f"{called} returned shape {out.shape}; expected one value per row")
    if out.dtype.kind in "USa":  # text, even "0.7": labels or strings are not scores
        raise ContractError(f"{called} returned values that are not numbers ({out.dtype})")
    try:
        return out.astype("float64", copy=False)
    except (TypeError, ValueError):
        raise ContractError(
            f"{called} returned values that are not numbers ({out.dtype})"
        ) from None


def check_scores(scores: np.ndarray, rows: int, method: str) -> None:
    """The output checks every scoring applies: length, finite, probabilities in [0, 1]."""
    if len(scores) != rows:
        raise ContractError(f"the model returned {len(scores)} scores for {rows} rows")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ContractError(f"the model returned {int(bad.sum())} NaN or infinite scores of {rows}")
    if method == "predict_proba" and (scores.min() < 0 or scores.max() > 1):
        raise ContractError(
            f"predict_proba returned values outside [0, 1] (min {scores.min():.4g}, "
            f"max {scores.max():.4g})"
        )


def short_repr(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def jsonable(value: Any) -> Any:
    """Meta and classes as plain JSON values; anything else is shown as its repr."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return short_repr(value)


def build_package(model: object, features: Any, **keys: Any) -> dict[str, Any]:
    """Build a package dict and check it here, before it ever reaches the portal."""
    package = {"model": model, "features": list(features), "format": FORMAT, **keys}
    parse_package(package)
    return package


def save_package(path: str, model: object, features: Any, **keys: Any) -> dict[str, Any]:
    """Build, check and write a package file ready to drop on the portal, with the Python
    and library versions it is made with (those its pickle names)."""
    import io

    import dill

    package = build_package(model, features, **keys)
    modules = environment.referenced_modules(io.BytesIO(dill.dumps(package, recurse=True)))
    package["environment"] = environment.made_here(modules)
    with open(path, "wb") as file:
        dill.dump(package, file, recurse=True)
    return package
