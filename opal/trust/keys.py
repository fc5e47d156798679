"""Ed25519 keys and roles.

A key's id is the SHA-256 of its raw public key bytes. Private keys live in
``OPAL_HOME/keys/<name>.pem`` (PKCS#8, mode 0600, encrypted when
``OPAL_PASSPHRASE`` is set); their bytes are never logged.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opal.errors import BadInputError, TrustError
from opal.trust import ed25519_batch

__all__ = [
    "ROLES",
    "KeyInfo",
    "first_invalid_signature",
    "key_id_of",
    "sign_bytes",
    "verify_signature",
    "verify_signature_raw",
    "generate_private_key",
    "load_private_key",
    "write_private_key",
    "utcnow",
]

ROLES = ("statistician", "reviewer", "operator", "board")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """The public facts about one key."""

    name: str
    key_id: str
    role: str
    public_key: str  # raw Ed25519 public key, hex
    created: str
    revoked_at: str | None = None
    revoke_reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_key))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "role": self.role,
            "public_key": self.public_key,
            "created": self.created,
            "revoked_at": self.revoked_at,
            "revoke_reason": self.revoke_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyInfo:
        return cls(
            name=str(data["name"]),
            key_id=str(data["key_id"]),
            role=str(data["role"]),
            public_key=str(data["public_key"]),
            created=str(data["created"]),
            revoked_at=data.get("revoked_at"),
            revoke_reason=data.get("revoke_reason"),
        )


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise BadInputError(
            f"key name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-'"
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise BadInputError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _passphrase() -> bytes | None:
    value = os.environ.get("OPAL_PASSPHRASE")
    return value.encode() if value else None


def write_private_key(path: Path, private: Ed25519PrivateKey) -> None:
    passphrase = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrustError(
            f"no private key at {path}; this node does not hold that key "
            "(create it with opal keys new, or use --key with a key this node holds)"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except (TypeError, ValueError):
        raise TrustError(
            f"cannot load private key {path.name}: wrong or missing passphrase "
            "(set OPAL_PASSPHRASE)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path.name} is not an Ed25519 key")
    return key


def sign_bytes(private: Ed25519PrivateKey, domain: str, message: bytes) -> str:
    """Sign ``message`` under a domain tag, so a signature for one purpose is never valid for another."""
    return base64.b64encode(private.sign(_tagged(domain, message))).decode()


def verify_signature(public_key_hex: str, domain: str, message: bytes, signature: str) -> None:
    """Raise TrustError unless ``signature`` is valid; return None."""
    try:
        public = bytes.fromhex(public_key_hex)
    except ValueError:
        public = b""  # no key at all: rejected below, after the signature's own checks
    verify_signature_raw(public, domain, message, signature)


def verify_signature_raw(public_raw: bytes, domain: str, message: bytes, signature: str) -> None:
    """:func:`verify_signature` with the raw 32-byte public key; raise TrustError unless valid."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, TypeError):
        raise TrustError(f"{domain} signature is not valid base64") from None
    if len(raw) != 64:
        raise TrustError(f"{domain} signature has {len(raw)} bytes, expected 64")
    try:
        _public_key(public_raw).verify(raw, _tagged(domain, message))
    except (InvalidSignature, ValueError):
        raise TrustError(f"{domain} signature does not verify") from None


def first_invalid_signature(items: Sequence[tuple[bytes, str, bytes, str]], *, batch: bool = True) -> int | None:
    """The position of the first ``(public key raw, domain, message, signature)`` that
    :func:`verify_signature_raw` rejects, or None if all verify.

    All are checked at once by batch verification (:mod:`opal.trust.ed25519_batch`);
    only if that does not pass are they checked one by one with OpenSSL, up to the
    first bad one. Several times faster than checking each; ``batch=False``
    checks each with OpenSSL (see the module docstring of ed25519_batch for the
    one case where the two can differ).
    """
    together: list[tuple[bytes, bytes, bytes]] = []
    if batch and ed25519_batch.worth_it(len(items), len({item[0] for item in items})):
        for public_raw, domain, message, signature in items:
            try:
                raw = base64.b64decode(signature, validate=True)
            except (ValueError, TypeError):
                break
            if len(raw) != 64 or len(public_raw) != 32:
                break
            together.append((public_raw, _tagged(domain, message), raw))
        if len(together) == len(items) and ed25519_batch.verify_batch(together):
            return None
    for position, (public_raw, domain, message, signature) in enumerate(items):
        try:
            verify_signature_raw(public_raw, domain, message, signature)
        except TrustError:
            return position
    return None


# A ledger has few keys and many signatures by each: load each key once.
@functools.lru_cache(maxsize=1024)
def _public_key(public_raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_raw)


def _tagged(domain: str, message: bytes) -> bytes:
    return b"opal-v1:" + domain.encode() + b"\n" + message
