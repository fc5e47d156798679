"""How the child classifies a failure: nothing the algorithm provokes is the worker's internal error."""

from __future__ import annotations

from opal.errors import AlgorithmFailed, LimitExceeded
from opal.sandbox import _child, _guards


def test_import_error_from_a_library_is_the_algorithms_failure() -> None:
    _guards.build_globals(filename="algorithm.py", protected=[])
    error = _child._failure(ModuleNotFoundError("No module named 'pytest'"),
                            filename="algorithm.py", entrypoint="contributions")
    assert isinstance(error, AlgorithmFailed)
    assert error.exit_code == 8
    assert "pytest" not in str(error)


def test_caught_memory_error_is_still_a_limit() -> None:
    _guards.build_globals(filename="algorithm.py", protected=[])
    try:
        raise MemoryError
    except MemoryError:
        try:
            _guards._caught(False)
        except MemoryError:
            pass
    error = _child._failure(ValueError("later"), filename="algorithm.py", entrypoint="contributions")
    assert isinstance(error, LimitExceeded)
    assert error.exit_code == 5
