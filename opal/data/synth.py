"""Synthetic call-detail records (CDR) for demos, tests and benchmarks.

A seeded world (``opal.data.world``) of regions, cells and subscribers with a
home and a workplace produces, day by day, a Poisson number of events per
subscriber: nights at home, weekdays mostly at work, weekends and trips
elsewhere. An optional displacement :class:`Shock` moves a share of one
region's residents, for good, to other regions; its ground truth is written
next to the Parquet file so algorithms can be checked against it.

Generation is vectorized per (day, block of subscribers) and streamed to
Parquet in row groups, so memory stays flat however many rows are written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from opal.data.world import (
    EVENTS,
    NIGHT_END_HOUR,
    NIGHT_START_HOUR,
    REGIONS,
    World,
    build_world,
    public_domains,
    write_domains,
)
from opal.errors import BadInputError
from opal.release.domains import sidecar_for

__all__ = [
    "CDR_UNIT",
    "CDR_COLUMNS",
    "EPOCH",
    "EVENTS",
    "MAX_SUBSCRIBERS",
    "MAX_DAYS",
    "Shock",
    "SynthSummary",
    "cdr_schema",
    "synthesize",
    "truth_path_for",
]

CDR_UNIT = "msisdn"
CDR_COLUMNS = ("msisdn", "timestamp", "day", "cell_id", "region", "event", "duration_s")
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)   # a Monday: day % 7 in (5, 6) is a weekend
MAX_SUBSCRIBERS = 10_000_000
MAX_DAYS = 366
MAX_EVENTS_PER_DAY = 500.0

_BLOCK = 250_000                 # subscribers per generation step (bounds memory)
_US_PER_DAY = 86_400_000_000
_EPOCH_US = int(EPOCH.timestamp()) * 1_000_000

# Relative activity by hour of day (UTC is local time in the synthetic country).
_HOURLY = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4.0, 5.0, 5.5, 5.5,
     5.5, 5.0, 5.0, 5.0, 5.5, 6.0, 6.0, 5.5, 5.0, 4.5, 3.5, 2.5],
    dtype=np.float64,
)
_HOURLY = _HOURLY / _HOURLY.sum()
_EVENT_P = np.array([0.35, 0.25, 0.40])      # call, sms, data
_WEEKEND_ACTIVITY = 0.8
_TRIP_P = {False: 0.08, True: 0.25}          # weekday / weekend: daytime elsewhere
_AWAY_P = {False: 0.01, True: 0.04}          # weekday / weekend: also the night elsewhere
_NIGHT_AT_ANCHOR, _NIGHT_NEAR = 0.85, 0.12   # rest: at the day's destination
_DAY_AT_DEST, _DAY_AT_ANCHOR = 0.65, 0.20    # rest: anywhere near the anchor
_REGION_NAMES = pa.array([r.name for r in REGIONS], type=pa.string())
_EVENT_NAMES = pa.array(list(EVENTS), type=pa.string())


@dataclass(frozen=True, kw_only=True)
class Shock:
    """On ``day``, ``share`` of the residents of ``region`` move to other regions, for good."""

    day: int
    region: str
    share: float

    def __post_init__(self) -> None:
        if isinstance(self.day, bool) or not isinstance(self.day, int) or self.day < 0:
            raise BadInputError(f"shock day must be an integer >= 0, got {self.day!r}")
        if (
            isinstance(self.share, bool)
            or not isinstance(self.share, (int, float))
            or not 0.0 <= self.share <= 1.0
        ):
            raise BadInputError(f"shock share must be between 0 and 1, got {self.share!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "region": self.region, "share": self.share}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shock:
        return cls(day=data["day"], region=data["region"], share=data["share"])


@dataclass(frozen=True, kw_only=True)
class SynthSummary:
    """What :func:`synthesize` wrote."""

    path: Path
    rows: int
    subscribers: int
    days: int
    seed: int
    regions: int
    cells: int
    bytes: int
    ground_truth_path: Path | None
    domains_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "rows": self.rows,
            "subscribers": self.subscribers,
            "days": self.days,
            "seed": self.seed,
            "regions": self.regions,
            "cells": self.cells,
            "bytes": self.bytes,
            "ground_truth_path": str(self.ground_truth_path) if self.ground_truth_path else None,
            "domains_path": str(self.domains_path) if self.domains_path else None,
        }


def cdr_schema() -> pa.Schema:
    """The Arrow schema of a CDR dataset (DESIGN.md, ``opal dataset synth``)."""
    return pa.schema(
        [
            pa.field("msisdn", pa.int64()),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("day", pa.int64()),
            pa.field("cell_id", pa.int64()),
            pa.field("region", pa.string()),
            pa.field("event", pa.string()),
            pa.field("duration_s", pa.int64()),
        ]
    )


def truth_path_for(out: Path) -> Path:
    """Where the ground truth of a shocked dataset ``out`` lives: ``<out>.truth.json``."""
    return out.with_name(out.name + ".truth.json")


def synthesize(
    out: Path,
    *,
    subscribers: int = 20_000,
    days: int = 14,
    seed: int = 0,
    shock: Shock | None = None,
    events_per_day: float = 5.0,
    row_group_size: int = 1_000_000,
    progress: Callable[[int, int], None] | None = None,
    parts: int | None = None,
    key: str | None = None,
) -> SynthSummary:
    """Write a synthetic CDR Parquet file at ``out`` (and its ground truth if shocked).

    With ``parts``, ``out`` is a partitioned dataset directory instead
    (``opal.data.partition``, bucketed by ``key``): the same rows, streamed
    into their partitions as they are generated.

    The same arguments give the same rows, in the same order, on every run.
    ``progress(days_done, days)`` is called after each day is generated.

    Raises:
        BadInputError: an argument is out of range (nothing is written then).
    """
    out = Path(out)
    _check_args(
        subscribers=subscribers,
        days=days,
        seed=seed,
        shock=shock,
        events_per_day=events_per_day,
        row_group_size=row_group_size,
    )
    if parts is None and out.is_dir():
        raise BadInputError(f"output {out} is a directory; give a file path such as {out}/cdr.parquet")
    if parts is not None and key is None:
        raise BadInputError("a partitioned dataset needs the node's partitioning key")

    world = build_world(subscribers=subscribers, seed=seed)
    after = world
    truth: dict[str, Any] | None = None
    if shock is not None:
        after, truth = _displace(world, shock, seed=seed)
        truth.update(seed=seed, subscribers=subscribers, days=days)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create the folder {out.parent}: {exc.strerror}") from None
    schema = cdr_schema().with_metadata(
        {
            "opal.synth": json.dumps(
                {"seed": seed, "subscribers": subscribers, "days": days,
                 "events_per_day": events_per_day,
                 "shock": shock.to_dict() if shock else None},
                sort_keys=True,
            )
        }
    )
    blocks = [(a, min(a + _BLOCK, subscribers)) for a in range(0, subscribers, _BLOCK)]
    rows = 0

    def generate() -> Iterator[pa.Table]:
        nonlocal rows
        for day in range(days):
            people = after if shock is not None and day >= shock.day else world
            for index, (a, b) in enumerate(blocks):
                table = _day_block(people, a, b, day=day, seed=seed, block=index, events_per_day=events_per_day)
                rows += table.num_rows
                yield table.replace_schema_metadata(schema.metadata)
            if progress is not None:
                progress(day + 1, days)

    if parts is not None:
        from opal.data.partition import PartitionWriter

        assert key is not None
        with PartitionWriter(out, parts=parts, key=key, unit=CDR_UNIT, schema=schema) as parted:
            for table in generate():
                parted.write(table)
        size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
    else:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with pq.ParquetWriter(tmp, schema) as writer:
                buffer = _RowGroupBuffer(writer, row_group_size)
                for table in generate():
                    buffer.add(table)
                buffer.flush()
            os.replace(tmp, out)
        except OSError as exc:
            raise BadInputError(f"cannot write {out}: {exc.strerror}; choose a writable path") from None
        finally:
            tmp.unlink(missing_ok=True)
        size = out.stat().st_size

    truth_file = truth_path_for(out)
    if truth is not None:
        truth_file.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    else:
        # A truth file left from an earlier shocked run would describe other data.
        truth_file.unlink(missing_ok=True)
    # The world's public reference tables, for `opal dataset register` and `opal algo test`.
    domains_file = sidecar_for(out)
    write_domains(domains_file, public_domains(days=days))

    return SynthSummary(
        path=out,
        rows=rows,
        subscribers=subscribers,
        days=days,
        seed=seed,
        regions=len(REGIONS),
        cells=int(World.cell_ids().shape[0]),
        bytes=size,
        ground_truth_path=truth_file if truth is not None else None,
        domains_path=domains_file,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_args(
    *,
    subscribers: int,
    days: int,
    seed: int,
    shock: Shock | None,
    events_per_day: float,
    row_group_size: int,
) -> None:
    if not _is_int(subscribers) or not 1 <= subscribers <= MAX_SUBSCRIBERS:
        raise BadInputError(
            f"subscribers must be an integer between 1 and {MAX_SUBSCRIBERS}, got {subscribers!r}"
        )
    if not _is_int(days) or not 1 <= days <= MAX_DAYS:
        raise BadInputError(f"days must be an integer between 1 and {MAX_DAYS}, got {days!r}")
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise BadInputError(f"seed must be an integer between 0 and 2**63 - 1, got {seed!r}")
    if (
        isinstance(events_per_day, bool)
        or not isinstance(events_per_day, (int, float))
        or not 0.0 < events_per_day <= MAX_EVENTS_PER_DAY
    ):
        raise BadInputError(
            f"events_per_day must be a number in (0, {MAX_EVENTS_PER_DAY:g}], got {events_per_day!r}"
        )
    if not _is_int(row_group_size) or row_group_size < 1:
        raise BadInputError(f"row_group_size must be an integer >= 1, got {row_group_size!r}")
    if shock is not None:
        names = [r.name for r in REGIONS]
        if shock.region not in names:
            raise BadInputError(
                f"unknown shock region {shock.region!r}; expected one of {', '.join(names)}"
            )
        if not 0 <= shock.day < days:
            raise BadInputError(
                f"shock day must be between 0 and {days - 1} (days - 1), got {shock.day}"
            )


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def _displace(world: World, shock: Shock, *, seed: int) -> tuple[World, dict[str, Any]]:
    """The world after the shock, and the ground truth of who moved where."""
    rng = _rng(seed, 2)
    origin = next(i for i, r in enumerate(REGIONS) if r.name == shock.region)
    residents = np.flatnonzero(world.home_region == origin)
    moved = math.floor(shock.share * residents.shape[0] + 0.5)
    movers = np.sort(rng.choice(residents, size=moved, replace=False))
    dest = rng.choice(len(REGIONS), size=moved, p=World.destination_weights(origin))
    home_region = world.home_region.copy()
    home_cell = world.home_cell.copy()
    work_region = world.work_region.copy()
    work_cell = world.work_cell.copy()
    home_region[movers] = dest
    home_cell[movers] = World.random_cell(dest, rng.random(moved))
    # The displaced rebuild their routine where they land.
    work_region[movers] = dest
    work_cell[movers] = World.random_cell(dest, rng.random(moved))
    after = World(
        seed=world.seed,
        msisdn=world.msisdn,
        home_region=home_region,
        home_cell=home_cell,
        work_region=work_region,
        work_cell=work_cell,
        activity=world.activity,
    )
    counts = np.bincount(dest, minlength=len(REGIONS))
    destinations = {
        REGIONS[i].name: int(counts[i])
        for i in sorted(range(len(REGIONS)), key=lambda i: (-counts[i], i))
        if counts[i] > 0
    }
    truth: dict[str, Any] = {
        "shock": shock.to_dict(),
        "residents": int(residents.shape[0]),
        "moved": int(moved),
        "moved_share": moved / residents.shape[0] if residents.shape[0] else 0.0,
        "destinations": destinations,
        "night_hours": [NIGHT_START_HOUR, NIGHT_END_HOUR],
        "regions": [r.to_dict() for r in REGIONS],
    }
    return after, truth


def _day_block(
    world: World, a: int, b: int, *, day: int, seed: int, block: int, events_per_day: float
) -> pa.Table:
    """All events of subscribers ``[a, b)`` on ``day``, sorted by time."""
    rng = _rng(seed, 1, day, block)
    n = b - a
    weekend = day % 7 in (5, 6)
    home = world.home_region[a:b]
    home_cell = world.home_cell[a:b]
    cell_region = World.cell_region()

    # Per subscriber-day: a daytime destination, and maybe a night away.
    u = rng.random(n)
    away = u < _AWAY_P[weekend]
    trip = u < _AWAY_P[weekend] + _TRIP_P[weekend]
    trip_cell = World.random_cell(World.elsewhere(home, rng.random(n)), rng.random(n))
    usual = World.random_cell(home, rng.random(n)) if weekend else world.work_cell[a:b]
    dest_cell = np.where(trip, trip_cell, usual)
    anchor_cell = np.where(away, trip_cell, home_cell)
    anchor_region = cell_region[anchor_cell]

    rate = events_per_day * world.activity[a:b] * (_WEEKEND_ACTIVITY if weekend else 1.0)
    counts = rng.poisson(rate)
    who = np.repeat(np.arange(n, dtype=np.int64), counts)
    e = who.shape[0]

    hour = rng.choice(24, size=e, p=_HOURLY)
    second = hour * 3600 + rng.integers(0, 3600, size=e)
    night = (hour >= NIGHT_START_HOUR) | (hour < NIGHT_END_HOUR)
    near = World.random_cell(anchor_region[who], rng.random(e))
    v = rng.random(e)
    cell = np.where(
        night,
        np.where(v < _NIGHT_AT_ANCHOR, anchor_cell[who],
                 np.where(v < _NIGHT_AT_ANCHOR + _NIGHT_NEAR, near, dest_cell[who])),
        np.where(v < _DAY_AT_DEST, dest_cell[who],
                 np.where(v < _DAY_AT_DEST + _DAY_AT_ANCHOR, anchor_cell[who], near)),
    )

    kind = rng.choice(3, size=e, p=_EVENT_P)
    # Heavy-tailed durations: calls ~ a minute or two, data sessions ~ minutes to hours.
    call_s = np.clip(np.rint(rng.lognormal(np.log(75.0), 1.1, size=e)), 1, 4 * 3600)
    data_s = np.clip(np.rint(rng.lognormal(np.log(240.0), 1.3, size=e)), 1, 6 * 3600)
    duration = np.where(kind == 0, call_s, np.where(kind == 2, data_s, 0)).astype(np.int64)

    order = np.argsort(second, kind="stable")
    who, cell, kind, duration = who[order], cell[order], kind[order], duration[order]
    timestamp_us = _EPOCH_US + day * _US_PER_DAY + second[order].astype(np.int64) * 1_000_000
    region = cell_region[cell]
    return pa.table(
        {
            "msisdn": pa.array(world.msisdn[a:b][who], type=pa.int64()),
            "timestamp": pa.array(timestamp_us, type=pa.timestamp("us", tz="UTC")),
            "day": pa.array(np.full(e, day, dtype=np.int64), type=pa.int64()),
            "cell_id": pa.array(World.cell_ids()[cell], type=pa.int64()),
            "region": _REGION_NAMES.take(pa.array(region)),
            "event": _EVENT_NAMES.take(pa.array(kind)),
            "duration_s": pa.array(duration, type=pa.int64()),
        },
        schema=cdr_schema(),
    )


class _RowGroupBuffer:
    """Collects generated tables and writes them in row groups of ``size`` rows."""

    def __init__(self, writer: pq.ParquetWriter, size: int) -> None:
        self._writer = writer
        self._size = size
        self._pending: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= self._size:
            whole = pa.concat_tables(self._pending)
            full = (self._rows // self._size) * self._size
            self._writer.write_table(whole.slice(0, full), row_group_size=self._size)
            rest = whole.slice(full)
            self._pending = [rest] if rest.num_rows else []
            self._rows = rest.num_rows

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._size)
        self._pending, self._rows = [], 0

