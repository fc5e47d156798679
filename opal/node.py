"""One node's state, opened from ``OPAL_HOME``: the object CLI commands and the
worker pass around (``ctx.obj`` in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from opal.db import Database
from opal.home import Home

if TYPE_CHECKING:
    # Each part loads when a command first uses it, so a verb pays for what it uses.
    from opal.bundle.registry import Registry
    from opal.ledger import Ledger
    from opal.trust.keyring import Keyring
    from opal.trust.policy import TrustPolicy

__all__ = ["Node"]


@dataclass
class Node:
    home: Home

    @classmethod
    def open(cls, home: str | Path | None = None) -> Node:
        return cls(Home.resolve(home).ensure())

    @cached_property
    def db(self) -> Database:
        return Database(self.home.db_path)

    @cached_property
    def ledger(self) -> Ledger:
        from opal.ledger import Ledger

        return Ledger(self.db, origin=f"opal/{self.home.home_id}")

    @cached_property
    def keyring(self) -> Keyring:
        from opal.trust.keyring import Keyring

        return Keyring(self.home, self.db)

    @cached_property
    def registry(self) -> Registry:
        from opal.bundle.registry import Registry

        return Registry(self.home.registry_dir, self.db)

    @property
    def trust_policy(self) -> TrustPolicy:
        from opal.trust.governance import policy_in_force

        return policy_in_force(self)
