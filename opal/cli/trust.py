"""opal trust init/show/history/propose/sign/apply: the board-signed trust policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from opal.cli._app import App, console, emit_json, pass_app
from opal.errors import BadInputError


@click.group("trust")
def trust() -> None:
    """The board-signed trust policy: roles, approval threshold, lifetime."""


def _spec_options(fn: Any) -> Any:
    options = [
        click.option("--from", "spec_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Policy spec by key names (see governance/trust_policy.template.json)."),
        click.option("--board", multiple=True, help="Board key name (repeat)."),
        click.option("--threshold", type=int, default=None, help="Board signatures needed to change the policy."),
        click.option("--reviewer", "--reviewers", "reviewer", multiple=True, help="Reviewer key name (repeat)."),
        click.option(
            "--approvals", type=int, default=None, help="Reviewer approvals a bundle needs (k of n; default 2)."
        ),
        click.option("--statistician", multiple=True,
                     help="Statistician key name (repeat; default: the keyring's statistician keys)."),
        click.option("--operator", multiple=True,
                     help="Operator (log) key name (repeat; default: the keyring's operator keys)."),
        click.option("--witness", multiple=True,
                     help="Witness key name (repeat; default: the keyring's witness keys)."),
        click.option("--witnesses", type=int, default=None,
                     help="Witness cosignatures an audit requires (default 1 if any witness, else 0)."),
        click.option("--lifetime-days", type=int, default=None, help="Longest an approval stays valid (default 90)."),
        click.option("--author-may-approve/--author-may-not-approve", default=None,
                     help="Whether an author may approve their own bundle (default: may not)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _spec(spec_file: Path | None, board: tuple[str, ...], threshold: int | None, reviewer: tuple[str, ...],
          approvals: int | None, statistician: tuple[str, ...], operator: tuple[str, ...],
          witness: tuple[str, ...], witnesses: int | None,
          lifetime_days: int | None, author_may_approve: bool | None) -> dict[str, Any]:
    from opal.trust.governance import read_policy_spec

    return {
        "base": read_policy_spec(spec_file) if spec_file else None,
        "board": board or None,
        "threshold": threshold,
        "reviewer": reviewer or None,
        "approvals": approvals,
        "statistician": statistician or None,
        "operator": operator or None,
        "witness": witness or None,
        "witnesses": witnesses,
        "approval_lifetime_days": lifetime_days,
        "author_may_approve": author_may_approve,
    }


def _read_envelope(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{file} is not a readable trust policy file ({exc})") from None
    if not isinstance(data, dict) or "signed" not in data:
        raise BadInputError(f"{file} is not a trust policy file (written by opal trust propose)")
    return data


def _write_envelope(file: Path, envelope: dict[str, Any]) -> None:
    file.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")


@trust.command("init")
@_spec_options
@click.option(
    "--key", "keys", multiple=True, help="Board key to sign with (default: every listed board key held here)."
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def init(app: App, /, keys: tuple[str, ...], as_json: bool, **spec: Any) -> None:
    """Create, sign and install trust policy version 1."""
    from opal.trust.governance import init_policy, read_policy_spec

    names = list(keys) or list(spec["board"]) or list(
        (read_policy_spec(spec["spec_file"]) if spec["spec_file"] else {}).get("board", [])
    )
    keyring = app.node.keyring
    signers = [keyring.signer_for(n, "board") for n in names if keys or keyring.holds_private(n)]
    policy = init_policy(app.node, signers=signers, **_spec(**spec))
    if as_json:
        emit_json(policy.to_dict())
    else:
        console.print(
            f"installed trust policy v{policy.version}: {policy.threshold} reviewer approval(s), "
            f"board threshold {policy.board_threshold}, signed by {', '.join(s.name for s in signers)}"
        )


@trust.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, as_json: bool) -> None:
    """The trust policy in force (after re-checking every version's signatures)."""
    from opal.trust.governance import policy_in_force

    policy = policy_in_force(app.node)
    if as_json:
        emit_json(policy.to_dict())
        return
    d = policy.to_dict()
    console.print(f"[bold]{policy.label}[/]" + (f"  digest {policy.digest}" if policy.digest else ""))
    console.print(
        f"approvals needed: {d['approval_threshold']}   "
        f"approval lifetime: {d['approval_lifetime_days']} days   "
        f"author may approve: {'yes' if d['author_may_approve'] else 'no'}"
    )
    if policy.signed:
        console.print(f"board signatures to change it: {d['board_threshold']}")
        for role, names in d["roles"].items():
            console.print(f"  {role}: {', '.join(names)}")
    else:
        console.print(
            "no board-signed trust policy: nobody holds a role and worker runs are refused; "
            "the board installs one with opal trust init --board KEY"
        )


@trust.command("history")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def history(app: App, as_json: bool) -> None:
    """Every installed policy version."""
    from opal.trust.governance import policy_history

    items = policy_history(app.node)
    if as_json:
        emit_json(items)
        return
    if not items:
        console.print("no board-signed trust policy installed; nobody holds a role")
    for item in items:
        console.print(f"v{item['version']}  {item['installed']}  digest {item['digest'][:16]}…  "
                      f"{len(item['policy']['signatures'])} signature(s)")


@trust.command("propose")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_spec_options
@click.option("--key", "keys", multiple=True, help="Board key to sign with right away (repeat).")
@pass_app
def propose(app: App, /, out: Path, keys: tuple[str, ...], **spec: Any) -> None:
    """Write the next policy version to OUT (unchanged fields come from the policy in force)."""
    from opal.trust.governance import draft_policy, sign_policy

    envelope = draft_policy(app.node, **_spec(**spec))
    for name in keys:
        envelope = sign_policy(envelope, app.node.keyring.signer_for(name, "board"))
    _write_envelope(out, envelope)
    console.print(f"wrote trust policy v{envelope['signed']['version']} to {out} with {len(envelope['signatures'])} "
                  "signature(s); collect board signatures with opal trust sign, then opal trust apply")


@trust.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", required=True, help="Board key that signs.")
@pass_app
def sign(app: App, file: Path, key: str) -> None:
    """Add a board signature to the policy in FILE."""
    from opal.trust.governance import sign_policy

    envelope = sign_policy(_read_envelope(file), app.node.keyring.signer_for(key, "board"))
    _write_envelope(file, envelope)
    console.print(f"{key} signed trust policy v{envelope['signed']['version']} in {file} "
                  f"({len(envelope['signatures'])} signature(s))")


@trust.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", default=None, help="Board or operator key that records the change in the ledger.")
@pass_app
def apply(app: App, file: Path, key: str | None) -> None:
    """Verify FILE as the next policy version (previous + 1, board thresholds) and install it."""
    from opal.trust.governance import install_policy

    signer = app.node.keyring.signer_for(key, "board", "operator")
    policy = install_policy(app.node, _read_envelope(file), signer=signer)
    console.print(f"installed trust policy v{policy.version} ({policy.threshold} reviewer approval(s) needed)")


COMMANDS = [trust]
