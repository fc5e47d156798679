"""What the release gate is told: the bundle's privacy declaration and the
operator's release policy for the dataset.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opal.errors import BadInputError

__all__ = ["AGGREGATIONS", "COUNT_MECHANISMS", "SUM_MECHANISMS", "PrivacySpec", "ReleasePolicy"]

AGGREGATIONS = ("count", "sum", "mean")
COUNT_MECHANISMS = ("discrete_laplace",)
SUM_MECHANISMS = ("laplace", "gaussian")


@dataclass(frozen=True, kw_only=True)
class PrivacySpec:
    """The ``[privacy]`` table of a bundle manifest.

    The contributions table an algorithm returns has the columns
    ``[unit, *groups, value?]``: ``unit`` holds privacy-unit ids (values of the
    dataset's own privacy-unit column), ``value`` is present for sum/mean only,
    every other column is a group column.
    """

    unit: str
    aggregation: str = "count"
    max_groups_per_unit: int = 1
    value_bounds: tuple[float, float] | None = None
    value_column: str = "value"
    # Optional: when declared, the contributions must carry exactly these group
    # columns (plus unit and value); when absent, every other column is a group.
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise BadInputError(
                f"privacy.aggregation must be one of {', '.join(AGGREGATIONS)}, "
                f"found {self.aggregation!r}; fix opal.toml"
            )
        if not isinstance(self.max_groups_per_unit, int) or self.max_groups_per_unit < 1:
            raise BadInputError(
                "privacy.max_groups_per_unit must be an integer >= 1, "
                f"found {self.max_groups_per_unit!r}; fix opal.toml"
            )
        if self.aggregation in ("sum", "mean"):
            if self.value_bounds is None:
                raise BadInputError(
                    f"privacy.value_bounds = [lower, upper] is required for aggregation "
                    f"{self.aggregation!r}; add it to opal.toml"
                )
        if self.value_bounds is not None:
            lo, hi = self.value_bounds
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise BadInputError(
                    f"privacy.value_bounds must be two finite numbers with lower < upper, "
                    f"found {list(self.value_bounds)!r}; fix opal.toml"
                )
        if self.groups is not None:
            if not all(isinstance(g, str) and g for g in self.groups) or len(
                set(self.groups)
            ) != len(self.groups):
                raise BadInputError(
                    f"privacy.groups must be a list of distinct column names, "
                    f"found {list(self.groups)!r}; fix opal.toml"
                )
            if self.unit in self.groups or (
                self.aggregation != "count" and self.value_column in self.groups
            ):
                raise BadInputError(
                    "privacy.groups must not name the unit or value column; fix opal.toml"
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacySpec:
        known = {
            "unit", "aggregation", "max_groups_per_unit", "value_bounds", "value_column", "groups",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(
                f"unknown key(s) in [privacy]: {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        if "unit" not in data or not isinstance(data["unit"], str):
            raise BadInputError("[privacy] needs unit = \"<privacy unit column>\"; add it to opal.toml")
        bounds = data.get("value_bounds")
        if bounds is not None:
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds
            ):
                raise BadInputError(
                    f"privacy.value_bounds must be [lower, upper], found {bounds!r}; fix opal.toml"
                )
            bounds = (float(bounds[0]), float(bounds[1]))
        groups = data.get("groups")
        if groups is not None:
            if not isinstance(groups, (list, tuple)):
                raise BadInputError(
                    f"privacy.groups must be a list of column names, found {groups!r}; "
                    "fix opal.toml"
                )
            groups = tuple(groups)
        return cls(
            unit=data["unit"],
            aggregation=data.get("aggregation", "count"),
            max_groups_per_unit=data.get("max_groups_per_unit", 1),
            value_bounds=bounds,
            value_column=data.get("value_column", "value"),
            groups=groups,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value_bounds"] = list(self.value_bounds) if self.value_bounds else None
        d["groups"] = list(self.groups) if self.groups is not None else None
        return d


@dataclass(frozen=True, kw_only=True)
class ReleasePolicy:
    """The operator's release policy for one dataset (``governance/release_policy.toml``)."""

    min_units_per_cell: int = 15          # FlowKit redacts cells of <= 15
    total_epsilon: float = 10.0           # per dataset, lifetime
    max_epsilon_per_run: float = 1.0
    default_epsilon: float = 1.0
    max_cells: int = 100_000              # OpenSAFELY-style output limit
    count_mechanism: str = "discrete_laplace"
    sum_mechanism: str = "laplace"        # laplace | gaussian
    # The delta of each run's (epsilon, delta) guarantee. It pays for releasing
    # group keys found in the data (the noisy threshold is raised until a new
    # key leaks with probability <= delta) and, with gaussian, is split half
    # to key selection and half to the Gaussian mechanism.
    delta: float = 1e-9
    dominance_n: int = 2                  # ACRO n-k rule: top n hold > k of the total
    dominance_k: float = 0.90
    dominance_p: float = 0.10             # ACRO p% rule
    release_zero_cells: bool = False
    value_decimals: int = 2               # released sums/means are rounded to this
    # A run that fails after its algorithm touched the data still spends its ε:
    # whether it failed can depend on private values (a 1-bit side channel the
    # algorithm controls), so failures must not be free probes.
    charge_failed_runs: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_units_per_cell < 0:
            raise BadInputError("min_units_per_cell must be >= 0")
        for name in ("total_epsilon", "max_epsilon_per_run", "default_epsilon"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise BadInputError(f"{name} must be a positive number, found {v!r}")
        if self.max_cells < 1:
            raise BadInputError("max_cells must be >= 1")
        if self.count_mechanism not in COUNT_MECHANISMS:
            raise BadInputError(
                f"count_mechanism must be one of {', '.join(COUNT_MECHANISMS)}, "
                f"found {self.count_mechanism!r}; fix the release policy"
            )
        if self.sum_mechanism not in SUM_MECHANISMS:
            raise BadInputError(
                f"sum_mechanism must be one of {', '.join(SUM_MECHANISMS)}, "
                f"found {self.sum_mechanism!r}; fix the release policy"
            )
        if not (isinstance(self.dominance_n, int) and self.dominance_n >= 1):
            raise BadInputError(f"dominance_n must be an integer >= 1, found {self.dominance_n!r}")
        if not (0 < self.dominance_k <= 1) or not (0 <= self.dominance_p):
            raise BadInputError(
                f"dominance_k must be in (0, 1] and dominance_p >= 0, "
                f"found {self.dominance_k!r}, {self.dominance_p!r}"
            )
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise BadInputError(f"delta must be a number in (0, 1), found {self.delta!r}")
        if not (isinstance(self.value_decimals, int) and 0 <= self.value_decimals <= 12):
            raise BadInputError(
                f"value_decimals must be an integer in [0, 12], found {self.value_decimals!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleasePolicy:
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(data) - names - {"extra"})
        if unknown:
            raise BadInputError(
                f"unknown release policy key(s): {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(names))}"
            )
        return cls(**{k: v for k, v in data.items()})

    @classmethod
    def load(cls, path: Path) -> ReleasePolicy:
        try:
            with path.open("rb") as fh:
                return cls.from_dict(tomllib.load(fh))
        except tomllib.TOMLDecodeError as exc:
            raise BadInputError(f"{path}: not valid TOML ({exc}); fix the release policy file") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
