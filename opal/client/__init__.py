"""The statistician's Python API: ``from opal.client import Client``.

It calls the same library functions as the ``opal`` command (``opal run``,
``opal runs result``, ``opal budget show``, ``opal runs list``), so a notebook
and the CLI see the same runs, tables and receipts::

    client = Client(home="~/opal")
    result = client.run("population_density", dataset="cdr",
                        params={"start_day": 0, "end_day": 6}, epsilon=0.5, key="sam")
    result.table          # pandas DataFrame: groups, value, noise_scale, ci_low, ci_high, suppressed
    result.receipt        # the ledger receipt (inclusion proof + signed checkpoint)

    ids = [client.submit("population_density", dataset="cdr", params={"start_day": d}, epsilon=0.1)
           for d in range(7)]            # many requests from one process, then
    tables = [client.wait(i).table for i in ids]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.errors import error_from_dict

if TYPE_CHECKING:
    import pandas as pd

    from opal.node import Node
    from opal.runs.records import RunRecord

__all__ = ["Client", "Result"]


@dataclass(frozen=True, kw_only=True)
class Result:
    """A released run: its table (one row per cell), the result document and its receipt."""

    run_id: str
    algorithm: str
    dataset: str
    epsilon: float
    cached_from: str | None
    document: dict[str, Any]

    @property
    def table(self) -> pd.DataFrame:
        from opal.runs.results import release_frame

        return release_frame(self.document["release"])

    @property
    def receipt(self) -> dict[str, Any] | None:
        receipt: dict[str, Any] | None = self.document.get("receipt")
        return receipt

    def verify(self) -> dict[str, Any]:
        """Check the receipt offline (``opal runs verify``); raises TrustError or LedgerCorrupt."""
        from opal.runs.receipts import verify_result_document

        return verify_result_document(self.document)

    def to_html(self) -> str:
        """The page ``opal runs result --html`` writes."""
        from opal.report.result_page import result_page

        return result_page(self.document)

    def _repr_html_(self) -> str:  # Jupyter shows the table with its intervals
        return str(self.table.to_html(index=False))


class Client:
    """One OPAL node's home (``--home`` / ``$OPAL_HOME``), for a statistician's notebook."""

    def __init__(self, *, home: str | Path | None = None, key: str | None = None) -> None:
        from opal.node import Node

        self._node: Node = Node.open(Path(home).expanduser() if isinstance(home, str) else home)
        self.key = key

    @property
    def node(self) -> Node:
        return self._node

    def run(
        self,
        algorithm: str,
        *,
        dataset: str,
        params: Any = None,
        epsilon: float | None = None,
        key: str | None = None,
        timeout: float = 600.0,
    ) -> Result:
        """Request a run, wait for its outcome and return the released table.

        Raises:
            OpalError: the subclass ``opal run`` exits with (refused, trust, bad input …).
        """
        from opal.runs.results import submit

        signer = self._node.keyring.signer_for(key or self.key, "statistician")
        record = submit(self._node, algorithm=algorithm, dataset=dataset, params={} if params is None else params,
                        epsilon=epsilon, signer=signer, timeout=timeout)
        if record.state != "released":
            raise error_from_dict(record.error or {"type": "InternalError", "message": f"run {record.state}"})
        return self.result(record.run_id)

    def submit(
        self,
        algorithm: str,
        *,
        dataset: str,
        params: Any = None,
        epsilon: float | None = None,
        key: str | None = None,
    ) -> str:
        """Request a run and return its id at once (``opal run --no-wait``); follow it with
        :meth:`wait` or :meth:`runs`. For many requests this is the fast path: one process
        pays the imports once, where each ``opal run --no-wait`` pays them again.

        Raises:
            OpalError: the request itself is refused (trust, bad input, no such dataset …).
        """
        from opal.runs.results import submit

        signer = self._node.keyring.signer_for(key or self.key, "statistician")
        record = submit(self._node, algorithm=algorithm, dataset=dataset, params={} if params is None else params,
                        epsilon=epsilon, signer=signer, wait=False)
        return record.run_id

    def wait(self, run_id: str, *, timeout: float = 600.0) -> Result:
        """Wait for a submitted run's outcome and return its released table.

        Raises:
            OpalError: the run ended without a release (the exception ``opal run`` exits with).
        """
        from opal.runs.dispatch import wait

        record = wait(self._node, run_id, timeout=timeout)
        if record.state != "released":
            raise error_from_dict(record.error or {"type": "InternalError", "message": f"run {record.state}"})
        return self.result(run_id)

    def result(self, run_id: str) -> Result:
        """The released result of ``run_id`` (``opal runs result``)."""
        from opal.runs import get_run
        from opal.runs.receipts import result_document

        record = get_run(self._node, run_id)
        if record.state != "released" and record.error:
            raise error_from_dict(record.error)
        doc = result_document(self._node, run_id, require_receipt=False)
        return Result(run_id=run_id, algorithm=record.algorithm, dataset=record.dataset, epsilon=record.epsilon,
                      cached_from=record.cached_from, document=doc)

    def runs(self, *, dataset: str | None = None, state: str | None = None, limit: int = 50) -> pd.DataFrame:
        """Runs, newest first (``opal runs list``)."""
        import pandas as pd

        from opal.runs import list_runs

        records: list[RunRecord] = list_runs(self._node, dataset=dataset, state=state, limit=limit)
        return pd.DataFrame([r.to_dict(with_result=False) for r in records])

    def budget(self, dataset: str | None = None) -> pd.DataFrame:
        """Total, spent, reserved and left ε per dataset (``opal budget show``)."""
        import pandas as pd

        from opal.release.budget import show

        return pd.DataFrame([s.to_dict() for s in show(self._node, dataset)])

    def budget_history(self, dataset: str | None = None) -> pd.DataFrame:
        """Every charge of ε from the signed ledger (``opal budget history``)."""
        import pandas as pd

        from opal.report.views import budget_history

        charges, _ = budget_history(self._node.ledger, dataset)
        return pd.DataFrame([c.to_dict() for c in charges])
