"""Ed25519 batch verification: does every signature in a batch verify?

For signatures ``(R_i, s_i)`` by keys ``A_i`` on messages ``M_i``, with
``h_i = SHA-512(R_i ‖ A_i ‖ M_i) mod L``, each one satisfies
``s_i·B = R_i + h_i·A_i``. The batch draws secret random 128-bit weights
``z_i`` and checks the single equation

    Σ z_i·R_i  +  Σ_keys (Σ_{i by key} z_i·h_i)·A  −  (Σ z_i·s_i)·B  =  0

with one multi-scalar multiplication (the C extension ``_ed25519batch``).
Signatures by one key share one ``A`` term, as a ledger's mostly do: in
batches of 2 048 that costs about 7 µs a signature, against 60-80 µs for
one OpenSSL verification on the machines we measured.
A batch with a bad signature passes only if the weights happen to cancel
its error, with probability 2^-128 (the weights are drawn after the
signatures are fixed, from ``os.urandom``).

The verdict is only ever "all valid" or "look one by one". ``verify_batch``
returns True only when the sum is exactly the identity, and False for
anything else: a bad signature, a non-canonical encoding, ``s >= L``, a
public key outside the subgroup of order ``L`` (checked once per key and
batch), or no extension built. The caller then checks each
signature with OpenSSL (``opal.trust.keys``), which stays the authority and
names the bad one.

One known gap, by the nature of batch verification: RFC 8032 lets a verifier
check either ``s·B = R + h·A`` (OpenSSL does) or the same equation times the
cofactor 8. A signer who deliberately adds a small-order point to ``R``, which
needs the private key, makes a signature only the second accepts. Such a
signature leaves a small-order remainder in the sum, which this module sees
unless the random weights cancel it: it is caught (sent to OpenSSL, which
rejects it) with probability at least 1/2 on each run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

try:
    from opal.trust import _ed25519batch  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - the extension is optional
    _ed25519batch = None

__all__ = ["BASE_POINT", "L", "available", "verify_batch", "worth_it"]

# The order of the base point, and the base point's encoding (RFC 8032 §5.1).
L = 2**252 + 27742317777372353535851937790883648493
BASE_POINT = bytes.fromhex("58" + "66" * 31)

# Below this many signatures the fixed cost of the sum outweighs its saving.
MIN_BATCH = 8
# Each distinct key costs about 60 µs in a batch (its subgroup check and its
# full-size scalar), about as much as one OpenSSL verification: a batch pays
# only while keys are few. At one key per 4 signatures it still halves the
# work (measured: 38 µs a signature with 512 keys in 2 048, 133 µs with 2 048).
MAX_KEYS_PER_SIGNATURE = 1 / 4


def available() -> bool:
    """True if the C extension was built (``pip install`` compiles it when it can)."""
    return _ed25519batch is not None


def worth_it(signatures: int, keys: int) -> bool:
    """Whether checking ``signatures`` by ``keys`` distinct keys as one batch beats checking each."""
    return available() and signatures >= MIN_BATCH and keys <= signatures * MAX_KEYS_PER_SIGNATURE


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]]) -> bool:
    """True only if every ``(public key, message, signature)`` verifies; see the module docstring.

    False means "check them one by one"; it is also the answer when the
    extension is missing. Raises ValueError for a key that is not 32 bytes
    or a signature that is not 64.
    """
    if not items:
        return True
    if _ed25519batch is None:
        return False
    n = len(items)
    weights = os.urandom(16 * n)
    sha512 = hashlib.sha512
    from_bytes = int.from_bytes
    nonces = bytearray()
    per_key: dict[bytes, int] = {}
    base = 0
    for i, (public, message, signature) in enumerate(items):
        if len(public) != 32 or len(signature) != 64:
            raise ValueError("Ed25519 public keys have 32 bytes and signatures 64")
        s = from_bytes(signature[32:], "little")
        if s >= L:  # RFC 8032 §5.1.7: reject a non-canonical s
            return False
        r = signature[:32]
        h = from_bytes(sha512(r + public + message).digest(), "little")
        z = from_bytes(weights[16 * i : 16 * i + 16], "little")
        base += z * s
        per_key[public] = per_key.get(public, 0) + z * h
        nonces += r
    points = b"".join(per_key) + BASE_POINT
    scalars = b"".join((c % L).to_bytes(32, "little") for c in per_key.values()) + (-base % L).to_bytes(32, "little")
    return bool(_ed25519batch.combination(bytes(nonces), weights, points, scalars) == 1)
