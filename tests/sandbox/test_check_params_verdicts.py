"""A bundle's data-free ``check_params`` runs in the sandbox once per
(source, table, parameters) that it passed; refusals run again every time.

Why it matters: a statistician re-running the same question at another ε
paid a second sandbox fork for a verdict that cannot have changed (the check
sees no data), and an identical repeat served from the cache paid it too.
"""

from __future__ import annotations

from typing import Any

import pytest

from opal.errors import BadInputError
from opal.sandbox import Runtime
from opal.sandbox.params import run_check_params

_SOURCE = '''
def check_params(params):
    if params["x"] < 0:
        raise ValueError("x must be >= 0")


def contributions(data, params):
    return data.cdr[["msisdn"]].head(0)
'''


class CountingRuntime:
    """The real runtime, counting the sandbox runs it is asked for."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.runs = 0

    @property
    def limits(self) -> Any:
        return self.runtime.limits

    def run(self, **kwargs: Any) -> Any:
        self.runs += 1
        return self.runtime.run(**kwargs)


def _check(rt: CountingRuntime, params: Any, source: str = _SOURCE) -> None:
    run_check_params(rt, source=source, params=params, table="cdr", column="msisdn")


def test_a_passed_check_is_not_forked_again_for_the_same_parameters(runtime: Runtime) -> None:
    rt = CountingRuntime(runtime)
    _check(rt, {"x": 1, "tag": "verdicts-1"})
    assert rt.runs == 1
    _check(rt, {"x": 1, "tag": "verdicts-1"})
    _check(rt, {"tag": "verdicts-1", "x": 1})  # the same parameters, keys in another order
    assert rt.runs == 1
    _check(rt, {"x": 2, "tag": "verdicts-1"})  # other parameters: checked afresh
    assert rt.runs == 2
    # another source with the same parameters is another verdict
    _check(rt, {"x": 1, "tag": "verdicts-1"}, source=_SOURCE + "\n# revised\n")
    assert rt.runs == 3


def test_a_refusal_is_checked_and_reported_every_time(runtime: Runtime) -> None:
    rt = CountingRuntime(runtime)
    for expected_runs in (1, 2):
        with pytest.raises(BadInputError, match=r"check_params refused the parameters: .*check_params\(\) raised ValueError"):
            _check(rt, {"x": -1, "tag": "verdicts-2"})
        assert rt.runs == expected_runs


def test_a_source_without_check_params_never_reaches_the_sandbox(runtime: Runtime) -> None:
    rt = CountingRuntime(runtime)
    _check(rt, {"x": -1}, source="def contributions(data, params):\n    return data.cdr.head(0)\n")
    assert rt.runs == 0
