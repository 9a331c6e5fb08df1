"""What a package was made with: read from the pickle, recorded by save_package, compared with
the portal's libraries at validation (through the real worker and sandbox).

Packages made with older libraries come from a throwaway virtual environment that this
module builds from the package index once a session (tests/factories/made_elsewhere.py).
"""

import importlib.metadata
import io
import os
import subprocess
import sys
from pathlib import Path

import dill
import pytest

from scoring.models import PackageVersion
from scoring.packages import contract, environment
from tests.factories import features, made_elsewhere, packages
from tests.factories.web import upload

BUILD_TIMEOUT = 600
ROOT = Path(__file__).resolve().parent.parent


def version_of(distribution: str) -> str:
    return importlib.metadata.version(distribution)


# --- reading the pickle --------------------------------------------------------


def test_it_reads_the_libraries_a_pickle_names_without_loading_it():
    names = {
        "catboost": environment.referenced_modules(
            io.BytesIO(packages.dumps(packages.catboost_package()))
        ),
        "sklearn": environment.referenced_modules(
            io.BytesIO(packages.dumps(packages.sklearn_package()))
        ),
        "function": environment.referenced_modules(
            io.BytesIO(packages.dumps(packages.function_package()))
        ),
        "missing": environment.referenced_modules(io.BytesIO(packages.missing_module_bytes())),
    }

    assert names["catboost"] == {"catboost", "numpy"}
    assert {"sklearn", "numpy"} <= names["sklearn"]
    # A notebook function carries `np` as a module reference (dill's _import_module).
    assert "numpy" in names["function"]
    assert names["missing"] == {"lightgbm_private"}
    # The interpreter's own modules (builtins, copyreg, _codecs) are no library of the package.
    assert not set().union(*names.values()) & set(sys.stdlib_module_names)


def test_save_package_records_python_and_the_versions_of_the_libraries_it_names(tmp_path):
    path = tmp_path / "lgbm.dill"

    contract.save_package(str(path), packages.lightgbm_package()["model"], features.FEATURES)

    with open(path, "rb") as file:
        recorded = dill.load(file)["environment"]
    assert recorded["python"] == ".".join(map(str, sys.version_info[:3]))
    assert recorded["libraries"]["lightgbm"] == {
        "distribution": "lightgbm",
        "version": version_of("lightgbm"),
    }
    assert recorded["libraries"]["sklearn"]["version"] == version_of("scikit-learn")
    assert "catboost" not in recorded["libraries"]


# --- packages made with other versions, through validation ---------------------


@pytest.fixture(scope="session")
def made_with_old_libraries(state_dir) -> Path:
    """Packages made in a virtual environment of OLD_LIBRARIES, built once a session."""
    venv, folder = state_dir / "old-libraries-venv", state_dir / "made-elsewhere"
    if not folder.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [venv / "bin" / "pip", "install", "-q", *made_elsewhere.OLD_LIBRARIES],
            check=True,
            timeout=BUILD_TIMEOUT,
        )
        folder.mkdir()
        subprocess.run(
            [venv / "bin" / "python", made_elsewhere.__file__, str(folder)],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
        )
    return folder


def validate_file(api, path: Path, validated) -> tuple[PackageVersion, dict]:
    with open(path, "rb") as file:
        response = api.post(
            "/api/v1/models/", {"file": file, "name": path.stem}, format="multipart"
        )
    assert response.status_code == 201, response.content
    version = validated(PackageVersion.objects.get(deployment_id=response.json()["id"]))
    latest = api.get(f"/api/v1/models/{version.deployment_id}/").json()["latest_version"]
    return version, latest


@pytest.mark.django_db(transaction=True)
def test_a_scikit_learn_model_pickled_by_another_version_is_invalid_with_what_to_do(
    worker, api, validated, made_with_old_libraries
):
    runs = version_of("scikit-learn")
    expected = (
        f"The package was made with scikit-learn 1.5.2; this portal runs scikit-learn {runs}, "
        "and scikit-learn warns that what another version pickled may break or score "
        "differently (InconsistentVersionWarning). Fit and save the package again with "
        f"scikit-learn=={runs} (pip install scikit-learn=={runs})."
    )

    saved, saved_api = validate_file(api, made_with_old_libraries / "sklearn-saved.dill", validated)
    # A plain dill.dump records nothing: scikit-learn's own warning names the version.
    dumped, _ = validate_file(api, made_with_old_libraries / "sklearn-dumped.dill", validated)

    assert (saved.state, saved.message) == ("invalid", expected)
    assert saved_api["validation"] == {"state": "invalid", "message": expected}
    assert (dumped.state, dumped.message) == ("invalid", expected)


@pytest.mark.django_db(transaction=True)
def test_a_major_version_apart_is_invalid(worker, api, validated, made_with_old_libraries):
    version, _ = validate_file(api, made_with_old_libraries / "xgboost-saved.dill", validated)

    name = importlib.metadata.packages_distributions()["xgboost"][0]  # xgboost-cpu on x86_64
    runs = version_of(name)
    assert version.state == "invalid"
    assert version.message == (
        f"The package was made with {name} 2.1.4; this portal runs {name} {runs}, a "
        "different major version, which may not load it or score it the same. Fit and save "
        f"the package again with {name}=={runs} (pip install {name}=={runs})."
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("bucket", "default_quotas")
def test_a_minor_version_apart_is_a_warning_on_the_model_page_and_in_the_api(
    worker, api, alice, validated, made_with_old_libraries
):
    version, latest = validate_file(api, made_with_old_libraries / "lightgbm-saved.dill", validated)

    runs = version_of("lightgbm")
    python = ".".join(map(str, sys.version_info[:3]))
    warning = (
        f"made with lightgbm 4.6.0; this portal runs {runs}: a minor version apart, so scores "
        f"should agree; save the package with lightgbm=={runs} to be sure"
    )
    assert version.state == "valid", version.message
    assert latest["package"]["warnings"] == [warning]
    assert latest["package"]["environment"] == {
        "recorded": True,
        "python": {"made": python, "runs": python},
        "libraries": [{"module": "lightgbm", "name": "lightgbm", "made": "4.6.0", "runs": runs}],
    }
    page = alice.get(f"/models/{version.deployment_id}/").content.decode()
    assert f"made with lightgbm 4.6.0 · this portal runs {runs}" in page
    assert f"<li>{warning}</li>" in page
    assert f"Python {python} · this portal runs {python}" in page


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("bucket", "default_quotas")
def test_a_plain_dill_dump_shows_the_libraries_it_uses_and_that_versions_are_not_recorded(
    worker, alice, validated
):
    response = upload(alice, packages.dumps(packages.catboost_package()), name="churn")
    version = validated(PackageVersion.objects.get(deployment_id=response.json()["deployment"]))

    page = alice.get(f"/models/{version.deployment_id}/").content.decode()
    assert version.package["environment"]["recorded"] is False
    assert (
        f"uses catboost, numpy · this portal runs {version_of('catboost')}, {version_of('numpy')}"
        in page
    )
    assert "does not record the versions it was made with" in page
