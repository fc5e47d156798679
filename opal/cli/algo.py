"""opal algo init/check/test/submit/list/review/approve/reject/verify/revoke/pin/unpin"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.syntax import Syntax
from rich.table import Table

from opal.bundle.manifest import SOURCE_FILE
from opal.cli._app import App, console, emit_json, err_console, pass_app
from opal.cli._render import parse_params, render_release
from opal.errors import BadInputError


@click.group("algo")
def algo() -> None:
    """Write, check, test, submit and review algorithm bundles."""


@algo.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Algorithm name (lower-case, digits, _).")
def init(folder: Path, name: str) -> None:
    """Scaffold a bundle in FOLDER that runs as it is."""
    from opal.bundle.scaffold import scaffold

    scaffold(folder, name)
    console.print(f"created bundle [bold]{name}[/] in {folder}: opal.toml, algorithm.py, README.md")
    console.print(f"next: opal algo check {folder}, then opal algo test {folder} --dataset FILE --params '{{...}}'")


@algo.command("check")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def check(folder: Path, as_json: bool) -> None:
    """Static checks (manifest, parameter schema, compile policy) without data."""
    from opal.devloop import check_bundle, read_warnings

    bundle = check_bundle(folder)
    warnings = read_warnings(bundle)
    if as_json:
        emit_json({"ok": True, "name": bundle.manifest.name, "version": bundle.manifest.version,
                   "digest": bundle.digest, "warnings": warnings})
    else:
        console.print(
            f"ok: {bundle.ref} passes the manifest, schema and compile-policy checks (digest {bundle.digest[:16]}…)"
        )
    for line in warnings:
        err_console.print(f"warning: {line}", markup=False)


@algo.command("test")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", "dataset", required=True, type=click.Path(path_type=Path))
@click.option("--params", default=None, help="Run parameters as JSON.")
@click.option("--epsilon", type=float, default=None)
@click.option("--domains", "domains", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Public group domains of the dataset (default: STEM.domains.toml next to it).")
@click.option("--locality", is_flag=True, help="Also run the leave-one-out unit-locality probe.")
@click.option("--json", "as_json", is_flag=True)
def test(folder: Path, dataset: Path, params: str | None, epsilon: float | None, domains: Path | None,
         locality: bool, as_json: bool) -> None:
    """Run an unsigned bundle through the real sandbox and release gate on a local file,
    or on a partitioned directory partition by partition (as a worker would; noise once)."""
    from opal.bundle.registry import Bundle
    from opal.devloop import read_warnings, test_bundle

    parsed = parse_params(params)
    for line in read_warnings(Bundle.from_folder(folder)):  # before the run: it may be why the run fails
        err_console.print(f"warning: {line}", markup=False)
    result = test_bundle(folder, dataset=dataset, params=parsed, epsilon=epsilon, domains=domains)
    if locality:
        from opal.data.partition import is_partitioned, read_partitioned
        from opal.trust.locality import probe_folder

        # a partition holds every row of its units: the probe samples units of the first one
        probed = read_partitioned(dataset).files[0] if is_partitioned(dataset) else dataset
        result["locality"] = probe_folder(folder, dataset=probed, params=parsed).to_dict()
    if as_json:
        emit_json(result)
        return
    render_release(result, title=f"{result['bundle']['name']} (local test, no budget spent)", local=True)
    # local data the caller already holds: what the gate dropped may be shown
    diagnostics = result.get("diagnostics") or {}
    if diagnostics.get("contributions_refused"):
        console.print(f"contributions refused: {diagnostics['contributions_refused']}")
    for reason, n in sorted((diagnostics.get("rows_dropped") or {}).items()):
        console.print(f"dropped {n:,} contribution row(s): {reason}")
    if "locality" in result:
        console.print(f"locality probe: {result['locality']['summary']}")


@algo.command("submit")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--key", default=None, help="Statistician key that signs the submission.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def submit(app: App, folder: Path, key: str | None, as_json: bool) -> None:
    """Sign and submit the bundle in FOLDER for review."""
    from opal.devloop import check_bundle, read_warnings
    from opal.trust.review import submit as do_submit

    bundle = check_bundle(folder)
    for line in read_warnings(bundle):
        err_console.print(f"warning: {line}", markup=False)
    signer = app.node.keyring.signer_for(key, "statistician")
    do_submit(app.node, bundle, signer=signer)
    if as_json:
        emit_json({"name": bundle.manifest.name, "version": bundle.manifest.version, "digest": bundle.digest})
    else:
        console.print(f"submitted [bold]{bundle.ref}[/] signed by {signer.name}; digest {bundle.digest}")


@algo.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, as_json: bool) -> None:
    """Submitted bundles and their approvals."""
    rows = app.node.db.query(
        "SELECT b.digest, b.name, b.version, b.submitted, b.revoked_at, "
        "(SELECT COUNT(DISTINCT key_id) FROM approvals a "
        "WHERE a.digest = b.digest AND a.verdict = 'approve') AS approvals "
        "FROM bundles b ORDER BY b.name, b.submitted"
    )
    items = [dict(r) for r in rows]
    if as_json:
        emit_json(items)
        return
    table = Table("name", "version", "digest", "approvals", "revoked")
    for r in items:
        table.add_row(r["name"], r["version"], r["digest"][:16] + "…", str(r["approvals"]), r["revoked_at"] or "")
    console.print(table)


@algo.command("review")
@click.argument("ref")
@click.option("--params", default=None,
              help="Parameters for the locality probe (default: from the schema's defaults).")
@click.option("--no-locality", is_flag=True, help="Skip the leave-one-out unit-locality probe.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def review(app: App, ref: str, params: str | None, no_locality: bool, as_json: bool) -> None:
    """Show what a reviewer signs: manifest, parameters, privacy, source, the diff
    against the previous approved version, and the unit-locality probe on
    synthetic data (removing one subscriber must change no other's rows)."""
    from opal.runs.request import resolve_bundle
    from opal.trust.review import review_view

    digest, _, _ = resolve_bundle(app.node, ref)
    view = review_view(app.node, digest)
    if not no_locality:
        from opal.trust.locality import probe_synthetic

        bundle = app.node.registry.load(digest)
        view["locality"] = probe_synthetic(
            bundle, params=parse_params(params) if params is not None else None
        ).to_dict()
    if as_json:
        emit_json(view)
        return
    console.print(f"[bold]{view['name']}@{view['version']}[/]  digest {digest}")
    console.print(
        f"author {view['author']}, submitted {view['submitted']}"
        + (f", [red]{view['revoked']}[/]" if view["revoked"] else "")
    )
    console.print(f"description: {view['manifest']['description']}")
    reads = view["manifest"].get("reads")
    console.print(f"reads from {view['manifest']['dataset']}: "
                  + (", ".join(reads) if reads else "every column (no reads declared)"), markup=False)
    if view["manifest"].get("categorical"):
        console.print("as categoricals: " + ", ".join(view["manifest"]["categorical"]), markup=False)
    console.print("[bold]privacy declaration[/]")
    console.print_json(json.dumps(view["privacy"]))
    console.print("[bold]parameters (JSON Schema)[/]")
    console.print_json(json.dumps(view["parameters"]))
    table = Table("file", "size", "sha256")
    for f in view["files"]:
        table.add_row(str(f["path"]), str(f["size"]), str(f["sha256"]))
    console.print(table)
    console.print(f"[bold]{SOURCE_FILE}[/]")
    console.print(Syntax(view["source"], "python", line_numbers=True))
    if view["previous"]:
        console.print(f"[bold]diff against approved {view['name']}@{view['previous']['version']}[/]")
        console.print(Syntax(view["diff"] or "(no changes)\n", "diff"))
    else:
        console.print("no earlier approved version: review the whole bundle")
    console.print(
        f"approvals: {view['valid_approvals']} valid of {view['threshold']} needed ({view['policy']})"
    )
    for a in view["approvals"]:
        mark = "counts" if a["counts"] else "does not count"
        console.print(
            f"  {a['verdict']:8} {a['reviewer']}  {a['time']}  expires {a['expires']}  ({mark}) {a['comment']}"
        )
    if "locality" in view:
        style = "green" if view["locality"]["local"] else "red"
        console.print(f"[{style}]{view['locality']['summary']}[/]")


def _verdict(app: App, ref: str, key: str | None, verdict: str, expires: str | None, comment: str) -> None:
    from opal.runs.request import resolve_bundle
    from opal.trust.review import approve as do_approve

    digest, name, version = resolve_bundle(app.node, ref)
    signer = app.node.keyring.signer_for(key, "reviewer")
    approval = do_approve(app.node, digest, signer=signer, verdict=verdict, expires=expires, comment=comment)
    word = "approved" if verdict == "approve" else "rejected"
    console.print(f"{signer.name} {word} [bold]{name}@{version}[/] ({digest[:12]}), expires {approval.expires}")


@algo.command("approve")
@click.argument("ref")
@click.option("--key", default=None, help="Reviewer key that signs the approval.")
@click.option("--expires", default=None, help="Lifetime, e.g. 90d (default and maximum: the trust policy's).")
@click.option("--comment", default="")
@pass_app
def approve(app: App, ref: str, key: str | None, expires: str | None, comment: str) -> None:
    """Sign an approval of bundle REF (digest, NAME or NAME@VERSION)."""
    _verdict(app, ref, key, "approve", expires, comment)


@algo.command("reject")
@click.argument("ref")
@click.option("--key", default=None)
@click.option("--comment", default="")
@pass_app
def reject(app: App, ref: str, key: str | None, comment: str) -> None:
    """Sign a rejection of bundle REF (withdraws this key's earlier approval)."""
    _verdict(app, ref, key, "reject", None, comment)


@algo.command("verify")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify(app: App, ref: str, as_json: bool) -> None:
    """Run the worker's trust check on REF now: exit 0 if it may run, 6 and the reason if not."""
    from opal.runs.request import resolve_bundle
    from opal.trust.review import verify_for_run

    digest, _, _ = resolve_bundle(app.node, ref)
    bundle = verify_for_run(app.node, digest)
    if as_json:
        emit_json(
            {"ok": True, "name": bundle.manifest.name, "version": bundle.manifest.version, "digest": bundle.digest}
        )
    else:
        console.print(f"ok: {bundle.ref} ({digest[:12]}) passes the worker's trust check")


def _exact(app: App, ref: str) -> tuple[str, str, str]:
    from opal.runs.request import resolve_bundle

    if "@" not in ref and len(ref) != 64:
        raise BadInputError(f"name the exact version: NAME@VERSION or a digest, not {ref!r}")
    return resolve_bundle(app.node, ref)


@algo.command("revoke")
@click.argument("ref")
@click.option("--reason", required=True, help="Why; recorded in the ledger.")
@click.option("--key", default=None, help="Board key that signs the revocation.")
@pass_app
def revoke(app: App, ref: str, reason: str, key: str | None) -> None:
    """Revoke bundle NAME@VERSION: every future run of it is refused (board)."""
    from opal.trust.review import revoke_bundle

    digest, name, version = _exact(app, ref)
    signer = app.node.keyring.signer_for(key, "board")
    revoke_bundle(app.node, digest, reason=reason, signer=signer)
    console.print(f"revoked [bold]{name}@{version}[/] ({digest[:12]}): {reason}")


@algo.command("pin")
@click.argument("ref")
@click.option("--key", default=None, help="Board key that signs the pin.")
@click.option("--reason", default="")
@pass_app
def pin(app: App, ref: str, key: str | None, reason: str) -> None:
    """Allow NAME@VERSION to run although a higher version is approved (board)."""
    from opal.trust.review import pin_version

    _, name, version = _exact(app, ref)
    signer = app.node.keyring.signer_for(key, "board")
    pin_version(app.node, name, version, signer=signer, reason=reason)
    console.print(f"pinned [bold]{name}@{version}[/] (signed by {signer.name})")


@algo.command("unpin")
@click.argument("name")
@click.option("--key", default=None, help="Board key that signs the change.")
@pass_app
def unpin(app: App, name: str, key: str | None) -> None:
    """Remove the board pin of NAME: rollback protection applies again."""
    from opal.trust.review import unpin as do_unpin

    signer = app.node.keyring.signer_for(key, "board")
    do_unpin(app.node, name.partition("@")[0], signer=signer)
    console.print(f"unpinned [bold]{name}[/]")


COMMANDS = [algo]
