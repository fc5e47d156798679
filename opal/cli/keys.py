"""opal keys new/list/export/import/revoke"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from opal.cli._app import App, console, emit_json, pass_app
from opal.errors import BadInputError
from opal.trust.keys import ROLES


@click.group("keys")
def keys() -> None:
    """Ed25519 keys and their roles."""


@keys.command("new")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option(
    "--key", "by", default=None,
    help="Board key that grants ROLE in the ledger now (otherwise the key holds a role once the "
    "board's trust policy names it).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def new(app: App, name: str, role: str, by: str | None, as_json: bool) -> None:
    """Create a key pair NAME labelled ROLE (private part written 0600, encrypted with OPAL_PASSPHRASE)."""
    signer = app.node.keyring.signer_for(by, "board") if by else None
    info = app.node.keyring.new(name, role, app.node.ledger, by=signer)
    if as_json:
        emit_json(info.to_dict())
    else:
        console.print(f"created {role} key [bold]{name}[/] id {info.key_id[:16]}…")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the keys this node knows."""
    infos = app.node.keyring.all()
    if as_json:
        emit_json([dict(k.to_dict(), holds_private=app.node.keyring.holds_private(k.name)) for k in infos])
        return
    table = Table("name", "role", "key id", "private", "revoked")
    for k in infos:
        table.add_row(
            k.name,
            k.role,
            k.key_id[:16] + "…",
            "yes" if app.node.keyring.holds_private(k.name) else "no",
            k.revoked_at or "",
        )
    console.print(table)


@keys.command("export")
@click.argument("name")
@pass_app
def export(app: App, name: str) -> None:
    """Print the public part of NAME as JSON."""
    click.echo(app.node.keyring.export(name))


@keys.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "as_name", default=None, help="Record the key under another name.")
@click.option("--key", "by", default=None, help="Board key that grants the key its role in the ledger.")
@pass_app
def import_(app: App, file: Path, as_name: str | None, by: str | None) -> None:
    """Import a public key written by opal keys export."""
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        raise BadInputError(f"{file} is not a readable JSON key file (from opal keys export)") from None
    signer = app.node.keyring.signer_for(by, "board") if by else None
    info = app.node.keyring.import_public(data, app.node.ledger, as_name=as_name, by=signer)
    console.print(f"imported {info.role} key [bold]{info.name}[/] id {info.key_id[:16]}…")


@keys.command("revoke")
@click.argument("name")
@click.option("--reason", required=True)
@click.option("--key", "by", default=None, help="Board or operator key that signs the revocation.")
@pass_app
def revoke(app: App, name: str, reason: str, by: str | None) -> None:
    """Revoke key NAME: nothing it signs after now is trusted."""
    signer = app.node.keyring.signer_for(by, "board", "operator")
    app.node.keyring.revoke(name, reason, by=signer, ledger=app.node.ledger)
    console.print(f"revoked key [bold]{name}[/]: {reason}")


COMMANDS = [keys]
