"""Fixtures of the sandbox tests live in sandbox_fixtures (a unique module name:
tests/ledger has a conftest of its own, and both are imported by name)."""

from sandbox_fixtures import *  # noqa: F403
