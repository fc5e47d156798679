"""Shared helpers for the trust tests: a node with keys, bundles, and an attacker's toolbox."""

from __future__ import annotations

import base64
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opal.bundle.registry import Bundle
from opal.node import Node
from opal.trust.review import Approval, approve, record_verdict, submit

REPO = Path(__file__).resolve().parents[2]
PD = REPO / "algorithms" / "population_density"

CAST = [
    ("olga", "operator"),
    ("sam", "statistician"),
    ("rita", "reviewer"),
    ("ravi", "reviewer"),
    ("rex", "reviewer"),
]


def make_node(tmp_path: Path, *, board: int = 1, policy: bool = True) -> Node:
    """A node with the CAST's keys and ``board`` board keys; with ``policy``, trust policy v1
    signed by the board names every CAST key in its role (2 approvals, board threshold 1)."""
    node = Node.open(tmp_path / "home")
    for name, role in CAST + [(f"b{i}", "board") for i in range(1, board + 1)]:
        node.keyring.new(name, role, node.ledger)
    if policy:
        from opal.trust.governance import init_policy

        boards = [f"b{i}" for i in range(1, board + 1)]
        init_policy(node, signers=[node.keyring.signer(b) for b in boards], board=boards, threshold=1)
    return node


def bundle_folder(tmp_path: Path, version: str = "1.0.0", *, comment: str = "") -> Path:
    folder = tmp_path / f"pd-{version}{'-' + comment.replace(' ', '_') if comment else ''}"
    shutil.copytree(PD, folder)
    toml = folder / "opal.toml"
    toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', toml.read_text()))
    if comment:
        (folder / "algorithm.py").write_text((folder / "algorithm.py").read_text() + f"\n# {comment}\n")
    return folder


def submitted(node: Node, tmp_path: Path, version: str = "1.0.0", *, approvers: tuple[str, ...] = (), comment: str = "") -> str:
    bundle = Bundle.from_folder(bundle_folder(tmp_path, version, comment=comment))
    submit(node, bundle, signer=node.keyring.signer("sam"))
    for name in approvers:
        approve(node, bundle.digest, signer=node.keyring.signer(name))
    return bundle.digest


def stored_file(node: Node, digest: str, path: str) -> Path:
    target = node.home.registry_dir / digest / path
    target.parent.chmod(0o755)
    if target.exists():
        target.chmod(0o644)
    return target


def forge_approval(
    node: Node,
    digest: str,
    *,
    signer_name: str,
    time: datetime | None = None,
    expires: datetime | None = None,
    verdict: str = "approve",
) -> None:
    """What an attacker with the node does: sign a statement with any key it holds, insert the row
    and record it in the ledger under that key's signature."""
    row = node.db.one("SELECT * FROM bundles WHERE digest = ?", (digest,))
    assert row is not None
    signer = node.keyring.signer(signer_name)
    now = time or datetime.now(UTC)
    approval = Approval(
        digest=digest,
        name=row["name"],
        version=row["version"],
        reviewer=signer.key_id,
        verdict=verdict,
        time=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        expires=(expires or now + timedelta(days=30)).isoformat(timespec="seconds").replace("+00:00", "Z"),
        comment="",
    )
    record_verdict(node, approval, signer=signer)   # what approve() records, without its checks


def forged_signature() -> str:
    return base64.b64encode(bytes(range(64))).decode()


def second_name(node: Node, name: str, alias: str) -> None:
    """Register the key ``name`` again under ``alias`` (public import + a copy of its private key)."""
    node.keyring.import_public(json.loads(node.keyring.export(name)), node.ledger, as_name=alias)
    shutil.copy(node.home.keys_dir / f"{name}.pem", node.home.keys_dir / f"{alias}.pem")
