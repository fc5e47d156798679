"""Privacy specs with literal public domains, for gate tests that need no dataset."""

from __future__ import annotations

from typing import Any

from opal.release import PrivacySpec
from opal.release.domains import GroupDomain, Label


def spec(groups: dict[str, tuple[Label, ...]] | None = None, **kw: Any) -> PrivacySpec:
    """A PrivacySpec over ``unit="msisdn"`` whose group columns have these literal domains."""
    kw.setdefault("unit", "msisdn")
    return PrivacySpec(groups={c: GroupDomain(values=tuple(v)) for c, v in (groups or {}).items()}, **kw)


def domains_of(privacy: PrivacySpec) -> dict[str, tuple[Label, ...]]:
    return {c: g.values for c, g in privacy.groups.items()}
