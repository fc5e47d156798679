"""The board's CLI verbs, driven through the real ``opal`` command."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from opal.cli import cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("OPAL_DB_URL", raising=False)
    monkeypatch.delenv("OPAL_HOME", raising=False)
    h = tmp_path / "home"
    for args in (
        ("op", "--role", "operator"),
        ("board1", "--role", "board"),
        ("rev1", "--role", "reviewer"),
        ("wit1", "--role", "witness"),
    ):
        result = CliRunner().invoke(cli, ["--home", str(h), "keys", "new", *args])
        assert result.exit_code == 0, result.output
    # entry 0: the board's trust policy; entries 1 and 2: keys the board grants a role
    for args in (
        ("trust", "init", "--board", "board1", "--approvals", "1"),
        ("keys", "new", "stat1", "--role", "statistician", "--key", "board1"),
        ("keys", "new", "rev2", "--role", "reviewer", "--key", "board1"),
    ):
        result = CliRunner().invoke(cli, ["--home", str(h), *args])
        assert result.exit_code == 0, result.output
    return h


def opal(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def checkpoint(home: Path, tmp_path: Path, name: str) -> Path:
    code, out, _ = opal(home, "ledger", "checkpoint")
    assert code == 0
    path = tmp_path / name
    path.write_text(out)
    return path


def tamper(home: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(str(home / "opal.db"), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_delete")
    conn.execute(sql, params)
    conn.close()


def test_verify_show_prove_checkpoint_json(home: Path, tmp_path: Path) -> None:
    cp = json.loads(checkpoint(home, tmp_path, "cp.json").read_text())
    assert cp["size"] == 3 and len(cp["root"]) == 64
    code, out, _ = opal(home, "ledger", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["size"] == 3
    code, out, _ = opal(home, "ledger", "show", "--type", "key_added", "--limit", "2", "--json")
    assert code == 0 and [e["index"] for e in json.loads(out)] == [1, 2]
    code, out, _ = opal(home, "ledger", "show", "--actor", "board1", "--json")
    assert [e["index"] for e in json.loads(out)] == [0, 1, 2]
    code, out, _ = opal(home, "ledger", "prove", "inclusion", "1", "--json")
    proof = json.loads(out)
    assert code == 0 and proof["verified"] and proof["checkpoint"]["size"] == 3
    code, out, _ = opal(home, "ledger", "prove", "inclusion", proof["leaf_hash"], "--json")
    assert json.loads(out)["index"] == 1
    code, out, _ = opal(home, "ledger", "prove", "consistency", "1", "3", "--json")
    assert code == 0 and json.loads(out)["verified"]


def test_flipped_byte_exits_7_naming_the_entry(home: Path) -> None:
    conn = sqlite3.connect(str(home / "opal.db"))
    (raw,) = conn.execute("SELECT entry FROM ledger WHERE idx = 1").fetchone()
    conn.close()
    tamper(home, "UPDATE ledger SET entry = ? WHERE idx = 1", (raw.replace(b"stat1", b"stat2"),))
    code, _, err = opal(home, "ledger", "verify")
    assert code == 7
    assert "ledger entry 1 (key_added)" in err and "Traceback" not in err


def test_truncation_exits_7_against_a_held_checkpoint(home: Path, tmp_path: Path) -> None:
    held = checkpoint(home, tmp_path, "held.json")
    tamper(home, "DELETE FROM ledger WHERE idx = 2")
    tamper(home, "DELETE FROM checkpoints")
    assert opal(home, "ledger", "verify")[0] == 0
    code, _, err = opal(home, "ledger", "verify", "--against", str(held))
    assert code == 7 and "truncated" in err


def test_equivocation_exits_7(home: Path, tmp_path: Path) -> None:
    held = json.loads(checkpoint(home, tmp_path, "held.json").read_text())
    tamper(
        home,
        "INSERT INTO checkpoints(size, root, origin, signer, signature, time) VALUES (?,?,?,?,?,?)",
        (held["size"], "22" * 32, held["origin"], held["signer"], held["signature"], held["time"]),
    )
    code, _, err = opal(home, "ledger", "verify")
    assert code == 7 and ("equivocation" in err or "signature" in err)


def test_export_verifies_offline_and_tampering_exits_7(home: Path, tmp_path: Path) -> None:
    checkpoint(home, tmp_path, "cp.json")
    out = tmp_path / "export.jsonl"
    assert opal(home, "ledger", "export", "--range", "0:3", "--out", str(out))[0] == 0
    # Offline: another machine, no OPAL home, no database.
    elsewhere = tmp_path / "nowhere"
    code, stdout, _ = opal(elsewhere, "ledger", "verify", "--file", str(out), "--json")
    assert code == 0 and json.loads(stdout)["entries_checked"] == 3
    assert not elsewhere.exists()
    lines = out.read_text().splitlines()
    lines[-1] = lines[-1].replace("rev2", "rev3")
    out.write_text("\n".join(lines) + "\n")
    code, _, err = opal(elsewhere, "ledger", "verify", "--file", str(out))
    assert code == 7 and "ledger entry 2" in err


def test_cosign_and_trace_cli(home: Path, tmp_path: Path) -> None:
    checkpoint(home, tmp_path, "a.json")
    code, out, _ = opal(home, "ledger", "cosign", "--key", "wit1", "--json")
    assert code == 0 and json.loads(out)["consistency"] is None
    assert not (home / "witness").exists()  # the witness's memory is not the operator's to edit
    assert opal(home, "keys", "new", "stat9", "--role", "statistician", "--key", "board1")[0] == 0
    checkpoint(home, tmp_path, "b.json")
    code, out, _ = opal(home, "ledger", "cosign", "--key", "wit1", "--json")
    assert code == 0 and json.loads(out)["consistency"]["from_size"] == 3
    code, out, _ = opal(home, "ledger", "verify", "--json")
    assert json.loads(out)["cosignatures_checked"] == 2
    code, _, _ = opal(home, "ledger", "trace", "nothing")
    assert code == 2


def test_export_without_a_prior_checkpoint_signs_one_and_verifies_offline(tmp_path: Path, broker_url: str) -> None:
    from tests.conftest import Opal

    node = Opal(home=tmp_path / "node", broker_url=broker_url, extra_env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    node("keys", "new", "olga", "--role", "operator", check=True)
    node("keys", "new", "rita", "--role", "reviewer", check=True)
    node.board(approvals=1)
    out = tmp_path / "export.jsonl"
    proc = node("ledger", "export", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    policy = node.home / "governance" / "trust_policy.json"
    auditor = Opal(home=tmp_path / "auditor", broker_url=broker_url,
                   extra_env={"XDG_CONFIG_HOME": str(tmp_path / "auditor-cfg")})
    checked = auditor("ledger", "verify", "--file", str(out), "--policy", str(policy))
    assert checked.returncode == 0, checked.stderr


def test_a_failed_export_leaves_no_file(tmp_path: Path, broker_url: str) -> None:
    from tests.conftest import Opal

    node = Opal(home=tmp_path / "node", broker_url=broker_url, extra_env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    node("keys", "new", "rita", "--role", "reviewer", check=True)
    node("keys", "new", "bea", "--role", "board", check=True)
    node("trust", "init", "--board", "bea", "--approvals", "1", check=True)   # no operator key: nobody can sign
    out = tmp_path / "export.jsonl"
    proc = node("ledger", "export", "--out", str(out))
    assert proc.returncode in (2, 6) and "operator" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.glob(".export.jsonl*")) == []
