"""The scoring parameters a run uses, and where each comes from.

A package's own params win; where it sets none, the site's setting decides (CHUNK_ROWS,
PSI_WARN, ...), read when a run asks, so changing the environment changes the next run
of every package that set nothing; else the package format's default.
"""

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from scoring.packages.contract import PARAM_DEFAULTS

SITE_SETTINGS = {
    "chunk_rows": "CHUNK_ROWS",
    "psi_warn": "PSI_WARN",
    "psi_alert": "PSI_ALERT",
    "adversarial_warn": "ADVERSARIAL_WARN",
    "adversarial_alert": "ADVERSARIAL_ALERT",
    "wait_for_slice_hours": "WAIT_FOR_SLICE_HOURS",
}


@dataclass(frozen=True)
class Param:
    name: str
    value: Any
    source: str  # "package", "site setting CHUNK_ROWS" or "default"


def resolve(params: dict | None, name: str) -> Param:
    params = params or {}
    if params.get(name) is not None:
        return Param(name, params[name], "package")
    if name in SITE_SETTINGS:
        setting = SITE_SETTINGS[name]
        return Param(name, getattr(settings, setting), f"site setting {setting}")
    return Param(name, PARAM_DEFAULTS.get(name), "default")


def value(params: dict | None, name: str) -> Any:
    return resolve(params, name).value


def effective(params: dict | None) -> list[Param]:
    """Every known parameter with the value a run uses now, then the unknown ones kept."""
    params = params or {}
    known = [resolve(params, name) for name in PARAM_DEFAULTS]
    unknown = [
        Param(n, v, "package, ignored") for n, v in params.items() if n not in PARAM_DEFAULTS
    ]
    return known + unknown
