"""Packages made where other library versions run: this script runs in a throwaway virtual
environment that tests/test_environment.py builds from the package index with OLD_LIBRARIES.

    python made_elsewhere.py OUTPUT_FOLDER    (with the repository on PYTHONPATH)

It needs no pandas: the models are fitted on numpy arrays, as the features' order says.
"""

import sys
from pathlib import Path

# The scikit-learn the throwaway environment installs, which sklearn-pinned.dill pins.
OLD_SKLEARN = "scikit-learn==1.5.2"
# What the throwaway environment installs: older than the portal's pins (pyproject.toml).
OLD_LIBRARIES = (
    OLD_SKLEARN,
    "lightgbm==4.6.0",
    "xgboost-cpu==2.1.4; platform_machine == 'x86_64'",  # as pyproject.toml chooses
    "xgboost==2.1.4; platform_machine != 'x86_64'",
    "numpy==2.4.6",
    "dill==0.4.1",
    "cronsim==2.8",
    "packaging==26.3",
)
FEATURES = ["age", "tenure_months", "monthly_spend"]


def training_data():
    import numpy as np

    rng = np.random.default_rng(0)
    frame = np.column_stack(
        [rng.integers(18, 80, 1000), rng.integers(0, 120, 1000), rng.gamma(2.0, 30.0, 1000)]
    ).astype("float64")
    return frame, (frame[:, 2] + rng.normal(0, 20, 1000) > 60).astype(int)


def main(folder: Path) -> None:
    import dill
    import lightgbm
    import sklearn
    import xgboost
    from sklearn.linear_model import LogisticRegression

    from scoring.packages.contract import save_package

    X, y = training_data()
    logistic = LogisticRegression().fit(X, y)
    save_package(str(folder / "sklearn-saved.dill"), logistic, FEATURES)
    with open(folder / "sklearn-dumped.dill", "wb") as file:
        dill.dump({"model": logistic, "features": FEATURES}, file, recurse=True)
    # Pins the version it was made with: it runs in an environment of its own.
    pins = [f"scikit-learn=={sklearn.__version__}"]
    save_package(str(folder / "sklearn-pinned.dill"), logistic, FEATURES, requirements=pins)
    params = {"objective": "binary", "num_threads": 1, "verbose": -1}
    booster = lightgbm.train(params, lightgbm.Dataset(X, y, feature_name=FEATURES), 10)
    save_package(str(folder / "lightgbm-saved.dill"), booster, FEATURES)
    data = xgboost.DMatrix(X, y, feature_names=FEATURES)
    xgb_booster = xgboost.train({"objective": "binary:logistic", "nthread": 1}, data, 10)
    save_package(str(folder / "xgboost-saved.dill"), xgb_booster, FEATURES)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
