"""The node's keyring: public key records in the database, private keys on disk.

The ``role`` recorded here is a label for choosing keys on this node, never an
authority: a key holds a role only if the board-signed trust policy names it,
or a board key added it to the ledger (``key_added`` signed by the board).
A key never vouches for itself.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opal.db import Database
from opal.errors import BadInputError, TrustError
from opal.home import Home
from opal.trust.keys import (
    KeyInfo,
    check_name,
    check_public_key,
    check_role,
    generate_private_key,
    is_plaintext,
    key_id_of,
    load_private_key,
    private_key_path,
    public_raw,
    sign_bytes,
    utcnow,
    write_private_key,
)

if TYPE_CHECKING:
    from opal.ledger import Ledger

__all__ = ["Keyring", "Signer"]


@dataclass(frozen=True)
class Signer:
    """A key this node holds privately, ready to sign."""

    info: KeyInfo
    _private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return self.info.key_id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def role(self) -> str:
        return self.info.role

    @property
    def public_key(self) -> str:
        return self.info.public_key

    def sign(self, domain: str, message: bytes) -> str:
        return sign_bytes(self._private, domain, message)

    def sign_note(self, message: bytes) -> str:
        """A C2SP signed-note signature (base64) over a checkpoint or cosignature message.

        Only those two messages are ever passed: both start with text no other
        OPAL signature covers (every other one is domain-tagged ``opal-v1:``).
        """
        return base64.b64encode(self._private.sign(message)).decode()

    def __repr__(self) -> str:  # never show key material
        return f"Signer({self.info.name!r}, role={self.info.role!r})"


class Keyring:
    def __init__(self, home: Home, db: Database) -> None:
        self.home = home
        self.db = db

    def _private_path(self, name: str) -> Path:
        return private_key_path(self.home.keys_dir, name)

    def new(self, name: str, role: str, ledger: Ledger, *, by: Signer | None = None) -> KeyInfo:
        """Create a key pair. With ``by`` (a board key) the key's role is recorded in the
        ledger under the board's signature; without, it holds a role only once the
        board's trust policy names it."""
        check_name(name)
        check_role(role)
        if self.find(name) is not None:
            raise BadInputError(f"a key named {name!r} exists already; choose another name")
        private = generate_private_key()
        raw = public_raw(private)
        info = KeyInfo(
            name=name, key_id=key_id_of(raw), role=role, public_key=raw.hex(), created=utcnow()
        )
        self.home.keys_dir.mkdir(parents=True, exist_ok=True)
        write_private_key(self.home.keys_dir, name, private)
        self._record(info, ledger, by=by)
        return info

    def import_public(
        self, data: dict[str, Any], ledger: Ledger, *, as_name: str | None = None, by: Signer | None = None
    ) -> KeyInfo:
        """Import another node's public key (``opal keys export`` output)."""
        try:
            name = as_name or str(data["name"])
            role = str(data["role"])
            public_key = str(data["public_key"])
            raw = bytes.fromhex(public_key)
        except (KeyError, ValueError, TypeError):
            raise BadInputError(
                "key file must be the JSON written by opal keys export (name, role, public_key)"
            ) from None
        check_name(name)
        check_role(role)
        try:
            check_public_key(raw)
        except TrustError as exc:
            raise BadInputError(f"cannot import {name!r}: {exc.message}") from None
        if self.find(name) is not None:
            raise BadInputError(f"a key named {name!r} exists already; use --as NAME")
        key_id = key_id_of(raw)
        for known in self.by_id(key_id):
            # one key, one label: a second name must not smuggle in a second role
            if known.role != role:
                raise BadInputError(
                    f"this key is already known as {known.name!r} with role {known.role!r}; "
                    f"it cannot also be a {role} key"
                )
        revoked = self.revoked_at(key_id, ledger)
        if revoked:
            raise TrustError(f"this key was revoked on {revoked}; a revoked key cannot be imported again")
        info = KeyInfo(name=name, key_id=key_id, role=role, public_key=public_key, created=utcnow())
        self._record(info, ledger, by=by)
        return info

    def _record(self, info: KeyInfo, ledger: Ledger, *, by: Signer | None) -> None:
        if by is not None and by.key_id == info.key_id:
            raise TrustError("a key cannot vouch for itself; a board key records it")
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO keys(name, key_id, role, public_key, created) VALUES (?,?,?,?,?)",
                (info.name, info.key_id, info.role, info.public_key, info.created),
            )
            if by is not None:
                body = {"name": info.name, "role": info.role, "key_id": info.key_id, "public_key": info.public_key}
                ledger.append_in(tx, type="key_added", body=body, signer=by, subject=info.key_id)

    def find(self, name: str) -> KeyInfo | None:
        row = self.db.one("SELECT * FROM keys WHERE name = ?", (name,))
        return KeyInfo.from_dict(dict(row)) if row else None

    def get(self, name: str) -> KeyInfo:
        info = self.find(name)
        if info is None:
            raise BadInputError(f"no key named {name!r}; see opal keys list")
        return info

    def by_id(self, key_id: str) -> list[KeyInfo]:
        return [KeyInfo.from_dict(dict(r)) for r in self.db.query("SELECT * FROM keys WHERE key_id = ?", (key_id,))]

    def all(self) -> list[KeyInfo]:
        return [KeyInfo.from_dict(dict(r)) for r in self.db.query("SELECT * FROM keys ORDER BY created, name")]

    def revoked_at(self, key_id: str, ledger: Ledger | None = None) -> str | None:
        """When ``key_id`` was revoked, read from the signed ``key_revoked`` entries; None if never.

        The keyring's ``revoked_at`` column is an index only: clearing it does not un-revoke a key.
        """
        if ledger is None:
            from opal.ledger import Ledger as _Ledger

            ledger = _Ledger(self.db)
        # not filtered by the subject column: an edited index must not hide a revocation
        for entry in ledger.entries(type="key_revoked"):
            if entry.body.get("key_id") == key_id:
                return entry.time
        return None

    def holds_private(self, name: str) -> bool:
        return self._private_path(name).exists()

    def plaintext_keys(self) -> list[str]:
        """Names of the private keys on this node stored without encryption."""
        held = [k.name for k in self.all() if self.holds_private(k.name)]
        return sorted(name for name in held if is_plaintext(self._private_path(name)))

    def signer(self, name: str) -> Signer:
        info = self.get(name)
        revoked = self.revoked_at(info.key_id)
        if revoked:
            raise TrustError(f"key {name!r} was revoked on {revoked}; use an unrevoked key")
        return Signer(info, load_private_key(self._private_path(name)))

    def default_signer(self, *roles: str) -> Signer:
        """The node's only unrevoked private key with one of ``roles``; ambiguity is an error."""
        candidates = [
            k for k in self.all() if k.role in roles and self.holds_private(k.name) and not self.revoked_at(k.key_id)
        ]
        if not candidates:
            raise BadInputError(
                f"this node holds no {' or '.join(roles)} key; create one with "
                f"opal keys new NAME --role {roles[0]}"
            )
        if len(candidates) > 1:
            names = ", ".join(k.name for k in candidates)
            raise BadInputError(f"several {' or '.join(roles)} keys ({names}); choose one with --key NAME")
        return self.signer(candidates[0].name)

    def signer_for(self, name: str | None, *roles: str) -> Signer:
        if name is None:
            return self.default_signer(*roles)
        signer = self.signer(name)
        if roles and signer.role not in roles:
            raise TrustError(
                f"key {name!r} has role {signer.role!r}; this needs a {' or '.join(roles)} key"
            )
        return signer

    def revoke(self, name: str, reason: str, *, by: Signer, ledger: Ledger) -> KeyInfo:
        info = self.get(name)
        already = self.revoked_at(info.key_id, ledger)
        if already:
            raise BadInputError(f"key {name!r} was already revoked on {already}")
        when = utcnow()
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE keys SET revoked_at = ?, revoke_reason = ? WHERE key_id = ?",
                (when, reason, info.key_id),
            )
            ledger.append_in(
                tx,
                type="key_revoked",
                body={"name": name, "key_id": info.key_id, "reason": reason},
                signer=by,
                subject=info.key_id,
            )
        return self.get(name)

    def export(self, name: str) -> str:
        info = self.get(name)
        return json.dumps(
            {"name": info.name, "role": info.role, "key_id": info.key_id, "public_key": info.public_key},
            indent=2,
        )
