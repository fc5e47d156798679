"""Ledger benchmark (not a test): durable appends/s, audit times, proof times.

    python -m benchmarks.ledger_audit [--size N] [--new N] [--appends N] [--workers W] [--json]

``--size`` is the ledger built for the verify and proof measurements (default
100 000; the issue's target is measured with ``--size 1000000``). It is built
fast with direct inserts of pre-signed entries in one transaction, signed in
a process pool, after a board-signed trust policy naming the log key (entry 0).
Measured in the same run: one OpenSSL Ed25519 verification (the unit of the
full-audit bound), the full re-audit on every core (which records the
auditor's state), then ``--new`` more entries and the incremental audit from
that state. Everything runs on SQLite in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from opal.canonical import canonical_json, digest_json
from opal.db import Database
from opal.ledger import merkle
from opal.ledger.log import Ledger
from opal.ledger.records import ENTRY_DOMAIN, ENTRY_VERSION, envelope
from opal.trust.keyring import Signer
from opal.trust.keys import KeyInfo, generate_private_key, key_id_of, public_raw, utcnow
from opal.trust.policy import POLICY_DOMAIN, POLICY_TYPE

_PEM_ENV = "OPAL_BENCH_KEY"


def _signer(name: str = "bench", private: Any = None) -> Signer:
    private = private or generate_private_key()
    raw = public_raw(private)
    return Signer(
        KeyInfo(
            name=name,
            key_id=key_id_of(raw),
            role="operator",
            public_key=raw.hex(),
            created=utcnow(),
        ),
        private,
    )


def install_policy(ledger: Ledger, operators: list[Signer]) -> None:
    """Trust policy v1 by a fresh one-key board naming ``operators`` as the log keys (entry 0)."""
    private = generate_private_key()
    raw = public_raw(private)
    board = Signer(
        KeyInfo(name="board", key_id=key_id_of(raw), role="board", public_key=raw.hex(), created=utcnow()), private
    )
    everyone = [board, *operators]
    signed = {
        "_type": POLICY_TYPE,
        "version": 1,
        "created": utcnow(),
        "keys": {s.key_id: {"name": s.name, "public_key": s.info.public_key} for s in everyone},
        "roles": {
            "board": {"keyids": [board.key_id], "threshold": 1},
            "reviewer": {"keyids": [board.key_id], "threshold": 1},
            "operator": {"keyids": sorted(s.key_id for s in operators)},
        },
        "approval_lifetime_days": 90,
        "author_may_approve": False,
    }
    envelope_ = {"signed": signed, "signatures": [
        {"keyid": board.key_id, "sig": board.sign(POLICY_DOMAIN, canonical_json(signed))}
    ]}
    ledger.append(
        type="trust_policy",
        body={"version": 1, "digest": digest_json(signed), "previous": 0, "policy": envelope_},
        signer=board,
        subject="trust_policy",
    )


def _appender(args: tuple[str, int, int, bytes]) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    db_path, n, batch, seed = args
    ledger = Ledger(Database(Path(db_path), url=""))
    s = _signer(f"w{os.getpid()}", Ed25519PrivateKey.from_private_bytes(seed))
    body = {"run_id": "0" * 32, "outcome": "released", "result_digest": "0" * 64}
    done = 0
    while done < n:
        if batch == 1:
            ledger.append(type="run_note", body=body, signer=s)
        else:
            ledger.append_many([{"type": "run_note", "body": body}] * batch, signer=s)
        done += batch
    return done


def bench_appends(folder: Path, n: int, procs: int, batch: int) -> float:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    db_path = folder / f"appends-{procs}-{batch}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    seeds = [os.urandom(32) for _ in range(procs)]
    install_policy(
        Ledger(Database(db_path, url="")),
        [_signer(f"w{i}", Ed25519PrivateKey.from_private_bytes(seed)) for i, seed in enumerate(seeds)],
    )
    started = time.perf_counter()
    if procs == 1:
        done = _appender((str(db_path), n, batch, seeds[0]))
    else:
        with get_context("fork").Pool(procs) as pool:
            done = sum(pool.map(_appender, [(str(db_path), n // procs, batch, seed) for seed in seeds]))
    elapsed = time.perf_counter() - started
    Ledger(Database(db_path, url="")).verify(workers=0)
    return done / elapsed


def _sign_range(args: tuple[bytes, int, int, str, str]) -> list[tuple[int, bytes, bytes, str]]:
    from cryptography.hazmat.primitives import serialization

    pem, lo, hi, key_id, time_ = args
    private = serialization.load_pem_private_key(pem, password=None)
    s = _signer("bench", private)
    rows = []
    for index in range(lo, hi):
        entry = {
            "v": ENTRY_VERSION,
            "index": index,
            "type": "bench_record",
            "subject": "bench",
            "time": time_,
            "actor": key_id,
            "actor_role": "operator",
            "body": {
                "run_id": f"{index:032x}",
                "outcome": "released",
                "result_digest": f"{index:064x}",
                "epsilon_spent": 1,
                "cells_released": 12,
            },
        }
        signed = canonical_json(entry)
        raw = envelope(signed, s.sign(ENTRY_DOMAIN, signed))
        rows.append((index, raw, merkle.leaf_hash(raw), time_))
    return rows


def build_ledger(db_path: Path, size: int, workers: int) -> tuple[Ledger, Signer]:

    db = Database(db_path, url="")
    ledger = Ledger(db, origin="opal/bench")
    s = _signer()
    install_policy(ledger, [s])
    append_signed(ledger, s, 1, size, workers)
    return ledger, s


def append_signed(ledger: Ledger, s: Signer, start: int, stop: int, workers: int) -> None:
    """Insert entries ``start`` … ``stop - 1`` signed by ``s`` in a process pool, in one transaction."""
    from cryptography.hazmat.primitives import serialization

    db = ledger.db
    pem = s._private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    step = 20_000
    now = utcnow()
    tasks = [(pem, lo, min(stop, lo + step), s.key_id, now) for lo in range(start, stop, step)]
    with get_context("fork").Pool(workers) as pool, db.transaction() as tx:
        for rows in pool.imap(_sign_range, tasks):
            # Shaped like a run_finished entry; another type, because a run
            # outcome without its request is (rightly) flagged by verify.
            tx.executemany(
                "INSERT INTO ledger(idx, entry, leaf_hash, type, actor, time, subject) VALUES (?,?,?,?,?,?,?)",
                [(i, raw, leaf, "bench_record", s.key_id, t, "bench") for i, raw, leaf, t in rows],
            )


def openssl_verify_seconds(samples: int = 20_000) -> float:
    """One Ed25519 verification by OpenSSL (through ``cryptography``), median of batches."""
    private = generate_private_key()
    public = private.public_key()
    message = b"x" * 400  # about an entry's size
    signature = private.sign(message)
    per = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(samples // 5):
            public.verify(signature, message)
        per.append((time.perf_counter() - t0) / (samples // 5))
    return statistics.median(per)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ledger_audit", description=__doc__.splitlines()[0]
    )
    p.add_argument("--size", type=int, default=100_000, help="entries in the verify/proof ledger")
    p.add_argument("--appends", type=int, default=2_000, help="appends per append measurement")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--new", type=int, default=10_000, help="entries appended before the incremental audit")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    results: dict[str, Any] = {"cores": os.cpu_count(), "size": a.size}
    with tempfile.TemporaryDirectory(prefix="opal-bench-") as tmp:
        folder = Path(tmp)
        for procs in (1, 4):
            for batch in (1, 100):
                results[f"appends_per_s_{procs}proc_batch{batch}"] = round(
                    bench_appends(folder, a.appends, procs, batch)
                )
        t = time.perf_counter()
        ledger, signer = build_ledger(folder / "big.db", a.size, a.workers)
        results["build_s"] = round(time.perf_counter() - t, 1)
        one = openssl_verify_seconds()
        results["openssl_verify_us"] = round(1e6 * one, 1)
        state = folder / "auditor-state.json"
        t = time.perf_counter()
        report = ledger.verify(workers=a.workers, state=state)
        results["verify_s"] = round(time.perf_counter() - t, 2)
        results["verify_us_per_entry"] = round(1e6 * results["verify_s"] / report.size, 1)
        bound = report.size * one / a.workers
        results["full_audit_bound_s"] = round(bound, 2)
        results["full_audit_over_bound"] = round(results["verify_s"] / bound, 3)
        append_signed(ledger, signer, a.size, a.size + a.new, a.workers)
        t = time.perf_counter()
        again = ledger.verify(workers=a.workers, state=state)
        results["incremental_verify_s"] = round(time.perf_counter() - t, 2)
        results["incremental_entries"] = again.size - report.size
        t = time.perf_counter()
        tree = ledger.tree()
        results["tree_load_s"] = round(time.perf_counter() - t, 2)
        rng = random.Random(7)
        gen, ver, db_gen = [], [], []
        root = tree.root()
        for _ in range(1000):
            i = rng.randrange(tree.size)
            t0 = time.perf_counter()
            proof = tree.inclusion_proof(i)
            t1 = time.perf_counter()
            merkle.verify_inclusion(
                leaf_hash=tree.leaf(i), index=i, size=tree.size, proof=proof, root=root
            )
            t2 = time.perf_counter()
            gen.append(t1 - t0)
            ver.append(t2 - t1)
        for _ in range(200):  # as opal ledger prove does it: catch up with the database, then prove
            i = rng.randrange(tree.size)
            t0 = time.perf_counter()
            ledger.tree().inclusion_proof(i)
            db_gen.append(time.perf_counter() - t0)
        results["inclusion_proof_gen_us"] = round(1e6 * statistics.median(gen), 1)
        results["inclusion_proof_verify_us"] = round(1e6 * statistics.median(ver), 1)
        results["inclusion_proof_gen_with_db_sync_us"] = round(1e6 * statistics.median(db_gen), 1)
        t0 = time.perf_counter()
        cproof = tree.consistency_proof(tree.size // 3)
        merkle.verify_consistency(
            old_size=tree.size // 3,
            new_size=tree.size,
            old_root=tree.root(tree.size // 3),
            new_root=root,
            proof=cproof,
        )
        results["consistency_proof_gen_and_verify_us"] = round(1e6 * (time.perf_counter() - t0), 1)
        ledger.db.close()
    if a.json:
        print(json.dumps(results, indent=2))
        return
    for k, v in results.items():
        print(f"{k:40} {v}")


if __name__ == "__main__":
    main()
