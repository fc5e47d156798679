"""The columns the sandbox checks a contributions table against, from [privacy]."""

from __future__ import annotations

from opal.release.contributions import declared_columns
from opal.release.policy import PrivacySpec


def test_count_declares_unit_and_groups() -> None:
    spec = PrivacySpec(unit="msisdn", groups=("region", "day"))
    assert declared_columns(spec) == ("msisdn", "region", "day")


def test_sum_adds_the_value_column() -> None:
    spec = PrivacySpec(unit="msisdn", aggregation="sum", value_bounds=(0, 10), groups=("region",))
    assert declared_columns(spec) == ("msisdn", "region", "value")
