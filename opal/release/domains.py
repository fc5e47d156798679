"""Public group domains: the labels a release may carry, fixed before any data is read.

A released table has exactly one row per cell of the product of its group
columns' domains, so which rows and labels come out never depends on the
private data (Tumult's ``KeySet``, OpenDP's ``make_count_by_categories``).
Keys found in the data would need a partition-selection threshold and a δ;
declared keys need neither.

Two places declare domains:

* the bundle, in ``[privacy.groups]`` of ``opal.toml``::

      region = "dataset"                      # the dataset's domain of column region
      home_region = { dataset = "region" }    # the dataset's domain of another column
      day = { range = [0, 13] }               # inclusive integer range
      event = { values = ["call", "sms"] }    # explicit labels
      destination = { dataset = "region", values = ["elsewhere"] }   # union

* the dataset, at registration (``--domains FILE``, or the sidecar
  ``STEM.domains.toml`` that ``opal dataset synth`` writes)::

      region = ["Amara", "Belcora"]
      day = { range = [0, 13] }
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opal.errors import BadInputError, ReleaseRefused

__all__ = [
    "MAX_DOMAIN_VALUES",
    "GroupDomain",
    "Label",
    "cell_count",
    "check_cells",
    "domains_from_dict",
    "domains_to_dict",
    "load_domains",
    "parse_group_domains",
    "resolve",
    "sidecar_for",
]

Label = str | int
# One column's domain: bounds the memory a declared range can ask for.
MAX_DOMAIN_VALUES = 1_000_000
SIDECAR_SUFFIX = ".domains.toml"


@dataclass(frozen=True, kw_only=True)
class GroupDomain:
    """How a bundle declares one group column's domain.

    ``dataset`` names the dataset column whose registered domain is used
    (``None``: no dataset part); ``values`` are explicit labels added to it.
    """

    dataset: str | None = None
    values: tuple[Label, ...] = ()

    def to_manifest(self, column: str) -> Any:
        """The ``opal.toml`` form of this declaration for group ``column``."""
        if self.dataset is not None and not self.values:
            return "dataset" if self.dataset == column else {"dataset": self.dataset}
        if self.dataset is None:
            if _is_range(self.values):
                return {"range": [self.values[0], self.values[-1]]}
            return {"values": list(self.values)}
        return {"dataset": self.dataset, "values": list(self.values)}

    @property
    def literal_size(self) -> int | None:
        """Number of cells without data, or ``None`` when a dataset domain is involved."""
        return None if self.dataset is not None else len(self.values)


def _labels(raw: Any, *, where: str) -> tuple[Label, ...]:
    """A list of labels or ``{range = [lo, hi]}``, checked: distinct strings or integers."""
    if isinstance(raw, Mapping) and set(raw) == {"range"}:
        bounds = raw["range"]
        if not (
            isinstance(bounds, (list, tuple))
            and len(bounds) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            and bounds[0] <= bounds[1]
        ):
            raise BadInputError(
                f"{where}: range must be [lo, hi] with integers lo <= hi, found {bounds!r}"
            )
        lo, hi = int(bounds[0]), int(bounds[1])
        if hi - lo + 1 > MAX_DOMAIN_VALUES:
            raise BadInputError(
                f"{where}: range has {hi - lo + 1} values, more than {MAX_DOMAIN_VALUES}; "
                "declare a coarser group"
            )
        return tuple(range(lo, hi + 1))
    if not isinstance(raw, (list, tuple)):
        raise BadInputError(
            f"{where}: expected a list of labels or {{ range = [lo, hi] }}, found {type(raw).__name__}"
        )
    if not raw:
        raise BadInputError(f"{where}: a domain needs at least one label")
    if len(raw) > MAX_DOMAIN_VALUES:
        raise BadInputError(f"{where}: more than {MAX_DOMAIN_VALUES} labels")
    bad = [v for v in raw if isinstance(v, bool) or not isinstance(v, (str, int))]
    if bad:
        raise BadInputError(f"{where}: labels must be strings or integers")
    if len(set(raw)) != len(raw):
        raise BadInputError(f"{where}: labels must be distinct")
    return tuple(raw)


def parse_group_domains(raw: Any, *, unit: str, value_column: str | None) -> dict[str, GroupDomain]:
    """``[privacy.groups]`` of a manifest → column → ``GroupDomain``.

    Raises ``BadInputError`` naming the column and the expected form.
    """
    if not isinstance(raw, Mapping):
        raise BadInputError(
            "[privacy.groups] must be a table: COLUMN = \"dataset\" | { range = [lo, hi] } | "
            "{ values = [...] }; declare every group column with its public domain in opal.toml"
        )
    out: dict[str, GroupDomain] = {}
    for column, spec in raw.items():
        where = f"privacy.groups.{column}"
        if not isinstance(column, str) or not column.isidentifier():
            raise BadInputError(f"{where}: group column names must be identifiers; fix opal.toml")
        if column == unit or column == value_column:
            raise BadInputError(f"{where}: must not name the unit or value column; fix opal.toml")
        if spec == "dataset":
            out[column] = GroupDomain(dataset=column)
            continue
        if not isinstance(spec, Mapping):
            raise BadInputError(
                f"{where}: expected \"dataset\", {{ dataset = \"COLUMN\" }}, {{ range = [lo, hi] }} "
                f"or {{ values = [...] }}, found {spec!r}; fix opal.toml"
            )
        keys = set(spec)
        if keys == {"range"}:
            out[column] = GroupDomain(values=_labels(spec, where=where))
        elif keys <= {"dataset", "values"} and keys:
            dataset = spec.get("dataset")
            if dataset is not None and not (isinstance(dataset, str) and dataset.isidentifier()):
                raise BadInputError(f"{where}: dataset must name a dataset column; fix opal.toml")
            values = _labels(spec["values"], where=f"{where}.values") if "values" in spec else ()
            out[column] = GroupDomain(dataset=dataset, values=values)
        else:
            raise BadInputError(
                f"{where}: unknown key(s) {', '.join(sorted(keys - {'dataset', 'values'}))}; "
                "use dataset, values or range; fix opal.toml"
            )
    return out


def domains_from_dict(raw: Any, *, where: str) -> dict[str, tuple[Label, ...]]:
    """A dataset's domain file (parsed TOML) → column → labels."""
    if not isinstance(raw, Mapping):
        raise BadInputError(f"{where}: expected a table COLUMN = [labels] or {{ range = [lo, hi] }}")
    return {str(col): _labels(spec, where=f"{where}: {col}") for col, spec in raw.items()}


def _is_range(values: tuple[Label, ...]) -> bool:
    return (
        len(values) > 1
        and all(isinstance(v, int) for v in values)
        and list(values) == list(range(int(values[0]), int(values[-1]) + 1))
    )


def domains_to_dict(domains: Mapping[str, tuple[Label, ...]]) -> dict[str, Any]:
    """Compact JSON/TOML form: a contiguous integer domain becomes a range."""
    return {
        col: {"range": [values[0], values[-1]]} if _is_range(values) else list(values)
        for col, values in domains.items()
    }


def load_domains(path: Path) -> dict[str, tuple[Label, ...]]:
    """Read a domain file. Raises ``BadInputError`` (unreadable, not TOML, bad labels)."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise BadInputError(f"cannot read domain file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path}: not valid TOML ({exc}); fix the domain file") from None
    return domains_from_dict(raw, where=str(path))


def sidecar_for(data: Path) -> Path:
    """Where a dataset's public domains sit: same folder and stem
    (``cdr.parquet`` → ``cdr.domains.toml``; a directory ``parts/`` → ``parts.domains.toml``)."""
    data = Path(data)
    stem = data.name if data.is_dir() else data.stem
    return data.parent / f"{stem}{SIDECAR_SUFFIX}"


def resolve(
    groups: Mapping[str, GroupDomain], dataset_domains: Mapping[str, tuple[Label, ...]]
) -> dict[str, tuple[Label, ...]]:
    """Each group column's labels, in declaration order.

    Raises ``BadInputError`` when a column refers to a dataset domain that was
    not registered.
    """
    out: dict[str, tuple[Label, ...]] = {}
    for column, spec in groups.items():
        labels: list[Label] = []
        if spec.dataset is not None:
            if spec.dataset not in dataset_domains:
                known = ", ".join(sorted(dataset_domains)) or "none"
                raise BadInputError(
                    f"group column {column!r} uses the dataset's domain of {spec.dataset!r}, which the "
                    f"dataset does not declare (declared: {known}); register the dataset with "
                    "--domains FILE, or declare { range } or { values } in opal.toml"
                )
            labels.extend(dataset_domains[spec.dataset])
        seen = set(labels)
        labels.extend(v for v in spec.values if v not in seen)
        out[column] = tuple(labels)
    return out


def check_cells(cells: int, max_cells: int) -> None:
    """Refuse a domain product over the policy's ``max_cells`` (decided without data)."""
    if cells > max_cells:
        raise ReleaseRefused(
            f"the group domains have {cells} cells in all, more than the policy limit max_cells = "
            f"{max_cells}; group by fewer or coarser columns, or ask the operator to raise max_cells"
        )


def cell_count(domains: Mapping[str, tuple[Label, ...]]) -> int:
    return math.prod(len(v) for v in domains.values())
