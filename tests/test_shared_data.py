"""Where the tests find the project's shared data, and how they fail without it."""

from __future__ import annotations

import pytest

from tests.helpers import SHARED_DATA_VARIABLE, shared_data


def test_the_variable_points_the_tests_at_another_copy(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv(SHARED_DATA_VARIABLE, str(tmp_path))
    assert shared_data("mnist") == tmp_path / "mnist"


def test_missing_data_fails_in_one_line_saying_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_VARIABLE, str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failure:
        shared_data("mnist/t10k-labels-idx1-ubyte.gz")
    message = str(failure.value)
    assert str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert SHARED_DATA_VARIABLE in message and "\n" not in message
    assert not failure.value.pytrace  # no traceback: the line is the whole report
