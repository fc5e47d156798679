"""The auditor's memory: the last ledger state it verified, kept where the operator cannot reach.

``opal ledger verify`` records, per log origin, the tree size and root it
verified, the roles it replayed (the board's policy chain, keys, revocations)
and the runs still open. The next verify proves the ledger extends that tree
(RFC 9162 §2.1.4) and checks only the entries after it. Rollback to an older
copy, a truncated tail, a rewrite or a fork then fail (exit 7) naming the
checkpoint held, with nothing for the auditor to pass by hand.

The file lives in the auditor's own configuration directory
(``$XDG_CONFIG_HOME/opal/audit/`` or ``~/.config/opal/audit/``), never in
``OPAL_HOME``: whoever holds the node must not be able to edit the auditor's
memory. ``--state FILE`` chooses another place.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opal.errors import BadInputError
from opal.trust.keys import utcnow

__all__ = ["AuditState", "default_state_path", "refuse_inside_home"]

FORMAT = "opal-audit-state/1"


def _config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "opal"


def default_state_path(origin: str) -> Path:
    """The auditor's state file for the log ``origin`` (one file per log)."""
    name = hashlib.sha256(origin.encode()).hexdigest()[:24]
    return _config_dir() / "audit" / f"{name}.json"


def refuse_inside_home(path: Path, home: Path) -> None:
    """The state must not live where the operator's node writes: refuse a path under OPAL_HOME."""
    try:
        path.resolve().relative_to(home.resolve())
    except ValueError:
        return
    raise BadInputError(
        f"the audit state {path} is inside OPAL_HOME ({home}), which the operator controls; "
        "keep it in your own directory (the default is under ~/.config/opal/)"
    )


@dataclass(frozen=True, kw_only=True)
class AuditState:
    origin: str
    size: int
    root: str
    authority: dict[str, Any]
    runs_open: dict[str, str]
    checkpoint: dict[str, Any] | None
    verified: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "origin": self.origin,
            "size": self.size,
            "root": self.root,
            "checkpoint": self.checkpoint,
            "verified": self.verified,
            "authority": self.authority,
            "runs_open": self.runs_open,
        }

    @property
    def label(self) -> str:
        return f"the checkpoint of size {self.size} (root {self.root[:16]}…, verified {self.verified[:19]})"

    @classmethod
    def load(cls, path: Path) -> AuditState | None:
        """The state in ``path``; None if there is none yet. Raises BadInputError if unreadable."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BadInputError(f"cannot read the audit state {path}: {exc}; restore it from your backup") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BadInputError(f"{path} is not an OPAL audit state ({FORMAT})")
        try:
            return cls(
                origin=str(data["origin"]),
                size=int(data["size"]),
                root=str(data["root"]),
                authority=dict(data["authority"]),
                runs_open={str(k): str(v) for k, v in data.get("runs_open", {}).items()},
                checkpoint=data.get("checkpoint"),
                verified=str(data.get("verified", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise BadInputError(f"the audit state {path} is damaged; restore it from your backup") from None

    @classmethod
    def record(
        cls, *, origin: str, size: int, root: str, resume: dict[str, Any], checkpoint: dict[str, Any] | None
    ) -> AuditState:
        return cls(
            origin=origin,
            size=size,
            root=root,
            authority=resume["authority"],
            runs_open=resume["runs_open"],
            checkpoint=checkpoint,
            verified=utcnow(),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), sort_keys=True))
        os.replace(tmp, path)
