"""The reference algorithms as a user would otherwise run them: the algorithm's
own function on a pandas DataFrame, and hand-written DuckDB SQL over the
Parquet file that computes the same per-group distinct-unit counts (and, for
call_volume, the same bounded mean) the release gate aggregates, without noise.

Night hours in the SQL are the algorithms' defaults (20:00-07:00 UTC, a window
that wraps midnight); ties in the modal region go to the alphabetically first
region, as in the algorithms.
"""

from __future__ import annotations

import importlib.util
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.config import REPO
from opal.bundle.registry import Bundle

__all__ = ["ALGORITHMS", "Algorithm", "algorithms", "compare", "duckdb_connect", "run_sql"]

ALGORITHMS = REPO / "algorithms"

_NIGHT = "(hour(timestamp) >= $night_start OR hour(timestamp) < $night_end)"


def _modal(source: str, keys: str) -> str:
    """Each ``keys`` group's modal region in ``source`` (ties: first region by name)."""
    return (
        f"SELECT {keys}, region FROM (SELECT {keys}, region, count(*) AS n FROM {source} GROUP BY ALL) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY n DESC, region) = 1"
    )


SQL: dict[str, str] = {
    "population_density": """
SELECT region, day, count(DISTINCT msisdn) AS units
FROM cdr WHERE day BETWEEN $start_day AND $end_day
GROUP BY ALL""",
    "home_location": f"""
WITH night AS (SELECT msisdn, region FROM cdr WHERE day BETWEEN $start_day AND $end_day AND {_NIGHT}),
home AS ({_modal("night", "msisdn")})
SELECT region AS home_region, count(*) AS units FROM home GROUP BY ALL""",
    "od_matrix": f"""
WITH night AS (SELECT msisdn, day, region FROM cdr WHERE {_NIGHT}),
before AS (SELECT msisdn, region FROM night WHERE day BETWEEN $before_start_day AND $before_end_day),
after AS (SELECT msisdn, region FROM night WHERE day BETWEEN $after_start_day AND $after_end_day),
origin AS ({_modal("before", "msisdn")}),
destination AS ({_modal("after", "msisdn")})
SELECT o.region AS origin, d.region AS destination, count(*) AS units
FROM origin o JOIN destination d USING (msisdn)
WHERE o.region <> d.region
GROUP BY ALL""",
    "displacement": f"""
WITH night AS (SELECT msisdn, day, region FROM cdr WHERE {_NIGHT}),
baseline AS (SELECT msisdn, region FROM night WHERE day BETWEEN $shock_day - $baseline_days AND $shock_day - 1),
home AS ({_modal("baseline", "msisdn")}),
later AS (SELECT msisdn, day, region FROM night
          WHERE day BETWEEN $shock_day AND $shock_day + $days_after
            AND msisdn IN (SELECT msisdn FROM home WHERE region = $origin_region)),
daily AS ({_modal("later", "msisdn, day")})
SELECT region AS destination, day - $shock_day AS days_since_shock, count(*) AS units
FROM daily GROUP BY ALL""",
    "call_volume": """
WITH per_caller AS (
  SELECT msisdn, region, day, sum(duration_s) AS seconds FROM cdr
  WHERE day BETWEEN $start_day AND $end_day AND event = 'call' GROUP BY ALL)
SELECT region, day, count(*) AS units, avg(least(greatest(seconds, $low), $high)) AS mean
FROM per_caller GROUP BY ALL""",
    "unique_visitors": f"""
WITH window_rows AS (SELECT msisdn, region, timestamp FROM cdr WHERE day BETWEEN $start_day AND $end_day),
night AS (SELECT msisdn, region FROM window_rows WHERE {_NIGHT}),
home AS ({_modal("night", "msisdn")}),
seen AS (SELECT DISTINCT msisdn, region FROM window_rows)
SELECT s.region, count(DISTINCT s.msisdn) AS units
FROM seen s JOIN home h USING (msisdn)
WHERE s.region <> h.region
GROUP BY ALL""",
}

# Parameters of each benchmark run: the whole 14-day world where a window is asked for.
PARAMS: dict[str, dict[str, Any]] = {
    "population_density": {"start_day": 0, "end_day": 13},
    "home_location": {"start_day": 0, "end_day": 13},
    "od_matrix": {"before_start_day": 0, "before_end_day": 6, "after_start_day": 7, "after_end_day": 13},
    "displacement": {"origin_region": "Cendra", "shock_day": 7, "baseline_days": 7, "days_after": 6},
    "call_volume": {"start_day": 0, "end_day": 13},
    "unique_visitors": {"start_day": 0, "end_day": 13},
}
NIGHT_DEFAULTS = {"night_start": 20, "night_end": 7}


@dataclass(frozen=True)
class Algorithm:
    name: str
    bundle: Bundle
    folder: Path
    params: dict[str, Any]
    sql: str
    function: Callable[[Any, dict[str, Any]], pd.DataFrame]

    @property
    def group_columns(self) -> list[str]:
        return list(self.bundle.manifest.privacy.groups or ())

    def view(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` in the form the bundle asks for: its ``categorical`` text
        columns as Categoricals, as the sandbox shows them (made once per load
        there too, so not part of a run's time)."""
        wanted = [c for c in self.bundle.manifest.categorical if c in frame.columns]
        if not wanted:
            return frame
        from opal.sandbox._zygote import as_categories

        return frame.assign(**{c: as_categories(frame[c]) for c in wanted})

    def direct(self, frame: pd.DataFrame) -> pd.DataFrame:
        """(a): the algorithm's own function on the in-memory DataFrame (``view``)."""
        return self.function(types.SimpleNamespace(cdr=frame), self.params)

    def sql_params(self) -> dict[str, Any]:
        values: dict[str, Any] = {**NIGHT_DEFAULTS, **self.params}
        bounds = self.bundle.manifest.privacy.value_bounds
        if bounds:
            values["low"], values["high"] = bounds
        used = set(re.findall(r"\$([a-z_]+)", self.sql))
        return {k: v for k, v in values.items() if k in used}


def _load_function(name: str, folder: Path) -> Callable[[Any, dict[str, Any]], pd.DataFrame]:
    spec = importlib.util.spec_from_file_location(f"opal_bench_{name}", folder / "algorithm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function: Callable[[Any, dict[str, Any]], pd.DataFrame] = module.contributions
    return function


def algorithms() -> list[Algorithm]:
    found = []
    for name, sql in SQL.items():
        folder = ALGORITHMS / name
        bundle = Bundle.from_folder(folder)
        found.append(
            Algorithm(name=name, bundle=bundle, folder=folder, params=PARAMS[name], sql=sql.strip(),
                      function=_load_function(name, folder))
        )
    return found


def duckdb_connect(path: Path) -> Any:
    """A DuckDB connection with ``cdr`` a view over the Parquet file, or over
    every partition file of a partitioned dataset directory (read at each query)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = Path(path) / "*" / "*.parquet" if Path(path).is_dir() else Path(path)
    quoted = str(source).replace("'", "''")
    con.execute(f"CREATE VIEW cdr AS SELECT * FROM read_parquet('{quoted}', hive_partitioning = false)")
    return con


def run_sql(con: Any, algorithm: Algorithm) -> pd.DataFrame:
    """(e): the algorithm's SQL, fetched into a DataFrame."""
    frame: pd.DataFrame = con.execute(algorithm.sql, algorithm.sql_params()).df()
    return frame


def _group_columns(contributions: pd.DataFrame, algorithm: Algorithm) -> list[str]:
    unit = algorithm.bundle.manifest.privacy.unit
    value = algorithm.bundle.manifest.privacy.value_column
    return [c for c in contributions.columns if c not in (unit, value)]


def compare(algorithm: Algorithm, contributions: pd.DataFrame, sql_result: pd.DataFrame) -> str:
    """Do the DuckDB figures equal the exact (un-noised, unbounded) aggregates of
    the pandas contributions? ``"same"`` or what differs."""
    unit = algorithm.bundle.manifest.privacy.unit
    groups = _group_columns(contributions, algorithm)
    expected = contributions.groupby(groups)[unit].nunique().rename("units")
    got = sql_result.set_index(groups)["units"]
    expected.index = expected.index.set_names(groups)
    joined = pd.concat([expected, got.rename("sql")], axis=1, join="outer").fillna(-1)
    differing = int((joined["units"] != joined["sql"]).sum())
    if differing:
        return f"{differing} of {len(joined)} cells differ"
    if "mean" in sql_result.columns:
        low, high = algorithm.bundle.manifest.privacy.value_bounds or (float("-inf"), float("inf"))
        value = algorithm.bundle.manifest.privacy.value_column or "value"
        clamped = contributions.assign(**{value: contributions[value].clip(low, high)})
        mean = clamped.groupby(groups)[value].mean()
        sql_mean = sql_result.set_index(groups)["mean"].reindex(mean.index)
        if not ((mean - sql_mean).abs() <= 1e-6 * (1 + mean.abs())).all():
            return "means differ"
    return "same"
