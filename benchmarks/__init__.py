"""``python -m benchmarks``: the whole pipeline and its parts, side by side with
what a user would otherwise run (pandas, DuckDB), on the same data, in one
process; writes ``BENCHMARKS.md``.

Sections, in the order they run:

- datasets (``datasets``): synthetic CDR Parquet of 1 M, 10 M (and with
  ``BENCH_FULL=1`` 100 M) rows, cached under ``bench-data/``;
- algorithms (``algorithms``, ``endtoend``): each reference algorithm (a) in
  pandas, (b) through the restricted runtime, (c) plus the release gate,
  (d) end to end through Celery and Redis, (e) as DuckDB SQL;
- the release gate alone vs DuckDB ``count(DISTINCT)`` (``gate``);
- the ledger: durable appends/s, ``opal ledger verify``, inclusion proofs (``ledger``);
- small-run throughput and added latency, worker memory (``endtoend``).

Timings are the median of repeated runs, with min and max. Nothing here
asserts a timing: the numbers are for reading.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (``python -m benchmarks``). Imported lazily, so the
    helper processes that import ``benchmarks.*`` stay light."""
    from benchmarks.harness import main as run_main

    run_main(argv)
