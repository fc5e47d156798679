"""opal ledger verify/show/trace/prove/checkpoint/cosign/export — the board's audit verbs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from opal.cli._app import App, console, emit_json, err_console, pass_app, rich_console
from opal.errors import BadInputError, LedgerCorrupt
from opal.ledger import merkle
from opal.ledger.audit_state import default_state_path, refuse_inside_home
from opal.ledger.export import export_range, load_policy_file, parse_range, verify_export
from opal.ledger.records import Checkpoint, Cosignature
from opal.ledger.trace import trace as trace_algorithm
from opal.ledger.verify import check_cosignature
from opal.ledger.witness import cosign as cosign_checkpoint
from opal.ledger.witness import load_checkpoint_file, witness_state_path

_PROGRESS_MIN = 5_000  # entries; below this a bar only flickers


@click.group("ledger")
def ledger() -> None:
    """Audit the governance ledger."""


@ledger.command("verify")
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Your audit state (default: one file per log under ~/.config/opal/audit/, never in OPAL_HOME): "
    "the ledger must extend the tree you verified last; only newer entries are checked.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Re-audit every entry on every core (still demanding consistency with your state).",
)
@click.option(
    "--against",
    "against_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also a signed checkpoint you hold: the ledger must extend it.",
)
@click.option(
    "--file",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verify an export (opal ledger export) offline, without a database.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --file: the board-signed trust policy (trust_policy.json) naming the log keys, "
    "the witnesses and how many must cosign.",
)
@click.option(
    "--log-key",
    "log_keys",
    multiple=True,
    help="Key id trusted to sign checkpoints (with --file, without --policy; repeatable).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Signature-checking processes (default: one per core on large ledgers).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(
    app: App,
    state_file: Path | None,
    full: bool,
    against_file: Path | None,
    export_file: Path | None,
    policy_file: Path | None,
    log_keys: tuple[str, ...],
    workers: int | None,
    as_json: bool,
) -> None:
    """Re-derive leaves, roots, signatures and roles from your last checkpoint; exit 7 on tampering."""
    against = load_checkpoint_file(against_file) if against_file else None
    if export_file is not None:
        _verify_export(export_file, policy_file, log_keys, against, state_file, as_json)
        return
    if policy_file is not None:
        raise BadInputError("--policy goes with --file EXPORT (online, the ledger's own policy chain is checked)")
    node = app.node
    state = state_file or default_state_path(node.ledger.origin)
    refuse_inside_home(state, node.home.root)
    with Progress(
        TextColumn("verifying ledger"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=rich_console(stderr=True),
        transient=True,
        disable=as_json or not err_console.is_terminal,
    ) as bar:
        task = bar.add_task("verify", total=None)

        def progress(done: int, total: int) -> None:
            if total >= _PROGRESS_MIN:
                bar.update(task, completed=done, total=total)

        report = node.ledger.verify(progress=progress, against=against, workers=workers, state=state, full=full)
    if as_json:
        emit_json(report.to_dict())
        return
    held = report.state or {}
    console.print(
        f"ledger ok: {report.size} entries ({report.signatures} signatures checked with OpenSSL"
        + (f" on {report.workers} processes" if report.workers else "")
        + f"), {report.keys} keys, "
        f"{report.checkpoints} signed checkpoint(s), {report.cosignatures} cosignature(s), "
        f"{report.runs} run outcome(s) in {report.seconds:.1f}s; root {report.root[:16]}…"
        + (f"; extends the size {held['from_size']} you verified before" if held.get("from_size") else "")
        + (f"; extends your checkpoint of size {report.against['size']}" if report.against else "")
        + f"; recorded in {held.get('path')}"
    )


def _verify_export(
    export_file: Path,
    policy_file: Path | None,
    log_keys: tuple[str, ...],
    against: Checkpoint | None,
    state_file: Path | None,
    as_json: bool,
) -> None:
    try:
        with open(export_file, encoding="utf-8") as fh:
            first = fh.readline()
            try:
                origin = str(json.loads(first).get("origin"))
            except (ValueError, AttributeError):
                raise BadInputError(f"{export_file} is not an OPAL ledger export") from None
            fh.seek(0)
            state = state_file or default_state_path(origin)
            result = verify_export(
                fh,
                trusted_log_keys=set(log_keys) if log_keys else None,
                against=against,
                policy=load_policy_file(policy_file) if policy_file else None,
                state=state,
            )
    except FileNotFoundError:
        raise BadInputError(f"no export file at {export_file}") from None
    if as_json:
        emit_json(result)
        return
    start, stop = result["range"]
    console.print(
        f"export ok: entries {start}…{stop - 1} ({result['entries_checked']}) proven in the signed checkpoint "
        f"of size {result['checkpoint']['size']} (root {result['checkpoint']['root'][:16]}…), "
        f"{result['cosignatures_checked']} cosignature(s)"
        + (f"; keys from {result['policy']}" if result["policy"] else "")
        + ("" if result["log_key_pinned"] else "; log key not pinned (use --policy)")
    )


@ledger.command("show")
@click.option("--type", "type_", default=None, help="Entry type, e.g. run_finished.")
@click.option("--actor", default=None, help="Actor key id, or the name of a key in this keyring.")
@click.option("--algorithm", default=None, help="Algorithm name (bundle and run entries).")
@click.option("--since", default=None, help="ISO-8601 UTC time, inclusive.")
@click.option("--until", default=None, help="ISO-8601 UTC time, exclusive.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Show the newest N entries.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(
    app: App,
    type_: str | None,
    actor: str | None,
    algorithm: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List ledger entries (the newest N with --limit); run entries name their algorithm,
    dataset and requester from the signed request."""
    from opal.report.views import describe_entries

    node = app.node
    if actor is not None and len(actor) != 64:
        info = node.keyring.find(actor)
        if info is not None:
            actor = info.key_id
    entries = node.ledger.entries(
        type=type_, actor=actor, subject=algorithm, since=since, until=until, limit=limit, newest=True
    )
    if as_json:
        emit_json([e.to_dict() for e in entries])
        return
    table = Table("#", "time", "type", "actor", "algorithm", "dataset", "requester", "about")
    for row in describe_entries(node.ledger, entries):
        table.add_row(
            str(row["index"]), row["time"][:19], row["type"], row["actor"], row["algorithm"],
            row["dataset"], row["requester"], row["about"],
        )
    console.print(table)


@ledger.command("trace")
@click.argument("algorithm")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def trace(app: App, algorithm: str, as_json: bool) -> None:
    """Full lifecycle of ALGORITHM (name or name@version): submitted, reviews, runs, releases, revocation."""
    result = trace_algorithm(app.node.ledger, algorithm)
    if as_json:
        emit_json(result)
        return
    names = {k.key_id: k.name for k in app.node.keyring.all()}

    def who(key_id: str) -> str:
        return names.get(key_id, key_id[:12])

    s = result["summary"]
    console.print(
        f"[bold]{algorithm}[/]: {s['versions']} version(s), {s['approvals']} approval(s), "
        f"{s['runs']} run(s), {s['released']} released, {s['revoked']} revoked"
    )
    for v in result["versions"]:
        sub = v.get("submitted", {})
        console.print(
            f"  {v['version']} {str(v['digest'])[:16]}… "
            f"submitted #{sub.get('index', '?')} by {who(sub.get('author', ''))}"
        )
        for r in v["reviews"]:
            console.print(
                f"    #{r['index']} {r['verdict']} by {who(r['reviewer'])} {r['time'][:19]}"
            )
        if v["revoked"]:
            console.print(
                f"    #{v['revoked']['index']} revoked by {who(v['revoked']['by'])}: {v['revoked']['reason']}"
            )
    for r in result["runs"]:
        steps = " → ".join(
            f"{k} #{r[k]['index']}" for k in ("requested", "started", "finished") if k in r
        )
        console.print(
            f"  run {str(r['run_id'])[:12]} {steps} {r.get('outcome', 'open')}"
            + (f" ({r['reason']})" if r.get("reason") else "")
        )


@ledger.group("prove")
def prove() -> None:
    """Print RFC 9162 inclusion and consistency proofs."""


@prove.command("inclusion")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def prove_inclusion(app: App, target: str, as_json: bool) -> None:
    """Prove that entry TARGET (an index or a leaf hash) is in the latest signed checkpoint."""
    led = app.node.ledger
    index = int(target) if target.isdigit() else led.index_of(target)
    tree = led.tree()
    if index >= tree.size:
        raise BadInputError(f"the ledger has no entry {index} (it holds {tree.size})")
    cp = led.latest_checkpoint(covering=index)
    size = cp.size if cp is not None else tree.size
    if cp is not None and (cp.size > tree.size or tree.root(cp.size).hex() != cp.root):
        raise LedgerCorrupt(
            f"the signed checkpoint of size {cp.size} does not match the ledger; run opal ledger verify"
        )
    proof = tree.inclusion_proof(index, size)
    leaf = tree.leaf(index)
    merkle.verify_inclusion(
        leaf_hash=leaf, index=index, size=size, proof=proof, root=tree.root(size)
    )
    result: dict[str, Any] = {
        "index": index,
        "leaf_hash": leaf.hex(),
        "size": size,
        "root": tree.root(size).hex(),
        "proof": [p.hex() for p in proof],
        "checkpoint": cp.to_dict() if cp is not None else None,
        "verified": True,
    }
    if as_json:
        emit_json(result)
        return
    console.print(
        f"entry {index} (leaf {leaf.hex()[:16]}…) is in the tree of size {size}, root {result['root'][:16]}…"
        + ("" if cp else " (no signed checkpoint covers it yet: unsigned)")
    )
    for i, p in enumerate(result["proof"]):
        console.print(f"  {i}: {p}")


def _size_or_checkpoint(value: str) -> tuple[int, Checkpoint | None]:
    if value.isdigit():
        return int(value), None
    cp = load_checkpoint_file(Path(value))
    return cp.size, cp


@prove.command("consistency")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def prove_consistency(app: App, old: str, new: str, as_json: bool) -> None:
    """Prove that the tree of size OLD is a prefix of the tree of size NEW (sizes or checkpoint files)."""
    old_size, old_cp = _size_or_checkpoint(old)
    new_size, new_cp = _size_or_checkpoint(new)
    tree = app.node.ledger.tree()
    for size in (old_size, new_size):
        if size > tree.size:
            raise (
                LedgerCorrupt(
                    f"the ledger holds {tree.size} entries, fewer than size {size}; it was truncated"
                )
                if (old_cp or new_cp)
                else BadInputError(f"the ledger holds only {tree.size} entries, not {size}")
            )
    if old_size > new_size:
        raise BadInputError(f"OLD must not be larger than NEW, found {old_size} > {new_size}")
    old_root = old_cp.root_bytes if old_cp else tree.root(old_size)
    new_root = new_cp.root_bytes if new_cp else tree.root(new_size)
    proof = tree.consistency_proof(old_size, new_size)
    merkle.verify_consistency(
        old_size=old_size, new_size=new_size, old_root=old_root, new_root=new_root, proof=proof
    )
    result: dict[str, Any] = {
        "old_size": old_size,
        "new_size": new_size,
        "old_root": old_root.hex(),
        "new_root": new_root.hex(),
        "proof": [p.hex() for p in proof],
        "verified": True,
    }
    if as_json:
        emit_json(result)
        return
    console.print(
        f"tree {old_size} ({result['old_root'][:16]}…) is a prefix of tree {new_size} "
        f"({result['new_root'][:16]}…); proof of {len(proof)} hash(es):"
    )
    for i, p in enumerate(result["proof"]):
        console.print(f"  {i}: {p}")


@ledger.command("checkpoint")
@click.option(
    "--key", default=None, help="Operator key that signs (default: this node's only operator key)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Accepted for symmetry; the output is always JSON."
)
@pass_app
def checkpoint(app: App, key: str | None, as_json: bool) -> None:
    """Sign (origin, size, root) of the committed ledger; print it as JSON with its C2SP signed note."""
    signer = app.node.keyring.signer_for(key, "operator")
    cp = app.node.ledger.checkpoint(signer)
    emit_json({**cp.to_dict(), "note": cp.note({signer.key_id: signer.info.public_key})})


@ledger.command("cosign")
@click.option("--key", required=True, help="Your witness key (named a witness in the board's trust policy).")
@click.option(
    "--against",
    "against_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The last checkpoint you saw (default: the one this witness cosigned last on this node).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def cosign(app: App, key: str, against_file: Path | None, as_json: bool) -> None:
    """Witness the latest signed checkpoint: check it extends the last one you saw, then co-sign it."""
    signer = app.node.keyring.signer_for(key, "witness")
    last = load_checkpoint_file(against_file) if against_file else None
    state = witness_state_path(app.node.ledger.origin, signer.key_id)
    result = cosign_checkpoint(app.node.ledger, signer, last_seen=last, state_file=state)
    if as_json:
        emit_json(result)
        return
    cp, c = result["checkpoint"], result["consistency"]
    console.print(
        f"cosigned checkpoint of size {cp['size']} (root {cp['root'][:16]}…) with {signer.name}"
        + (
            f"; consistent with the size {c['from_size']} you saw"
            if c
            else "; first checkpoint this witness saw"
        )
        + f"; {len(result['cosignatures'])} cosignature(s) on it"
    )


@ledger.command("add-cosignature")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def add_cosignature(app: App, file: Path) -> None:
    """Store a witness's cosignature (opal witness cosign --file … --out FILE) next to its checkpoint."""
    try:
        cs = Cosignature.from_dict(json.loads(file.read_text()))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{file} is not a cosignature JSON file ({exc})") from None
    check_cosignature(cs, app.node.ledger.authority())
    app.node.ledger.add_cosignature(cs)
    console.print(f"stored the cosignature of size {cs.size} by witness {cs.witness[:16]}")


@ledger.command("export")
@click.option("--range", "range_", default=":", show_default=True, help="A:B, entries A to B-1.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File (default: stdout).",
)
@click.option("--key", default=None,
              help="Operator key that signs a checkpoint when none covers the range yet (default: this node's).")
@pass_app
def export(app: App, range_: str, out: Path | None, key: str | None) -> None:
    """Write entries with inclusion proofs and the signed checkpoint (JSONL) for offline audit."""
    led = app.node.ledger
    start, stop = parse_range(range_, led.size())
    covered = led.latest_checkpoint(covering=stop - 1) if stop > 0 else led.latest_checkpoint()
    signer = None if covered is not None else app.node.keyring.signer_for(key, "operator")
    lines = export_range(led, start, stop, signer=signer)
    if out is None:
        for item in lines:
            sys.stdout.write(json.dumps(item, separators=(",", ":")) + "\n")
        return
    # All or nothing: a failed export leaves no partial or empty file behind.
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for item in lines:
                fh.write(json.dumps(item, separators=(",", ":")) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


COMMANDS = [ledger]
