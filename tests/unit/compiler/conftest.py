"""Session fixtures for the compiler unit tests: the digits CNN, trained once (~3 s)."""

from __future__ import annotations

from typing import Any

import pytest

from compiler.data import Dataset, from_arrays
from tests.fixtures.digits import DigitsData, load_digits_data, train_digits_cnn


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    return load_digits_data()


@pytest.fixture(scope="session")
def digits_model(digits: DigitsData) -> Any:
    return train_digits_cnn(digits)


@pytest.fixture(scope="session")
def train_set(digits: DigitsData) -> Dataset:
    return from_arrays({"input": digits.x_train}, digits.y_train)


@pytest.fixture(scope="session")
def eval_set(digits: DigitsData) -> Dataset:
    return from_arrays({"input": digits.x_test}, digits.y_test)
