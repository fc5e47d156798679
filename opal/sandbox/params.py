"""A bundle's optional, data-free parameter check (pipeline step 3).

On a worker, an exception raised by ``contributions()`` after it has touched
the data becomes an ordinary noisy release over no contributions (total runs):
it must not tell the requester anything. Checks that do not need the data
(``end_day >= start_day``) belong before the run, where a refusal costs
nothing: in the JSON Schema, or, for what a schema cannot say, in

    def check_params(params):
        if params["end_day"] < params["start_day"]:
            raise ValueError("end_day must be >= start_day")

It runs in the sandbox like the algorithm, with empty tables and without a
``data`` argument; if it raises, the run is refused (exit 2) before any budget
is reserved.
"""

from __future__ import annotations

import ast
import dataclasses
import threading
from collections import OrderedDict
from typing import Any

from opal.errors import AlgorithmFailed, BadInputError

__all__ = ["CHECK_PARAMS", "defines_check_params", "run_check_params"]

CHECK_PARAMS = "check_params"
_ENTRY = "opal_check_params_entry"
# The wall and CPU limit of a data-free parameter check.
CHECK_PARAMS_SECONDS = 10.0
_SHIM = f'''


def {_ENTRY}(data, params):
    {CHECK_PARAMS}(params)
    return data.{{table}}.head(0)
'''


# Checks that passed, by (source, table, params). The check sees no data, so
# its verdict depends on nothing else: a repeat (the same parameters at
# another ε, the usual way a statistician re-runs) need not fork a sandbox.
# Only passes are kept; a refusal runs again and says why each time.
_PASSED: OrderedDict[str, None] = OrderedDict()
_PASSED_MAX = 4096
_passed_lock = threading.Lock()


def _verdict_key(source: str, table: str, params: Any) -> str | None:
    from opal.canonical import canonical_json, sha256_hex

    try:
        return sha256_hex(canonical_json([source, table, params]))
    except (TypeError, ValueError):
        return None


def defines_check_params(source: str) -> bool:
    """Whether ``source`` defines a top-level ``check_params`` function."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == CHECK_PARAMS for node in tree.body)


def run_check_params(runtime: Any, *, source: str, params: Any, table: str, column: str) -> None:
    """Run the bundle's ``check_params(params)``, if it has one, on no data.

    ``runtime``: a Runtime, or a function returning one, called only if the
    check must run (a pass kept from before needs none).

    Raises:
        BadInputError: ``check_params`` raised (the parameters are refused).
        PolicyViolation, LimitExceeded: as for any sandbox run.
    """
    if not defines_check_params(source):
        return
    key = _verdict_key(source, table, params)
    with _passed_lock:
        if key is not None and key in _PASSED:
            _PASSED.move_to_end(key)
            return
    if callable(runtime):
        runtime = runtime()
    # A data-free check needs little time; capped, it cannot use up the run
    # task's time limit and so push the data run's outcome over it.
    base = runtime.limits
    limits = dataclasses.replace(
        base,
        wall_seconds=min(base.wall_seconds, CHECK_PARAMS_SECONDS),
        cpu_seconds=min(base.cpu_seconds, int(CHECK_PARAMS_SECONDS)),
    )
    try:
        runtime.run(
            source=source + _SHIM.format(table=table),
            entrypoint=_ENTRY,
            params=params,
            limits=limits,
            pseudonyms={"table": table, "column": column, "seed": "00", "data_free": True},
        )
    except AlgorithmFailed as exc:
        reason = exc.message.replace(f"{_ENTRY}()", f"{CHECK_PARAMS}()")
        raise BadInputError(f"the bundle's check_params refused the parameters: {reason}") from None
    if key is not None:
        with _passed_lock:
            _PASSED[key] = None
            while len(_PASSED) > _PASSED_MAX:
                _PASSED.popitem(last=False)
