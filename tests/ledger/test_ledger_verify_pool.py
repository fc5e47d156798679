"""Verification split between pool workers (rules 2 and 4) and the in-order pass
(rules 1, 3 and 5): the first bad entry is still the one named, whichever chunk
it falls in, and the key map handed to the workers decides nothing."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from click.testing import CliRunner
from ledger_fixtures import Actors, add_key, flip_signature, make_signer, notes, populate, raw_conn, reopen

from opal.canonical import canonical_json, parse_canonical
from opal.cli import cli
from opal.errors import LedgerCorrupt
from opal.ledger import Ledger
from opal.ledger import verify as verify_module
from opal.ledger.records import ENTRY_DOMAIN, envelope
from opal.ledger.verify import self_certified_keys
from opal.trust.keyring import Signer

CHUNK = 40  # entries per worker task in these tests: a few hundred entries span many chunks


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "_CHUNK", CHUNK)






def rewrite(conn: sqlite3.Connection, idx: int, entry: dict[str, Any], signer: Signer) -> None:
    """Replace entry ``idx`` with ``entry`` signed (validly) by ``signer``."""
    signed = canonical_json(entry)
    raw = envelope(signed, signer.sign(ENTRY_DOMAIN, signed))
    # as an attacker with the database would: the index columns follow the new entry
    conn.execute(
        "UPDATE ledger SET entry = ?, type = ?, actor = ?, time = ?, subject = ?, leaf_hash = ? WHERE idx = ?",
        (raw, entry["type"], entry["actor"], entry["time"], entry["subject"], hashlib.sha256(b"\0" + raw).digest(), idx),
    )


def impersonate(conn: sqlite3.Connection, idx: int, *, claimed: Signer, key: Signer) -> None:
    """Rewrite entry ``idx`` to claim ``claimed``'s key id and role, signed with ``key``."""
    entry = stored_entry(conn, idx)
    rewrite(conn, idx, {**entry, "actor": claimed.key_id, "actor_role": claimed.role}, key)


def stored_entry(conn: sqlite3.Connection, idx: int) -> dict[str, Any]:
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,)).fetchone()
    entry: dict[str, Any] = json.loads(raw)["entry"]
    return entry




@pytest.fixture
def big(ledger: Ledger, actors: Actors) -> Ledger:
    """Keys, runs and notes: 1000+ entries, about 25 chunks."""
    populate(ledger, actors, runs=20)
    notes(ledger, actors.op, 1000)
    ledger.checkpoint(actors.op)
    return ledger


def test_pool_and_inline_agree_on_a_clean_ledger(big: Ledger) -> None:
    seen: list[tuple[int, int]] = []
    pooled = big.verify(workers=2, progress=lambda done, total: seen.append((done, total)))
    inline = big.verify(workers=0)
    assert pooled.size == inline.size > 20 * CHUNK
    assert (pooled.root, pooled.runs, pooled.keys) == (inline.root, inline.runs, inline.keys)
    assert pooled.root == big.tree().root().hex()
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (pooled.size, pooled.size) and len(seen) > 20


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize(
    ("first", "second"),
    [("signature", "unknown"), ("unknown", "signature"), ("revoked", "signature"), ("signature", "revoked")],
)
def test_first_bad_entry_is_named_across_chunks(
    ledger: Ledger, actors: Actors, workers: int, first: str, second: str
) -> None:
    populate(ledger, actors, runs=1)
    stolen = make_signer("stolen", "operator")
    add_key(ledger, stolen)
    ledger.append(
        type="key_revoked",
        body={"name": "stolen", "key_id": stolen.key_id, "reason": "lost"},
        signer=actors.board,
        subject=stolen.key_id,
    )
    ghost = make_signer("ghost", "operator")
    expected = {}
    for kind, at in ((first, 7 * CHUNK + 3), (second, 15 * CHUNK + 30)):
        notes(ledger, actors.op, at - ledger.size())
        if kind == "unknown":
            ledger.append(type="note", body={"n": -1}, signer=ghost)
            expected[kind] = rf"^ledger entry {at} \(note\) is signed by key {ghost.key_id[:16]} holding no role"
        elif kind == "revoked":
            ledger.append(type="note", body={"n": -1}, signer=stolen)
            expected[kind] = rf"^ledger entry {at} \(note\) is signed by key {stolen.key_id[:16]}, revoked at entry"
        else:
            ledger.append(type="note", body={"n": -1}, signer=actors.op)
            expected[kind] = rf"^ledger entry {at} \(note\): signature does not verify$"
    notes(ledger, actors.op, 3 * CHUNK)
    conn = raw_conn(ledger)
    for kind, at in ((first, 7 * CHUNK + 3), (second, 15 * CHUNK + 30)):
        if kind == "signature":
            flip_signature(conn, at)
    with pytest.raises(LedgerCorrupt, match=expected[first]):
        reopen(ledger).verify(workers=workers)


def test_a_gap_after_a_bad_entry_names_the_bad_entry(big: Ledger) -> None:
    conn = raw_conn(big)
    (original,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (5 * CHUNK + 1,)).fetchone()
    flip_signature(conn, 5 * CHUNK + 1)
    conn.execute("DELETE FROM ledger WHERE idx = ?", (12 * CHUNK,))
    again = reopen(big)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {5 * CHUNK + 1} \(note\): signature does not verify"):
        again.verify(workers=2)
    raw_conn(again).execute("UPDATE ledger SET entry = ? WHERE idx = ?", (original, 5 * CHUNK + 1))
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {12 * CHUNK} is missing"):
        reopen(big).verify(workers=2)


def test_a_misshapen_entry_mid_chunk_is_named_before_later_faults(big: Ledger) -> None:
    conn = raw_conn(big)
    flip_signature(conn, 9 * CHUNK + 20)
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = ?", (9 * CHUNK + 7,)).fetchone()
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = ?", (raw.replace(b'{"entry":', b'{ "entry":'), 9 * CHUNK + 7))
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {9 * CHUNK + 7} is not a well-formed canonical entry$"):
        reopen(big).verify(workers=2)


def test_role_is_checked_before_the_signature_of_the_same_entry(big: Ledger, actors: Actors) -> None:
    conn = raw_conn(big)
    idx = 11 * CHUNK + 5
    entry = stored_entry(conn, idx)
    rewrite(conn, idx, {**entry, "actor_role": "board"}, actors.op)
    flip_signature(conn, idx)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {idx} claims role 'board' but key"):
        reopen(big).verify(workers=2)


def test_forged_key_added_cannot_plant_a_key_for_the_workers(big: Ledger, actors: Actors) -> None:
    # The operator's key signs a key_added naming the board's key id with an
    # attacker's public key, then the attacker signs as the board.
    attacker = make_signer("attacker", "board")
    conn = raw_conn(big)
    forged_at, used_at = 6 * CHUNK + 2, 14 * CHUNK + 9
    entry = stored_entry(conn, forged_at)
    body = {"name": "board1", "role": "board", "key_id": actors.board.key_id, "public_key": attacker.info.public_key}
    rewrite(conn, forged_at, {**entry, "type": "key_added", "body": body}, actors.op)
    conn.execute("UPDATE ledger SET type = 'key_added' WHERE idx = ?", (forged_at,))
    impersonate(conn, used_at, claimed=actors.board, key=attacker)
    hints = [r for (r,) in conn.execute("SELECT entry FROM ledger WHERE type = 'key_added'")]
    assert self_certified_keys(hints).get(actors.board.key_id) != bytes.fromhex(attacker.info.public_key)
    with pytest.raises(
        LedgerCorrupt, match=rf"^ledger entry {forged_at} \(key_added\) is signed by key \w+ holding operator"
    ):
        reopen(big).verify(workers=2)


def test_attacker_key_under_a_real_id_fails_its_signature(big: Ledger, actors: Actors) -> None:
    attacker = make_signer("attacker", "board")
    conn = raw_conn(big)
    used_at = 14 * CHUNK + 9
    impersonate(conn, used_at, claimed=actors.op, key=attacker)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {used_at} \(note\): signature does not verify$"):
        reopen(big).verify(workers=2)


def test_a_hint_pairing_a_real_id_with_another_key_is_ignored(big: Ledger, actors: Actors) -> None:
    # A valid note whose body pairs the board's key id with an attacker's key,
    # its (unsigned) type column changed to key_added so the hint query reads
    # it. Were the pair believed, the workers would pass the attacker's
    # signatures as the board's.
    attacker = make_signer("attacker", "board")
    conn = raw_conn(big)
    hint_at, used_at = 6 * CHUNK + 2, 14 * CHUNK + 9
    body = {"key_id": actors.op.key_id, "public_key": attacker.info.public_key}
    rewrite(conn, hint_at, {**stored_entry(conn, hint_at), "body": body}, actors.op)
    conn.execute("UPDATE ledger SET type = 'key_added' WHERE idx = ?", (hint_at,))
    impersonate(conn, used_at, claimed=actors.op, key=attacker)
    hints = [r for (r,) in conn.execute("SELECT entry FROM ledger WHERE type = 'key_added'")]
    assert self_certified_keys(hints)[actors.op.key_id] == bytes.fromhex(actors.op.info.public_key)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {hint_at} has type column 'key_added' but its signed"):
        reopen(big).verify(workers=2)
    raw_conn(reopen(big)).execute("UPDATE ledger SET type = 'note' WHERE idx = ?", (hint_at,))
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {used_at} \(note\): signature does not verify$"):
        reopen(big).verify(workers=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_relabelled_type_column_is_named(big: Ledger, workers: int) -> None:
    """The type column is an index, never an authority: relabelling one row is named."""
    conn = raw_conn(big)
    conn.execute("UPDATE ledger SET type = 'hidden' WHERE type = 'key_added'")
    with pytest.raises(LedgerCorrupt, match=r"^ledger entry 1 has type column 'hidden' but its signed entry says"):
        reopen(big).verify(workers=workers)


@pytest.mark.parametrize("column", ["subject", "actor", "time"])
def test_a_relabelled_index_column_is_named(big: Ledger, column: str) -> None:
    conn = raw_conn(big)
    conn.execute(f"UPDATE ledger SET {column} = 'x' WHERE idx = 700")
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry 700 has {column} column 'x' but its signed entry says"):
        reopen(big).verify(workers=2)


def test_a_self_certified_key_in_the_hints_is_not_trusted(big: Ledger, actors: Actors) -> None:
    # A note carrying a ghost key's id and public key, its type column claiming
    # key_added: the workers may use that key, the ledger never added it.
    ghost = make_signer("ghost", "operator")
    conn = raw_conn(big)
    idx, used_at = 3 * CHUNK, 8 * CHUNK + 1
    entry = stored_entry(conn, idx)
    body = {"key_id": ghost.key_id, "public_key": ghost.info.public_key}
    rewrite(conn, idx, {**entry, "body": body}, actors.op)
    rewrite(conn, used_at, {**stored_entry(conn, used_at), "actor": ghost.key_id}, ghost)
    hints = [r for (r,) in conn.execute("SELECT entry FROM ledger WHERE idx = ?", (idx,))]
    assert ghost.key_id in self_certified_keys(hints)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {used_at} \(note\) is signed by key \w+ holding no role"):
        reopen(big).verify(workers=2)


_PARENT = os.getpid()
_REAL_CHECK_CHUNK = verify_module._check_chunk


def _dies_in_a_worker(rows: Any, publics: Any) -> Any:
    if os.getpid() != _PARENT and rows[0][0] == 5 * CHUNK:
        os._exit(1)  # as if killed (OOM, signal)
    return _REAL_CHECK_CHUNK(rows, publics)


def test_a_dead_worker_does_not_lose_a_chunk(big: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = big.verify(workers=0)
    monkeypatch.setattr(verify_module, "_check_chunk", _dies_in_a_worker)
    again = reopen(big)
    assert again.verify(workers=2).root == clean.root
    conn = raw_conn(again)
    flip_signature(conn, 5 * CHUNK + 3)
    flip_signature(conn, 20 * CHUNK + 3)
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {5 * CHUNK + 3} \(note\): signature does not verify"):
        reopen(big).verify(workers=2)


def test_non_ascii_signature_is_named_not_a_crash(big: Ledger) -> None:
    conn = raw_conn(big)
    idx = 4 * CHUNK + 4
    conn.execute(
        "UPDATE ledger SET entry = ? WHERE idx = ?",
        (canonical_json({"entry": stored_entry(conn, idx), "signature": "sïgnature"}), idx),
    )
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {idx} is not a well-formed canonical entry$"):
        reopen(big).verify(workers=2)


def test_deeply_nested_entry_is_named_not_a_crash(big: Ledger) -> None:
    conn = raw_conn(big)
    idx = 4 * CHUNK + 4
    conn.execute("UPDATE ledger SET entry = ? WHERE idx = ?", (b"[" * 100_000 + b"]" * 100_000, idx))
    with pytest.raises(LedgerCorrupt, match=rf"^ledger entry {idx} is not a well-formed canonical entry$"):
        reopen(big).verify(workers=2)


def test_pool_failure_exits_7_through_the_cli(big: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPAL_DB_URL", raising=False)
    conn = raw_conn(big)
    flip_signature(conn, 13 * CHUNK)
    conn.close()
    home = Path(big.db.path).parent  # the ledger fixture's database is <home>/opal.db
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "verify", "--workers", "2"])
    assert result.exit_code == 7, result.output
    assert f"ledger entry {13 * CHUNK} (note): signature does not verify" in result.stderr
    assert "Traceback" not in result.stderr


# -- the canonical-JSON fast path ------------------------------------------


def _reference_accepts(raw: bytes) -> bool:
    try:
        return bool(canonical_json(json.loads(raw)) == raw)
    except ValueError:
        return False


def _accepts(raw: bytes) -> bool:
    try:
        parse_canonical(raw)
    except ValueError:
        return False
    return True


def _doubles() -> list[float]:
    rng = random.Random(1)
    special = [0.5, 0.1, 1.5, -2.25, 100.0, 1e15 + 0.5, 1e16, 1e21, 1e-7, 1e-6, 1e-5, 1e-4, 0.001, 123.456]
    special += [5e-324, 1.7976931348623157e308, 2.0**53, 2.0**53 + 2, 9007199254740993.0, 0.30000000000000004]
    randoms = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    scaled = [rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 25) for _ in range(3000)]
    rounded = [round(rng.uniform(0, 1000), rng.randint(0, 6)) for _ in range(1000)]
    return [x for x in special + randoms + scaled + rounded if math.isfinite(x)]


def test_fast_canonical_check_agrees_with_rfc8785_on_numbers() -> None:
    literals: set[str] = {"-0", "0", "-0.0", "0.0", "1.0", "1E5", "1e5", "1e+21", "0.50", "05", "1.", "9007199254740991"}
    literals |= {"9007199254740992", "-9007199254740991", "-9007199254740992", "123456789012345678901234567890"}
    for x in _doubles():
        literals |= {repr(x), rfc8785.dumps(x).decode(), f"{x:.17g}", f"{x:.15g}", f"{x:f}"}
    disagree = []
    for lit in sorted(literals):
        for raw in (
            b'{"a":' + lit.encode() + b"}",
            b'{"a":[1,' + lit.encode() + b',"x"],"b":0.5}',
        ):
            if _accepts(raw) != _reference_accepts(raw):
                disagree.append(raw)
    assert not disagree, disagree[:10]


def test_fast_canonical_check_agrees_with_rfc8785_on_strings_and_shape() -> None:
    docs = [
        b'{"a":"\\u00e9"}', '{"a":"é"}'.encode(), b'{"a":"\\/"}', b'{"a":"\\u001f"}', b'{"a":"\\u001F"}',
        b'{"a":"\\n"}', b'{"a":"\\u000a"}', b'{"b":1,"a":2}', b'{"a":1,"a":2}', b'{"a":1, "b":2}',
        b'{"a":NaN}', b'{"a":Infinity}', b'{"a":true,"b":null}', b' {"a":1}', b'{"a":1}\n', b"[]", b"{}",
        b'{"a":"\x7f"}', b'{"a":"\\u007f"}', b'{"\\u00e9":1,"z":2}', '{"z":1,"é":2}'.encode(),
    ]
    for raw in docs:
        assert _accepts(raw) == _reference_accepts(raw), raw


def test_fast_canonical_check_agrees_with_rfc8785_on_every_ascii_character() -> None:
    """Each ASCII character in a value and in a key, written raw, in its short
    escape and as lower- and upper-case \\u escapes: the fast path (msgspec)
    and RFC 8785 accept exactly the same spellings."""
    short = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    disagree = []
    for code in range(128):
        char = chr(code)
        spellings = {char, f"\\u{code:04x}", f"\\u{code:04X}", short.get(char, char)}
        for spelled in spellings:
            for doc in (f'{{"a":"x{spelled}y"}}', f'{{"k{spelled}":1,"z":2}}', f'["{spelled}",{code}]'):
                raw = doc.encode("ascii")
                if _accepts(raw) != _reference_accepts(raw):
                    disagree.append(raw)
    assert not disagree, disagree[:10]
    # and the long-number guard: 16 digits or more after ":", "," or "[" take the exact path
    for lit in ("9007199254740991", "9007199254740992", "-9007199254740992", "12345678901234567"):
        for raw in (b'{"a":' + lit.encode() + b"}", b"[1," + lit.encode() + b"]", b"[" + lit.encode() + b"]",
                    lit.encode()):
            assert _accepts(raw) == _reference_accepts(raw), raw


def test_a_statistician_cannot_cancel_a_run_it_did_not_request(ledger: Ledger, actors: Actors) -> None:
    """`opal runs cancel` refuses another key's run; a cancellation written anyway (by a node that
    skipped the check) is named by verify, while the requester's own and the node's pass."""
    populate(ledger, actors, runs=0)
    other = make_signer("stat2", "statistician")
    add_key(ledger, other, by=actors.board)
    for run_id in ("mine", "theirs", "by-node"):
        ledger.append(type="run_requested", body={"run_id": run_id}, signer=actors.stat, subject="pop")
    cancel = {"outcome": "cancelled", "epsilon_spent": 0.0}
    ledger.append(type="run_finished", body={"run_id": "mine", **cancel}, signer=actors.stat, subject="pop")
    ledger.append(type="run_finished", body={"run_id": "by-node", **cancel}, signer=actors.op, subject="pop")
    assert ledger.verify(workers=0).runs == 2
    ledger.append(type="run_finished", body={"run_id": "theirs", **cancel}, signer=other, subject="pop")
    with pytest.raises(LedgerCorrupt, match=r"cancels run theirs for key .*which did not request it"):
        ledger.verify(workers=0)


def _dataset(ledger: Ledger, actors: Actors, name: str, version: str, total: float, shared: str | None = None) -> None:
    """A registration as the node writes it: the signed entries and the budget tables."""
    body: dict[str, Any] = {"dataset": name, "version": version}
    with ledger.db.transaction() as tx:
        if shared:
            body["budget_shared_with"] = shared
            (pool,) = tx.execute("SELECT pool FROM budget_owners WHERE dataset = ?", (shared,)).fetchone()
        else:
            pool = version
            tx.execute("INSERT INTO budget(pool, total, spent, reserved) VALUES (?,?,0,0)", (pool, round(total * 1e6)))
        tx.execute("INSERT INTO budget_owners(dataset, pool) VALUES (?,?)", (name, pool))
        ledger.append_in(tx, type="dataset_registered", body=body, signer=actors.op, subject=name)
        ledger.append_in(tx, type="policy_changed", body={"dataset": name, "policy": {"total_epsilon": total}},
                         signer=actors.op, subject=name)


def _charged_run(ledger: Ledger, actors: Actors, run_id: str, dataset: str, epsilon: float, spent: float,
                 outcome: str = "released") -> None:
    """A run as the node records it: the request, then the charge and its outcome in one transaction."""
    ledger.append(type="run_requested", body={"run_id": run_id, "dataset": dataset, "epsilon": epsilon},
                  signer=actors.stat, subject="pop")
    with ledger.db.transaction() as tx:
        tx.execute("UPDATE budget SET spent = MIN(total, spent + ?) WHERE pool = "
                   "(SELECT pool FROM budget_owners WHERE dataset = ?)", (round(spent * 1e6), dataset))
        ledger.append_in(tx, type="run_finished", body={"run_id": run_id, "outcome": outcome,
                                                         "epsilon_spent": spent}, signer=actors.op, subject="pop")


def test_a_budget_spent_beyond_its_total_is_named_whatever_the_budget_table_says(
    ledger: Ledger, actors: Actors
) -> None:
    """The operator resets the budget table's `spent` and runs on: every charge is a signed
    run_finished, so verify replays the pool from the ledger and names the overspend. Two names for
    one content share one pool (`budget_shared_with`)."""
    populate(ledger, actors, runs=0)
    _dataset(ledger, actors, "cdr", "v" * 64, total=1.0)
    _dataset(ledger, actors, "cdr_copy", "v" * 64, total=10.0, shared="cdr")  # joins cdr's pool of 1.0
    for i in range(3):
        _charged_run(ledger, actors, f"r{i}", "cdr", 0.3, 0.3)
    assert ledger.verify(workers=0).runs == 3  # 0.9 of 1.0
    _charged_run(ledger, actors, "r3", "cdr_copy", 0.3, 0.3)  # the table said 0 spent: the node ran it
    with pytest.raises(LedgerCorrupt, match=r"overspends the privacy budget of dataset 'cdr_copy': "
                                            r"ε=1\.2 spent of a total of 1$"):
        ledger.verify(workers=0)


def test_a_run_charged_more_than_it_requested_is_named(ledger: Ledger, actors: Actors) -> None:
    populate(ledger, actors, runs=0)
    _dataset(ledger, actors, "cdr", "w" * 64, total=5.0)
    _charged_run(ledger, actors, "r0", "cdr", 0.1, 0.1)
    _charged_run(ledger, actors, "r1", "cdr", 0.1, 0.0, outcome="refused")  # before the data: nothing charged
    assert ledger.verify(workers=0).runs == 2
    _charged_run(ledger, actors, "r2", "cdr", 0.1, 0.5)
    with pytest.raises(LedgerCorrupt, match=r"charges run r2 ε=0\.5, more than the ε=0\.1 it requested"):
        ledger.verify(workers=0)


def test_a_fresh_release_charged_less_than_requested_is_named(ledger: Ledger, actors: Actors) -> None:
    """The operator records a release at ε=0 (a free query on the data): only a release served
    from the cache (`cached_from`) may spend nothing."""
    populate(ledger, actors, runs=0)
    _dataset(ledger, actors, "cdr", "z" * 64, total=5.0)
    _charged_run(ledger, actors, "r0", "cdr", 0.2, 0.2)
    ledger.append(type="run_requested", body={"run_id": "r1", "dataset": "cdr", "epsilon": 0.2},
                  signer=actors.stat, subject="pop")
    ledger.append(type="run_finished", body={"run_id": "r1", "outcome": "released", "cached_from": "r0",
                                             "epsilon_spent": 0.0}, signer=actors.op, subject="pop")
    assert ledger.verify(workers=0).runs == 2
    _charged_run(ledger, actors, "r2", "cdr", 0.2, 0.0)
    with pytest.raises(LedgerCorrupt, match=r"releases run r2 for ε=0, not the ε=0\.2 it requested"):
        ledger.verify(workers=0)


def test_a_key_revoked_after_it_signed_is_refused_for_what_it_signs_next(ledger: Ledger, actors: Actors) -> None:
    """Rule 3 is decided once per (type, signer, role) until the authority changes: a revocation
    must end that, so the same key's next entry of the same type is refused."""
    populate(ledger, actors, runs=0)
    second = make_signer("op2", "operator")
    add_key(ledger, second)
    notes(ledger, second, 5)
    assert ledger.verify(workers=0).size == ledger.size()
    revocation = ledger.append(type="key_revoked", body={"name": "op2", "key_id": second.key_id, "reason": "lost"},
                               signer=actors.board, subject=second.key_id)
    notes(ledger, second, 1)
    with pytest.raises(LedgerCorrupt, match=rf"\(note\) is signed by key {second.key_id[:16]}, "
                                            rf"revoked at entry {revocation.index}"):
        ledger.verify(workers=0)


def test_the_budget_replay_resumes_from_the_auditors_state(ledger: Ledger, actors: Actors, tmp_path: Path) -> None:
    """An incremental audit holds the pools in its state: the overspend spans two audits."""
    populate(ledger, actors, runs=0)
    _dataset(ledger, actors, "cdr", "x" * 64, total=1.0)
    _charged_run(ledger, actors, "r0", "cdr", 0.6, 0.6)
    state = tmp_path / "audit.json"
    ledger.verify(workers=0, state=state)
    _charged_run(ledger, actors, "r1", "cdr", 0.6, 0.6)
    with pytest.raises(LedgerCorrupt, match="overspends the privacy budget of dataset 'cdr'"):
        ledger.verify(workers=0, state=state)


def test_a_reset_budget_table_is_named_before_anyone_overspends(ledger: Ledger, actors: Actors) -> None:
    """The operator sets `spent` back to 0 (or moves a dataset to a fresh pool): the next verify
    compares the tables with the replayed charges and names the edit at once."""
    populate(ledger, actors, runs=0)
    _dataset(ledger, actors, "cdr", "y" * 64, total=1.0)
    _charged_run(ledger, actors, "r0", "cdr", 0.4, 0.4)
    ledger.verify(workers=0)
    with ledger.db.transaction() as tx:
        tx.execute("UPDATE budget SET spent = 0")
    with pytest.raises(LedgerCorrupt, match=r"the budget table says ε=0 spent for dataset 'cdr', the signed run "
                                            r"outcomes ε=0\.4; the database was edited"):
        ledger.verify(workers=0)
    with ledger.db.transaction() as tx:
        tx.execute("UPDATE budget SET spent = 400000")
        tx.execute("INSERT INTO budget(pool, total, spent, reserved) VALUES ('fresh', 10000000, 0, 0)")
        tx.execute("UPDATE budget_owners SET pool = 'fresh' WHERE dataset = 'cdr'")
    with pytest.raises(LedgerCorrupt, match="puts dataset 'cdr' in another pool than its signed dataset_registered"):
        ledger.verify(workers=0)


def test_canonical_json_fast_path_writes_exactly_what_rfc8785_writes() -> None:
    """canonical_json takes msgspec's encoding only where it equals RFC 8785's: random documents
    built from every ASCII character, the awkward doubles and integers, nesting, tuples, NaN, bytes."""
    rng = random.Random(7)
    doubles = _doubles()
    ints = [0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**63, 10**15, 10**16]

    def value(depth: int) -> Any:
        kind = rng.randrange(9 if depth < 4 else 5)
        if kind == 0:
            return rng.choice(doubles)
        if kind == 1:
            return rng.choice(ints + [rng.randrange(-10**6, 10**6)])
        if kind == 2:
            return "".join(chr(rng.randrange(128)) for _ in range(rng.randrange(6)))
        if kind == 3:
            return rng.choice([None, True, False, float("nan"), b"x", "é", "\U0001F600"])
        if kind == 4:
            return rng.choice([1.0, -0.0, 0.0, 2.0**70])
        if kind in (5, 6):
            return {"".join(chr(rng.randrange(32, 128)) for _ in range(rng.randrange(1, 4))): value(depth + 1)
                    for _ in range(rng.randrange(4))}
        items = [value(depth + 1) for _ in range(rng.randrange(4))]
        return tuple(items) if kind == 7 else items

    def outcome(fn: Any, v: Any) -> Any:
        try:
            return fn(v)
        except Exception as exc:  # noqa: BLE001 - both must refuse the same values
            return type(exc).__mro__[-3].__name__  # ValueError, TypeError, …

    disagree = []
    for _ in range(20_000):
        v = value(0)
        ours, theirs = outcome(canonical_json, v), outcome(rfc8785.dumps, v)
        if ours != theirs and not (isinstance(ours, str) and isinstance(theirs, str)):
            disagree.append((v, ours, theirs))
    assert not disagree, disagree[:5]
