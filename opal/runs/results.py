"""Submitting a run and reading its released table: the calls ``opal run``, ``opal runs
result`` and ``opal.client.Client`` share (one path for the CLI and the Python client)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.errors import BadInputError

if TYPE_CHECKING:
    import pandas as pd

    from opal.node import Node
    from opal.runs.records import RunRecord
    from opal.trust.keyring import Signer

__all__ = ["FORMATS", "release_frame", "submit", "table_bytes", "write_table"]

FORMATS = ("csv", "parquet", "json")


def submit(
    node: Node,
    *,
    algorithm: str,
    dataset: str,
    params: Any,
    epsilon: float | None,
    signer: Signer,
    wait: bool = True,
    timeout: float = 600.0,
    on_requested: Callable[[RunRecord], object] | None = None,
    on_state: Callable[[str], object] | None = None,
    on_hint: Callable[[str], object] | None = None,
) -> RunRecord:
    """Record a signed run request, queue it for the dataset's workers and (``wait``) return
    its record once it has an outcome.

    Raises:
        BadInputError: no broker configured, unknown dataset or algorithm, bad ε or params.
    """
    from opal.runs import request_run
    from opal.runs.dispatch import dispatch
    from opal.runs.dispatch import wait as wait_for
    from opal.worker.celery import broker_url

    broker_url(node.home)  # no broker configured: say so before anything is recorded
    record = request_run(node, algorithm=algorithm, dataset=dataset, params=params, epsilon=epsilon, signer=signer)
    dispatch(node, record)
    if on_requested is not None:
        on_requested(record)
    if not wait:
        return record
    return wait_for(node, record.run_id, timeout=timeout, on_state=on_state, on_hint=on_hint)


def release_frame(release: dict[str, Any]) -> pd.DataFrame:
    """The released table as a DataFrame: one row per cell of the public domains, its value
    (``count``, ``sum`` or ``mean``), ``noise_scale``, the 95 % interval ``ci_low``..``ci_high``
    and ``suppressed`` (no value)."""
    import pandas as pd

    table = release.get("table") or {"columns": [], "rows": []}
    return pd.DataFrame(table.get("rows", []), columns=table.get("columns", []))


def table_bytes(release: dict[str, Any], fmt: str) -> bytes:
    """The released table in ``fmt`` (csv, parquet, or json: one object per cell).

    Raises:
        BadInputError: an unknown format.
    """
    if fmt not in FORMATS:
        raise BadInputError(f"--format must be one of {', '.join(FORMATS)}, found {fmt!r}")
    if fmt == "json":
        table = release.get("table") or {"columns": [], "rows": []}
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
        return (json.dumps(rows, indent=2) + "\n").encode()
    frame = release_frame(release)
    if fmt == "csv":
        return str(frame.to_csv(index=False)).encode()
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    data: bytes = buf.getvalue()
    return data


def write_table(release: dict[str, Any], fmt: str, out: Path) -> None:
    out.write_bytes(table_bytes(release, fmt))
