"""The trust policy in force: who may approve, how many approvals a bundle needs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opal.errors import BadInputError

__all__ = ["TrustPolicy"]


@dataclass(frozen=True, kw_only=True)
class TrustPolicy:
    version: int = 1
    threshold: int = 2                  # k of n reviewers
    approval_lifetime_days: int = 90
    author_may_approve: bool = False

    def __post_init__(self) -> None:
        # An empty approval requirement fails closed: zero approvals is never enough.
        if self.threshold < 1:
            raise BadInputError(f"trust policy threshold must be >= 1, found {self.threshold}")
        if self.approval_lifetime_days < 1:
            raise BadInputError("approval_lifetime_days must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrustPolicy:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown trust policy key(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> TrustPolicy:
        if not path.exists():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not valid JSON ({exc})") from None
