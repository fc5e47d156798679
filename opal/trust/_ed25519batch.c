/*
 * Ed25519 batch verification: the point arithmetic behind
 * opal/trust/ed25519_batch.py. Read that module first; it owns the protocol
 * (hashing, the random weights, the scalars) and this file only answers one
 * question about public data:
 *
 *     is  sum_i z_i * R_i  +  sum_k c_k * P_k  the identity point?
 *
 * where R_i are signature nonce points with 128-bit weights z_i and P_k are
 * public keys and the base point with full scalars c_k. It answers 1 (the sum
 * is the identity), 2 (only 8 times the sum is: a small-order component is
 * left), 0 (neither), or -1 (an encoding is not a canonical point, or a long
 * point is not in the subgroup of order L). Everything here is variable-time: every input is
 * public (signatures, keys, weights the caller drew), nothing is secret.
 *
 * Field elements mod p = 2^255 - 19 are five 51-bit limbs (the radix-2^51
 * representation of curve25519-donna-c64 and ref10's 64-bit variants); points
 * are extended twisted Edwards coordinates with the Hisil-Wong-Carter-Dawson
 * formulas for a = -1, which are complete on this curve. The sum is a
 * Pippenger bucket multi-scalar multiplication.
 *
 * Why it is written here: no library on PyPI or in Debian exposes Ed25519
 * batch verification or a multi-scalar multiplication over edwards25519
 * (OpenSSL, libsodium and cryptography verify one signature at a time).
 * OpenSSL stays the authority: a batch that does not come out as 1 is
 * re-checked one signature at a time with it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef uint64_t fe[5];

#define MASK51 ((uint64_t)0x7ffffffffffff)

/* ---- field arithmetic mod 2^255 - 19 -------------------------------------
 * Invariant: every fe leaving a function has limbs < 2^52, which is what
 * fe_mul and fe_sq need (they accept limbs < 2^54).
 */

static const fe FE_D2 = {0x69b9426b2f159, 0x35050762add7a, 0x3cf44c0038052, 0x6738cc7407977, 0x2406d9dc56dff};
static const fe FE_D = {0x34dca135978a3, 0x1a8283b156ebd, 0x5e7a26001c029, 0x739c663a03cbb, 0x52036cee2b6ff};
static const fe FE_SQRTM1 = {0x61b274a0ea0b0, 0xd5a5fc8f189d, 0x7ef5e9cbd0c60, 0x78595a6804c9e, 0x2b8324804fc1d};

static inline void fe_0(fe h) { h[0] = h[1] = h[2] = h[3] = h[4] = 0; }
static inline void fe_1(fe h) { h[0] = 1; h[1] = h[2] = h[3] = h[4] = 0; }
static inline void fe_copy(fe h, const fe f) { memcpy(h, f, sizeof(fe)); }

static inline void fe_carry(fe h) {
    uint64_t c;
    c = h[0] >> 51; h[0] &= MASK51; h[1] += c;
    c = h[1] >> 51; h[1] &= MASK51; h[2] += c;
    c = h[2] >> 51; h[2] &= MASK51; h[3] += c;
    c = h[3] >> 51; h[3] &= MASK51; h[4] += c;
    c = h[4] >> 51; h[4] &= MASK51; h[0] += c * 19;
}

static inline void fe_add(fe h, const fe f, const fe g) {
    for (int i = 0; i < 5; i++) h[i] = f[i] + g[i];
    fe_carry(h);
}

/* f - g computed as f + 4p - g, so no limb goes negative for g limbs < 2^53. */
static inline void fe_sub(fe h, const fe f, const fe g) {
    h[0] = f[0] + 0x1fffffffffffb4 - g[0];
    h[1] = f[1] + 0x1ffffffffffffc - g[1];
    h[2] = f[2] + 0x1ffffffffffffc - g[2];
    h[3] = f[3] + 0x1ffffffffffffc - g[3];
    h[4] = f[4] + 0x1ffffffffffffc - g[4];
    fe_carry(h);
}

static inline void fe_neg(fe h, const fe f) {
    fe z;
    fe_0(z);
    fe_sub(h, z, f);
}

static inline void fe_reduce_wide(fe h, u128 t0, u128 t1, u128 t2, u128 t3, u128 t4) {
    uint64_t r0, r1, r2, r3, r4;
    t1 += (uint64_t)(t0 >> 51); r0 = (uint64_t)t0 & MASK51;
    t2 += (uint64_t)(t1 >> 51); r1 = (uint64_t)t1 & MASK51;
    t3 += (uint64_t)(t2 >> 51); r2 = (uint64_t)t2 & MASK51;
    t4 += (uint64_t)(t3 >> 51); r3 = (uint64_t)t3 & MASK51;
    uint64_t c = (uint64_t)(t4 >> 51); r4 = (uint64_t)t4 & MASK51;
    u128 x = (u128)c * 19 + r0;
    r0 = (uint64_t)x & MASK51;
    r1 += (uint64_t)(x >> 51);
    h[0] = r0; h[1] = r1; h[2] = r2; h[3] = r3; h[4] = r4;
}

static void fe_mul(fe h, const fe f, const fe g) {
    uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    uint64_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4];
    uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    u128 t0 = (u128)f0 * g0 + (u128)f1 * g4_19 + (u128)f2 * g3_19 + (u128)f3 * g2_19 + (u128)f4 * g1_19;
    u128 t1 = (u128)f0 * g1 + (u128)f1 * g0 + (u128)f2 * g4_19 + (u128)f3 * g3_19 + (u128)f4 * g2_19;
    u128 t2 = (u128)f0 * g2 + (u128)f1 * g1 + (u128)f2 * g0 + (u128)f3 * g4_19 + (u128)f4 * g3_19;
    u128 t3 = (u128)f0 * g3 + (u128)f1 * g2 + (u128)f2 * g1 + (u128)f3 * g0 + (u128)f4 * g4_19;
    u128 t4 = (u128)f0 * g4 + (u128)f1 * g3 + (u128)f2 * g2 + (u128)f3 * g1 + (u128)f4 * g0;
    fe_reduce_wide(h, t0, t1, t2, t3, t4);
}

static void fe_sq(fe h, const fe f) {
    uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    uint64_t d0 = 2 * f0, d1 = 2 * f1, d2 = 2 * f2;
    uint64_t f3_19 = 19 * f3, f4_19 = 19 * f4, d3_19 = 2 * f3_19;
    u128 t0 = (u128)f0 * f0 + (u128)d1 * f4_19 + (u128)d2 * f3_19;
    u128 t1 = (u128)d0 * f1 + (u128)d2 * f4_19 + (u128)f3 * f3_19;
    u128 t2 = (u128)d0 * f2 + (u128)f1 * f1 + (u128)d3_19 * f4;
    u128 t3 = (u128)d0 * f3 + (u128)d1 * f2 + (u128)f4 * f4_19;
    u128 t4 = (u128)d0 * f4 + (u128)d1 * f3 + (u128)f2 * f2;
    fe_reduce_wide(h, t0, t1, t2, t3, t4);
}

static void fe_sqn(fe h, const fe f, int n) {
    fe_sq(h, f);
    for (int i = 1; i < n; i++) fe_sq(h, h);
}

static uint64_t load64_le(const uint8_t *s) {
    uint64_t v;
    memcpy(&v, s, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* The low 255 bits of s; returns -1 if they are not below p (a non-canonical encoding). */
static int fe_frombytes_strict(fe h, const uint8_t s[32]) {
    uint64_t w0 = load64_le(s), w1 = load64_le(s + 8), w2 = load64_le(s + 16);
    uint64_t w3 = load64_le(s + 24) & 0x7fffffffffffffffULL;
    h[0] = w0 & MASK51;
    h[1] = ((w0 >> 51) | (w1 << 13)) & MASK51;
    h[2] = ((w1 >> 38) | (w2 << 26)) & MASK51;
    h[3] = ((w2 >> 25) | (w3 << 39)) & MASK51;
    h[4] = (w3 >> 12) & MASK51;
    if (h[4] == MASK51 && h[3] == MASK51 && h[2] == MASK51 && h[1] == MASK51 && h[0] >= MASK51 - 18) return -1;
    return 0;
}

/* The canonical 32-byte encoding: fully reduced mod p (curve25519-donna's fcontract). */
static void fe_tobytes(uint8_t out[32], const fe f) {
    uint64_t t[5];
    memcpy(t, f, sizeof(t));
    fe_carry(t);
    fe_carry(t);
    /* Now t[1..4] < 2^51 and t[0] < 2^51 + 19, so the value v < 2^255 + 19 < 2p.
     * q = 1 exactly when v >= p, i.e. when v + 19 reaches 2^255 (ref10's fe_tobytes). */
    uint64_t q = (t[0] + 19) >> 51;
    q = (t[1] + q) >> 51;
    q = (t[2] + q) >> 51;
    q = (t[3] + q) >> 51;
    q = (t[4] + q) >> 51;
    t[0] += 19 * q;  /* v - q p = v + 19 q - 2^255 q: add 19 q, carry, drop bit 255 */
    t[1] += t[0] >> 51; t[0] &= MASK51;
    t[2] += t[1] >> 51; t[1] &= MASK51;
    t[3] += t[2] >> 51; t[2] &= MASK51;
    t[4] += t[3] >> 51; t[3] &= MASK51;
    t[4] &= MASK51;
    uint64_t w0 = t[0] | (t[1] << 51);
    uint64_t w1 = (t[1] >> 13) | (t[2] << 38);
    uint64_t w2 = (t[2] >> 26) | (t[3] << 25);
    uint64_t w3 = (t[3] >> 39) | (t[4] << 12);
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(w0 >> (8 * i));
        out[8 + i] = (uint8_t)(w1 >> (8 * i));
        out[16 + i] = (uint8_t)(w2 >> (8 * i));
        out[24 + i] = (uint8_t)(w3 >> (8 * i));
    }
}

static int fe_iszero(const fe f) {
    uint8_t s[32];
    fe_tobytes(s, f);
    uint8_t acc = 0;
    for (int i = 0; i < 32; i++) acc |= s[i];
    return acc == 0;
}

static int fe_isnegative(const fe f) {
    uint8_t s[32];
    fe_tobytes(s, f);
    return s[0] & 1;
}

static int fe_equal(const fe f, const fe g) {
    fe d;
    fe_sub(d, f, g);
    return fe_iszero(d);
}

/* z^((p-5)/8) = z^(2^252 - 3), the addition chain of ref10's fe_pow22523. */
static void fe_pow22523(fe out, const fe z) {
    fe t0, t1, t2;
    fe_sq(t0, z);
    fe_sqn(t1, t0, 2);
    fe_mul(t1, z, t1);
    fe_mul(t0, t0, t1);
    fe_sq(t0, t0);
    fe_mul(t0, t1, t0);      /* z^(2^5 - 1) */
    fe_sqn(t1, t0, 5);
    fe_mul(t0, t1, t0);      /* 2^10 - 1 */
    fe_sqn(t1, t0, 10);
    fe_mul(t1, t1, t0);      /* 2^20 - 1 */
    fe_sqn(t2, t1, 20);
    fe_mul(t1, t2, t1);      /* 2^40 - 1 */
    fe_sqn(t1, t1, 10);
    fe_mul(t0, t1, t0);      /* 2^50 - 1 */
    fe_sqn(t1, t0, 50);
    fe_mul(t1, t1, t0);      /* 2^100 - 1 */
    fe_sqn(t2, t1, 100);
    fe_mul(t1, t2, t1);      /* 2^200 - 1 */
    fe_sqn(t1, t1, 50);
    fe_mul(t0, t1, t0);      /* 2^250 - 1 */
    fe_sqn(t0, t0, 2);       /* 2^252 - 4 */
    fe_mul(out, t0, z);      /* 2^252 - 3 */
}

/* ---- points ------------------------------------------------------------ */

typedef struct { fe X, Y, Z; } ge_p2;                 /* x = X/Z, y = Y/Z */
typedef struct { fe X, Y, Z, T; } ge_p3;              /* and XY = ZT */
typedef struct { fe X, Y, Z, T; } ge_p1p1;            /* x = X/Z, y = Y/T */
typedef struct { fe YplusX, YminusX, Z, T2d; } ge_cached;
typedef struct { fe yplusx, yminusx, xy2d; } ge_niels; /* an affine point, ready to add */

static void ge_p3_0(ge_p3 *h) { fe_0(h->X); fe_1(h->Y); fe_1(h->Z); fe_0(h->T); }

/* RFC 8032 §5.1.3, strictly: y < p, a square root exists, and x = 0 only with sign bit 0.
 * Returns -1 for anything else. Gives the affine point (x, y). */
static int ge_decompress(fe x, fe y, const uint8_t s[32]) {
    fe u, v, v3, vxx, check, y2;
    if (fe_frombytes_strict(y, s) != 0) return -1;
    int sign = s[31] >> 7;
    fe_sq(y2, y);
    fe one;
    fe_1(one);
    fe_sub(u, y2, one);          /* u = y^2 - 1 */
    fe_mul(v, y2, FE_D);
    fe_add(v, v, one);           /* v = d y^2 + 1 */
    fe_sq(v3, v);
    fe_mul(v3, v3, v);           /* v^3 */
    fe_sq(x, v3);
    fe_mul(x, x, v);
    fe_mul(x, x, u);             /* u v^7 */
    fe_pow22523(x, x);
    fe_mul(x, x, v3);
    fe_mul(x, x, u);             /* x = u v^3 (u v^7)^((p-5)/8) */
    fe_sq(vxx, x);
    fe_mul(vxx, vxx, v);
    fe_sub(check, vxx, u);
    if (!fe_iszero(check)) {
        fe_add(check, vxx, u);
        if (!fe_iszero(check)) return -1;  /* no square root: not a point */
        fe_mul(x, x, FE_SQRTM1);
    }
    if (fe_iszero(x) && sign) return -1;
    if (fe_isnegative(x) != sign) fe_neg(x, x);
    return 0;
}

static void ge_niels_from_affine(ge_niels *n, const fe x, const fe y) {
    fe_add(n->yplusx, y, x);
    fe_sub(n->yminusx, y, x);
    fe_mul(n->xy2d, x, y);
    fe_mul(n->xy2d, n->xy2d, FE_D2);
}

static void ge_p1p1_to_p2(ge_p2 *r, const ge_p1p1 *p) {
    fe_mul(r->X, p->X, p->T);
    fe_mul(r->Y, p->Y, p->Z);
    fe_mul(r->Z, p->Z, p->T);
}

static void ge_p1p1_to_p3(ge_p3 *r, const ge_p1p1 *p) {
    fe_mul(r->X, p->X, p->T);
    fe_mul(r->Y, p->Y, p->Z);
    fe_mul(r->Z, p->Z, p->T);
    fe_mul(r->T, p->X, p->Y);
}

static void ge_p3_to_cached(ge_cached *r, const ge_p3 *p) {
    fe_add(r->YplusX, p->Y, p->X);
    fe_sub(r->YminusX, p->Y, p->X);
    fe_copy(r->Z, p->Z);
    fe_mul(r->T2d, p->T, FE_D2);
}

/* 2p; dbl-2008-hwcd for a = -1 (ref10's ge_p2_dbl). */
static void ge_p2_dbl(ge_p1p1 *r, const ge_p2 *p) {
    fe t0;
    fe_sq(r->X, p->X);
    fe_sq(r->Z, p->Y);
    fe_sq(r->T, p->Z);
    fe_add(r->T, r->T, r->T);
    fe_add(r->Y, p->X, p->Y);
    fe_sq(t0, r->Y);
    fe_add(r->Y, r->Z, r->X);
    fe_sub(r->Z, r->Z, r->X);
    fe_sub(r->X, t0, r->Y);
    fe_sub(r->T, r->T, r->Z);
}

/* p + q; add-2008-hwcd-3 (ref10's ge_add). */
static void ge_add(ge_p1p1 *r, const ge_p3 *p, const ge_cached *q) {
    fe t0;
    fe_add(r->X, p->Y, p->X);
    fe_sub(r->Y, p->Y, p->X);
    fe_mul(r->Z, r->X, q->YplusX);
    fe_mul(r->Y, r->Y, q->YminusX);
    fe_mul(r->T, q->T2d, p->T);
    fe_mul(r->X, p->Z, q->Z);
    fe_add(t0, r->X, r->X);
    fe_sub(r->X, r->Z, r->Y);
    fe_add(r->Y, r->Z, r->Y);
    fe_add(r->Z, t0, r->T);
    fe_sub(r->T, t0, r->T);
}

/* p + q for an affine q (ref10's ge_madd). */
static void ge_madd(ge_p1p1 *r, const ge_p3 *p, const ge_niels *q) {
    fe t0;
    fe_add(r->X, p->Y, p->X);
    fe_sub(r->Y, p->Y, p->X);
    fe_mul(r->Z, r->X, q->yplusx);
    fe_mul(r->Y, r->Y, q->yminusx);
    fe_mul(r->T, q->xy2d, p->T);
    fe_add(t0, p->Z, p->Z);
    fe_sub(r->X, r->Z, r->Y);
    fe_add(r->Y, r->Z, r->Y);
    fe_add(r->Z, t0, r->T);
    fe_sub(r->T, t0, r->T);
}

static void ge_p3_add(ge_p3 *r, const ge_p3 *p, const ge_p3 *q) {
    ge_cached c;
    ge_p1p1 t;
    ge_p3_to_cached(&c, q);
    ge_add(&t, p, &c);
    ge_p1p1_to_p3(r, &t);
}

static void ge_p3_dbl_n(ge_p3 *r, const ge_p3 *p, int n) {
    ge_p2 q;
    ge_p1p1 t;
    fe_copy(q.X, p->X); fe_copy(q.Y, p->Y); fe_copy(q.Z, p->Z);
    for (int i = 0; i < n - 1; i++) {
        ge_p2_dbl(&t, &q);
        ge_p1p1_to_p2(&q, &t);
    }
    ge_p2_dbl(&t, &q);
    ge_p1p1_to_p3(r, &t);
}

static int ge_is_identity(const ge_p3 *p) {
    return fe_iszero(p->X) && fe_equal(p->Y, p->Z);
}

/* ---- multi-scalar multiplication ---------------------------------------- */

/* Bits [offset, offset + width) of a little-endian scalar of `len` bytes. */
static unsigned digit_at(const uint8_t *scalar, size_t len, unsigned offset, unsigned width) {
    uint64_t v = 0;
    size_t byte = offset / 8;
    for (size_t i = 0; i < 4 && byte + i < len; i++) v |= (uint64_t)scalar[byte + i] << (8 * i);
    return (unsigned)((v >> (offset % 8)) & ((1u << width) - 1));
}

/* The window width that minimises additions for n points with nbits-bit scalars. */
static unsigned best_width(size_t n, unsigned nbits) {
    unsigned best = 1;
    double best_cost = -1;
    for (unsigned c = 1; c <= 16; c++) {
        double windows = (double)((nbits + c - 1) / c);
        double cost = windows * ((double)n + 2.0 * (double)((1u << c) - 1)) + (double)nbits;
        if (best_cost < 0 || cost < best_cost) {
            best = c;
            best_cost = cost;
        }
    }
    return best;
}

/* out = sum scalar_i * point_i, the scalars `len` bytes little-endian, below 2^nbits. */
static int msm(ge_p3 *out, const ge_niels *points, const uint8_t *scalars, size_t len, unsigned nbits, size_t n) {
    ge_p3_0(out);
    if (n == 0) return 0;
    unsigned c = best_width(n, nbits);
    unsigned windows = (nbits + c - 1) / c;
    size_t nbuckets = ((size_t)1 << c) - 1;
    ge_p3 *buckets = malloc(nbuckets * sizeof(ge_p3));
    if (buckets == NULL) return -1;
    ge_p1p1 t;
    for (unsigned w = windows; w-- > 0;) {
        if (w != windows - 1) ge_p3_dbl_n(out, out, (int)c);
        for (size_t b = 0; b < nbuckets; b++) ge_p3_0(&buckets[b]);
        unsigned width = (w * c + c <= nbits) ? c : nbits - w * c;
        for (size_t i = 0; i < n; i++) {
            unsigned d = digit_at(scalars + i * len, len, w * c, width);
            if (d) {
                ge_madd(&t, &buckets[d - 1], &points[i]);
                ge_p1p1_to_p3(&buckets[d - 1], &t);
            }
        }
        /* sum_j j * bucket_j as a running sum from the top bucket down */
        ge_p3 running, sum;
        ge_p3_0(&running);
        ge_p3_0(&sum);
        for (size_t b = nbuckets; b-- > 0;) {
            ge_p3_add(&running, &running, &buckets[b]);
            ge_p3_add(&sum, &sum, &running);
        }
        ge_p3_add(out, out, &sum);
    }
    free(buckets);
    return 0;
}

/* ---- the Python entry point ---------------------------------------------- */

/* L, the order of the base point, little-endian. */
static const uint8_t ORDER_L[32] = {
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
};

/* Decode n points. With prime_order, also refuse any point outside the subgroup
 * of order L: small order (8P = 0) or with a small-order component (LP != 0).
 * Public keys get this check, so that only the nonces R can carry torsion. */
static int decompress_all(ge_niels *out, const uint8_t *enc, size_t n, int prime_order) {
    for (size_t i = 0; i < n; i++) {
        fe x, y;
        if (ge_decompress(x, y, enc + 32 * i) != 0) return -1;
        ge_niels_from_affine(&out[i], x, y);
        if (prime_order) {
            ge_p3 p, multiple;
            fe_copy(p.X, x); fe_copy(p.Y, y); fe_1(p.Z); fe_mul(p.T, x, y);
            ge_p3_dbl_n(&multiple, &p, 3);
            if (ge_is_identity(&multiple)) return -1;
            if (msm(&multiple, &out[i], ORDER_L, 32, 253, 1) != 0) return -2;
            if (!ge_is_identity(&multiple)) return -1;
        }
    }
    return 0;
}

static int combination(const uint8_t *r, const uint8_t *z, size_t n, const uint8_t *p, const uint8_t *c, size_t k) {
    int result = -1;
    ge_niels *rn = malloc((n ? n : 1) * sizeof(ge_niels));
    ge_niels *pn = malloc((k ? k : 1) * sizeof(ge_niels));
    if (rn == NULL || pn == NULL) goto done;
    int decoded = decompress_all(rn, r, n, 0);
    if (decoded == 0) decoded = decompress_all(pn, p, k, 1);
    if (decoded != 0) {
        result = decoded;
        goto done;
    }
    ge_p3 a, b, sum, sum8;
    if (msm(&a, rn, z, 16, 128, n) != 0 || msm(&b, pn, c, 32, 256, k) != 0) {
        result = -2;
        goto done;
    }
    ge_p3_add(&sum, &a, &b);
    if (ge_is_identity(&sum)) {
        result = 1;
    } else {
        ge_p3_dbl_n(&sum8, &sum, 3);
        result = ge_is_identity(&sum8) ? 2 : 0;
    }
done:
    free(rn);
    free(pn);
    return result;
}

static PyObject *py_combination(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer r, z, p, c;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &r, &z, &p, &c)) return NULL;
    PyObject *ret = NULL;
    if (r.len % 32 || z.len != r.len / 2 || p.len % 32 || c.len != p.len) {
        PyErr_SetString(PyExc_ValueError,
                        "expected 32-byte points with 16-byte weights, and 32-byte points with 32-byte scalars");
        goto done;
    }
    int result;
    Py_BEGIN_ALLOW_THREADS
    result = combination(r.buf, z.buf, (size_t)r.len / 32, p.buf, c.buf, (size_t)p.len / 32);
    Py_END_ALLOW_THREADS
    if (result == -2) {
        PyErr_NoMemory();
        goto done;
    }
    ret = PyLong_FromLong(result);
done:
    PyBuffer_Release(&r);
    PyBuffer_Release(&z);
    PyBuffer_Release(&p);
    PyBuffer_Release(&c);
    return ret;
}

static PyMethodDef methods[] = {
    {"combination", py_combination, METH_VARARGS,
     "combination(R, z, P, c) -> 1 if sum z_i R_i + sum c_k P_k is the identity, 2 if only 8 times it is, "
     "0 if not, -1 if an encoding is not a canonical point or a P_k is not in the subgroup of order L.\n\n"
     "R: n 32-byte point encodings; z: n 16-byte little-endian weights; P: k 32-byte point encodings; "
     "c: k 32-byte little-endian scalars."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ed25519batch", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ed25519batch(void) { return PyModule_Create(&module); }
