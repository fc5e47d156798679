"""A reference Ed25519 (RFC 8032 §6 style) in plain Python, slow but easy to check,
for tests that craft signatures no real library makes: a chosen nonce, a
small-order point added to R, non-canonical encodings. Shared by
tests/ledger/test_ledger_signatures.py (signatures OpenSSL must reject, keys OPAL must refuse)."""

from __future__ import annotations

import hashlib
from functools import cache

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY: Point = (0, 1, 1, 0)


def recover_x(y: int, sign: int) -> int | None:
    """The x with the given parity on the curve at y (RFC 8032 §5.1.3), or None; y must be < p."""
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


def affine(x: int, y: int) -> Point:
    return (x, y, 1, x * y % P)


GY = 4 * pow(5, -1, P) % P
_GX = recover_x(GY, 0)
assert _GX is not None
G: Point = affine(_GX, GY)


def point_add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_neg(p: Point) -> Point:
    return (-p[0] % P, p[1], p[2], -p[3] % P)


def point_mul(s: int, p: Point) -> Point:
    q = IDENTITY
    while s > 0:
        if s & 1:
            q = point_add(q, p)
        p = point_add(p, p)
        s >>= 1
    return q


def point_equal(p: Point, q: Point) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


def encode(p: Point) -> bytes:
    zinv = pow(p[2], -1, P)
    x, y = p[0] * zinv % P, p[1] * zinv % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def encode_raw(y: int, sign: int) -> bytes:
    """Any 255-bit y with a sign bit: how non-canonical encodings are written."""
    assert 0 <= y < 2**255
    return (y | sign << 255).to_bytes(32, "little")


def decode(b: bytes) -> Point | None:
    """Strict RFC 8032 decoding: None for y >= p, no square root, or x = 0 with the sign bit set."""
    if len(b) != 32:
        return None
    v = int.from_bytes(b, "little")
    y, sign = v & (2**255 - 1), v >> 255
    if y >= P:
        return None
    x = recover_x(y, sign)
    return None if x is None else affine(x, y)


def h_scalar(r: bytes, a: bytes, m: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + m).digest(), "little") % L


def ref_verify(public: bytes, message: bytes, signature: bytes, *, cofactored: bool = False) -> bool:
    """RFC 8032 §5.1.7 with strict decoding: s·B = R + h·A, or 8·s·B = 8·R + 8·h·A."""
    if len(signature) != 64:
        return False
    a, r = decode(public), decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = 8 if cofactored else 1
    h = h_scalar(signature[:32], public, message)
    return point_equal(point_mul(k * s, G), point_add(point_mul(k, r), point_mul(k * h, a)))


def secret_scalar(seed: bytes) -> int:
    """The clamped secret scalar a of a 32-byte private key seed (RFC 8032 §5.1.5)."""
    a = int.from_bytes(hashlib.sha512(seed).digest()[:32], "little")
    return (a & (2**254 - 8)) | 2**254


def ref_sign(a: int, public: bytes, message: bytes, r: int, *, torsion: Point = IDENTITY) -> bytes:
    """s = r + H(R'‖A‖M)·a with nonce point R' = r·B + torsion: a real signature when torsion is the identity."""
    r_bytes = encode(point_add(point_mul(r, G), torsion))
    s = (r + h_scalar(r_bytes, public, message) * a) % L
    return r_bytes + s.to_bytes(32, "little")


@cache
def order8_point() -> Point:
    """An order-8 point: L·P for the first curve point P (by y) that has a component of order 8."""
    for y in range(2, 1000):
        x = recover_x(y, 0)
        if x is None:
            continue
        t = point_mul(L, affine(x, y))
        if not point_equal(point_mul(4, t), IDENTITY):
            return t
    raise AssertionError("no order-8 point found")
