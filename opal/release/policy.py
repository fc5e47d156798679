"""What the release gate is told: the bundle's privacy declaration and the
operator's release policy for the dataset.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from opal.errors import BadInputError, ReleaseRefused
from opal.release.domains import GroupDomain, parse_group_domains

__all__ = [
    "AGGREGATIONS",
    "COUNT_MECHANISMS",
    "MICRO",
    "SUM_MECHANISMS",
    "PrivacySpec",
    "ReleasePolicy",
    "to_micro",
]

# ε is kept and compared in integer micro-ε: 1 ε = MICRO units.
MICRO = 1_000_000


def to_micro(epsilon: object, *, what: str = "epsilon") -> int:
    """``epsilon`` as an exact integer number of micro-ε.

    Raises ``BadInputError`` for a value that is not a positive finite number
    or is not a whole number of micro-ε (e.g. 1e-17): no ε is rounded away.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, str)):
        raise BadInputError(f"{what} must be a positive number, found {type(epsilon).__name__}")
    try:
        exact = Decimal(str(epsilon))
    except InvalidOperation:
        raise BadInputError(f"{what} must be a positive number, found {epsilon!r}") from None
    if not exact.is_finite() or exact <= 0:
        raise BadInputError(f"{what} must be a positive finite number, found {epsilon!r}")
    micro = exact * MICRO
    if micro != micro.to_integral_value():
        raise BadInputError(
            f"{what} {epsilon!r} is not a whole number of micro-ε (1e-6); "
            "ask for a value with at most 6 decimals"
        )
    return int(micro)

AGGREGATIONS = ("count", "sum", "mean")
COUNT_MECHANISMS = ("discrete_laplace",)
SUM_MECHANISMS = ("laplace", "gaussian")


@dataclass(frozen=True, kw_only=True)
class PrivacySpec:
    """The ``[privacy]`` table of a bundle manifest.

    The contributions table an algorithm returns has the columns
    ``[unit, *groups, value?]``: ``unit`` holds the run's pseudonyms of the
    dataset's privacy-unit column, ``value`` is present for sum/mean only, and
    ``groups`` declares every group column with its public domain
    (``opal.release.domains``).
    """

    unit: str
    groups: dict[str, GroupDomain]
    aggregation: str = "count"
    max_groups_per_unit: int = 1
    value_bounds: tuple[float, float] | None = None
    value_column: str = "value"

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
        if self.unit in self.groups or (
            self.aggregation != "count" and self.value_column in self.groups
        ):
            raise BadInputError(
                "privacy.groups must not name the unit or value column; fix opal.toml"
            )
        if self.aggregation in self.groups:
            raise BadInputError(
                f"privacy.groups must not name the released column {self.aggregation!r}; "
                "rename the group"
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
        if "groups" not in data:
            raise BadInputError(
                "[privacy.groups] is required: declare every group column with its public domain "
                '(COLUMN = "dataset" | { range = [lo, hi] } | { values = [...] }) in opal.toml'
            )
        aggregation = data.get("aggregation", "count")
        groups = parse_group_domains(
            data["groups"],
            unit=data["unit"],
            value_column=data.get("value_column", "value") if aggregation != "count" else None,
        )
        return cls(
            unit=data["unit"],
            aggregation=aggregation,
            max_groups_per_unit=data.get("max_groups_per_unit", 1),
            value_bounds=bounds,
            value_column=data.get("value_column", "value"),
            groups=groups,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "aggregation": self.aggregation,
            "max_groups_per_unit": self.max_groups_per_unit,
            "value_bounds": list(self.value_bounds) if self.value_bounds else None,
            "value_column": self.value_column,
            "groups": {c: g.to_manifest(c) for c, g in self.groups.items()},
        }


_RETIRED = frozenset({"dominance_n", "dominance_k", "dominance_p"})


@dataclass(frozen=True, kw_only=True)
class ReleasePolicy:
    """The operator's release policy for one dataset (``governance/release_policy.toml``)."""

    min_units_per_cell: int = 15          # FlowKit redacts cells of <= 15
    total_epsilon: float = 10.0           # per data source, lifetime
    max_epsilon_per_run: float = 1.0
    # unlimited-probe attack: runs of vanishing ε must not be admitted forever
    min_epsilon_per_run: float = 0.01
    default_epsilon: float = 1.0
    max_cells: int = 100_000              # OpenSAFELY-style output limit
    count_mechanism: str = "discrete_laplace"
    sum_mechanism: str = "laplace"        # laplace | gaussian
    # The delta of the Gaussian mechanism (sum_mechanism = "gaussian"). Group
    # keys are public domains, so counts and Laplace sums need no delta.
    delta: float = 1e-9
    release_zero_cells: bool = False
    value_decimals: int = 2               # released sums/means are rounded to this
    # A run whose algorithm raised, hit a limit or returned garbage is released
    # like any other (total runs). This rule is for the rest: a run that failed
    # after touching the data for a fault of the platform still spends its ε.
    charge_failed_runs: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_units_per_cell < 0:
            raise BadInputError("min_units_per_cell must be >= 0")
        for name in ("total_epsilon", "max_epsilon_per_run", "min_epsilon_per_run", "default_epsilon"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise BadInputError(f"{name} must be a positive number, found {v!r}")
            to_micro(v, what=name)
        if not self.min_epsilon_per_run <= self.default_epsilon <= self.max_epsilon_per_run:
            raise BadInputError(
                "the release policy needs min_epsilon_per_run <= default_epsilon <= "
                f"max_epsilon_per_run, found {self.min_epsilon_per_run:g}, "
                f"{self.default_epsilon:g}, {self.max_epsilon_per_run:g}"
            )
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
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise BadInputError(f"delta must be a number in (0, 1), found {self.delta!r}")
        if not (isinstance(self.value_decimals, int) and 0 <= self.value_decimals <= 12):
            raise BadInputError(
                f"value_decimals must be an integer in [0, 12], found {self.value_decimals!r}"
            )

    def check_epsilon(self, epsilon: object, *, cap: bool = True) -> float:
        """``epsilon`` as a float, if it is a whole number of micro-ε within
        ``[min_epsilon_per_run, max_epsilon_per_run]`` (decided without data).

        Raises:
            BadInputError: not a positive number, not a whole micro-ε, or under
                ``min_epsilon_per_run`` (exit 2).
            ReleaseRefused: over ``max_epsilon_per_run`` (exit 3), unless not ``cap``.
        """
        if hasattr(epsilon, "item") and not isinstance(epsilon, (int, float)):
            epsilon = epsilon.item()
        micro = to_micro(epsilon)
        eps = micro / MICRO
        if micro < to_micro(self.min_epsilon_per_run):
            raise BadInputError(
                f"epsilon {eps:g} is under the policy minimum min_epsilon_per_run = "
                f"{self.min_epsilon_per_run:g}; ask for at least {self.min_epsilon_per_run:g}"
            )
        if cap and micro > to_micro(self.max_epsilon_per_run):
            raise ReleaseRefused(
                f"epsilon {eps:g} is over the per-run cap max_epsilon_per_run = "
                f"{self.max_epsilon_per_run:g}; ask for at most {self.max_epsilon_per_run:g}"
            )
        return eps

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleasePolicy:
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        retired = sorted(set(data) & _RETIRED)
        if retired:
            raise BadInputError(
                f"release policy key(s) {', '.join(retired)} are no longer applied: dominance "
                "rules on exact values are not differentially private and leak membership "
                "(docs/release.md); remove them from the policy file"
            )
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
