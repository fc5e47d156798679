"""The board's governance report: one self-contained HTML page of figures, every one
computed from signed ledger content (``opal.report.history``) up to a signed checkpoint.

Two sources, one page:

* ``from_node``: the node's ledger. The report covers the latest signed checkpoint:
  its signature is checked under the board's roles and the ledger's first *size*
  leaves must hash to its root, else ``LedgerCorrupt`` (exit 7) and no page.
* ``from_export``: a ledger export (``opal ledger export``), verified offline first
  (``opal.ledger.export.verify_export``: proofs, signatures, roles, witnesses); a
  tampered export raises ``LedgerCorrupt`` before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opal.errors import BadInputError, LedgerCorrupt
from opal.ledger.records import Checkpoint, LedgerEntry
from opal.release.policy import MICRO
from opal.report.history import History
from opal.report.html import esc, page, table
from opal.report.plots import figure, svg
from opal.trust.keys import utcnow

if TYPE_CHECKING:
    from opal.node import Node
    from opal.trust.policy import TrustPolicy

__all__ = ["Coverage", "from_export", "from_node", "node_diffs", "render", "write_report"]

_ROWS = 1_000  # newest rows per table on the page; the CLI lists every one
_NOTES = 12  # who-spent-it labels per dataset on the budget plot (the newest)
_OUTCOME_COLOURS = {
    "released": "#2a7d46",
    "refused": "#c5862b",
    "failed": "#b3261e",
    "cancelled": "#7b7f8a",
    "open": "#4a78c2",
}


@dataclass(frozen=True, kw_only=True)
class Coverage:
    """What the page covers and how it was checked."""

    origin: str
    source: str  # "node database" or "export FILE"
    checkpoint: Checkpoint | None
    entries: int  # entries the figures are computed from (0 … entries-1)
    uncovered: int = 0  # newer entries no signed checkpoint covers yet (not in the figures)
    verification: dict[str, Any] = field(default_factory=dict)  # last verification: when, size, result


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- sources -------------------------------------------------------------------


def from_node(node: Node, *, state: Path | None = None) -> tuple[History, Coverage]:
    """The node's ledger up to its latest signed checkpoint.

    Raises:
        LedgerCorrupt: the checkpoint's signature does not verify, or the ledger does not
            extend it (rewritten, truncated).
    """
    from opal.ledger.audit_state import AuditState, default_state_path
    from opal.ledger.verify import check_checkpoint_signature

    ledger = node.ledger
    cp = ledger.latest_checkpoint()
    size = ledger.size()
    if cp is not None:
        tree = ledger.tree()
        if cp.size > tree.size or tree.root(cp.size).hex() != cp.root:
            raise LedgerCorrupt(
                f"the ledger does not extend its signed checkpoint of size {cp.size}; no report was written "
                "(run opal ledger verify)"
            )
        check_checkpoint_signature(cp, ledger.authority(stop=cp.size))
    covered = cp.size if cp is not None else size
    cosigs = [c for c in ledger.cosignatures() if c.size <= covered]
    entries = (e for e in ledger.iter_entries() if e.index < covered)
    history = History.from_entries(
        entries, checkpoints=[c for c in ledger.checkpoints() if c.size <= covered], cosignatures=cosigs
    )
    held = AuditState.load(state or default_state_path(ledger.origin))
    verification = (
        {"when": held.verified, "size": held.size, "root": held.root, "result": "ok", "by": "your audit state"}
        if held is not None
        else {"when": None, "result": "never verified with this auditor's state (run opal ledger verify)"}
    )
    return history, Coverage(
        origin=ledger.origin,
        source="node database",
        checkpoint=cp,
        entries=covered,
        uncovered=size - covered,
        verification=verification,
    )


def from_export(path: Path, *, policy: TrustPolicy | None, state: Path | None = None) -> tuple[History, Coverage]:
    """A ledger export, verified offline before anything is read from it.

    Raises:
        LedgerCorrupt: the export does not verify (tampered, truncated, forked).
        TrustError: its checkpoint is signed by a key the policy does not name.
        BadInputError: not an export, or unreadable.
    """
    from opal.ledger.export import verify_export

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInputError(f"no export file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the export {path}: {exc}") from None
    result = verify_export(lines, policy=policy, state=state)
    header = json.loads(lines[0])
    cp = Checkpoint.from_dict(header["checkpoint"])
    from opal.ledger.records import Cosignature

    cosigs = [Cosignature.from_dict(c) for c in header.get("cosignatures", [])]
    found: dict[int, LedgerEntry] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        item = json.loads(line)
        if item.get("kind") in ("entry", "key"):
            entry = LedgerEntry.parse(str(item["entry"]).encode())
            found[entry.index] = entry
    history = History.from_entries(
        (found[i] for i in sorted(found)), checkpoints=[cp], cosignatures=cosigs
    )
    start, stop = result["range"]
    return history, Coverage(
        origin=cp.origin,
        source=f"export {path.name} (entries {start}…{stop - 1}, verified offline)",
        checkpoint=cp,
        entries=stop,
        verification={
            "when": utcnow(),
            "size": cp.size,
            "root": cp.root,
            "result": "ok",
            "by": "this report, before reading the export"
            + (f", with the {result['policy']}" if result.get("policy") else " (log key not pinned: use --policy)"),
            "cosignatures_checked": result["cosignatures_checked"],
        },
    )


# -- figures -------------------------------------------------------------------


def _thin(n: int, points: int = 1_500) -> list[int]:
    """Indexes of at most about ``points`` of ``n`` samples, evenly spaced, the last always kept
    (a cumulative curve keeps its shape; the SVG stays small on large ledgers)."""
    step = max(1, n // points)
    return sorted({*range(0, n, step), n - 1}) if n else []


def _dates(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(maxticks=8)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _budget_figure(h: History) -> str:
    if not h.charges:
        return "<p>No ε has been spent.</p>"
    fig, ax = figure(7.5, 3.2)
    for dataset in sorted({c.dataset for c in h.charges}):
        every = h.charges_of(dataset)
        charges = [every[i] for i in _thin(len(every))]
        xs = [_time(c.time) for c in charges]
        ys = [c.total for c in charges]
        line = ax.step(xs, ys, where="post", label=f"{dataset}: ε spent")[0]
        if len(every) <= 200:
            ax.plot(xs, ys, "o", color=line.get_color(), markersize=4)
        if len(every) <= _NOTES:
            notes = [(c.time, c.total, f"{c.requester_name} +{c.epsilon:g}") for c in every]
        else:  # too many to label one by one: who spent how much, at the end of the curve
            by: dict[str, tuple[int, int]] = {}
            for c in every:
                micro, runs = by.get(c.requester_name, (0, 0))
                by[c.requester_name] = (micro + c.epsilon_micro, runs + 1)
            notes = [(every[-1].time, every[-1].total, "; ".join(
                f"{who} {micro / MICRO:g} ({runs:,} runs)" for who, (micro, runs) in sorted(by.items())))]
        for when, y, text in notes:
            ax.annotate(text, (_time(when), y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        total = h.datasets.get(dataset, {}).get("total_epsilon")
        if total:
            ax.axhline(float(total), linestyle="--", linewidth=1, color=line.get_color(),
                       label=f"{dataset}: total ε {float(total):g}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ε spent (cumulative)")
    ax.set_title("Privacy budget spent over time, per dataset")
    ax.legend(fontsize=8, loc="upper left")
    _dates(ax)
    return svg(fig, label="privacy budget over time")


def _runs_over_time_figure(h: History) -> str:
    if not h.runs:
        return "<p>No runs.</p>"
    fig, ax = figure(7.5, 3.2)
    series: dict[tuple[str, str], list[str]] = {}
    for r in sorted(h.runs.values(), key=lambda r: r.requested_index):
        series.setdefault((r.algorithm, r.outcome or "open"), []).append(r.finished_at or r.requested_at)
    markers = "os^Dv<>p*h"
    algorithms = sorted({a for a, _ in series})
    for (algorithm, outcome), stamps in sorted(series.items()):
        picks = _thin(len(stamps))
        ax.step([_time(stamps[i]) for i in picks], [i + 1 for i in picks], where="post",
                color=_OUTCOME_COLOURS.get(outcome, "#333"),
                linestyle=("-", "--", ":", "-.")[algorithms.index(algorithm) % 4],
                marker=markers[algorithms.index(algorithm) % len(markers)] if len(stamps) <= 200 else None,
                markersize=4, label=f"{algorithm} {outcome}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("runs (cumulative)")
    ax.set_title("Runs per algorithm and outcome over time")
    ax.legend(fontsize=8, loc="upper left")
    _dates(ax)
    return svg(fig, label="runs per algorithm and outcome over time")


def _outcome_bars(h: History) -> str:
    table_ = h.runs_by_algorithm()
    if not table_:
        return ""
    fig, ax = figure(7.5, 0.5 * len(table_) + 1.4)
    names = list(table_)
    left = [0] * len(names)
    for outcome in sorted({o for row in table_.values() for o in row}):
        counts = [table_[n].get(outcome, 0) for n in names]
        bars = ax.barh(names, counts, left=left, color=_OUTCOME_COLOURS.get(outcome, "#333"), label=outcome)
        ax.bar_label(bars, labels=[str(c) if c else "" for c in counts], label_type="center", color="white",
                     fontsize=8)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.set_xlabel("runs")
    ax.set_title("Runs per algorithm, by outcome")
    ax.legend(fontsize=8, loc="lower right")
    return svg(fig, label="runs per algorithm by outcome")


def _refusal_figure(h: History) -> str:
    causes = h.refusals_by_cause()
    if not causes:
        return "<p>No run was refused.</p>"
    fig, ax = figure(5.0, 0.45 * len(causes) + 1.3)
    bars = ax.barh(list(causes), list(causes.values()), color="#c5862b")
    ax.bar_label(bars, fontsize=8)
    ax.set_xlabel("refused runs")
    ax.set_title("Refusals by cause")
    return svg(fig, label="refusals by cause")


def _growth_figure(h: History) -> str:
    points = h.growth()
    if not points:
        return ""
    fig, ax = figure(7.5, 3.0)
    ax.plot([_time(t) for t, _ in points], [n for _, n in points], color="#2a5db0", label="entries")
    for cp in h.checkpoints:
        at = h.times[cp.size - 1] if 0 < cp.size <= len(h.times) else cp.time
        witnessed = sum(1 for c in h.cosignatures if c.size == cp.size and c.root == cp.root)
        ax.plot([_time(at)], [cp.size], "D", color="#17703a" if witnessed else "#b3261e", markersize=5)
        ax.annotate(f"checkpoint {cp.size}" + (f" ({witnessed} cosig.)" if witnessed else ""), (_time(at), cp.size),
                    textcoords="offset points", xytext=(-4, 6), ha="right", fontsize=7)
    ax.set_ylabel("ledger entries")
    ax.set_title("Ledger size over time, with signed checkpoints")
    _dates(ax)
    return svg(fig, label="ledger size over time")


# -- page ----------------------------------------------------------------------


def _newest_note(total: int, what: str, command: str) -> str:
    if total <= _ROWS:
        return ""
    return f'<p class="meta">the newest {_ROWS:,} of {total:,} {what}; {command} --json lists every one</p>'


def render(h: History, coverage: Coverage, *, diffs: dict[str, str] | None = None) -> str:
    """The page. ``diffs``: digest -> the diff summary its reviewers saw (node only)."""
    name = h.name
    cp = coverage.checkpoint
    covers = (
        f"signed checkpoint of size {cp.size}, root <code>{esc(cp.root)}</code>, signed by "
        f"{esc(name(cp.signer))} on {esc(cp.time[:19])}"
        if cp is not None
        else f"no signed checkpoint yet: entries 0…{coverage.entries - 1} (unsigned)"
    )
    parts = [
        "<h1>OPAL governance report</h1>",
        f'<p class="meta" id="coverage">Log <code>{esc(coverage.origin)}</code> · covers the {covers}'
        + (f" · {coverage.uncovered} newer entr{'y' if coverage.uncovered == 1 else 'ies'} not yet in a "
           "checkpoint are not counted" if coverage.uncovered else "")
        + f" · source: {esc(coverage.source)} · generated {esc(utcnow()[:19])} UTC</p>",
        "<p>Every figure on this page is computed from the signed ledger entries "
        "(run requests and outcomes, reviews, revocations, pins, policies), never from database columns.</p>",
    ]
    # summary
    spent = h.spent_by_dataset()
    parts.append("<h2>Summary</h2>")
    parts.append(table(["outcome", "runs"], list(h.outcomes().items()), numeric=[1], css_id="outcomes"))
    budget_rows = []
    for dataset in sorted(set(spent) | set(h.datasets)):
        total = h.datasets.get(dataset, {}).get("total_epsilon")
        used = spent.get(dataset, 0.0)
        left = f"{float(total) - used:g}" if total is not None else ""
        budget_rows.append((dataset, f"{used:g}", "" if total is None else f"{float(total):g}", left))
    parts.append(table(["dataset", "ε spent", "total ε", "ε left"], budget_rows, numeric=[1, 2, 3],
                       css_id="epsilon-spent"))
    # budget
    parts.append("<h2>Privacy budget</h2>")
    parts.append(f"<figure>{_budget_figure(h)}</figure>")
    parts.append(f"<details{' open' if len(h.charges) <= 50 else ''}><summary>Every charge</summary>")
    parts.append(_newest_note(len(h.charges), "charges", "opal budget history"))
    parts.append(table(
        ["#", "time", "dataset", "requester", "algorithm", "run", "outcome", "ε", "running total"],
        [(c.index, c.time[:19], c.dataset, c.requester_name, c.algorithm, c.run_id[:12], c.outcome,
          f"{c.epsilon:g}", f"{c.total:g}") for c in h.charges[-_ROWS:]],
        numeric=[0, 7, 8], css_id="charges",
    ) + "</details>")
    # runs
    parts.append("<h2>Runs</h2>")
    parts.append(f'<div class="figures"><figure>{_runs_over_time_figure(h)}</figure>'
                 f"<figure>{_outcome_bars(h)}</figure><figure>{_refusal_figure(h)}</figure></div>")
    parts.append(table(["cause", "refused runs"], list(h.refusals_by_cause().items()), numeric=[1],
                       css_id="refusals"))
    runs = sorted(h.runs.values(), key=lambda r: r.requested_index)[-_ROWS:]
    parts.append("<details><summary>Runs</summary>" + _newest_note(len(h.runs), "runs", "opal ledger show") + table(
        ["requested", "run", "algorithm", "dataset", "requester", "ε asked", "outcome", "ε spent", "cause / reason"],
        [(r.requested_at[:19], r.run_id[:12], r.algorithm, r.dataset, name(r.requester), f"{r.epsilon:g}",
          r.outcome or "open", f"{r.epsilon_spent:g}", (f"{r.cause}: " if r.cause else "") + (r.reason or ""))
         for r in runs],
        numeric=[5, 7], css_id="runs",
    ) + "</details>")
    # algorithms
    parts.append("<h2>Algorithm versions</h2>")
    expiring = sorted(
        (str(r["expires"]), f"{v['name']}@{v['version']}", name(r["reviewer"]))
        for v in h.versions.values() if not v["revoked"]
        for r in v["reviews"] if r["verdict"] == "approve" and r["expires"]
    )
    if expiring:
        parts.append("<h3>Approvals that expire next (versions not revoked)</h3>")
        parts.append(table(["expires", "version", "reviewer"], [(e[:19], n, who) for e, n, who in expiring[:10]],
                           css_id="expiring"))
    for v in sorted(h.versions.values(), key=lambda v: (str(v["name"]), str(v["version"]))):
        sub = v["submitted"] or {}
        status = "revoked" if v["revoked"] else ("pinned" if any(p["until"] is None for p in v["pins"]) else "")
        parts.append(
            f"<h3>{esc(v['name'])}@{esc(v['version'])} <small><code>{esc(str(v['digest'])[:16])}…</code>"
            f"{' · ' + status if status else ''}</small></h3>"
            f"<p>author {esc(name(str(sub.get('author', ''))))}, submitted {esc(str(sub.get('time', '?'))[:19])} "
            f"(entry {esc(sub.get('index', '?'))})</p>"
        )
        parts.append(table(
            ["#", "reviewer", "verdict", "signed", "expires", "comment"],
            [(r["index"], name(r["reviewer"]), r["verdict"], r["time"][:19], str(r["expires"] or "")[:19],
              r["comment"] or "") for r in v["reviews"]],
            numeric=[0],
        ))
        if v["revoked"]:
            rv = v["revoked"]
            parts.append(f'<p class="bad">revoked by {esc(name(rv["by"]))} on {esc(rv["time"][:19])} '
                         f"(entry {esc(rv['index'])}): {esc(rv['reason'])}</p>")
        for p in v["pins"]:
            parts.append(f"<p>pinned by {esc(name(p['by']))} on {esc(p['time'][:19])}"
                         + (f" until {esc(p['until'][:19])}" if p["until"] else " (in force)")
                         + (f": {esc(p['reason'])}" if p["reason"] else "") + "</p>")
        diff = (diffs or {}).get(str(v["digest"]))
        if diffs is None:
            parts.append("<p class=\"meta\">diff summary: not in an export (bundle bytes stay on the node)</p>")
        elif diff:
            parts.append(f"<details><summary>diff reviewers saw</summary><pre>{esc(diff)}</pre></details>")
        else:
            parts.append('<p class="meta">diff summary: first version (reviewers saw the whole source)</p>')
    # ledger
    parts.append("<h2>Ledger</h2>")
    parts.append(f"<figure>{_growth_figure(h)}</figure>")
    parts.append(table(
        ["size", "root", "signed by", "time", "witness cosignatures"],
        [(c.size, c.root[:16] + "…", name(c.signer), c.time[:19],
          ", ".join(f"{name(w.witness)} {w.time[:19]}" for w in h.cosignatures
                    if w.size == c.size and w.root == c.root) or "none")
         for c in sorted(h.checkpoints, key=lambda c: c.size)],
        numeric=[0], css_id="checkpoints",
    ))
    ver = coverage.verification
    ok = ver.get("result") == "ok"
    parts.append(
        f'<p id="verification" class="{"ok" if ok else "bad"}">last verification: {esc(ver.get("result"))}'
        + (f" on {esc(str(ver.get('when'))[:19])}, size {esc(ver.get('size'))}, by {esc(ver.get('by'))}"
           if ok else "") + "</p>"
    )
    # trust policy
    parts.append("<h2>Trust policy</h2>")
    if h.policies:
        current = h.policies[-1]
        parts.append(f"<p>In force: version {esc(current['version'])} (entry {esc(current['index'])}, "
                     f"{esc(current['time'][:19])}), signed by "
                     f"{esc(', '.join(name(str(k)) for k in current['signed_by']))}; approvals expire after "
                     f"{esc(current['approval_lifetime_days'])} days.</p>")
        parts.append(table(
            ["role", "threshold", "keys"],
            [(role, r["threshold"], ", ".join(name(k) for k in r["keys"])) for role, r in current["roles"].items()],
            numeric=[1], css_id="policy",
        ))
        parts.append(table(
            ["#", "version", "time", "recorded by", "signed by", "digest"],
            [(p["index"], p["version"], p["time"][:19], name(p["recorded_by"]),
              ", ".join(name(str(k)) for k in p["signed_by"]), str(p["digest"])[:16] + "…") for p in h.policies],
            numeric=[0, 1], css_id="policy-history",
        ))
    else:
        parts.append('<p class="bad">No board-signed trust policy in the covered ledger.</p>')
    if h.keys:
        parts.append(table(
            ["#", "time", "event", "key", "role / reason", "by"],
            [(k["index"], k["time"][:19], k["type"], name(str(k["key_id"])), k["role"] or k["reason"] or "",
              name(k["by"])) for k in h.keys],
            numeric=[0], css_id="keys",
        ))
    return page("OPAL governance report", "".join(parts))


def node_diffs(node: Node, history: History) -> dict[str, str]:
    """For each version whose bytes this node holds: the diff summary against the previous
    submitted version of the same algorithm (what ``opal algo review`` showed)."""
    from opal.errors import OpalError
    from opal.trust.review import diff_summary

    out: dict[str, str] = {}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for v in sorted(history.versions.values(), key=lambda v: (v["submitted"] or {}).get("index", 0)):
        by_name.setdefault(str(v["name"]), []).append(v)
    for versions in by_name.values():
        for before, after in zip([None, *versions], versions, strict=False):
            try:
                old = node.registry.load(str(before["digest"])) if before is not None else None
                out[str(after["digest"])] = diff_summary(old, node.registry.load(str(after["digest"])))
            except OpalError:
                out[str(after["digest"])] = "bundle bytes not in this node's registry"
    return out


def write_report(text: str, out: Path) -> None:
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)

