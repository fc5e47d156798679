"""Witnessing: a board member co-signs a checkpoint after checking it extends the last one they saw.

This is the check that catches a split view (RFC 9162 §8.2, the witness
cosigning of C2SP tlog-witness): an operator who shows one history to one
board member and another to the next cannot get both cosigned, because each
witness only signs a checkpoint that is consistent with the one it signed
before, and two checkpoints of one size with different roots are equivocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from opal.errors import BadInputError, LedgerCorrupt, TrustError
from opal.ledger import merkle
from opal.ledger.log import Ledger, SignerLike
from opal.ledger.records import Checkpoint, Cosignature
from opal.ledger.verify import check_checkpoint_signature, check_equivocation
from opal.trust.keys import utcnow

__all__ = ["cosign", "cosign_export", "load_checkpoint_file", "witness_state_path"]


def witness_state_path(origin: str, witness_key_id: str, *, root: Path | None = None) -> Path:
    """The witness's memory of ``origin``: under ``root`` (the witness's own home, ``opal witness``)
    or the user's configuration directory (``$XDG_CONFIG_HOME/opal/witness/``), never in the node's
    OPAL_HOME, so the operator cannot delete it to make the witness cosign a fork as its "first"."""
    if root is None:
        base = os.environ.get("XDG_CONFIG_HOME")
        root = (Path(base) if base else Path.home() / ".config") / "opal" / "witness"
    name = hashlib.sha256(f"{origin}\n{witness_key_id}".encode()).hexdigest()[:24]
    return root / f"{name}.json"


def cosign_export(lines: list[str], witness: SignerLike, *, state_file: Path) -> dict[str, Any]:
    """Witness a log from its export (another machine: no access to the node's database).

    Verifies the export offline (proofs, signatures, roles, its leaf hashes), proves
    its checkpoint extends the last one this witness saw (state_file), and signs a
    tlog-cosignature/v1 the operator adds with ``opal ledger cosignature add``.

    Raises:
        LedgerCorrupt: the export does not verify or does not extend the last checkpoint seen.
        BadInputError: not an export, or an export without leaf hashes.
    """
    from opal.ledger.export import export_checkpoint, verify_export

    verify_export(lines)
    current, tree = export_checkpoint(lines)
    last_seen = load_checkpoint_file(state_file) if state_file.exists() else None
    consistency: dict[str, Any] | None = None
    if last_seen is not None:
        if last_seen.origin != current.origin:
            raise BadInputError(
                f"the last seen checkpoint is of log {last_seen.origin!r}, this export is of {current.origin!r}"
            )
        if last_seen.size > current.size or tree.root(last_seen.size).hex() != last_seen.root:
            raise LedgerCorrupt(
                f"checkpoint {current.size} does not extend the one this witness saw ({last_seen.size}); "
                "refusing to cosign"
            )
        consistency = {"from_size": last_seen.size, "to_size": current.size}
    cs = _sign(current, witness)
    _remember(state_file, current)
    return {"checkpoint": current.to_dict(), "cosignature": cs.to_dict(), "consistency": consistency}


def _sign(current: Checkpoint, witness: SignerLike) -> Cosignature:
    unsigned = Cosignature(
        origin=current.origin, size=current.size, root=current.root, witness=witness.key_id,
        signature="", time=utcnow()[:19] + "Z",  # tlog-cosignature/v1 signs whole seconds
    )
    return dataclasses.replace(unsigned, signature=witness.sign_note(unsigned.message()))


def _remember(state_file: Path, current: Checkpoint) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(current.to_dict(), indent=2))
    os.replace(tmp, state_file)


def load_checkpoint_file(path: Path) -> Checkpoint:
    """Read a checkpoint JSON file (``opal ledger checkpoint`` output, or a cosign result)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"no checkpoint file at {path}") from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read checkpoint file {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("checkpoint"), dict):
        data = data["checkpoint"]
    if not isinstance(data, dict):
        raise BadInputError(f"{path} is not a checkpoint JSON object")
    return Checkpoint.from_dict(data)


def cosign(
    ledger: Ledger,
    witness: SignerLike,
    *,
    last_seen: Checkpoint | None = None,
    state_file: Path | None = None,
) -> dict[str, Any]:
    """Check the latest signed checkpoint and co-sign it with ``witness``.

    ``last_seen`` (default: the checkpoint stored in ``state_file``) is the
    checkpoint this witness saw last; the new one must extend it (RFC 9162
    §2.1.4 consistency proof). On success the cosignature is stored in the
    ledger database and ``state_file`` is advanced.

    Raises:
        BadInputError: no signed checkpoint yet, or ``last_seen`` is of another log.
        TrustError: the witness key is not a board key.
        LedgerCorrupt: signatures, roots or consistency do not hold, or equivocation.
    """
    current = ledger.latest_checkpoint()
    if current is None:
        raise BadInputError(
            "the ledger has no signed checkpoint yet; sign one with opal ledger checkpoint"
        )
    keys = ledger.authority()
    if "witness" not in keys.ever.get(witness.key_id, set()):
        raise TrustError("this key is not a witness key of the board's trust policy; the board names witnesses")
    check_checkpoint_signature(current, keys)
    check_equivocation(
        [(cp.size, cp.root, cp.signer) for cp in ledger.checkpoints()]
        + [(cs.size, cs.root, cs.witness) for cs in ledger.cosignatures()]
    )
    # The witness recomputes the root from the entries it can read itself.
    tree = ledger.tree()
    if current.size > tree.size or tree.root(current.size).hex() != current.root:
        raise LedgerCorrupt(
            f"the signed checkpoint of size {current.size} does not match the ledger's entries; run opal ledger verify"
        )
    if last_seen is None and state_file is not None and state_file.exists():
        last_seen = load_checkpoint_file(state_file)
    consistency: dict[str, Any] | None = None
    if last_seen is not None:
        if last_seen.origin != current.origin:
            raise BadInputError(
                f"the last seen checkpoint is of log {last_seen.origin!r}, this ledger is {current.origin!r}"
            )
        check_checkpoint_signature(
            last_seen, keys, what=f"the last seen checkpoint (size {last_seen.size})"
        )
        check_equivocation(
            [
                (last_seen.size, last_seen.root, last_seen.signer),
                (current.size, current.root, current.signer),
            ]
        )
        if last_seen.size > current.size:
            raise LedgerCorrupt(
                f"the latest checkpoint has size {current.size}, smaller than the {last_seen.size} this witness "
                "already saw; the log was rolled back"
            )
        proof = tree.consistency_proof(last_seen.size, current.size)
        try:
            merkle.verify_consistency(
                old_size=last_seen.size,
                new_size=current.size,
                old_root=last_seen.root_bytes,
                new_root=current.root_bytes,
                proof=proof,
            )
        except LedgerCorrupt as exc:
            raise LedgerCorrupt(
                f"checkpoint {current.size} does not extend the one this witness saw ({last_seen.size}): "
                f"{exc.message}; refusing to cosign"
            ) from None
        consistency = {
            "from_size": last_seen.size,
            "to_size": current.size,
            "proof": [p.hex() for p in proof],
        }
    cs = _sign(current, witness)
    ledger.add_cosignature(cs)
    if state_file is not None:
        _remember(state_file, current)
    all_cosignatures = ledger.cosignatures(size=current.size)
    publics = {**keys.publics, witness.key_id: witness.public_key}
    known = [c for c in all_cosignatures if c.witness in publics]
    return {
        "checkpoint": current.to_dict(),
        "cosignature": cs.to_dict(),
        "cosignatures": [c.to_dict() for c in all_cosignatures],
        "consistency": consistency,
        "note": current.note(publics, known),
    }
