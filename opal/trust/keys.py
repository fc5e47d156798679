"""Ed25519 keys and roles.

A key's id is the SHA-256 of its raw public key bytes. Private keys live in
``OPAL_HOME/keys/``, mode 0600, and their bytes are never logged: with
``OPAL_PASSPHRASE`` set, ``<name>.p12`` (PKCS#12, PBES2 with
PBKDF2-HMAC-SHA256 at 600 000 iterations and AES-256-CBC, the OWASP 2023
floor); without it, plaintext PKCS#8 ``<name>.pem`` (a node that serves real
data warns about those). An empty passphrase is refused, never read as "no
encryption".

Every signature is checked by OpenSSL through ``cryptography``. OPAL adds only
input rules OpenSSL does not enforce (RFC 8032 leaves them to the caller):
a public key must be a canonical encoding of a point that is not of small
order (identity, order 2, 4 or 8: such a key makes signatures that verify on
any message), and a signature has exactly one base64 spelling, so one entry
has one leaf hash.
"""

from __future__ import annotations

import base64
import binascii
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opal.errors import BadInputError, TrustError

__all__ = [
    "KDF_ITERATIONS",
    "ROLES",
    "KeyInfo",
    "check_public_key",
    "decode_signature",
    "private_key_path",
    "first_invalid_signature",
    "key_id_of",
    "sign_bytes",
    "verify_note_signature",
    "verify_signature",
    "verify_signature_raw",
    "generate_private_key",
    "load_private_key",
    "write_private_key",
    "utcnow",
]

ROLES = ("statistician", "reviewer", "operator", "board", "witness")
KDF_ITERATIONS = 600_000

# RFC 8032 §5.1.3: a point is encoded as y (255 bits, little-endian) and the
# sign of x. The small-order points (the identity, order 2, 4 and 8) have
# y in {1, p-1, 0, c, p-c}; c is the y of the order-8 points (the same list
# libsodium blocks).
_P = 2**255 - 19
_C8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _C8, _P - _C8})
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
        return _public_key(bytes.fromhex(self.public_key))

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
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def check_public_key(raw: bytes, *, what: str = "public key") -> None:
    """Raise TrustError unless ``raw`` is a canonical Ed25519 point of large order.

    Rejects: not 32 bytes; y >= p or x = 0 with the sign bit set (non-canonical,
    RFC 8032 §5.1.3); the identity and the other small-order points, with which
    a forger needs no private key (OpenSSL accepts R = identity, S = 0 for the
    identity key on any message).
    """
    if len(raw) != 32:
        raise TrustError(f"{what} has {len(raw)} bytes, expected 32")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P or (sign and y in (1, _P - 1)):
        raise TrustError(f"{what} is not a canonical Ed25519 encoding; use the key as the owner exported it")
    if y in _SMALL_ORDER_Y:
        raise TrustError(f"{what} is a small-order Ed25519 point (it would verify forged signatures); refused")
    try:
        _public_key(raw)
    except ValueError:
        raise TrustError(f"{what} is not a point on Ed25519") from None


def decode_signature(signature: str, *, what: str = "signature") -> bytes:
    """The 64 signature bytes of ``signature``; raise TrustError unless it is their one base64 spelling.

    Base64 of 64 bytes leaves 4 padding bits that decoders ignore: without
    the re-encoding check one signature had 16 spellings, so one ledger entry
    had 16 leaf hashes.
    """
    try:
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, TypeError, binascii.Error):
        raise TrustError(f"{what} is not valid base64") from None
    if len(raw) != 64:
        raise TrustError(f"{what} has {len(raw)} bytes, expected 64")
    if base64.b64encode(raw).decode("ascii") != signature:
        raise TrustError(f"{what} is not canonical base64 (non-zero padding bits); one signature has one spelling")
    return raw


def _passphrase() -> bytes | None:
    value = os.environ.get("OPAL_PASSPHRASE")
    if value is None:
        return None
    if not value:
        raise BadInputError(
            "OPAL_PASSPHRASE is set but empty; set a real passphrase, or unset it to keep keys unencrypted"
        )
    return value.encode()


def private_key_path(keys_dir: Path, name: str) -> Path:
    """Where the private key ``name`` is: ``<name>.p12`` (encrypted) if present, else ``<name>.pem``."""
    encrypted = keys_dir / f"{name}.p12"
    return encrypted if encrypted.exists() else keys_dir / f"{name}.pem"


def write_private_key(keys_dir: Path, name: str, private: Ed25519PrivateKey) -> Path:
    """Write ``name``'s private key (encrypted when OPAL_PASSPHRASE is set); return its path."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    passphrase = _passphrase()
    if passphrase is not None:
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(KDF_ITERATIONS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(passphrase)
        )
        data = pkcs12.serialize_key_and_certificates(name.encode(), private, None, None, encryption)
        path = keys_dir / f"{name}.p12"
    else:
        data = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = keys_dir / f"{name}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def is_plaintext(path: Path) -> bool:
    return path.suffix == ".pem"


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrustError(
            f"no private key at {path}; this node does not hold that key "
            "(create it with opal keys new, or use --key with a key this node holds)"
        ) from None
    key: object
    if path.suffix == ".p12":
        from cryptography.hazmat.primitives.serialization import pkcs12

        passphrase = _passphrase()
        if passphrase is None:
            raise TrustError(f"{path.name} is encrypted; set OPAL_PASSPHRASE to use it")
        try:
            key, _, _ = pkcs12.load_key_and_certificates(data, passphrase)
        except ValueError:
            raise TrustError(f"cannot open private key {path.name}: wrong passphrase (OPAL_PASSPHRASE)") from None
    else:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError):
            raise TrustError(
                f"cannot load private key {path.name}: encrypted with a legacy scheme or damaged; "
                "create a new key with opal keys new"
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
    raw = decode_signature(signature, what=f"{domain} signature")
    try:
        check_public_key(public_raw, what=f"the {domain} signer's public key")
        _public_key(public_raw).verify(raw, _tagged(domain, message))
    except (InvalidSignature, ValueError, TrustError):
        raise TrustError(f"{domain} signature does not verify") from None


def verify_note_signature(public_key_hex: str, message: bytes, signature: str, *, what: str) -> None:
    """A C2SP signed-note signature (checkpoint, cosignature): Ed25519 over ``message`` itself,
    no OPAL domain tag (the note formats separate their own purposes). Raise TrustError unless valid."""
    raw = decode_signature(signature, what=f"{what} signature")
    try:
        public = bytes.fromhex(public_key_hex)
        check_public_key(public, what=f"the {what} key")
        _public_key(public).verify(raw, message)
    except (InvalidSignature, ValueError, TrustError):
        raise TrustError(f"{what} signature does not verify") from None


def first_invalid_signature(items: Sequence[tuple[bytes, str, bytes, bytes]]) -> int | None:
    """The position of the first ``(public key raw, domain, message, signature bytes)``
    that does not verify, or None if all verify (each by OpenSSL).

    The signatures are the 64 bytes :func:`decode_signature` returned (so their
    one-spelling rule was already applied); each public key is checked by
    :func:`check_public_key` once, however many signatures it made.
    """
    for position, (public_raw, domain, message, signature) in enumerate(items):
        try:
            _checked_key(public_raw).verify(signature, _tagged(domain, message))
        except (InvalidSignature, ValueError, TrustError):
            return position
    return None


@functools.lru_cache(maxsize=1024)
def _checked_key(public_raw: bytes) -> Ed25519PublicKey:
    """The loaded key, once :func:`check_public_key` accepted it (a refusal is not cached)."""
    check_public_key(public_raw)
    return _public_key(public_raw)


# A ledger has few keys and many signatures by each: load each key once.
@functools.lru_cache(maxsize=1024)
def _public_key(public_raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_raw)


def _tagged(domain: str, message: bytes) -> bytes:
    return b"opal-v1:" + domain.encode() + b"\n" + message
