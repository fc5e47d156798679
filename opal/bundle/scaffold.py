"""``opal algo init``: a bundle that runs, with every manifest field explained."""

from __future__ import annotations

from pathlib import Path

from opal.errors import BadInputError

__all__ = ["scaffold"]

_MANIFEST = '''# OPAL algorithm bundle manifest. Reviewers sign the digest of every file here.
name = "{name}"                   # lower-case identifier, unique in the registry
version = "0.1.0"                  # MAJOR.MINOR.PATCH; workers refuse rollbacks to lower versions
description = "Distinct subscribers seen per region (edit me)"
entrypoint = "contributions"       # function in algorithm.py: contributions(data, params)
dataset = "cdr"                    # dataset schema it reads: data.cdr is a read-only DataFrame
reads = ["msisdn", "day", "region"]  # the only columns of it you see (leave out for all; fewer load faster)
# categorical = ["region"]         # text columns you see as pandas Categoricals (faster ==, group-by)

[privacy]
unit = "msisdn"                    # privacy unit: first column of the returned table
aggregation = "count"              # count | sum | mean  (the platform aggregates, not you)
max_groups_per_unit = 1            # each unit counts in at most this many cells (platform-enforced)
# value_bounds = [0, 3600]         # required for sum/mean: values are clamped to this range
# value_column = "value"           # column holding each unit's value for sum/mean

[privacy.groups]                   # every group column and its PUBLIC domain: the released table
region = "dataset"                 # has one row per label, whatever the data. "dataset": the
                                   # dataset's registered domain; or {{ range = [lo, hi] }},
                                   # {{ values = [...] }}, {{ dataset = "other_column" }}

[parameters]                       # JSON Schema for run parameters (checked before every run)
type = "object"
additionalProperties = false
required = ["start_day", "end_day"]

[parameters.properties.start_day]
type = "integer"
minimum = 0

[parameters.properties.end_day]
type = "integer"
minimum = 0
'''

_SOURCE = '''"""{name}: return per-unit contributions; OPAL bounds, aggregates, adds noise and suppresses."""


def contributions(data, params):
    cdr = data.cdr
    window = cdr[cdr.day.between(params["start_day"], params["end_day"])]
    # one row per (unit, group): here each subscriber counts once in their most frequent region
    per_region = window.groupby(["msisdn", "region"]).size().reset_index(name="events")
    top = per_region.sort_values(["msisdn", "events"], ascending=[True, False])
    return top.drop_duplicates("msisdn")[["msisdn", "region"]]
'''

_README = '''# {name}

## What it computes
Describe the statistic, its unit of analysis and its groups.

## Parameters
- `start_day`, `end_day`: inclusive window of days.

## Privacy
- Unit: `msisdn`; aggregation: count of distinct units per cell.
- Each subscriber contributes to at most `max_groups_per_unit` cells.

## What a reviewer should check
- The returned table has exactly one row per (unit, group) and no columns derived from other units.
- Group columns hold public categories (regions, days) declared in [privacy.groups];
  labels outside those domains are dropped by the platform.
'''


def scaffold(folder: Path, name: str) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise BadInputError(f"{folder} exists and is not empty; choose a new folder")
    import re

    if not re.match(r"^[a-z][a-z0-9_]{0,63}$", name):
        raise BadInputError(f"name {name!r} must be lower-case letters, digits and _")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "opal.toml").write_text(_MANIFEST.format(name=name))
    (folder / "algorithm.py").write_text(_SOURCE.format(name=name))
    (folder / "README.md").write_text(_README.format(name=name))
