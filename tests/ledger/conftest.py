"""Fixtures of the ledger tests live in ledger_fixtures (a unique module name:
tests/sandbox has a conftest of its own, and both are imported by name)."""

from ledger_fixtures import *  # noqa: F403
