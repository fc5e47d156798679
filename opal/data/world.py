"""The synthetic country behind ``opal dataset synth``: public regions and cells,
and a seeded population of subscribers with homes, workplaces and habits.

Everything here is public knowledge in the synthetic world (like a census
table and a cell-tower map); only the per-subscriber arrays are "private".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from opal.errors import BadInputError

__all__ = [
    "Region",
    "REGIONS",
    "NIGHT_START_HOUR",
    "NIGHT_END_HOUR",
    "region_by_name",
    "cell_table",
    "EVENTS",
    "World",
    "build_world",
    "public_domains",
    "write_domains",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Night is [NIGHT_START_HOUR, 24) + [0, NIGHT_END_HOUR): the hours in which a
# subscriber is mostly at home. The reference algorithms use the same defaults.
NIGHT_START_HOUR = 20
NIGHT_END_HOUR = 7

EVENTS = ("call", "sms", "data")
_FIRST_CELL_ID = 10_001
_CELLS_PER_UNIT_WEIGHT = 240     # a region with weight 0.1 has 24 cells
_MIN_CELLS = 4
_GRAVITY_SCALE_KM = 150.0
_SAME_WORK_REGION = 0.78         # share of subscribers working in their home region


@dataclass(frozen=True, kw_only=True)
class Region:
    """One region of the synthetic country (public reference data)."""

    id: int
    name: str
    weight: float      # share of the population living here
    x_km: float
    y_km: float

    @property
    def cells(self) -> int:
        return max(_MIN_CELLS, round(self.weight * _CELLS_PER_UNIT_WEIGHT))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "weight": self.weight,
            "x_km": self.x_km,
            "y_km": self.y_km,
            "cells": self.cells,
        }


# Made-up names, so nobody mistakes synthetic output for a real country.
REGIONS: tuple[Region, ...] = (
    Region(id=1, name="Amara", weight=0.22, x_km=80.0, y_km=200.0),
    Region(id=2, name="Belcora", weight=0.12, x_km=160.0, y_km=230.0),
    Region(id=3, name="Cendra", weight=0.10, x_km=150.0, y_km=120.0),
    Region(id=4, name="Dovane", weight=0.09, x_km=250.0, y_km=300.0),
    Region(id=5, name="Eskar", weight=0.08, x_km=260.0, y_km=180.0),
    Region(id=6, name="Farra", weight=0.07, x_km=240.0, y_km=60.0),
    Region(id=7, name="Galen", weight=0.07, x_km=350.0, y_km=250.0),
    Region(id=8, name="Halden", weight=0.06, x_km=360.0, y_km=120.0),
    Region(id=9, name="Isvik", weight=0.05, x_km=450.0, y_km=320.0),
    Region(id=10, name="Jorun", weight=0.05, x_km=470.0, y_km=190.0),
    Region(id=11, name="Kelmar", weight=0.05, x_km=460.0, y_km=60.0),
    Region(id=12, name="Lunet", weight=0.04, x_km=560.0, y_km=240.0),
)


def region_by_name(name: str) -> Region:
    """The region called ``name``; raises BadInputError naming the known regions."""
    for region in REGIONS:
        if region.name == name:
            return region
    raise BadInputError(
        f"unknown region {name!r}; expected one of {', '.join(r.name for r in REGIONS)}"
    )


def public_domains(*, days: int) -> dict[str, Any]:
    """The public group domains of a synthetic dataset of ``days`` days, from
    the world's reference tables: regions, cells, event types and days."""
    first = _FIRST_CELL_ID
    return {
        "region": [r.name for r in REGIONS],
        "day": {"range": [0, int(days) - 1]},
        "event": list(EVENTS),
        "cell_id": {"range": [first, first + int(_CELL_COUNT.sum()) - 1]},
    }


def write_domains(path: Path, domains: dict[str, Any]) -> None:
    """Write ``domains`` as a TOML domain file (``opal dataset register --domains``).

    JSON arrays of strings and integers are valid TOML arrays.
    """
    lines = ["# Public group domains of this dataset (opal dataset register --domains)."]
    for column, spec in domains.items():
        if isinstance(spec, dict):
            lo, hi = spec["range"]
            lines.append(f"{column} = {{ range = [{int(lo)}, {int(hi)}] }}")
        else:
            lines.append(f"{column} = {json.dumps(list(spec), ensure_ascii=False)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cell_table() -> list[dict[str, Any]]:
    """Every cell of the synthetic country: ``{"cell_id", "region"}`` in id order."""
    rows: list[dict[str, Any]] = []
    for region, first, count in zip(REGIONS, _CELL_START, _CELL_COUNT, strict=True):
        for k in range(int(count)):
            rows.append({"cell_id": _FIRST_CELL_ID + int(first) + k, "region": region.name})
    return rows


_CELL_COUNT: IntArray = np.array([r.cells for r in REGIONS], dtype=np.int64)
_CELL_START: IntArray = np.concatenate(([0], np.cumsum(_CELL_COUNT)[:-1])).astype(np.int64)
_WEIGHTS: FloatArray = np.array([r.weight for r in REGIONS], dtype=np.float64)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _gravity() -> FloatArray:
    """Row-stochastic matrix: where a resident of region i goes when leaving it."""
    xy = np.array([(r.x_km, r.y_km) for r in REGIONS], dtype=np.float64)
    dist = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2))
    g = _WEIGHTS[None, :] * np.exp(-dist / _GRAVITY_SCALE_KM)
    np.fill_diagonal(g, 0.0)
    out: FloatArray = g / g.sum(axis=1, keepdims=True)
    return out


_GRAVITY = _gravity()


def _sample_rows(cum: FloatArray, rows: IntArray, u: FloatArray) -> IntArray:
    """Draw one category per element from the cumulative row ``cum[rows]``."""
    out: IntArray = (cum[rows] < u[:, None]).sum(axis=1).astype(np.int64)
    clipped: IntArray = np.minimum(out, cum.shape[1] - 1)
    return clipped


@dataclass(frozen=True, kw_only=True, eq=False)
class World:
    """The seeded population. Region and cell values are 0-based indexes.

    ``cell_ids[c]`` is the public id of cell index ``c``; ``cell_region[c]``
    its region index; ``REGIONS[i]`` the region with index ``i``.
    """

    seed: int
    msisdn: IntArray
    home_region: IntArray
    home_cell: IntArray
    work_region: IntArray
    work_cell: IntArray
    activity: FloatArray

    @property
    def subscribers(self) -> int:
        return int(self.msisdn.shape[0])

    @staticmethod
    def cell_ids() -> IntArray:
        return np.arange(int(_CELL_COUNT.sum()), dtype=np.int64) + _FIRST_CELL_ID

    @staticmethod
    def cell_region() -> IntArray:
        return np.repeat(np.arange(len(REGIONS), dtype=np.int64), _CELL_COUNT)

    @staticmethod
    def random_cell(regions: IntArray, u: FloatArray) -> IntArray:
        """A uniformly chosen cell index inside each of ``regions`` (``u`` in [0, 1))."""
        cells: IntArray = _CELL_START[regions] + (u * _CELL_COUNT[regions]).astype(np.int64)
        return cells

    @staticmethod
    def elsewhere(regions: IntArray, u: FloatArray) -> IntArray:
        """Another region for each of ``regions``, drawn by gravity (near and big first)."""
        return _sample_rows(np.cumsum(_GRAVITY, axis=1), regions, u)

    @staticmethod
    def destination_weights(origin: int) -> FloatArray:
        """Skewed destination distribution for people displaced from ``origin``.

        Gravity ranks the other regions; a Zipf law over that rank makes one or
        two main destinations, as displacement studies observe.
        """
        order = np.argsort(-_GRAVITY[origin], kind="stable")
        w = np.zeros(len(REGIONS), dtype=np.float64)
        w[order] = 1.0 / (np.arange(len(REGIONS), dtype=np.float64) + 1.0) ** 1.6
        w[origin] = 0.0
        out: FloatArray = w / w.sum()
        return out


def build_world(*, subscribers: int, seed: int) -> World:
    """Draw homes, workplaces and activity levels for ``subscribers`` people."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0])))
    n = subscribers
    # Pseudonymous, unique, 9-digit ids: no structure to link them to anything.
    msisdn = (rng.choice(900_000_000, size=n, replace=False) + 100_000_000).astype(np.int64)
    home_region = rng.choice(len(REGIONS), size=n, p=_WEIGHTS).astype(np.int64)
    home_cell = World.random_cell(home_region, rng.random(n))
    commutes = rng.random(n) >= _SAME_WORK_REGION
    work_region = np.where(commutes, World.elsewhere(home_region, rng.random(n)), home_region)
    work_cell = World.random_cell(work_region, rng.random(n))
    # Heterogeneous activity with mean 1: a few heavy users, many light ones.
    activity = np.maximum(rng.gamma(shape=2.0, scale=0.5, size=n), 0.1)
    return World(
        seed=seed,
        msisdn=msisdn,
        home_region=home_region,
        home_cell=home_cell,
        work_region=work_region,
        work_cell=work_cell,
        activity=activity,
    )

