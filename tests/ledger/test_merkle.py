"""RFC 6962 / RFC 9162 Merkle tree: published vectors, exhaustive round trips
against a naive reference, and every way a proof can be tampered with."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from opal.errors import BadInputError, LedgerCorrupt
from opal.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# --- Published vectors -------------------------------------------------------
# transparency-dev/merkle, testonly/constants.go (commit 417fb0c3):
# LeafInputs(), NodeHashes()[0] (= leaf hashes) and RootHashes().
LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
LEAF_HASHES = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
    h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
    h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
    h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
    h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
]
# Index = tree size; ROOTS[0] is EmptyRootHash().
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
# NodeHashes()[1..3]: complete subtrees of 2, 4 and 8 leaves.
LEVEL_1 = [
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
]
LEVEL_2 = [
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
]

# transparency-dev/merkle, proof/verify_test.go (commit 022f84c, before the
# vectors moved to testdata/*.json): inclusionProofs and consistencyProofs.
# The Go table counts leaves from 1; here the index is 0-based.
INCLUSION_VECTORS: list[tuple[int, int, list[bytes]]] = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        3,
        [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")],
    ),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
CONSISTENCY_VECTORS: list[tuple[int, int, list[bytes]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]
# transparency-dev/merkle, proof/verify_test.go: sha256SomeHash.
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- Naive reference, transcribed from RFC 6962 §2.1 -------------------------


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def distinct_leaves(n: int, tag: bytes = b"opal") -> list[bytes]:
    return [leaf_hash(tag + i.to_bytes(4, "big")) for i in range(n)]


def flip(value: bytes, bit: int = 3) -> bytes:
    return bytes([value[0] ^ (1 << bit)]) + value[1:]


def rejected(check: Callable[..., None], **kwargs: Any) -> bool:
    try:
        check(**kwargs)
    except LedgerCorrupt:
        return True
    return False


@pytest.fixture(scope="module")
def tree64() -> tuple[list[bytes], MerkleTree]:
    leaves = distinct_leaves(64)
    return leaves, MerkleTree(leaves)


# --- Hashing ------------------------------------------------------------------


def test_hashes_match_rfc6962_hasher_vectors() -> None:
    # transparency-dev/merkle, rfc6962/rfc6962_test.go: TestRFC6962Hasher.
    assert EMPTY_ROOT == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert leaf_hash(b"") == h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert leaf_hash(b"L123456") == h(
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456") == h(
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


def test_empty_leaf_is_not_the_empty_tree() -> None:
    assert leaf_hash(b"") != EMPTY_ROOT


def test_leaf_hashes_of_published_inputs() -> None:
    assert [leaf_hash(e) for e in LEAF_INPUTS] == LEAF_HASHES


def test_node_hash_is_order_sensitive() -> None:
    a, b = LEAF_HASHES[0], LEAF_HASHES[1]
    assert node_hash(a, b) != node_hash(b, a)


# --- Roots ---------------------------------------------------------------------


@pytest.mark.parametrize("size", range(9))
def test_root_matches_published_root_for_each_size(size: int) -> None:
    assert root(LEAF_HASHES[:size]) == ROOTS[size]
    assert MerkleTree(LEAF_HASHES).root(size) == ROOTS[size]


def test_stored_subtree_hashes_match_published_node_hashes() -> None:
    tree = MerkleTree(LEAF_HASHES)
    assert [tree.root(2)] + [node_hash(LEAF_HASHES[i], LEAF_HASHES[i + 1]) for i in (2, 4, 6)] == (
        LEVEL_1
    )
    assert node_hash(LEVEL_1[0], LEVEL_1[1]) == LEVEL_2[0]
    assert node_hash(LEVEL_1[2], LEVEL_1[3]) == LEVEL_2[1]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert root([]) == EMPTY_ROOT
    assert MerkleTree().root() == EMPTY_ROOT
    assert MerkleTree().size == 0


def test_appending_one_by_one_gives_same_roots_as_bulk_build() -> None:
    leaves = distinct_leaves(100)
    incremental = MerkleTree()
    for i, lh in enumerate(leaves):
        assert incremental.append(lh) == i
        assert incremental.root() == ref_mth(leaves[: i + 1])
    bulk = MerkleTree(leaves[:37])
    bulk.extend(leaves[37:])
    assert bulk.size == len(bulk) == 100
    assert all(bulk.root(n) == ref_mth(leaves[:n]) for n in range(101))
    assert bulk.leaf(41) == leaves[41]


def test_root_does_not_duplicate_the_last_node() -> None:
    # Bitcoin-style trees pair an odd last node with itself; RFC 6962 promotes it.
    a, b, c = LEAF_HASHES[:3]
    assert root([a, b, c]) == node_hash(node_hash(a, b), c)
    assert root([a, b, c]) != root([a, b, c, c])


# --- Published proof vectors ----------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_inclusion_proof_matches_published_vector(
    index: int, size: int, proof: list[bytes]
) -> None:
    assert MerkleTree(LEAF_HASHES).inclusion_proof(index, size) == proof
    assert inclusion_proof(LEAF_HASHES, index, size) == proof
    verify_inclusion(
        leaf_hash=leaf_hash(LEAF_INPUTS[index]),
        index=index,
        size=size,
        proof=proof,
        root=ROOTS[size],
    )


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_consistency_proof_matches_published_vector(old: int, new: int, proof: list[bytes]) -> None:
    assert MerkleTree(LEAF_HASHES).consistency_proof(old, new) == proof
    assert consistency_proof(LEAF_HASHES, old, new) == proof
    verify_consistency(
        old_size=old, new_size=new, old_root=ROOTS[old], new_root=ROOTS[new], proof=proof
    )


def corrupt_inclusion_probes(
    index: int, size: int, proof: list[bytes], root_: bytes, lh: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    # Port of corruptInclusionProof, transparency-dev/merkle proof/verify_test.go.
    probes = [
        ("index - 1", index - 1, size, lh, proof, root_),
        ("index + 1", index + 1, size, lh, proof, root_),
        ("index ^ 2", index ^ 2, size, lh, proof, root_),
        ("size * 2", index, size * 2, lh, proof, root_),
        ("size // 2", index, size // 2, lh, proof, root_),
        ("wrong leaf", index, size, b"WrongLeaf", proof, root_),
        ("empty root", index, size, lh, proof, EMPTY_ROOT),
        ("random root", index, size, lh, proof, SOME_HASH),
        ("trailing garbage", index, size, lh, [*proof, b""], root_),
        ("trailing root", index, size, lh, [*proof, root_], root_),
        ("preceding garbage", index, size, lh, [b"", *proof], root_),
        ("preceding root", index, size, lh, [root_, *proof], root_),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 3)
        probes.append((f"proof[{i}] bit 3", index, size, lh, bad, root_))
    if proof:
        probes.append(("removed component", index, size, lh, proof[:-1], root_))
    if len(proof) > 1:
        probes.append(
            ("inserted component", index, size, lh, [proof[0], SOME_HASH, *proof[1:]], root_)
        )
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_tampered_published_inclusion_proofs_are_rejected(
    index: int, size: int, proof: list[bytes]
) -> None:
    lh = leaf_hash(LEAF_INPUTS[index])
    accepted = [
        desc
        for desc, i, s, leaf, p, r in corrupt_inclusion_probes(index, size, proof, ROOTS[size], lh)
        if not rejected(verify_inclusion, leaf_hash=leaf, index=i, size=s, proof=p, root=r)
    ]
    assert accepted == []


def corrupt_consistency_probes(
    old: int, new: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    # Port of corruptConsistencyProof, transparency-dev/merkle proof/verify_test.go.
    probes = [
        ("old - 1", old - 1, new, root1, root2, proof),
        ("old + 1", old + 1, new, root1, root2, proof),
        ("old ^ 2", old ^ 2, new, root1, root2, proof),
        ("new * 2", old, new * 2, root1, root2, proof),
        ("new // 2", old, new // 2, root1, root2, proof),
        ("wrong root1", old, new, b"WrongRoot", root2, proof),
        ("wrong root2", old, new, root1, b"WrongRoot", proof),
        ("swapped roots", old, new, root2, root1, proof),
        ("empty proof", old, new, root1, root2, []),
        ("trailing garbage", old, new, root1, root2, [*proof, b""]),
        ("trailing root1", old, new, root1, root2, [*proof, root1]),
        ("trailing root2", old, new, root1, root2, [*proof, root2]),
        ("preceding garbage", old, new, root1, root2, [b"", *proof]),
        ("preceding root1", old, new, root1, root2, [root1, *proof]),
        ("preceding root2", old, new, root1, root2, [root2, *proof]),
        ("preceding proof[0]", old, new, root1, root2, [proof[0], *proof]),
        ("truncated proof", old, new, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 4)
        probes.append((f"proof[{i}] bit 4", old, new, root1, root2, bad))
    return probes


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]])
def test_tampered_published_consistency_proofs_are_rejected(
    old: int, new: int, proof: list[bytes]
) -> None:
    accepted = [
        desc
        for desc, o, n, r1, r2, p in corrupt_consistency_probes(
            old, new, ROOTS[old], ROOTS[new], proof
        )
        if not rejected(
            verify_consistency, old_size=o, new_size=n, old_root=r1, new_root=r2, proof=p
        )
    ]
    assert accepted == []


# --- Exhaustive round trips against the reference -------------------------------


def test_every_inclusion_proof_up_to_64_matches_reference_and_verifies(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    leaves, tree = tree64
    for size in range(1, 65):
        r = ref_mth(leaves[:size])
        assert tree.root(size) == r
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, leaves[:size]), (index, size)
            verify_inclusion(leaf_hash=leaves[index], index=index, size=size, proof=proof, root=r)


def test_every_consistency_proof_up_to_64_matches_reference_and_verifies(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    leaves, tree = tree64
    roots = [tree.root(n) for n in range(65)]
    for new in range(65):
        for old in range(new + 1):
            proof = tree.consistency_proof(old, new)
            expected = [] if old in (0, new) else ref_subproof(old, leaves[:new], True)
            assert proof == expected, (old, new)
            verify_consistency(
                old_size=old, new_size=new, old_root=roots[old], new_root=roots[new], proof=proof
            )


def test_free_functions_agree_with_the_tree(tree64: tuple[list[bytes], MerkleTree]) -> None:
    leaves, tree = tree64
    assert root(leaves[:45]) == tree.root(45)
    assert inclusion_proof(leaves, 17, 45) == tree.inclusion_proof(17, 45)
    assert inclusion_proof(leaves[:45], 17) == tree.inclusion_proof(17, 45)
    assert consistency_proof(leaves, 13, 45) == tree.consistency_proof(13, 45)
    assert consistency_proof(leaves[:45], 13) == tree.consistency_proof(13, 45)


# --- Rejections --------------------------------------------------------------------


def test_inclusion_proof_with_one_hash_more_or_less_is_rejected_by_length(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    leaves, tree = tree64
    for size in range(1, 33):
        r = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            variants = [[*proof, SOME_HASH], [SOME_HASH, *proof]]
            if proof:
                variants += [proof[:-1], proof[1:]]
            for bad in variants:
                with pytest.raises(LedgerCorrupt, match="hashes, found"):
                    verify_inclusion(
                        leaf_hash=leaves[index], index=index, size=size, proof=bad, root=r
                    )


def test_inclusion_proof_with_a_flipped_bit_is_rejected(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    leaves, tree = tree64
    for size in range(2, 33):
        r = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            for i in range(len(proof)):
                for bit in (0, 7):
                    bad = list(proof)
                    bad[i] = flip(bad[i], bit)
                    with pytest.raises(LedgerCorrupt, match="expected root"):
                        verify_inclusion(
                            leaf_hash=leaves[index], index=index, size=size, proof=bad, root=r
                        )
            with pytest.raises(LedgerCorrupt, match="expected root"):
                verify_inclusion(
                    leaf_hash=flip(leaves[index]), index=index, size=size, proof=proof, root=r
                )


def test_inclusion_proof_for_another_index_of_the_same_tree_is_rejected(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    leaves, tree = tree64
    for size in range(1, 17):
        r = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            for other in range(-1, size + 1):
                if other == index:
                    continue
                assert rejected(
                    verify_inclusion,
                    leaf_hash=leaves[index],
                    index=other,
                    size=size,
                    proof=proof,
                    root=r,
                ), (index, other, size)


def test_inclusion_proof_claimed_for_a_wrong_size_is_rejected(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    leaves, tree = tree64
    proof = tree.inclusion_proof(5, 13)
    r = tree.root(13)
    verify_inclusion(leaf_hash=leaves[5], index=5, size=13, proof=proof, root=r)
    for size in (0, 5, 6, 8, 17, 26):
        with pytest.raises(LedgerCorrupt):
            verify_inclusion(leaf_hash=leaves[5], index=5, size=size, proof=proof, root=r)


def test_size_is_bound_by_the_checkpoint_not_by_the_inclusion_proof(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    # RFC 9162 inclusion proofs only bind the path's shape: leaf 5 has the same
    # path shape in every tree of 9..16 leaves. A root is tied to its size only
    # by the signed checkpoint (size, root), so callers must take both from it.
    leaves, tree = tree64
    proof = tree.inclusion_proof(5, 13)
    verify_inclusion(leaf_hash=leaves[5], index=5, size=12, proof=proof, root=tree.root(13))
    with pytest.raises(LedgerCorrupt):
        verify_inclusion(leaf_hash=leaves[5], index=5, size=12, proof=proof, root=tree.root(12))


def test_index_outside_the_tree_is_rejected_with_expected_range() -> None:
    with pytest.raises(LedgerCorrupt, match=r"expected an index in \[0, 1\), found 1"):
        verify_inclusion(leaf_hash=LEAF_HASHES[0], index=1, size=1, proof=[], root=ROOTS[1])
    with pytest.raises(LedgerCorrupt, match=r"expected an index in \[0, 0\), found 0"):
        verify_inclusion(leaf_hash=LEAF_HASHES[0], index=0, size=0, proof=[], root=EMPTY_ROOT)


def test_single_entry_tree_root_is_the_leaf_and_the_proof_is_empty() -> None:
    # transparency-dev/merkle proof/verify_test.go: TestVerifyInclusionSingleEntry.
    lh = leaf_hash(b"data")
    verify_inclusion(leaf_hash=lh, index=0, size=1, proof=[], root=lh)
    for leaf, r in ((lh, b""), (b"", lh), (b"", b"")):
        with pytest.raises(LedgerCorrupt, match="32-byte"):
            verify_inclusion(leaf_hash=leaf, index=0, size=1, proof=[], root=r)


def test_interior_node_presented_as_a_leaf_is_rejected() -> None:
    # Second preimage (RFC 6962 §2.1): the 64 bytes left||right of an interior
    # node, submitted as an entry, must not hash to that node.
    tree = MerkleTree(LEAF_HASHES)
    left, right = LEAF_HASHES[0], LEAF_HASHES[1]
    forged_entry = left + right
    assert node_hash(left, right) == LEVEL_1[0]
    assert leaf_hash(forged_entry) != LEVEL_1[0]
    # Without domain separation the forgery would work: plain SHA-256 of the
    # pair is what an unprefixed tree would store as the node.
    assert hashlib.sha256(forged_entry).digest() != leaf_hash(forged_entry)
    # The node's own path, shifted up a level, is a well-formed proof for
    # "leaf 0 of a 4-leaf tree" whose root is the real 8-leaf root.
    node_path = tree.inclusion_proof(0, 8)[1:]
    verify_inclusion(leaf_hash=LEVEL_1[0], index=0, size=4, proof=node_path, root=ROOTS[8])
    with pytest.raises(LedgerCorrupt, match="expected root"):
        verify_inclusion(
            leaf_hash=leaf_hash(forged_entry), index=0, size=4, proof=node_path, root=ROOTS[8]
        )
    # Nor is it leaf 0 of the real 8-leaf tree.
    with pytest.raises(LedgerCorrupt):
        verify_inclusion(
            leaf_hash=leaf_hash(forged_entry),
            index=0,
            size=8,
            proof=tree.inclusion_proof(0, 8),
            root=ROOTS[8],
        )


def test_consistency_proof_with_one_hash_more_or_less_is_rejected(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    _, tree = tree64
    for new in range(2, 33):
        for old in range(1, new):
            proof = tree.consistency_proof(old, new)
            r1, r2 = tree.root(old), tree.root(new)
            variants = [[*proof, SOME_HASH], [SOME_HASH, *proof], proof[:-1], proof[1:]]
            for bad in variants:
                with pytest.raises(LedgerCorrupt):
                    verify_consistency(
                        old_size=old, new_size=new, old_root=r1, new_root=r2, proof=bad
                    )
            with pytest.raises(LedgerCorrupt, match="hashes, found"):
                verify_consistency(
                    old_size=old, new_size=new, old_root=r1, new_root=r2, proof=[*proof, r2]
                )


def test_consistency_proof_with_a_flipped_bit_is_rejected(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    _, tree = tree64
    for new in range(2, 33):
        for old in range(1, new):
            proof = tree.consistency_proof(old, new)
            r1, r2 = tree.root(old), tree.root(new)
            for i in range(len(proof)):
                bad = list(proof)
                bad[i] = flip(bad[i], 4)
                with pytest.raises(LedgerCorrupt, match="expected (old|new) root"):
                    verify_consistency(
                        old_size=old, new_size=new, old_root=r1, new_root=r2, proof=bad
                    )


def test_consistency_with_wrong_sizes_is_rejected(
    tree64: tuple[list[bytes], MerkleTree],
) -> None:
    _, tree = tree64
    for new in range(2, 33):
        for old in range(1, new):
            proof = tree.consistency_proof(old, new)
            r1, r2 = tree.root(old), tree.root(new)
            # Only old_size is varied: like an inclusion proof, a consistency
            # proof binds new_size only through the checkpoint that signs it
            # (see test_size_is_bound_by_the_checkpoint_not_by_the_inclusion_proof).
            for o, n in ((old - 1, new), (old + 1, new), (old ^ 2, new)):
                if o == old:
                    continue
                assert rejected(
                    verify_consistency,
                    old_size=o,
                    new_size=n,
                    old_root=r1,
                    new_root=r2,
                    proof=proof,
                ), (old, new, o, n)


def test_shrinking_log_is_rejected() -> None:
    with pytest.raises(LedgerCorrupt, match="found old size 5 and new size 3; a log never shrinks"):
        verify_consistency(old_size=5, new_size=3, old_root=ROOTS[5], new_root=ROOTS[3], proof=[])
    with pytest.raises(BadInputError, match="found 5"):
        MerkleTree(LEAF_HASHES).consistency_proof(5, 3)


def test_forked_tree_is_not_consistent_with_the_original() -> None:
    honest = distinct_leaves(16)
    for new in range(2, 17):
        for old in range(1, new):
            for rewritten in range(old):
                forked_leaves = list(honest[:new])
                forked_leaves[rewritten] = leaf_hash(b"rewritten history")
                honest_tree, forked = MerkleTree(honest[:new]), MerkleTree(forked_leaves)
                for proof in (
                    forked.consistency_proof(old, new),
                    honest_tree.consistency_proof(old, new),
                ):
                    with pytest.raises(LedgerCorrupt):
                        verify_consistency(
                            old_size=old,
                            new_size=new,
                            old_root=honest_tree.root(old),
                            new_root=forked.root(new),
                            proof=proof,
                        )


def test_forks_after_the_old_size_are_still_consistent() -> None:
    # Only the prefix is committed to; what came after the old checkpoint is new.
    a = distinct_leaves(10, b"a")
    b = a[:6] + distinct_leaves(4, b"b")
    proof = MerkleTree(b).consistency_proof(6, 10)
    verify_consistency(old_size=6, new_size=10, old_root=root(a[:6]), new_root=root(b), proof=proof)


def test_same_size_with_different_roots_is_a_split_view() -> None:
    with pytest.raises(LedgerCorrupt, match="two different trees claim the same size"):
        verify_consistency(old_size=3, new_size=3, old_root=ROOTS[3], new_root=SOME_HASH, proof=[])
    with pytest.raises(LedgerCorrupt, match="expected 0 hashes, found 1"):
        verify_consistency(
            old_size=3, new_size=3, old_root=ROOTS[3], new_root=ROOTS[3], proof=[SOME_HASH]
        )


def test_consistency_from_the_empty_tree_needs_the_empty_root_and_no_proof() -> None:
    verify_consistency(old_size=0, new_size=8, old_root=EMPTY_ROOT, new_root=ROOTS[8], proof=[])
    with pytest.raises(LedgerCorrupt, match="the empty tree"):
        verify_consistency(old_size=0, new_size=8, old_root=ROOTS[1], new_root=ROOTS[8], proof=[])
    with pytest.raises(LedgerCorrupt, match="expected 0 hashes"):
        verify_consistency(
            old_size=0, new_size=8, old_root=EMPTY_ROOT, new_root=ROOTS[8], proof=[SOME_HASH]
        )


def test_empty_consistency_proof_between_different_sizes_is_rejected() -> None:
    # RFC 9162 §2.1.4.2 step 1.
    with pytest.raises(LedgerCorrupt, match="expected 1 hashes, found 0"):
        verify_consistency(old_size=1, new_size=2, old_root=ROOTS[1], new_root=ROOTS[2], proof=[])


# --- Generation errors ----------------------------------------------------------------


def test_generation_outside_the_tree_is_a_bad_input() -> None:
    tree = MerkleTree(LEAF_HASHES)
    with pytest.raises(BadInputError, match=r"in \[0, 8\], found 9"):
        tree.root(9)
    with pytest.raises(BadInputError, match=r"in \[0, 3\) for a tree of size 3, found 3"):
        tree.inclusion_proof(3, 3)
    with pytest.raises(BadInputError):
        tree.inclusion_proof(-1)
    with pytest.raises(BadInputError):
        inclusion_proof(LEAF_HASHES, 0, 9)
    with pytest.raises(BadInputError):
        tree.leaf(8)


def test_entries_instead_of_leaf_hashes_are_refused() -> None:
    tree = MerkleTree()
    with pytest.raises(BadInputError, match="found 2 bytes; pass leaf_hash"):
        tree.append(b"00")
    with pytest.raises(BadInputError, match="found str"):
        tree.extend([LEAF_HASHES[0], "x" * 32])  # type: ignore[list-item]
    assert tree.size == 0  # a failed extend appends nothing


# --- Timing (printed, not asserted) ---------------------------------------------------


@pytest.mark.slow
def test_timing_one_million_leaves(capsys: pytest.CaptureFixture[str]) -> None:
    n = 1_000_000
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
    t0 = time.perf_counter()
    tree = MerkleTree(leaves)
    build = time.perf_counter() - t0

    t0 = time.perf_counter()
    r = tree.root()
    root_time = time.perf_counter() - t0

    reps = 1000
    indices = [(i * 7919) % n for i in range(reps)]
    t0 = time.perf_counter()
    proofs = [tree.inclusion_proof(i) for i in indices]
    incl_gen = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for i, p in zip(indices, proofs, strict=True):
        verify_inclusion(leaf_hash=leaves[i], index=i, size=n, proof=p, root=r)
    incl_ver = (time.perf_counter() - t0) / reps

    olds = [1 + (i * 104729) % (n - 1) for i in range(reps)]
    t0 = time.perf_counter()
    cproofs = [tree.consistency_proof(o) for o in olds]
    cons_gen = (time.perf_counter() - t0) / reps
    old_roots = [tree.root(o) for o in olds]
    t0 = time.perf_counter()
    for o, ro, p in zip(olds, old_roots, cproofs, strict=True):
        verify_consistency(old_size=o, new_size=n, old_root=ro, new_root=r, proof=p)
    cons_ver = (time.perf_counter() - t0) / reps

    t0 = time.perf_counter()
    for lh in leaves[:10_000]:
        tree.append(lh)
    append = (time.perf_counter() - t0) / 10_000

    with capsys.disabled():
        print(
            f"\n[merkle 1M] build {build:.2f} s, root {root_time * 1e6:.0f} us, "
            f"inclusion gen {incl_gen * 1e6:.0f} us / verify {incl_ver * 1e6:.0f} us, "
            f"consistency gen {cons_gen * 1e6:.0f} us / verify {cons_ver * 1e6:.0f} us, "
            f"append {append * 1e6:.1f} us"
        )


def test_tree_from_concatenated_leaf_bytes_equals_the_tree_from_the_list() -> None:
    from opal.errors import BadInputError as _Bad
    from opal.ledger.merkle import MerkleTree, leaf_hash

    leaves = [leaf_hash(bytes([i])) for i in range(37)]
    assert MerkleTree.from_leaf_bytes(b"".join(leaves)).root() == MerkleTree(leaves).root()
    assert MerkleTree.from_leaf_bytes(b"".join(leaves)).root(20) == MerkleTree(leaves[:20]).root()
    with pytest.raises(_Bad):
        MerkleTree.from_leaf_bytes(b"x" * 33)
