"""RFC 6962 / RFC 9162 Merkle tree: hashes, roots, proofs and their checks.

The ledger is an append-only log whose entries are the leaves of this tree.
A checkpoint commits to ``(size, root)``; an inclusion proof shows that an
entry is in a checkpointed tree, a consistency proof that a later checkpoint
extends an earlier one without rewriting it.

Only SHA-256 from the standard library is used. Leaf and node hashes are
domain-separated (0x00 / 0x01 prefixes) so an interior node can never be
passed off as a leaf (second-preimage attack, RFC 6962 §2.1).

Verification functions return ``None`` and raise :class:`LedgerCorrupt`;
generation functions raise :class:`BadInputError` when asked about leaves or
sizes the tree does not have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from opal.errors import BadInputError, LedgerCorrupt

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

# RFC 9162 §2.1.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT: bytes = _sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 §2.1.1 leaf hash ``SHA-256(0x00 || entry)``."""
    return _sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 §2.1.1 interior node hash ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


class MerkleTree:
    """An append-only Merkle tree over leaf hashes, able to answer for any past size.

    Every complete subtree hash is kept: level ``k`` holds the hashes of the
    aligned ranges of ``2**k`` leaves, packed as 32-byte records in one
    ``bytearray``. A root or proof for any size ``n <= self.size`` then needs
    only table look-ups plus at most ``O(log n)`` hashes for the one
    incomplete subtree on the right edge. Memory is about ``64 * size`` bytes.

    Not safe for concurrent mutation: the caller must serialize the writer
    with any readers.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Build the tree from ``leaf_hashes``.

        Raises:
            BadInputError: a leaf hash is not 32 bytes.
        """
        self._levels: list[bytearray] = [bytearray()]
        self.extend(leaf_hashes)

    @classmethod
    def from_leaf_bytes(cls, data: bytes) -> MerkleTree:
        """The tree of leaf hashes given as one buffer of concatenated 32-byte hashes.

        Raises:
            BadInputError: the buffer is not a whole number of hashes.
        """
        if len(data) % HASH_SIZE:
            raise BadInputError(f"leaf hashes must be {HASH_SIZE} bytes each, found {len(data)} bytes in all")
        tree = cls()
        tree._levels[0] += data
        tree._fill_levels()
        return tree

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    def __len__(self) -> int:
        return self.size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index.

        Raises:
            BadInputError: ``leaf_hash`` is not 32 bytes.
        """
        _check_hash_input(leaf_hash, "leaf hash")
        index = self.size
        self._levels[0] += leaf_hash
        self._fill_levels()
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes; faster than repeated :meth:`append`.

        Raises:
            BadInputError: a leaf hash is not 32 bytes (nothing is appended).
        """
        hashes = list(leaf_hashes)
        if not all(type(h) is bytes and len(h) == HASH_SIZE for h in hashes):
            for h in hashes:  # the slow path names what is wrong
                _check_hash_input(h, "leaf hash")
        if not hashes:
            return
        self._levels[0] += b"".join(hashes)
        self._fill_levels()

    def extend_joined(self, data: bytes) -> None:
        """Append leaf hashes given as one buffer of concatenated 32-byte hashes.

        Raises:
            BadInputError: the buffer is not a whole number of hashes (nothing is appended).
        """
        if len(data) % HASH_SIZE:
            raise BadInputError(f"leaf hashes must be {HASH_SIZE} bytes each, found {len(data)} bytes in all")
        if data:
            self._levels[0] += data
            self._fill_levels()

    def leaf(self, index: int) -> bytes:
        """Return the leaf hash at ``index``.

        Raises:
            BadInputError: ``index`` is not a leaf of this tree.
        """
        if not 0 <= index < self.size:
            raise BadInputError(f"leaf index must be in [0, {self.size}), found {index}")
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """Return the Merkle Tree Hash of the first ``size`` leaves (default: all).

        Raises:
            BadInputError: ``size`` is negative or larger than the tree.
        """
        n = self._check_size(size)
        return self._range_hash(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the audit path for leaf ``index`` in the tree of ``size`` leaves.

        RFC 9162 §2.1.3.1 (PATH in RFC 6962 §2.1.1), ordered from the leaf up.

        Raises:
            BadInputError: ``size`` is out of range or ``index >= size``.
        """
        n = self._check_size(size)
        if not 0 <= index < n:
            raise BadInputError(
                f"leaf index must be in [0, {n}) for a tree of size {n}, found {index}"
            )
        # PATH(m, D[lo:hi]): descend towards leaf m, collecting the sibling
        # subtree at every split; the RFC lists them bottom-up.
        path: list[bytes] = []
        lo, hi, m = 0, n, index
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if m < k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the proof that the tree of ``old_size`` is a prefix of ``new_size``.

        RFC 9162 §2.1.4.1 (SUBPROOF in RFC 6962 §2.1.2). Empty when
        ``old_size`` is 0 or equals ``new_size``.

        Raises:
            BadInputError: a size is out of range or ``old_size > new_size``.
        """
        n = self._check_size(new_size)
        if not 0 <= old_size <= n:
            raise BadInputError(
                f"old size must be in [0, {n}] for a new size of {n}, found {old_size}"
            )
        if old_size in (0, n):
            return []
        # SUBPROOF(m, D[lo:hi], b), unrolled; b stays true while the old tree
        # is a left-aligned complete subtree the verifier already knows.
        proof: list[bytes] = []
        lo, hi, m, b = 0, n, old_size, True
        while m != hi - lo:
            k = _largest_power_of_two_below(hi - lo)
            if m <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
                b = False
        if not b:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise BadInputError(
                f"tree size must be in [0, {self.size}], found {size}; "
                "the tree has not grown that far"
            )
        return size

    def _node(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def _fill_levels(self) -> None:
        # Hash every pair of complete siblings that has no parent yet. For a
        # single append this stops at the first level with nothing new.
        level = 0
        while True:
            below = self._levels[level]
            pairs = len(below) // (2 * HASH_SIZE)
            if pairs == 0:
                return
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            above = self._levels[level + 1]
            done = len(above) // HASH_SIZE
            if done == pairs:
                return
            # A node's children are adjacent, so 0x01 || left || right is one
            # contiguous 64-byte slice.
            data = bytes(below[done * 2 * HASH_SIZE : pairs * 2 * HASH_SIZE])
            above += b"".join(
                [
                    _sha256(_NODE_PREFIX + data[i : i + 2 * HASH_SIZE]).digest()
                    for i in range(0, len(data), 2 * HASH_SIZE)
                ]
            )
            level += 1

    def _range_hash(self, lo: int, hi: int) -> bytes:
        # MTH(D[lo:hi]) for a range that occurs in the RFC 9162 §2.1.1
        # recursion: ``lo`` is a multiple of every power of two <= hi - lo, so
        # the range splits into complete stored subtrees of decreasing size,
        # folded from the right exactly as the recursion would.
        if lo == hi:
            return EMPTY_ROOT
        parts: list[bytes] = []
        pos = lo
        while pos < hi:
            level = (hi - pos).bit_length() - 1
            parts.append(self._node(level, pos >> level))
            pos += 1 << level
        acc = parts.pop()
        while parts:
            acc = node_hash(parts.pop(), acc)
        return acc


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash (RFC 9162 §2.1.1) of ``leaf_hashes``.

    Raises:
        BadInputError: a leaf hash is not 32 bytes.
    """
    return MerkleTree(leaf_hashes).root()


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, size: int | None = None
) -> list[bytes]:
    """Return the inclusion proof for ``index`` in the tree of the first ``size`` leaves.

    Raises:
        BadInputError: ``size`` exceeds ``len(leaf_hashes)``, ``index >= size``,
            or a leaf hash is not 32 bytes.
    """
    return MerkleTree(_prefix(leaf_hashes, size)).inclusion_proof(index)


def consistency_proof(
    leaf_hashes: Sequence[bytes], old_size: int, new_size: int | None = None
) -> list[bytes]:
    """Return the consistency proof from ``old_size`` to ``new_size`` leaves.

    Raises:
        BadInputError: a size is out of range, ``old_size > new_size``, or a
            leaf hash is not 32 bytes.
    """
    return MerkleTree(_prefix(leaf_hashes, new_size)).consistency_proof(old_size)


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Implements RFC 9162 §2.1.3.2 step by step, so a proof with one hash too
    many or too few is rejected even before the roots are compared.

    Raises:
        LedgerCorrupt: the proof does not lead from the leaf to ``root``, the
            index is outside the tree, or a hash is not 32 bytes.
    """
    where = f"inclusion proof for leaf {index} in tree of size {size}"
    _check_hash(leaf_hash, "leaf hash", where)
    _check_hash(root, "root", where)
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}", where)
    # RFC 9162 §2.1.3.2 step 1
    if not 0 <= index < size:
        raise LedgerCorrupt(f"{where}: expected an index in [0, {size}), found {index}")
    # Steps 2-3
    fn, sn = index, size - 1
    r = leaf_hash
    # Step 4
    for p in proof:
        if sn == 0:  # 4a: the path already reached the root
            raise _wrong_length(where, len(proof), _inclusion_path_length(index, size))
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            while fn != 0 and not fn & 1:  # 4b.ii
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    # Step 5
    if sn != 0:
        raise _wrong_length(where, len(proof), _inclusion_path_length(index, size))
    if r != root:
        raise LedgerCorrupt(
            f"{where}: expected root {root.hex()}, computed {r.hex()}; "
            "the entry or the proof does not belong to this checkpoint"
        )


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    Implements RFC 9162 §2.1.4.2 step by step for ``0 < old_size < new_size``.
    Outside that range: equal sizes need an empty proof and equal roots (a
    different root at the same size is a split view); ``old_size == 0`` needs
    an empty proof and ``old_root == EMPTY_ROOT``, since the empty tree is a
    prefix of every tree.

    Raises:
        LedgerCorrupt: the new tree does not extend the old one, the proof has
            the wrong length, ``old_size > new_size``, or a hash is not 32 bytes.
    """
    where = f"consistency proof from size {old_size} to size {new_size}"
    _check_hash(old_root, "old root", where)
    _check_hash(new_root, "new root", where)
    for i, c in enumerate(proof):
        _check_hash(c, f"proof hash {i}", where)
    if not 0 <= old_size <= new_size:
        raise LedgerCorrupt(
            f"{where}: expected 0 <= old size <= new size, found old size {old_size} "
            f"and new size {new_size}; a log never shrinks"
        )
    if old_size == 0 or old_size == new_size:
        if proof:
            raise _wrong_length(where, len(proof), 0)
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise LedgerCorrupt(
                f"{where}: expected old root {EMPTY_ROOT.hex()} (the empty tree), "
                f"found {old_root.hex()}"
            )
        if old_size != 0 and old_root != new_root:
            raise LedgerCorrupt(
                f"{where}: expected old root {new_root.hex()}, found {old_root.hex()}; "
                "two different trees claim the same size"
            )
        return
    expected_length = _consistency_path_length(old_size, new_size)
    # RFC 9162 §2.1.4.2 step 1
    if not proof:
        raise _wrong_length(where, 0, expected_length)
    path = list(proof)
    # Step 2: a complete old tree is a node of the new one; the verifier
    # already knows its hash, so the prover leaves it out.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # Steps 3-4
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5
    fr = sr = path[0]
    # Step 6
    for c in path[1:]:
        if sn == 0:  # 6a
            raise _wrong_length(where, len(proof), expected_length)
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn != 0 and not fn & 1:  # 6b.ii
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    # Step 7
    if sn != 0:
        raise _wrong_length(where, len(proof), expected_length)
    if fr != old_root:
        raise LedgerCorrupt(
            f"{where}: expected old root {old_root.hex()}, computed {fr.hex()}; "
            "the new tree rewrote entries of the old one"
        )
    if sr != new_root:
        raise LedgerCorrupt(
            f"{where}: expected new root {new_root.hex()}, computed {sr.hex()}; "
            "the new tree does not extend the old one"
        )


def _largest_power_of_two_below(n: int) -> int:
    # The split point k of RFC 9162 §2.1.1: the largest power of two < n (n > 1).
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_path_length(index: int, size: int) -> int:
    # Length of PATH(index, D[0:size]); used only to word error messages.
    length, m, n = 0, index, size
    while n > 1:
        k = _largest_power_of_two_below(n)
        if m < k:
            n = k
        else:
            m, n = m - k, n - k
        length += 1
    return length


def _consistency_path_length(old_size: int, new_size: int) -> int:
    # Length of SUBPROOF(old_size, D[0:new_size], true), 0 < old_size < new_size;
    # used only to word error messages.
    length, m, n, b = 0, old_size, new_size, True
    while m != n:
        k = _largest_power_of_two_below(n)
        if m <= k:
            n = k
        else:
            m, n, b = m - k, n - k, False
        length += 1
    return length + (0 if b else 1)


def _wrong_length(where: str, found: int, expected: int) -> LedgerCorrupt:
    return LedgerCorrupt(f"{where}: expected {expected} hashes, found {found}")


def _hash_problem(value: object, what: str) -> str | None:
    if not isinstance(value, (bytes, bytearray)):
        return f"expected a {HASH_SIZE}-byte {what}, found {type(value).__name__}"
    if len(value) != HASH_SIZE:
        return f"expected a {HASH_SIZE}-byte {what}, found {len(value)} bytes"
    return None


def _check_hash(value: bytes, what: str, where: str) -> None:
    problem = _hash_problem(value, what)
    if problem is not None:
        raise LedgerCorrupt(f"{where}: {problem}")


def _check_hash_input(value: bytes, what: str) -> None:
    problem = _hash_problem(value, what)
    if problem is not None:
        raise BadInputError(f"{problem}; pass leaf_hash(entry), not the entry itself")


def _prefix(leaf_hashes: Sequence[bytes], size: int | None) -> Sequence[bytes]:
    if size is None:
        return leaf_hashes
    if not 0 <= size <= len(leaf_hashes):
        raise BadInputError(
            f"tree size must be in [0, {len(leaf_hashes)}], found {size}; "
            "there are not that many leaves"
        )
    return leaf_hashes[:size]
