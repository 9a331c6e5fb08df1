"""The boundaries of DESIGN.md, held by import-linter's contracts in pyproject.toml."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_code(tmp_path: Path) -> Path:
    for name in ("scoring", "portal"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_a_sandbox_module_that_imports_django_breaks_the_contract(tmp_path):
    root = copy_of_the_code(tmp_path)
    limits = root / "scoring" / "sandbox" / "limits.py"
    source = limits.read_text()
    limits.write_text(source + "from django.conf import settings  # noqa\n")
    result = lint_imports(root)
    assert result.returncode == 1
    assert "import no Django BROKEN" in result.stdout
    line = len(source.splitlines()) + 1
    assert f"scoring.sandbox.limits -> django (l.{line})" in result.stdout


def test_an_import_cycle_breaks_the_contract(tmp_path):
    root = copy_of_the_code(tmp_path)
    lifecycle = root / "scoring" / "runs" / "lifecycle.py"
    lifecycle.write_text(lifecycle.read_text() + "\nfrom scoring.runs import dispatch  # noqa\n")
    result = lint_imports(root)
    assert result.returncode == 1
    assert "No import cycles among the modules of a package BROKEN" in result.stdout


def test_no_test_file_imports_another_test_file_or_the_fixtures():
    """Helpers live in tests/factories/, tests/flows.py, tests/faults.py and tests/routes.py;
    fixtures reach tests by name."""
    pattern = re.compile(r"^\s*(from|import) tests(\.e2e)?\.(conftest|test_\w+)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if pattern.search(path.read_text())
    ]
    assert offenders == []
