"""Every signature is checked by OpenSSL, with the same verdict on every run and in
every mode (inline, pool, offline): signatures only a cofactored verifier accepts,
re-spelled base64, small-order keys. The hand-written batch verifier these replace
accepted a cofactored-only signature in about 12 of 30 runs."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from ed25519_reference import IDENTITY, G, encode, order8_point, point_mul, ref_sign, ref_verify, secret_scalar
from ledger_fixtures import Actors, flip_signature, notes, populate, raw_conn, reopen

from opal.canonical import canonical_json
from opal.errors import LedgerCorrupt, TrustError
from opal.ledger import Ledger
from opal.ledger.export import export_range, verify_export
from opal.ledger.records import ENTRY_DOMAIN, envelope
from opal.trust.keyring import Signer
from opal.trust.keys import check_public_key, decode_signature, verify_signature_raw


@pytest.fixture
def filled(ledger: Ledger, actors: Actors) -> Ledger:
    populate(ledger, actors, runs=3)
    notes(ledger, actors.op, 300)
    return ledger


def resign(ledger: Ledger, idx: int, signature: bytes) -> None:
    conn = raw_conn(ledger)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,)).fetchone()
    signed = canonical_json(json.loads(raw)["entry"])
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = ?", (envelope(signed, base64.b64encode(signature).decode()), idx))
    conn.close()


def torsion_signature(ledger: Ledger, idx: int, signer: Signer) -> bytes:
    """Entry ``idx`` signed with nonce point R = r·B + T8 (T8 of order 8): only the key holder can make it;
    the cofactored equation 8sB = 8R + 8hA accepts it, RFC 8032's cofactorless one (OpenSSL) does not."""
    conn = raw_conn(ledger)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,)).fetchone()
    conn.close()
    message = b"opal-v1:" + ENTRY_DOMAIN.encode() + b"\n" + canonical_json(json.loads(raw)["entry"])
    public = bytes.fromhex(signer.info.public_key)
    seed = signer._private.private_bytes_raw()
    signature = ref_sign(secret_scalar(seed), public, message, 0xC0FFEE + idx, torsion=order8_point())
    assert ref_verify(public, message, signature, cofactored=True)
    assert not ref_verify(public, message, signature)
    return signature


@pytest.mark.parametrize("workers", [0, 2])
def test_cofactored_only_signature_is_rejected_on_every_run(filled: Ledger, actors: Actors, workers: int) -> None:
    resign(filled, 150, torsion_signature(filled, 150, actors.op))
    for _ in range(10):
        with pytest.raises(LedgerCorrupt) as caught:
            reopen(filled).verify(workers=workers)
        assert caught.value.message == "ledger entry 150 (note): signature does not verify"


def test_cofactored_only_signature_is_rejected_offline(filled: Ledger, actors: Actors) -> None:
    """The node itself wrote the entry (it holds the key), fixed the leaf hashes and signed a checkpoint over it."""
    resign(filled, 150, torsion_signature(filled, 150, actors.op))
    conn = raw_conn(filled)
    for idx, raw in conn.execute("SELECT idx, entry FROM ledger").fetchall():
        conn.execute("UPDATE ledger SET leaf_hash = ? WHERE idx = ?", (hashlib.sha256(b"\0" + raw).digest(), idx))
    conn.close()
    led = reopen(filled)
    led.checkpoint(actors.op)
    lines = [json.dumps(item) for item in export_range(led, 0, led.size())]
    for _ in range(5):
        with pytest.raises(LedgerCorrupt, match=r"^ledger entry 150 \(note\): signature does not verify$"):
            verify_export(lines)


def test_padding_bit_spelling_of_a_signature_is_rejected(filled: Ledger) -> None:
    conn = raw_conn(filled)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = 40").fetchone()
    doc = json.loads(raw)
    signature = doc["signature"]
    assert signature.endswith("==")
    # 64 bytes leave 4 unused bits in the last base64 character: set one, same bytes decoded
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signature[-3]
    respelled = signature[:-3] + alphabet[alphabet.index(last) | 1] + "=="
    assert respelled != signature and base64.b64decode(respelled) == base64.b64decode(signature)
    signed = canonical_json(doc["entry"])
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = 40", (envelope(signed, respelled),))
    conn.close()
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 40 \(note\): signature is not canonical base64"):
        reopen(filled).verify(workers=0)
    with pytest.raises(TrustError, match="not canonical base64"):
        decode_signature(respelled)


@pytest.mark.parametrize("workers", [0, 2])
def test_two_bad_signatures_name_the_first(filled: Ledger, workers: int) -> None:
    flip_signature(raw_conn(filled), 250)
    flip_signature(raw_conn(filled), 90)
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 90 \(note\): signature does not verify$"):
        reopen(filled).verify(workers=workers)


SMALL_ORDER = {
    "identity": encode(IDENTITY),
    "order 8": encode(order8_point()),
    "order 2": (2**255 - 20).to_bytes(32, "little"),
    "order 4": bytes(32),
}


@pytest.mark.parametrize("name", sorted(SMALL_ORDER))
def test_small_order_public_keys_are_rejected(name: str) -> None:
    with pytest.raises(TrustError, match="small-order"):
        check_public_key(SMALL_ORDER[name])


def test_identity_key_cannot_verify_the_trivial_forgery() -> None:
    """R = identity, S = 0 verifies for the identity key on any message in OpenSSL: the key is refused first."""
    forged = base64.b64encode(encode(IDENTITY) + bytes(32)).decode()
    with pytest.raises(TrustError, match="does not verify"):
        verify_signature_raw(SMALL_ORDER["identity"], "ledger-entry", b"anything", forged)


def test_non_canonical_public_key_is_rejected() -> None:
    p = 2**255 - 19
    y = int.from_bytes(encode(point_mul(7, G)), "little") & ((1 << 255) - 1)
    if y + p < 2**255:
        with pytest.raises(TrustError, match="not a canonical"):
            check_public_key((y + p).to_bytes(32, "little"))
    with pytest.raises(TrustError, match="not a canonical"):
        check_public_key((p + 1).to_bytes(32, "little"))  # y = 1 spelled y + p
    with pytest.raises(TrustError, match="not a canonical"):
        check_public_key((1 | (1 << 255)).to_bytes(32, "little"))  # identity with x's sign bit set
