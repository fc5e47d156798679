"""The static part of the policy: check_source, without data."""

from __future__ import annotations

import pytest

from opal.errors import PolicyViolation
from opal.sandbox import check_source

GOOD = """\
import numpy as np
import pandas as pd
from statistics import median

def contributions(data, params):
    cdr = data.cdr
    for id in [1, 2]:
        pass
    return cdr[["msisdn"]].drop_duplicates()
"""


def test_legitimate_source_passes() -> None:
    check_source(GOOD)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import os\ndef contributions(data, params):\n    pass\n", "algorithm.py:1: import of 'os'"),
        ("def contributions(data, params):\n    return id(data)\n", "algorithm.py:2: name 'id' is not allowed"),
        ("def contributions(data, params):\n    class A:\n        pass\n", "algorithm.py:2: class definitions"),
        ("def contributions(data, params):\n    return data.__dict__\n", "algorithm.py:2:"),
        ("def contributions(data, params):\n    return (\n", "algorithm.py:2: syntax error"),
        ("def other(data, params):\n    pass\n", "entrypoint 'contributions' is not defined"),
        ("def contributions(data):\n    pass\n", "must take exactly (data, params)"),
        ("from numpy import linalg\ndef contributions(data, params):\n    pass\n", "not an allowed member of the numpy facade"),
        ("import numpy.random\ndef contributions(data, params):\n    pass\n", "no submodules"),
    ],
)
def test_rejections_name_rule_and_line(source: str, expected: str) -> None:
    with pytest.raises(PolicyViolation) as info:
        check_source(source)
    assert expected in str(info.value)
    assert info.value.exit_code == 4


def test_custom_filename_and_entrypoint_in_messages() -> None:
    with pytest.raises(PolicyViolation, match=r"^bundle/algo\.py:1: "):
        check_source("import sys\ndef run(data, params):\n    pass\n", filename="bundle/algo.py", entrypoint="run")
    check_source("def run(data, params):\n    return data\n", entrypoint="run")


def test_hostile_nesting_is_a_policy_violation() -> None:
    deep = "def contributions(data, params):\n    return " + "-" * 200000 + "1\n"
    with pytest.raises(PolicyViolation):
        check_source(deep)
    with pytest.raises(PolicyViolation):
        check_source("def contributions(data, params):\n    return '\0'\n" + "\0")
