"""What a package was made with: read from the pickle, recorded by save_package, compared with
the portal's libraries at validation (through the real worker and sandbox).

Packages made with older libraries come from a throwaway virtual environment that this
module builds from the package index once a session (tests/factories/made_elsewhere.py).
"""

import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dill
import numpy as np
import pytest

from scoring import tasks
from scoring.models import PackageVersion
from scoring.packages import contract, environment
from scoring.runs import dispatch
from scoring.sandbox import environments
from scoring.sandbox.environments import Environment
from tests import flows
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
def made_with_old_libraries(state_dir, package_index) -> Path:
    """Packages made in a virtual environment of OLD_LIBRARIES, built once a session from
    the index the worker builds environments from."""
    venv, folder = state_dir / "old-libraries-venv", state_dir / "made-elsewhere"
    if not folder.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                venv / "bin" / "pip",
                "install",
                "-q",
                "--index-url",
                package_index,
                *made_elsewhere.OLD_LIBRARIES,
            ],
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


# --- packages that pin libraries: an environment of their own ------------------------


def scores_in(environment: Environment, package: Path, frame_path: Path) -> list[float]:
    """The package's own predict_proba on a slice, run by the environment's interpreter."""
    script = (
        "import json, sys, dill, pandas\n"
        "package = dill.load(open(sys.argv[1], 'rb'))\n"
        "frame = pandas.read_parquet(sys.argv[2])[package['features']]\n"
        "print(json.dumps(package['model'].predict_proba(frame)[:, 1].tolist()))\n"
    )
    done = subprocess.run(
        [environment.python, "-I", "-c", script, str(package), str(frame_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("bucket", "default_quotas")
def test_a_package_pinning_another_scikit_learn_validates_and_scores_with_that_version(
    worker, api, alice, validated, made_with_old_libraries, pinned_environment, feature_table
):
    pinned = made_with_old_libraries / "sklearn-pinned.dill"
    built = (pinned_environment.path / environments.READY).read_text()
    used_before = environments.last_used(pinned_environment)

    version, latest = validate_file(api, pinned, validated)
    flows.make_due(version.deployment)
    batch = dispatch.tick()
    [run] = flows.wait_for_runs([version.deployment_id])

    assert version.state == "valid", version.message
    assert latest["package"]["requirements"] == [made_elsewhere.OLD_SKLEARN]
    # What the sandbox found it runs: the environment's scikit-learn, not the worker's.
    [sklearn] = [
        lib for lib in latest["package"]["environment"]["libraries"] if lib["module"] == "sklearn"
    ]
    assert sklearn == {
        "module": "sklearn",
        "name": "scikit-learn",
        "made": "1.5.2",
        "runs": "1.5.2",
    }
    assert version_of("scikit-learn") != "1.5.2"
    assert batch is not None and (run.status, run.rows) == ("succeeded", 500), run.error
    today = date.today()
    slice_path = feature_table / f"dt={today.isoformat()}" / "part-0.parquet"
    frame = flows.slice_frame(feature_table, today)
    expected = dict(
        zip(frame["entity_id"], scores_in(pinned_environment, pinned, slice_path), strict=True)
    )
    committed = flows.table_rows(version.deployment_id, today)
    assert len(committed) == 500
    np.testing.assert_allclose(
        committed["score"].to_numpy(),
        [expected[entity] for entity in committed["entity_id"].to_list()],
        rtol=1e-9,
    )
    page = alice.get(f"/models/{version.deployment_id}/").content.decode()
    assert re.search(
        r"made with [^<]*scikit-learn 1\.5\.2 · its environment runs [^<]*1\.5\.2", page
    )
    assert '<dd id="requirements">scikit-learn==1.5.2' in page
    # Warm: the session's environment was used as built, not built again.
    store = environments.Store(pinned_environment.path.parent)
    assert (pinned_environment.path / environments.READY).read_text() == built
    assert [e.path for e in store.environments()] == [pinned_environment.path]
    assert environments.last_used(pinned_environment) > used_before


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("bucket", "default_quotas")
@pytest.mark.parametrize(
    "requirements, message",
    [
        (
            ["scikit-learn>=1.5"],
            "'requirements': 'scikit-learn>=1.5' is not pinned: name exactly one version, as in "
            "'scikit-learn==1.2.3' (no ranges, wildcards, URLs or markers)",
        ),
        (
            "scikit-learn==1.5.2",
            "'requirements' must be a list of pinned requirements such as "
            "['scikit-learn==1.5.2'], got str",
        ),
    ],
)
def test_requirements_that_are_not_pins_make_the_version_invalid(
    worker, alice, validated, requirements, message
):
    package = packages.sklearn_package() | {"requirements": requirements}

    response = upload(alice, packages.dumps(package), name="pins")
    version = validated(PackageVersion.objects.get(deployment_id=response.json()["deployment"]))

    assert (version.state, version.message) == ("invalid", message)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("bucket", "default_quotas")
def test_a_version_the_index_does_not_have_makes_the_version_invalid_with_uvs_message(
    worker, alice, validated, package_index
):
    package = packages.sklearn_package() | {"requirements": ["scikit-learn==0.0.99"]}

    response = upload(alice, packages.dumps(package), name="no-such-version")
    version = validated(PackageVersion.objects.get(deployment_id=response.json()["deployment"]))

    assert version.state == "invalid"
    assert version.message.startswith(
        "the environment of its requirements (scikit-learn==0.0.99) could not be built: "
    )
    # uv's own words: which version it could not find.
    assert "there is no version of scikit-learn==0.0.99" in version.message


@pytest.mark.django_db
def test_the_clean_up_removes_environments_unused_for_long_but_never_one_in_use(
    tmp_path, settings, package_index
):
    settings.SANDBOX_ENVIRONMENTS_DIR = tmp_path
    store = environments.Store(tmp_path, index_url=package_index)
    old, held, recent = (store.ready([f"idna=={v}"]) for v in ("3.4", "3.6", "3.7"))
    long_ago = time.time() - 40 * 86400
    for unused in (old, held):
        os.utime(unused.path / environments.LAST_USED, (long_ago, long_ago))
    holding = held.hold()  # as a zygote running from it does
    try:
        tasks.remove_unused_environments()
    finally:
        os.close(holding)

    assert not old.path.exists()
    assert held.complete() and recent.complete()
    assert sorted(row["requirements"][0] for row in store.listing()) == ["idna==3.6", "idna==3.7"]
    # Freed, the old one goes at the next clean-up; the one in use meanwhile is kept.
    tasks.remove_unused_environments()
    assert not held.path.exists() and recent.complete()
