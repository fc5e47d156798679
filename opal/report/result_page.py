"""A released result as a page: the table with each cell's noise scale and 95 % interval,
a plot of the values with their intervals, and whether the receipt verifies."""

from __future__ import annotations

from typing import Any

from opal.errors import OpalError
from opal.report.html import esc, page, table
from opal.report.plots import figure, svg

__all__ = ["receipt_status", "result_page"]

_META = ("noise_scale", "ci_low", "ci_high", "suppressed")


def receipt_status(doc: dict[str, Any]) -> tuple[bool, str]:
    """Check the result document's receipt offline (``opal runs verify``): (ok, what it says)."""
    from opal.runs.receipts import verify_result_document

    if not doc.get("receipt"):
        return False, "no receipt yet: no signed checkpoint covers this run's ledger entry"
    try:
        summary = verify_result_document(doc)
    except OpalError as exc:
        return False, f"receipt does not verify: {exc.message}"
    return True, (
        f"receipt verified: the table hashes to {summary['result_digest'][:16]}…, recorded at ledger entry "
        f"{summary['ledger_index']} and proven in the checkpoint of size {summary['checkpoint_size']} signed by "
        f"{summary['checkpoint_signer'][:16]}…"
    )


def _plot(columns: list[str], rows: list[list[Any]]) -> str:
    value = next((c for c in columns if c not in _META and c in ("count", "sum", "mean")), None)
    if value is None or not rows:
        return ""
    groups = [c for c in columns if c not in _META and c != value]
    at = {c: i for i, c in enumerate(columns)}
    labels = [" · ".join(str(r[at[g]]) for g in groups) for r in rows]
    shown = [(i, r) for i, r in enumerate(rows) if not r[at["suppressed"]] and r[at[value]] is not None]
    height = min(max(2.5, 0.18 * len(rows) + 1.2), 18)
    fig, ax = figure(7.5, height)
    ys = [i for i, _ in shown]
    xs = [float(r[at[value]]) for _, r in shown]
    lo = [x - float(r[at["ci_low"]]) for x, (_, r) in zip(xs, shown, strict=True)]
    hi = [float(r[at["ci_high"]]) - x for x, (_, r) in zip(xs, shown, strict=True)]
    ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", markersize=3, capsize=2, color="#2a5db0", ecolor="#8aa6d8",
                label=f"{value} with its 95 % interval")
    hidden = [i for i, r in enumerate(rows) if r[at["suppressed"]]]
    if hidden:
        ax.plot([0] * len(hidden), hidden, "x", color="#b3261e", label="suppressed (no value)")
    ax.set_yticks(range(len(rows)), labels, fontsize=7 if len(rows) > 30 else 8)
    ax.invert_yaxis()
    ax.set_xlabel(value)
    ax.set_title(f"released {value} per cell, 95 % intervals")
    ax.legend(loc="lower right", fontsize=8)
    return svg(fig, label="released values with 95% intervals")


def result_page(doc: dict[str, Any]) -> str:
    """The page for a result document (``opal.runs.receipts.result_document``)."""
    release = doc.get("release") or {}
    tab = release.get("table") or {"columns": [], "rows": []}
    columns, rows = list(tab["columns"]), [list(r) for r in tab["rows"]]
    ok, status = receipt_status(doc)
    mech = release.get("mechanism") or {}
    numeric = [i for i, c in enumerate(columns) if c in ("count", "sum", "mean", "noise_scale", "ci_low", "ci_high")]
    body = (
        f"<h1>{esc(doc.get('algorithm'))} on {esc(doc.get('dataset'))}</h1>"
        f'<p class="meta">run <code>{esc(doc.get("run_id"))}</code> · ε {esc(doc.get("epsilon"))} · '
        f"params <code>{esc(doc.get('params'))}</code>"
        + (f" · served from the cache of run <code>{esc(doc['cached_from'])}</code>" if doc.get("cached_from") else "")
        + "</p>"
        f'<p id="receipt" class="{"ok" if ok else "bad"}">{esc(status)}</p>'
        f"<p>{esc(release.get('cells_released', len(rows)))} cell(s) released, "
        f"{esc(release.get('cells_suppressed', 0))} suppressed"
        + (f" (noisy unit count below {esc(mech['min_units_per_cell'])})" if mech.get("min_units_per_cell") else "")
        + ". Each value carries its noise scale and 95 % interval ci_low..ci_high; suppressed cells have no value.</p>"
        f"<figure>{_plot(columns, rows)}</figure>"
        "<h2>Released table</h2>"
        + table(columns, ([("" if v is None else v) for v in r] for r in rows), numeric=numeric, css_id="release")
    )
    return page(f"OPAL result {doc.get('run_id')}", body)
