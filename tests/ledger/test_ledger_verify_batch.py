"""``opal ledger verify`` checks signatures in batches (opal.trust.ed25519_batch),
and a batch never decides that an entry is bad: OpenSSL re-checks the batch one
signature at a time and names the entry. These tests prove the batch path is
really taken (a silent fallback would pass every other ledger test, only slower),
that ``--no-batch`` and a missing extension give the same verdicts, and that a
bad signature anywhere in a batch is still the entry named."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from ed25519_reference import order8_point, ref_sign, secret_scalar
from ledger_fixtures import Actors, flip_signature, make_signer, notes, populate, raw_conn, reopen

from opal.canonical import canonical_json
from opal.cli import cli
from opal.errors import LedgerCorrupt
from opal.ledger import Ledger
from opal.ledger.records import ENTRY_DOMAIN, envelope
from opal.trust import ed25519_batch
from opal.trust.keyring import Signer
from opal.trust.keys import first_invalid_signature

needs_extension = pytest.mark.skipif(not ed25519_batch.available(), reason="the C extension is not built")








@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Every call of verify_batch in this process: (signatures, verdict)."""
    calls: list[tuple[int, bool]] = []
    real = ed25519_batch.verify_batch

    def spy(items: Sequence[tuple[bytes, bytes, bytes]]) -> bool:
        verdict = real(items)
        calls.append((len(items), verdict))
        return verdict

    monkeypatch.setattr(ed25519_batch, "verify_batch", spy)
    return calls


@pytest.fixture
def filled(ledger: Ledger, actors: Actors) -> Ledger:
    populate(ledger, actors, runs=3)
    notes(ledger, actors.op, 300)
    return ledger


@needs_extension
def test_every_signature_of_a_clean_ledger_is_checked_in_a_batch(
    filled: Ledger, batches: list[tuple[int, bool]]
) -> None:
    report = filled.verify(workers=0)
    assert report.signature_check == "batch"
    assert batches and all(verdict for _, verdict in batches)
    assert sum(n for n, _ in batches) == report.size > 300


def test_no_batch_checks_each_signature_with_openssl(filled: Ledger, batches: list[tuple[int, bool]]) -> None:
    single = filled.verify(workers=0, batch=False)
    assert single.signature_check == "one-by-one" and batches == []
    batched = filled.verify(workers=0)
    assert (single.size, single.root, single.signatures) == (batched.size, batched.root, batched.signatures)


@needs_extension
@pytest.mark.parametrize("at", [60, 200, 310])
def test_a_bad_signature_fails_its_batch_and_openssl_names_it(
    filled: Ledger, batches: list[tuple[int, bool]], at: int
) -> None:
    flip_signature(raw_conn(filled), at)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {at} \(note\): signature does not verify$"):
        reopen(filled).verify(workers=0)
    assert batches and batches[-1][1] is False


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("batch", [True, False])
def test_two_bad_signatures_name_the_first_either_way(filled: Ledger, workers: int, batch: bool) -> None:
    flip_signature(raw_conn(filled), 250)
    flip_signature(raw_conn(filled), 90)
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 90 \(note\): signature does not verify$"):
        reopen(filled).verify(workers=workers, batch=batch)


def test_without_the_extension_verify_falls_back_to_openssl(filled: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ed25519_batch, "_ed25519batch", None)
    assert not ed25519_batch.available()
    assert reopen(filled).verify(workers=0).signature_check == "one-by-one"
    flip_signature(raw_conn(filled), 120)
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 120 \(note\): signature does not verify$"):
        reopen(filled).verify(workers=0)


def test_cli_reports_which_check_was_used(filled: Ledger) -> None:
    home = Path(filled.db.path).parent

    def verify(*flags: str) -> dict[str, object]:
        result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "verify", "--json", *flags])
        assert result.exit_code == 0, result.output
        report: dict[str, object] = json.loads(result.stdout)
        return report

    expected = "batch" if ed25519_batch.available() else "one-by-one"
    assert verify()["signature_check"] == expected
    assert verify("--no-batch")["signature_check"] == "one-by-one"
    flip_signature(raw_conn(filled), 77)
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "verify", "--no-batch"])
    assert result.exit_code == 7
    assert "ledger entry 77 (note): signature does not verify" in result.stderr


def sign_with_torsion(ledger: Ledger, idx: int, signer: Signer) -> None:
    """Re-sign entry ``idx`` with nonce point R = r·B + T8 (T8 of order 8): only the key holder can, OpenSSL
    rejects it, and the cofactored equation a batch checks accepts it (the gap ed25519_batch documents)."""
    conn = raw_conn(ledger)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,)).fetchone()
    signed = canonical_json(json.loads(raw)["entry"])
    seed = signer._private.private_bytes_raw()
    message = b"opal-v1:" + ENTRY_DOMAIN.encode() + b"\n" + signed
    signature = ref_sign(
        secret_scalar(seed), bytes.fromhex(signer.info.public_key), message, 0xC0FFEE + idx, torsion=order8_point()
    )
    conn.execute(
        "UPDATE ledger SET entry = ? WHERE idx = ?", (envelope(signed, base64.b64encode(signature).decode()), idx)
    )
    conn.close()


@needs_extension
def test_torsion_in_r_is_always_named_without_batches_and_mostly_with_them(filled: Ledger, actors: Actors) -> None:
    sign_with_torsion(filled, 150, actors.op)
    expected = "ledger entry 150 (note): signature does not verify"
    with pytest.raises(LedgerCorrupt) as caught:
        reopen(filled).verify(workers=0, batch=False)
    assert caught.value.message == expected
    named = 0
    for _ in range(20):
        try:
            reopen(filled).verify(workers=0)
        except LedgerCorrupt as exc:
            assert exc.message == expected  # whenever a batch run sees it, OpenSSL names exactly this entry
            named += 1
    # Each run catches an order-8 remainder with probability 7/8: fewer than 8 of 20 has probability 6e-8.
    assert named >= 8


@needs_extension
def test_signatures_by_many_distinct_keys_are_not_batched(batches: list[tuple[int, bool]]) -> None:
    """Each key costs a batch about one OpenSSL verification, so a batch with more than one key per four
    signatures would be slower than checking each: those are checked one by one, with the same verdicts."""
    signers = [make_signer(f"k{i}", "operator") for i in range(16)]

    def items(nkeys: int) -> list[tuple[bytes, str, bytes, str]]:
        out = []
        for i in range(16):
            s = signers[i % nkeys]
            message = b"entry %d" % i
            out.append((bytes.fromhex(s.info.public_key), ENTRY_DOMAIN, message, s.sign(ENTRY_DOMAIN, message)))
        return out

    assert first_invalid_signature(items(16)) is None and batches == []
    many = items(16)
    many[9] = (many[9][0], ENTRY_DOMAIN, b"another entry", many[9][3])
    assert first_invalid_signature(many) == 9 and batches == []
    few = items(4)
    assert first_invalid_signature(few) is None and batches == [(16, True)]
    few[9] = (few[9][0], ENTRY_DOMAIN, b"another entry", few[9][3])
    assert first_invalid_signature(few) == 9 and batches[-1] == (16, False)
