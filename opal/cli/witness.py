"""opal witness cosign: an independent witness, run from its own home with its own key and memory."""

from __future__ import annotations

from pathlib import Path

import click

from opal.cli._app import App, check_out, console, emit_json, pass_app
from opal.errors import BadInputError


@click.group("witness")
def witness() -> None:
    """Witness a log from your own home (--home): your key, your memory of the log."""


@witness.command("cosign")
@click.option("--key", required=True, help="Your witness key (in your own home: opal --home WHOME keys new).")
@click.option(
    "--node",
    "node_home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's OPAL_HOME (same machine or a mounted one): read its latest checkpoint, add the cosignature.",
)
@click.option(
    "--file",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="An export of the log (opal ledger export): verify it offline and print the cosignature.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --file: write the cosignature JSON here (the operator adds it with "
              "opal ledger cosignature add FILE).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def cosign(
    app: App, key: str, node_home: Path | None, export_file: Path | None, out: Path | None, as_json: bool
) -> None:
    """Check the log's latest checkpoint extends the last one you saw, then cosign it (tlog-cosignature/v1)."""
    from opal.ledger.witness import cosign as cosign_node
    from opal.ledger.witness import cosign_export, witness_state_path
    from opal.node import Node

    if node_home is None and export_file is None:
        raise BadInputError("give the log to witness: --node NODE_HOME or --file EXPORT")
    if node_home is not None and export_file is not None:
        raise BadInputError("give only one log to witness: --node NODE_HOME or --file EXPORT, not both")
    check_out(out)   # before the witness records what it saw
    mine = app.node
    signer = mine.keyring.signer_for(key, "witness")
    memory = mine.home.root / "witness"
    if export_file is not None:
        try:
            lines = export_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise BadInputError(f"no export file at {export_file}") from None
        origin = _origin(lines)
        result = cosign_export(lines, signer, state_file=witness_state_path(origin, signer.key_id, root=memory))
        if out is not None:
            import json

            out.write_text(json.dumps(result["cosignature"], indent=2) + "\n")
    else:
        assert node_home is not None
        if node_home.resolve() == mine.home.root.resolve():
            raise BadInputError("a witness runs from its own home, not the node's: pass --home WITNESS_HOME")
        node = Node.open(node_home)
        state = witness_state_path(node.ledger.origin, signer.key_id, root=memory)
        result = cosign_node(node.ledger, signer, state_file=state)
    if as_json:
        emit_json(result)
        return
    cp, c = result["checkpoint"], result["consistency"]
    console.print(
        f"cosigned checkpoint of size {cp['size']} (root {cp['root'][:16]}…) with {signer.name}"
        + (f"; consistent with the size {c['from_size']} you saw" if c else "; the first you saw of this log")
    )


def _origin(lines: list[str]) -> str:
    import json

    try:
        return str(json.loads(lines[0])["origin"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise BadInputError("not an OPAL ledger export (opal ledger export)") from None


COMMANDS = [witness]
