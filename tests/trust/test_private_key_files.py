"""Private key files, read by cryptography's (OpenSSL's) parser only: what opal keys new
writes is read back as the same key, other valid wrappings too; other curves and damaged
files are refused with one line."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

from opal.errors import TrustError
from opal.trust.keys import generate_private_key, load_private_key, public_raw, write_private_key


def _raw(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def test_a_written_key_loads_as_the_key_openssl_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPAL_PASSPHRASE", raising=False)
    private = generate_private_key()
    path = write_private_key(tmp_path, "sam", private)
    loaded = load_private_key(path)
    assert _raw(loaded) == _raw(private) == _raw(serialization.load_pem_private_key(path.read_bytes(), None))
    assert public_raw(loaded) == public_raw(private)


def test_the_same_key_wrapped_otherwise_is_read_by_openssl(tmp_path: Path) -> None:
    private = generate_private_key()
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    body = base64.b64encode(der).decode()
    path = tmp_path / "sam.pem"  # base64 split over two lines, CRLF line ends: still valid PEM
    path.write_bytes(f"-----BEGIN PRIVATE KEY-----\r\n{body[:40]}\r\n{body[40:]}\r\n-----END PRIVATE KEY-----\r\n".encode())
    assert _raw(load_private_key(path)) == _raw(private)


def test_a_key_of_another_curve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ed448.pem"
    path.write_bytes(Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    with pytest.raises(TrustError, match="ed448.pem is not an Ed25519 key"):
        load_private_key(path)


def test_a_damaged_key_is_refused(tmp_path: Path) -> None:
    private = generate_private_key()
    der = bytearray(private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    der[7] ^= 0x01  # the algorithm's OID tag: neither the Ed25519 form nor a key OpenSSL reads
    path = tmp_path / "sam.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(bytes(der)) + b"\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TrustError, match="cannot load private key sam.pem"):
        load_private_key(path)
