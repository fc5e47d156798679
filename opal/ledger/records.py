"""The facts the ledger stores and signs: entries, checkpoints, cosignatures.

An entry is canonical JSON (RFC 8785) ``{"entry": {...}, "signature": ...}``
where ``entry`` names its index, type, subject, time, actor key id and the
event's fields, and ``signature`` is the actor's Ed25519 signature over the canonical
bytes of ``entry``. The leaf is SHA-256(0x00 ‖ stored bytes) (RFC 6962 §2.1).

A checkpoint is a C2SP ``tlog-checkpoint`` signed note: the body
``<origin>\n<size>\n<base64 root>\n`` signed by the log (operator) key, whose
note key name is the origin. A cosignature is a witness's C2SP
``tlog-cosignature/v1`` signature over ``cosignature/v1\ntime <t>\n<body>``,
given only after checking that the checkpoint extends the last one that
witness saw. Signature lines are ``— <name> base64(key hash ‖ [timestamp ‖]
signature)``, the key hash being the first 4 bytes of
SHA-256(name ‖ 0x0A ‖ type ‖ public key), type 0x01 (Ed25519) or 0x04
(cosignature/v1). Specs: c2sp.org/signed-note, c2sp.org/tlog-checkpoint,
c2sp.org/tlog-cosignature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opal.canonical import canonical_json
from opal.errors import BadInputError
from opal.ledger import merkle

__all__ = [
    "ENTRY_DOMAIN",
    "ENTRY_VERSION",
    "Checkpoint",
    "Cosignature",
    "LedgerEntry",
    "VerifyReport",
    "checkpoint_body",
    "cosignature_message",
    "envelope",
    "key_hash",
    "witness_name",
    "signed_part",
]

ENTRY_DOMAIN = "ledger-entry"
ENTRY_VERSION = 2

_HEAD = b'{"entry":'
_SIG = b',"signature":"'


def envelope(signed: bytes, signature: str) -> bytes:
    """The stored bytes of an entry: canonical JSON of ``{"entry", "signature"}``.

    Built by concatenation: RFC 8785 sorts "entry" before "signature" and a
    base64 signature needs no escaping, so this equals ``canonical_json`` of
    the parsed document.
    """
    return _HEAD + signed + _SIG + signature.encode("ascii") + b'"}'


def signed_part(raw: bytes, signature: str) -> bytes | None:
    """The bytes the actor signed, sliced out of a canonical ``raw``; None if the shape is off."""
    tail = _SIG + signature.encode("ascii") + b'"}'
    if not (raw.startswith(_HEAD) and raw.endswith(tail)):
        return None
    return raw[len(_HEAD) : len(raw) - len(tail)]


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    index: int
    type: str
    time: str
    actor: str
    actor_role: str
    body: dict[str, Any]
    signature: str
    raw: bytes = field(repr=False)
    subject: str | None = None

    @property
    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "actor": self.actor,
            "actor_role": self.actor_role,
            "body": self.body,
            "signature": self.signature,
            "leaf_hash": self.leaf_hash.hex(),
        }

    @classmethod
    def parse(cls, raw: bytes) -> LedgerEntry:
        """Parse stored bytes.

        Raises:
            ValueError, KeyError, TypeError: not an entry document.
        """
        doc = json.loads(raw)
        e = doc["entry"]
        return cls(
            index=int(e["index"]),
            type=str(e["type"]),
            time=str(e["time"]),
            actor=str(e["actor"]),
            actor_role=str(e["actor_role"]),
            body=dict(e["body"]),
            signature=str(doc["signature"]),
            raw=raw,
            subject=None if e.get("subject") is None else str(e["subject"]),
        )

    def signed_part(self) -> bytes:
        part = signed_part(self.raw, self.signature)
        return part if part is not None else canonical_json(json.loads(self.raw)["entry"])


_ED25519 = 0x01
_COSIGNATURE = 0x04


def checkpoint_body(origin: str, size: int, root: bytes) -> bytes:
    """C2SP tlog-checkpoint: origin line, decimal size, base64 root hash, each ending in a newline."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


def cosignature_message(timestamp: int, body: bytes) -> bytes:
    """C2SP tlog-cosignature/v1 signed message."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body


def key_hash(name: str, kind: int, public: bytes) -> bytes:
    """C2SP signed-note key ID: the first 4 bytes of SHA-256(name ‖ 0x0A ‖ type ‖ public key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def witness_name(key_id: str) -> str:
    """The note key name of a witness key (its signature lines and key hash use it)."""
    return f"opal-witness/{key_id[:16]}"


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    origin: str
    size: int
    root: str
    signer: str
    signature: str
    time: str

    def body(self) -> bytes:
        """The C2SP tlog-checkpoint note text: what the log key signs."""
        return checkpoint_body(self.origin, self.size, self.root_bytes)

    def note(self, publics: Mapping[str, str], cosignatures: Sequence[Cosignature] = ()) -> str:
        """The signed note: body, blank line, the log's signature line (key name: the origin),
        then each witness's cosignature line. ``publics``: key id -> public key hex."""
        public = bytes.fromhex(publics[self.signer])
        lines = [f"— {self.origin} " + base64.b64encode(
            key_hash(self.origin, _ED25519, public) + base64.b64decode(self.signature)
        ).decode() + "\n"]
        lines += [cs.note_line(bytes.fromhex(publics[cs.witness])) for cs in cosignatures]
        return self.body().decode() + "\n" + "".join(lines)

    @property
    def root_bytes(self) -> bytes:
        try:
            value = bytes.fromhex(self.root)
        except ValueError:
            raise BadInputError(
                f"checkpoint root must be 64 hex digits, found {self.root[:80]!r}"
            ) from None
        if len(value) != merkle.HASH_SIZE:
            raise BadInputError(f"checkpoint root must be 32 bytes, found {len(value)}")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root,
            "signer": self.signer,
            "signature": self.signature,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        try:
            return cls(
                origin=str(d["origin"]),
                size=int(d["size"]),
                root=str(d["root"]),
                signer=str(d["signer"]),
                signature=str(d["signature"]),
                time=str(d.get("time", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadInputError(
                "checkpoint must be the JSON printed by opal ledger checkpoint "
                "(origin, size, root, signer, signature)"
            ) from None


@dataclass(frozen=True, kw_only=True)
class Cosignature:
    """A witness's signature over a checkpoint's ``(origin, size, root)``."""

    origin: str
    size: int
    root: str
    witness: str
    signature: str
    time: str

    @property
    def timestamp(self) -> int:
        """The signed time, in seconds since the UNIX epoch (tlog-cosignature/v1)."""
        try:
            moment = datetime.fromisoformat(self.time.replace("Z", "+00:00"))
        except ValueError:
            raise BadInputError(f"cosignature time {self.time!r} is not ISO 8601") from None
        return int(moment.timestamp())

    def message(self) -> bytes:
        """What the witness signs: ``cosignature/v1\ntime <t>\n`` and the checkpoint body."""
        return cosignature_message(self.timestamp, checkpoint_body(self.origin, self.size, bytes.fromhex(self.root)))

    def note_line(self, public: bytes) -> str:
        """``— <witness name> base64(key hash ‖ timestamp ‖ signature)`` (tlog-cosignature/v1)."""
        name = witness_name(self.witness)
        raw = base64.b64decode(self.signature)
        return f"— {name} " + base64.b64encode(
            key_hash(name, _COSIGNATURE, public) + self.timestamp.to_bytes(8, "big") + raw
        ).decode() + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root,
            "witness": self.witness,
            "signature": self.signature,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cosignature:
        try:
            return cls(
                origin=str(d["origin"]),
                size=int(d["size"]),
                root=str(d["root"]),
                witness=str(d["witness"]),
                signature=str(d["signature"]),
                time=str(d.get("time", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadInputError(
                "cosignature must have origin, size, root, witness, signature"
            ) from None


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    size: int
    root: str
    signatures: int
    keys: int
    checkpoints: int
    runs: int
    cosignatures: int = 0
    against: dict[str, Any] | None = None
    seconds: float = 0.0
    workers: int = 0
    state: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "size": self.size,
            "root": self.root,
            "signatures_checked": self.signatures,
            "keys_seen": self.keys,
            "checkpoints_checked": self.checkpoints,
            "cosignatures_checked": self.cosignatures,
            "runs_checked": self.runs,
            "signature_check": "openssl",
            "workers": self.workers,
            "state": self.state,
            "against": self.against,
            "seconds": round(self.seconds, 3),
        }
