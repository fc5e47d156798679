"""opal algo init/check/test/submit/list/review/approve/reject"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.syntax import Syntax
from rich.table import Table

from opal.bundle.registry import Bundle
from opal.cli._app import App, console, emit_json, pass_app
from opal.cli._render import parse_params, render_release


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
    from opal.devloop import check_bundle

    bundle = check_bundle(folder)
    if as_json:
        emit_json({"ok": True, "name": bundle.manifest.name, "version": bundle.manifest.version, "digest": bundle.digest})
    else:
        console.print(f"ok: {bundle.ref} passes the manifest, schema and compile-policy checks (digest {bundle.digest[:16]}…)")


@algo.command("test")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", "dataset", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--params", default=None, help="Run parameters as JSON.")
@click.option("--epsilon", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
def test(folder: Path, dataset: Path, params: str | None, epsilon: float | None, as_json: bool) -> None:
    """Run an unsigned bundle through the real sandbox and release gate on a local file."""
    from opal.devloop import test_bundle

    result = test_bundle(folder, dataset=dataset, params=parse_params(params), epsilon=epsilon)
    if as_json:
        emit_json(result)
    else:
        render_release(result, title=f"{result['bundle']['name']} (local test, no budget spent)")
        for d in result.get("decisions", [])[:20]:
            group = d.get("group")
            console.print(f"  {'released ' if d.get('released') else 'suppressed'}  {d.get('reason')}  {json.dumps(group) if group else ''}")


@algo.command("submit")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--key", default=None, help="Statistician key that signs the submission.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def submit(app: App, folder: Path, key: str | None, as_json: bool) -> None:
    """Sign and submit the bundle in FOLDER for review."""
    from opal.devloop import check_bundle
    from opal.trust.review import submit as do_submit

    bundle = check_bundle(folder)
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
        "(SELECT COUNT(DISTINCT key_id) FROM approvals a WHERE a.digest = b.digest AND a.verdict = 'approve') AS approvals "
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
@click.option("--json", "as_json", is_flag=True)
@pass_app
def review(app: App, ref: str, as_json: bool) -> None:
    """Show what a reviewer signs: manifest, parameters, privacy and source."""
    from opal.runs.request import resolve_bundle

    digest, _, _ = resolve_bundle(app.node, ref)
    bundle: Bundle = app.node.registry.load(digest)
    if as_json:
        emit_json({"digest": digest, "manifest": bundle.manifest.to_dict(), "source": bundle.source})
        return
    console.print(f"[bold]{bundle.ref}[/]  digest {digest}")
    console.print_json(json.dumps(bundle.manifest.to_dict()))
    console.print(Syntax(bundle.source, "python", line_numbers=True))


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
@click.option("--expires", default=None, help="Lifetime, e.g. 90d (default: the trust policy's).")
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
    """Sign a rejection of bundle REF."""
    _verdict(app, ref, key, "reject", None, comment)


COMMANDS = [algo]
