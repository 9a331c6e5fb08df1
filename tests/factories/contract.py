"""The contract tests' small package: a four-row frame, its features, fitted models, a plain
function, a package dict of them, and the message a contract check refuses with."""

import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from scoring.packages.contract import ContractError

FRAME = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
FEATURES = ["a", "b"]
CLASSIFIER = LogisticRegression().fit(FRAME, ["no", "no", "yes", "yes"])
REGRESSOR = LinearRegression().fit(FRAME, [0.0, 10.0, 20.0, 30.0])


def double_a(frame):
    return frame["a"] * 2


def package(**keys):
    return {"model": CLASSIFIER, "features": FEATURES, **keys}


def refusal(check, *args, **keys) -> str:
    with pytest.raises(ContractError) as caught:
        check(*args, **keys)
    return str(caught.value)
