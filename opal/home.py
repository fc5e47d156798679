"""``OPAL_HOME``: the one folder that holds a node's state.

keyring (``keys/``), bundle registry (``registry/``), operator policies
(``governance/``), and ``opal.db`` (ledger, budget, runs, datasets).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Home", "DEFAULT_HOME"]

DEFAULT_HOME = Path(".opal")


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> Home:
        """``--home`` wins, then ``OPAL_HOME``, then ``./.opal``."""
        chosen = path or os.environ.get("OPAL_HOME") or DEFAULT_HOME
        return cls(Path(chosen).expanduser().absolute())

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def governance_dir(self) -> Path:
        return self.root / "governance"

    @property
    def db_path(self) -> Path:
        return self.root / "opal.db"

    @property
    def run_dir(self) -> Path:
        """Sockets, pid files and logs of processes this home started."""
        return self.root / "run"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def ensure(self) -> Home:
        for d in (self.root, self.keys_dir, self.registry_dir, self.governance_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        if not self.config_path.exists():
            import secrets

            self._write_config({"home_id": secrets.token_hex(6)})
        return self

    def config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            self.ensure()
        data: dict[str, Any] = json.loads(self.config_path.read_text())
        return data

    def update_config(self, **changes: Any) -> None:
        data = self.config()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self._write_config(data)

    def _write_config(self, data: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.config_path)

    @property
    def home_id(self) -> str:
        return str(self.config()["home_id"])
