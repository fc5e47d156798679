"""Every OPAL exception, rooted by who is at fault, each carrying its exit code.

The CLI maps these to one line on stderr and an exit status in exactly one
place (``opal.cli._errors``). Exceptions that cross Celery travel as
``to_dict()`` / ``error_from_dict()`` pairs, never pickled.

Messages say what was expected, what was found and what to do. They must
never carry a value from private data.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "OpalError",
    "InternalError",
    "BadInputError",
    "ReleaseRefused",
    "PolicyViolation",
    "LimitExceeded",
    "TrustError",
    "LedgerCorrupt",
    "AlgorithmFailed",
    "error_from_dict",
]


class OpalError(Exception):
    """Root of every error OPAL raises on purpose."""

    exit_code: int = 1
    kind: str = "internal"

    def __init__(self, message: str) -> None:
        # Pass every constructor argument to super() so the exception survives
        # serialization (Celery, multiprocessing).
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": self.message, "exit_code": self.exit_code}


class InternalError(OpalError):
    """A fault in OPAL itself or its environment (exit 1)."""

    exit_code = 1
    kind = "internal"


class BadInputError(OpalError):
    """The caller gave bad input or usage (exit 2)."""

    exit_code = 2
    kind = "bad_input"


class ReleaseRefused(OpalError):
    """The release gate or the privacy budget refused the release (exit 3)."""

    exit_code = 3
    kind = "refused"


class PolicyViolation(OpalError):
    """The sandbox policy rejected the algorithm's code (exit 4)."""

    exit_code = 4
    kind = "policy"


class LimitExceeded(OpalError):
    """A resource limit was hit: time, memory, output size (exit 5)."""

    exit_code = 5
    kind = "limit"


class TrustError(OpalError):
    """A signature, approval or trust check failed (exit 6)."""

    exit_code = 6
    kind = "trust"


class LedgerCorrupt(OpalError):
    """Ledger verification failed (exit 7)."""

    exit_code = 7
    kind = "ledger"


class AlgorithmFailed(OpalError):
    """The algorithm itself raised; the message is scrubbed of data values (exit 8)."""

    exit_code = 8
    kind = "algorithm"


_BY_NAME: dict[str, type[OpalError]] = {
    cls.__name__: cls
    for cls in (
        OpalError,
        InternalError,
        BadInputError,
        ReleaseRefused,
        PolicyViolation,
        LimitExceeded,
        TrustError,
        LedgerCorrupt,
        AlgorithmFailed,
    )
}


def error_from_dict(data: dict[str, Any]) -> OpalError:
    """Rebuild an error sent as ``OpalError.to_dict()``; unknown types become InternalError."""
    cls = _BY_NAME.get(str(data.get("type")), InternalError)
    return cls(str(data.get("message", "unknown error")))
