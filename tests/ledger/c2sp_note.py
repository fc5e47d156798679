"""An independent reader of C2SP signed notes, written from the specs for the tests, sharing no code
with OPAL: https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint, https://c2sp.org/tlog-cosignature.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64 signature>``; the base64 signature is a 4-byte key ID
(the first 4 bytes of SHA-256(key name ‖ 0x0A ‖ signature type ‖ public key))
followed by the signature. Ed25519 is type 0x01 and signs the text. A
tlog-cosignature/v1 key is type 0x04; its signature is an 8-byte big-endian
UNIX time followed by an Ed25519 signature of
``cosignature/v1\\ntime <time>\\n`` ‖ the checkpoint text.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EM_DASH = "\u2014"


@dataclass
class Note:
    text: str
    signatures: list[tuple[str, bytes]]  # (key name, decoded signature blob)


@dataclass
class CheckpointText:
    origin: str
    size: int
    root: bytes
    extensions: list[str]


def parse_note(note: str) -> Note:
    if not note.endswith("\n"):
        raise ValueError("a note ends with a newline")
    text, sep, sigs = note.rpartition("\n\n")
    if not sep:
        raise ValueError("no blank line before the signatures")
    signatures = []
    for line in sigs.splitlines():
        prefix = EM_DASH + " "
        if not line.startswith(prefix):
            raise ValueError(f"not a signature line: {line!r}")
        name, _, blob = line[len(prefix):].rpartition(" ")
        if not name or " " in name or "+" in name:
            raise ValueError(f"bad key name {name!r}")
        signatures.append((name, base64.b64decode(blob, validate=True)))
    return Note(text=text + "\n", signatures=signatures)


def parse_checkpoint(text: str) -> CheckpointText:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise ValueError("a checkpoint has an origin, a size and a root line")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise ValueError("bad origin or size")
    return CheckpointText(origin=origin, size=int(size), root=base64.b64decode(root, validate=True),
                          extensions=lines[3:-1])


def key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([kind]) + public).digest()[:4]


def verify_log_signature(note: Note, name: str, public: bytes) -> None:
    """Raise unless ``note`` carries a valid Ed25519 signature by the key ``(name, public)``."""
    want = key_id(name, 0x01, public)
    for signer, blob in note.signatures:
        if signer == name and blob[:4] == want:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], note.text.encode())
            return
    raise InvalidSignature(f"no signature by {name}")


def verify_cosignature(note: Note, name: str, public: bytes) -> int:
    """Raise unless ``note`` carries a valid tlog-cosignature/v1 by ``(name, public)``; return its time."""
    want = key_id(name, 0x04, public)
    for signer, blob in note.signatures:
        if signer == name and blob[:4] == want and len(blob) == 4 + 8 + 64:
            timestamp = int.from_bytes(blob[4:12], "big")
            message = f"cosignature/v1\ntime {timestamp}\n".encode() + note.text.encode()
            Ed25519PublicKey.from_public_bytes(public).verify(blob[12:], message)
            return timestamp
    raise InvalidSignature(f"no cosignature by {name}")
