"""What one benchmark run measures: sizes, repetitions, where data and results go.

Read from the command line and the environment (``BENCH_SIZES``,
``BENCH_FULL``, ``BENCH_REPEAT``, ``BENCH_DATA``, ``BENCH_GATE_ROWS``,
``BENCH_LEDGER_ENTRIES``); the command line wins.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from opal.errors import BadInputError

__all__ = ["REPO", "SECTIONS", "BenchConfig", "child_env", "parse_size", "size_label"]

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("algorithms", "e2e", "partitioned", "large", "gate", "utility", "ledger", "small")
# ``large`` (10 M and 100 M rows in partitions, ~25 min) runs with BENCH_FULL=1 / --full or --only large.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "large")
DEFAULT_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (20_000,)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_size(text: str) -> int:
    """``1000000``, ``1M``, ``250k``, ``1.5M`` → rows."""
    match = _SIZE.match(text)
    if not match:
        raise BadInputError(f"dataset size must be a row count such as 1000000 or 10M, found {text!r}")
    number, suffix = float(match.group(1)), match.group(2).lower()
    rows = int(number * {"": 1, "k": 1_000, "m": 1_000_000}[suffix])
    if rows < 1_000:
        raise BadInputError(f"dataset size must be at least 1000 rows, found {text!r}")
    return rows


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the repository root
    first on ``PYTHONPATH``, for a child started as ``python -m benchmarks.…``:
    the package is not installed, so the child finds it there whatever its
    working directory."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def size_label(rows: int) -> str:
    """1000000 → ``1M``, 20000 → ``20k``."""
    if rows >= 1_000_000 and rows % 100_000 == 0:
        return f"{rows / 1_000_000:g}M"
    if rows >= 1_000 and rows % 100 == 0:
        return f"{rows / 1_000:g}k"
    return str(rows)


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(parse_size(part) for part in text.split(",") if part.strip())
    if not sizes:
        raise BadInputError("BENCH_SIZES / --sizes named no size; give e.g. 1000000,10000000")
    return tuple(sorted(set(sizes)))


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One benchmark run. ``repeat`` overrides the per-size repetition counts."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    quick: bool = False
    seed: int = 7
    days: int = 14
    repeat: int | None = None
    data_dir: Path = REPO / "bench-data"
    output: Path | None = REPO / "BENCHMARKS.md"
    json_path: Path | None = None
    gate_rows: int = 10_000_000
    gate_units: int = 500_000
    gate_groups: int = 3_000
    ledger_entries: int = 1_000_000
    append_seconds: float = 5.0
    appends: int = 4_000
    proofs: int = 1_000
    small_rows: int = 50_000
    small_runs: int = 20
    sections: tuple[str, ...] = DEFAULT_SECTIONS

    def reps(self, rows: int) -> int:
        """Repetitions of each in-process measurement at ``rows``."""
        if self.repeat is not None:
            return self.repeat
        if self.quick:
            return 2
        return 5 if rows <= 2_000_000 else 3 if rows <= 20_000_000 else 1

    def e2e_reps(self, rows: int) -> int:
        """Repetitions of each end-to-end run at ``rows`` (each spends budget and writes the ledger)."""
        if self.repeat is not None:
            return self.repeat
        if self.quick:
            return 2
        return 3 if rows <= 2_000_000 else 2 if rows <= 20_000_000 else 1

    def wants(self, section: str) -> bool:
        return section in self.sections

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> BenchConfig:
        env = dict(os.environ if environ is None else environ)
        ap = argparse.ArgumentParser(
            prog="python -m benchmarks",
            description="Benchmark OPAL against pandas and DuckDB on the same data; writes BENCHMARKS.md.",
        )
        ap.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repetitions (a smoke run; writes no BENCHMARKS.md unless --output)")
        ap.add_argument("--sizes", default=None, help="comma-separated CDR row counts, e.g. 1M,10M (env BENCH_SIZES)")
        ap.add_argument("--full", action="store_true",
                        help="also the large section: 10M and 100M rows in partitions (env BENCH_FULL=1)")
        ap.add_argument("--repeat", type=int, default=None, help="repetitions of every measurement (env BENCH_REPEAT)")
        ap.add_argument(
            "--data-dir", type=Path, default=None, help="dataset cache (env BENCH_DATA, default bench-data/)"
        )
        ap.add_argument("--output", type=Path, default=None, help="report file (default BENCHMARKS.md)")
        ap.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="also write every sample as JSON (default bench-data/last-run.json)")
        ap.add_argument(
            "--gate-rows", default=None, help="contribution rows for the gate section (env BENCH_GATE_ROWS)"
        )
        ap.add_argument("--ledger-entries", default=None, help="ledger size to verify (env BENCH_LEDGER_ENTRIES)")
        ap.add_argument("--only", default=None, help=f"run only these sections: {','.join(SECTIONS)} "
                        "(without every default section, the report goes to bench-data/partial-report.md "
                        "unless --output)")
        ap.add_argument("--skip", default=None, help="skip these sections (the same)")
        args = ap.parse_args(argv)

        config = cls()
        if args.quick:
            config = replace(
                config, quick=True, sizes=QUICK_SIZES, output=None, gate_rows=100_000, gate_units=5_000,
                gate_groups=300, ledger_entries=2_000, append_seconds=1.0, appends=400, proofs=200,
                small_rows=20_000, small_runs=5,
            )
        full = args.full or env.get("BENCH_FULL", "") not in ("", "0")
        sizes_text = args.sizes or env.get("BENCH_SIZES")
        if sizes_text:
            config = replace(config, sizes=_sizes(sizes_text))
        repeat = args.repeat if args.repeat is not None else env.get("BENCH_REPEAT")
        if repeat is not None:
            if int(repeat) < 1:
                raise BadInputError(f"--repeat / BENCH_REPEAT must be >= 1, found {repeat}")
            config = replace(config, repeat=int(repeat))
        data_dir = args.data_dir or (Path(env["BENCH_DATA"]) if env.get("BENCH_DATA") else None)
        if data_dir is not None:
            config = replace(config, data_dir=data_dir)
        if args.output is not None:
            config = replace(config, output=args.output)
        config = replace(config, json_path=args.json_path or config.data_dir / "last-run.json")
        gate_rows = args.gate_rows or env.get("BENCH_GATE_ROWS")
        if gate_rows:
            config = replace(config, gate_rows=parse_size(gate_rows))
        entries = args.ledger_entries or env.get("BENCH_LEDGER_ENTRIES")
        if entries:
            config = replace(config, ledger_entries=parse_size(entries))
        sections = list(SECTIONS if full else DEFAULT_SECTIONS)
        if args.only:
            sections = list(SECTIONS)
        for flag, keep in ((args.only, True), (args.skip, False)):
            if flag:
                named = [s.strip() for s in flag.split(",") if s.strip()]
                unknown = [s for s in named if s not in SECTIONS]
                if unknown:
                    raise BadInputError(f"unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
                sections = [s for s in sections if (s in named) == keep]
        if args.output is None and config.output is not None and not set(DEFAULT_SECTIONS) <= set(sections):
            # a partial run never overwrites the whole report with its few sections
            config = replace(config, output=config.data_dir / "partial-report.md")
        return replace(config, sections=tuple(sections))
