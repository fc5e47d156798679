"""Canonical JSON (RFC 8785): writing it, reading it back strictly, digests.

Canonical JSON is RFC 8785 (JCS), via the ``rfc8785`` library: signatures,
bundle digests and ledger leaves are all computed over these bytes.
``parse_canonical`` refuses any document that is not exactly those bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

__all__ = ["canonical_json", "parse_canonical", "sha256_hex", "digest_json"]


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical bytes of a JSON-compatible value."""
    return rfc8785.dumps(value)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return sha256_hex(canonical_json(value))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _NotPlain(Exception):
    """A number that json.dumps and RFC 8785 may write differently."""


def _plain_float(text: str) -> float:
    value = float(text)
    # RFC 8785 §3.2.2.3 writes numbers as ECMAScript does. For a non-zero
    # double whose repr has neither an exponent nor a bare ".0", that is its
    # repr, which is also what json.dumps writes.
    if text != repr(value) or "e" in text or text.endswith(".0"):
        raise _NotPlain(text)
    return value


_SAFE_INT = 2**53 - 1


def _plain_int(text: str) -> int:
    value = int(text)
    # Beyond ±(2**53 - 1) an integer is not an I-JSON number; RFC 8785 refuses it.
    if len(text) > 15 and not -_SAFE_INT <= value <= _SAFE_INT:
        raise _NotPlain(text)
    return value


_PLAIN = json.JSONDecoder(parse_float=_plain_float, parse_int=_plain_int, parse_constant=_reject_constant)
_DUMPS = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_canonical(raw: bytes) -> Any:
    """Parse ``raw``; raise ValueError unless it is RFC 8785 canonical JSON.

    Fast path: for ASCII documents whose numbers are written as Python's
    repr writes them (``_plain_float``) and are in the I-JSON range
    (``_plain_int``), RFC 8785 and ``json.dumps(sort_keys, compact)`` agree
    byte for byte; anything else is re-encoded with the real RFC 8785
    implementation.
    """
    if raw.isascii():
        text = raw.decode("ascii")
        try:
            doc = _PLAIN.decode(text)
        except _NotPlain:
            pass
        else:
            if _DUMPS.encode(doc) != text:
                raise ValueError("not canonical JSON")
            return doc
    doc = json.loads(raw, parse_constant=_reject_constant)
    if canonical_json(doc) != raw:
        raise ValueError("not canonical JSON")
    return doc
