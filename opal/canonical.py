"""Canonical JSON (RFC 8785): writing it, reading it back strictly, digests.

Canonical JSON is RFC 8785 (JCS), via the ``rfc8785`` library: signatures,
bundle digests and ledger leaves are all computed over these bytes.
``parse_canonical`` refuses any document that is not exactly those bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import rfc8785

__all__ = ["canonical_json", "parse_canonical", "sha256_hex", "digest_json"]


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical bytes of a JSON-compatible value.

    Fast path: msgspec's sorted encoding, kept only where it provably equals
    RFC 8785 (the conditions of :func:`parse_canonical`'s fast path: ASCII,
    numbers in repr form and the I-JSON range) and decodes back to an equal
    value (which rules out what msgspec writes but RFC 8785 refuses: NaN,
    bytes, dates, tuples); anything else goes through the ``rfc8785`` library.
    """
    for second in (False, True):
        try:
            candidate = _integral_as_int(value) if second else value
            raw = _FAST_ENCODE.encode(candidate)
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError):
            break
        if not raw.isascii() or _long_number(raw):
            break
        try:
            if _FAST_DECODE.decode(raw) == candidate:
                return raw
        except _NotPlain:
            continue  # a float msgspec writes otherwise: retry with integral floats as integers
        except (msgspec.DecodeError, RecursionError):
            break
    return rfc8785.dumps(value)


def _integral_as_int(value: Any) -> Any:
    """``value`` with every integral float below 2**53 as an int (tuples as lists): RFC 8785
    writes both the same ("3", never "3.0"; "0" for -0.0), msgspec only the int that way."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _SAFE else value
    if isinstance(value, dict):
        return {k: _integral_as_int(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # a released table is lists of scalars: those without a call each
        return [
            v if type(v) in _LEAVES
            else (int(v) if v.is_integer() and abs(v) < _SAFE else v) if type(v) is float
            else _integral_as_int(v)
            for v in value
        ]
    return value


_SAFE = 2.0**53
_LEAVES = frozenset({str, int, bool, type(None)})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    return sha256_hex(canonical_json(value))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _NotPlain(Exception):
    """A number that msgspec and RFC 8785 may write differently."""


def _plain_float(text: str) -> float:
    value = float(text)
    # RFC 8785 §3.2.2.3 writes numbers as ECMAScript does. For a non-zero
    # double whose repr has neither an exponent nor a bare ".0", that is its
    # repr, which is also what msgspec writes.
    if text != repr(value) or "e" in text or text.endswith(".0"):
        raise _NotPlain(text)
    return value


# Beyond ±(2**53 - 1) an integer is not an I-JSON number and RFC 8785 refuses
# it; every such integer has 16 digits or more. A number starts after ":", ","
# or "[": mapped to one delimiter, with digits and "-" mapped to "0" and every
# other byte to "x", a document none of whose numbers is that long does not
# hold ":" and 16 zeros (a string that does only takes the exact path).
_TO_ZEROS = bytes(
    ord("0") if chr(b) in "-0123456789" else ord(":") if chr(b) in ":,[" else ord("x") for b in range(256)
)
_LONG_NUMBER = b":" + b"0" * 16


def _long_number(raw: bytes) -> bool:
    """Might ``raw`` hold an integer of 16 digits or more (inside, or as the whole document)?"""
    zeros = raw.translate(_TO_ZEROS)
    return _LONG_NUMBER in zeros or zeros.startswith(_LONG_NUMBER[1:])

# msgspec's decoder is strict JSON (no NaN, no control characters in strings,
# no leading zeros) and hands each float's text to the hook; its encoder with
# sorted keys writes strings as RFC 8785 does (tests compare them on every
# escape), so for ASCII documents with plain numbers the two agree byte for byte.
_FAST_DECODE = msgspec.json.Decoder(float_hook=_plain_float)
_FAST_ENCODE = msgspec.json.Encoder(order="sorted")


def parse_canonical(raw: bytes) -> Any:
    """Parse ``raw``; raise ValueError unless it is RFC 8785 canonical JSON.

    Fast path: for ASCII documents whose numbers are written as Python's
    repr writes them (``_plain_float``) and are in the I-JSON range
    (``_LONG_NUMBER``), RFC 8785 and msgspec's sorted compact encoding agree
    byte for byte; anything else is re-encoded with the real RFC 8785
    implementation.
    """
    if raw.isascii():
        if not _long_number(raw):
            try:
                doc = _FAST_DECODE.decode(raw)
            except _NotPlain:
                pass
            except msgspec.DecodeError:
                raise ValueError("not JSON") from None
            else:
                if _FAST_ENCODE.encode(doc) != raw:
                    raise ValueError("not canonical JSON")
                return doc
    doc = json.loads(raw, parse_constant=_reject_constant)
    if canonical_json(doc) != raw:
        raise ValueError("not canonical JSON")
    return doc
