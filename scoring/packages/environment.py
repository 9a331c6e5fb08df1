"""What a package was made with, read from the pickle itself, and how it compares with the
libraries that will load it.

A pickle names every module whose classes or functions it rebuilds (GLOBAL and STACK_GLOBAL
opcodes, and dill's `_import_module` for modules carried by reference): those are the
libraries a package needs. `save_package` records their versions where the notebook runs;
the sandbox reads the same names from any package, so a plain `dill.dump` is checked too,
as far as its libraries tell (scikit-learn's InconsistentVersionWarning names the version
an estimator was pickled with).

The rule: a library a major version apart, or one that warns that it was pickled by another
version, makes the package invalid; a minor version apart is a warning. No Django here:
the sandbox uses it.
"""

import functools
import importlib.metadata
import pickle
import pickletools
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

# Modules a pickle names that are no library of the package's: the interpreter's own, and
# the notebook's (__main__ is carried by value).
NOT_LIBRARIES = frozenset({"__main__", "__builtin__"})
# dill rebuilds a module object by calling this with the module's name.
DILL_IMPORT = ("dill._dill", "_import_module")
STRING_OPCODES = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}
)
MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
VERSION_RE = re.compile(r"^(\d+)(?:\.(\d+))?")
# Warnings a library gives when it loads what another version of it pickled.
VERSION_WARNINGS = {"InconsistentVersionWarning": "sklearn"}


class EnvironmentMismatch(ValueError):
    """The package was made with libraries too far from this portal's to trust its scores."""


def referenced_modules(file: IO[bytes]) -> set[str]:
    """The top-level modules a pickle names, found without running any of it.

    Only the last two values pushed are followed (what STACK_GLOBAL takes), through the
    memo, which holds a global that is used again (dill's `_import_module` is called once
    per module carried by reference)."""
    modules: set[str] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = [None, None]
    for opcode, arg, _ in pickletools.genops(file):
        name = opcode.name
        if name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
            continue
        if name in MEMO_PUTS:
            memo[arg] = pushed[-1]
            continue
        value = None
        if name in STRING_OPCODES and isinstance(arg, str):
            value = arg
            if pushed[-1] == DILL_IMPORT:
                modules.add(arg)
        elif name in MEMO_GETS:
            value = memo.get(arg)
        elif name in ("GLOBAL", "INST"):
            value = tuple(arg.split(" ", 1))
        elif name == "STACK_GLOBAL" and all(isinstance(v, str) for v in pushed):
            value = tuple(pushed)
        if isinstance(value, tuple):
            modules.add(value[0])
        pushed = [pushed[-1], value]
    return {module.split(".")[0] for module in modules} - NOT_LIBRARIES - stdlib()


class StandIn:
    """What every global a pickle names becomes when it is read without running it: called,
    built, filled or updated, it takes everything and does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(StandIn)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return StandIn()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class InertUnpickler(pickle._Unpickler):
    """Python's own unpickler (the C one insists on real classes) with every global a
    stand-in: the package's plain values come back, none of its code runs or is imported."""

    def find_class(self, module, name):
        return StandIn()

    def persistent_load(self, pid):
        return StandIn()


def declared_requirements(file: IO[bytes]) -> object:
    """The package's `requirements` as written, read before any of it can run: its own
    environment must exist before it is loaded. None when it has none, or is no dict."""
    try:
        package = InertUnpickler(file).load()
    except Exception:  # a broken pickle: loading it says what is wrong
        return None
    finally:
        file.seek(0)
    return package.get("requirements") if isinstance(package, dict) else None


def unmet_pins(pins: list[str]) -> list[str]:
    """The pins ("name==version") this interpreter does not run at that version."""
    return [pin for pin in pins if installed_version(pin) != pin.split("==", 1)[1]]


def installed_version(pin: str) -> str | None:
    """The version of the pin's library this interpreter runs (None: it has none)."""
    try:
        return importlib.metadata.version(re.split(r"[\[=]", pin, maxsplit=1)[0])
    except importlib.metadata.PackageNotFoundError:
        return None


def stdlib() -> frozenset[str]:
    return frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)


def installed(modules: set[str]) -> dict[str, dict[str, str | None]]:
    """{module: {"distribution", "version"}} as this interpreter has them; a module no
    installed distribution provides (a notebook's own file) has neither."""
    found = {}
    for module in sorted(modules):
        distribution = next(iter(providers().get(module, [])), None)
        version = importlib.metadata.version(distribution) if distribution else None
        found[module] = {"distribution": distribution, "version": version}
    return found


@functools.cache
def providers() -> Mapping[str, list[str]]:
    """The distributions that provide each top-level module. Read once a process: reading
    it walks every installed distribution's files (about 0.1 s, which a fleet's sandbox
    would pay for each of its models); the zygote reads it for all its sandboxes."""
    return importlib.metadata.packages_distributions()


def made_here(modules: set[str]) -> dict[str, Any]:
    """What save_package records: this Python and the versions of the libraries named."""
    return {"python": python_version(), "libraries": installed(modules)}


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


@contextmanager
def heard_while_loading() -> Iterator[list[warnings.WarningMessage]]:
    """The warnings the libraries give while a package loads (they would go to stderr)."""
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        yield heard


def compare(recorded: object, modules: set[str], heard: list) -> dict[str, Any]:
    """What the package was made with beside what this portal runs, and the warnings a user
    must see. Raises EnvironmentMismatch where the versions are too far apart to trust.

    `recorded` is the package's `environment` key (None for a plain dill.dump), `modules`
    what its pickle names, `heard` the warnings its loading gave."""
    recorded = recorded if isinstance(recorded, dict) else {}
    made_libraries = recorded.get("libraries")
    made_libraries = made_libraries if isinstance(made_libraries, dict) else {}
    # {module: the first warning its library gave that it was pickled by another version}
    warned = {}
    for heard_warning in heard:
        module = VERSION_WARNINGS.get(type(heard_warning.message).__name__)
        if module:
            warned.setdefault(module, heard_warning.message)
    runs = installed(modules | {m for m in made_libraries if isinstance(m, str)})
    libraries = []
    for module, here in runs.items():
        made = made_libraries.get(module) if isinstance(made_libraries.get(module), dict) else {}
        made_version = text_or_none(made.get("version")) or getattr(
            warned.get(module), "original_sklearn_version", None
        )
        name = text_or_none(made.get("distribution")) or here["distribution"] or module
        libraries.append(
            {"module": module, "name": name, "made": made_version, "runs": here["version"]}
        )
    problems = [
        major_gap(library) or (warned_gap(library) if library["module"] in warned else None)
        for library in libraries
    ]
    if any(problems):
        raise EnvironmentMismatch(" ".join(p for p in problems if p))
    python = {"made": text_or_none(recorded.get("python")), "runs": python_version()}
    cautions = [minor_gap(library) for library in libraries] + [python_gap(python)]
    cautions += [
        f"while loading, {type(w.message).__name__}: {str(w.message)[:300]}"
        for w in heard
        if type(w.message).__name__ not in VERSION_WARNINGS
        and not issubclass(w.category, DeprecationWarning)
    ]
    return {
        "recorded": bool(recorded),
        "python": python,
        "libraries": libraries,
        "warnings": [c for c in cautions if c],
    }


def text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def major_minor(version: str | None) -> tuple[int, int | None] | None:
    match = VERSION_RE.match(version or "")
    if match is None:
        return None
    return int(match[1]), int(match[2]) if match[2] is not None else None


def major_gap(library: dict) -> str | None:
    made, runs = major_minor(library["made"]), major_minor(library["runs"])
    if made is None or runs is None or made[0] == runs[0]:
        return None
    name, version = library["name"], library["runs"]
    return (
        f"The package was made with {name} {library['made']}; this portal runs {name} "
        f"{version}, a different major version, which may not load it or score it the same. "
        f"Fit and save the package again with {name}=={version} (pip install {name}=={version})."
    )


def minor_gap(library: dict) -> str | None:
    made, runs = major_minor(library["made"]), major_minor(library["runs"])
    if made is None or runs is None or made == runs:
        return None
    name = library["name"]
    return (
        f"made with {name} {library['made']}; this portal runs {library['runs']}: a minor "
        f"version apart, so scores should agree; save the package with {name}=={library['runs']} "
        "to be sure"
    )


def python_gap(python: dict) -> str | None:
    made, runs = major_minor(python["made"]), major_minor(python["runs"])
    if made is None or made == runs:
        return None
    return (
        f"made with Python {python['made']}; this portal runs Python {python['runs']}: "
        "functions carried by value (defined in the notebook) are compiled for the Python "
        "that made them"
    )


def warned_gap(library: dict) -> str:
    """scikit-learn warns whenever an estimator was pickled by another version of it: it does
    not support that, so neither do we."""
    name, version = library["name"], library["runs"]
    return (
        f"The package was made with {name} {library['made'] or 'another version'}; this "
        f"portal runs {name} {version}, and {name} warns that what another version pickled "
        "may break or score differently (InconsistentVersionWarning). Fit and save the "
        f"package again with {name}=={version} (pip install {name}=={version})."
    )
