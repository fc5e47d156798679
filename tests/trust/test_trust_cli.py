"""The trust verbs through the real CLI: `opal keys`, `opal trust`, `opal algo review/approve/verify/revoke/pin`.

Most run in-process with click's CliRunner (fast); one runs the real `opal`
subprocess to check the exit status and the one-line error on stderr.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from trust_world import bundle_folder

from opal.cli import cli

Opal = Callable[..., Result]


@pytest.fixture
def opal(tmp_path: Path) -> Opal:
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
        assert result.exit_code == code, f"opal {' '.join(args)} exited {result.exit_code}: {result.output}{result.stderr}"
        if code:
            assert result.stderr.startswith("opal: error: ") and result.stderr.count("\n") == 1, result.stderr
            assert "Traceback" not in result.output + result.stderr
        return result

    return run


def cast(opal: Opal, *board: str, policy: bool = False) -> None:
    for name, role in [("olga", "operator"), ("sam", "statistician"), ("rita", "reviewer"), ("ravi", "reviewer")]:
        opal("keys", "new", name, "--role", role)
    for name in board:
        opal("keys", "new", name, "--role", "board")
    if policy:  # the board's step: every key above in its role
        opal("trust", "init", *[a for b in board for a in ("--board", b)])


def test_keys_new_list_export_import_revoke(opal: Opal, tmp_path: Path) -> None:
    cast(opal)
    pem = tmp_path / "home" / "keys" / "rita.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    listed = json.loads(opal("keys", "list", "--json").stdout)
    assert {k["name"]: k["role"] for k in listed} == {"olga": "operator", "sam": "statistician", "rita": "reviewer", "ravi": "reviewer"}
    exported = opal("keys", "export", "rita").stdout
    assert "PRIVATE" not in exported and set(json.loads(exported)) == {"name", "role", "key_id", "public_key"}
    key_file = tmp_path / "rita.json"
    key_file.write_text(exported)
    opal("keys", "import", str(key_file), "--as", "rita2")
    as_operator = tmp_path / "rita-as-operator.json"
    as_operator.write_text(json.dumps({**json.loads(exported), "role": "operator"}))
    err = opal("keys", "import", str(as_operator), "--as", "rita-op", code=2).stderr
    assert "already known as 'rita' with role 'reviewer'" in err
    opal("keys", "revoke", "ravi", "--reason", "left the project", "--key", "olga")
    revoked = {k["name"]: k["revoked_at"] for k in json.loads(opal("keys", "list", "--json").stdout)}
    assert revoked["ravi"] and not revoked["rita"]
    err = opal("algo", "approve", "x", "--key", "ravi", code=2).stderr  # unknown bundle first
    assert "no submitted algorithm" in err


def test_keys_are_passphrase_encrypted_when_asked(opal: Opal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.serialization import pkcs12

    monkeypatch.setenv("OPAL_PASSPHRASE", "correct horse")
    opal("keys", "new", "olga", "--role", "operator")
    stored = tmp_path / "home" / "keys" / "olga.p12"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and not (tmp_path / "home" / "keys" / "olga.pem").exists()
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(stored.read_bytes(), None)
    assert pkcs12.load_key_and_certificates(stored.read_bytes(), b"correct horse")[0] is not None
    # PBES2 with PBKDF2 at 600 000 iterations: the count is in the file's DER (INTEGER 0x0927c0)
    assert b"\x02\x03\x09\x27\xc0" in stored.read_bytes()
    monkeypatch.setenv("OPAL_PASSPHRASE", "wrong")
    opal("keys", "new", "x", "--role", "reviewer")
    err = opal("keys", "revoke", "x", "--reason", "test", "--key", "olga", code=6).stderr
    assert "wrong passphrase" in err and "correct horse" not in err


def test_an_empty_passphrase_is_refused_not_read_as_plaintext(opal: Opal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPAL_PASSPHRASE", "")
    err = opal("keys", "new", "olga", "--role", "operator", code=2).stderr
    assert "OPAL_PASSPHRASE is set but empty" in err
    assert not list((tmp_path / "home" / "keys").glob("olga.*"))


def test_review_approve_verify_and_the_attacks_through_the_cli(opal: Opal, tmp_path: Path) -> None:
    cast(opal, "bea", policy=True)
    opal("algo", "submit", str(bundle_folder(tmp_path, "1.0.0")), "--key", "sam")
    # unapproved
    assert "0 valid approval(s), the trust policy needs 2" in opal("algo", "verify", "population_density", code=6).stderr
    # non-reviewers cannot approve
    assert "this needs a reviewer key" in opal("algo", "approve", "population_density", "--key", "sam", code=6).stderr
    # the same reviewer twice counts once
    opal("algo", "approve", "population_density@1.0.0", "--key", "rita")
    opal("algo", "approve", "population_density@1.0.0", "--key", "rita")
    assert "1 valid approval(s)" in opal("algo", "verify", "population_density", code=6).stderr
    opal("algo", "approve", "population_density@1.0.0", "--key", "ravi", "--expires", "30d", "--comment", "ok")
    assert "passes the worker's trust check" in opal("algo", "verify", "population_density@1.0.0").stdout

    # v1.1: review shows the diff against the approved 1.0.0
    opal("algo", "submit", str(bundle_folder(tmp_path, "1.1.0", comment="now with more care")), "--key", "sam")
    view = json.loads(opal("algo", "review", "population_density@1.1.0", "--json").stdout)
    assert view["previous"]["version"] == "1.0.0"
    assert "+# now with more care" in view["diff"] and '+version = "1.1.0"' in view["diff"]
    assert view["privacy"]["unit"] == "msisdn" and view["parameters"]["type"] == "object"
    assert "def contributions" in view["source"]
    assert view["locality"]["local"] is True and view["locality"]["sampled"] >= 50
    text = opal("algo", "review", "population_density@1.1.0", "--no-locality").stdout
    assert "diff against approved population_density@1.0.0" in text and "now with more care" in text
    assert "reads from cdr: msisdn, day, region\nas categoricals: region\n" in text
    assert view["manifest"]["categorical"] == ["region"]
    opal("algo", "approve", "population_density@1.1.0", "--key", "rita")
    opal("algo", "approve", "population_density@1.1.0", "--key", "ravi")

    # rollback, pin, revocation
    assert "rollback refused" in opal("algo", "verify", "population_density@1.0.0", code=6).stderr
    assert "this needs a board key" in opal("algo", "pin", "population_density@1.0.0", "--key", "olga", code=6).stderr
    opal("algo", "pin", "population_density@1.0.0", "--key", "bea", "--reason", "1.1 under investigation")
    opal("algo", "verify", "population_density@1.0.0")
    opal("algo", "unpin", "population_density", "--key", "bea")
    opal("algo", "verify", "population_density@1.0.0", code=6)
    opal("algo", "revoke", "population_density@1.1.0", "--reason", "miscounts roaming", "--key", "bea")
    err = opal("algo", "verify", "population_density@1.1.0", code=6).stderr
    assert "was revoked on" in err and "miscounts roaming" in err
    opal("algo", "verify", "population_density@1.0.0")  # the newest unrevoked approved version runs again
    types = [e["type"] for e in json.loads(opal("ledger", "show", "--json").stdout)]
    assert {"bundle_revoked", "bundle_pinned", "bundle_unpinned", "bundle_approved"} <= set(types)

    # one byte changed after approval
    digest = json.loads(opal("algo", "review", "population_density@1.0.0", "--json").stdout)["digest"]
    stored = tmp_path / "home" / "registry" / digest / "algorithm.py"
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes().replace(b"def ", b"def  ", 1))
    assert "changed after submission" in opal("algo", "verify", digest, code=6).stderr
    assert opal("ledger", "verify").exit_code == 0


def test_trust_init_show_propose_sign_apply(opal: Opal, tmp_path: Path) -> None:
    cast(opal, "b1", "b2", "b3")
    shown = json.loads(opal("trust", "show", "--json").stdout)
    assert shown["signed"] is False and shown["roles"] == "none (no board-signed policy installed)"
    # fewer than the threshold of board signatures
    err = opal("trust", "init", "--board", "b1", "--board", "b2", "--board", "b3", "--threshold", "2",
               "--reviewer", "rita", "--reviewer", "ravi", "--key", "b1", code=6).stderr
    assert "has 1 valid board signature(s) from trust policy v1, needs 2" in err
    opal("trust", "init", "--board", "b1", "--board", "b2", "--board", "b3", "--threshold", "2",
         "--reviewer", "rita", "--reviewer", "ravi", "--approvals", "2")
    shown = json.loads(opal("trust", "show", "--json").stdout)
    assert shown["version"] == 1 and shown["board_threshold"] == 2 and shown["roles"]["reviewer"] == ["ravi", "rita"]
    assert (tmp_path / "home" / "governance" / "trust_policy.json").exists()

    new = tmp_path / "v2.json"
    opal("trust", "propose", str(new), "--approvals", "1", "--key", "b1")
    assert "has 1 valid board signature(s) from trust policy v1, needs 2" in opal("trust", "apply", str(new), "--key", "b1", code=6).stderr
    # a version jump, even fully signed
    jump = tmp_path / "v3.json"
    doc = json.loads(new.read_text())
    doc["signed"]["version"] = 3
    doc["signatures"] = []
    jump.write_text(json.dumps(doc))
    for key in ("b1", "b2", "b3"):
        opal("trust", "sign", str(jump), "--key", key)
    assert "new trust policy version 3 must be exactly 2" in opal("trust", "apply", str(jump), "--key", "b1", code=6).stderr
    opal("trust", "sign", str(new), "--key", "b2")
    opal("trust", "apply", str(new), "--key", "b1")
    assert json.loads(opal("trust", "show", "--json").stdout)["approval_threshold"] == 1
    assert [h["version"] for h in json.loads(opal("trust", "history", "--json").stdout)] == [1, 2]
    entries = json.loads(opal("ledger", "show", "--type", "trust_policy", "--json").stdout)
    assert [e["body"]["version"] for e in entries] == [1, 2]
    assert opal("ledger", "verify").exit_code == 0


def test_trust_init_from_the_repository_template(opal: Opal) -> None:
    template = Path(__file__).resolve().parents[2] / "governance" / "trust_policy.template.json"
    for name, role in [("board-1", "board"), ("board-2", "board"), ("board-3", "board"),
                       ("reviewer-1", "reviewer"), ("reviewer-2", "reviewer"), ("reviewer-3", "reviewer")]:
        opal("keys", "new", name, "--role", role)
    opal("trust", "init", "--from", str(template))
    shown = json.loads(opal("trust", "show", "--json").stdout)
    assert shown["version"] == 1 and shown["board_threshold"] == 2 and len(shown["roles"]["reviewer"]) == 3


def test_real_subprocess_refusal_is_exit_6_and_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAL_")}
    env["OPAL_HOME"] = str(tmp_path / "home")
    script = (
        "from opal.node import Node\n"
        "n = Node.open()\n"
        "n.keyring.new('sam', 'statistician', n.ledger)\n"
        "n.keyring.new('bea', 'board', n.ledger)\n"
        "n.keyring.new('rita', 'reviewer', n.ledger)\n"
        "from opal.trust.governance import init_policy\n"
        "init_policy(n, signers=[n.keyring.signer('bea')], board=['bea'], approvals=1)\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "opal", "algo", "submit", str(bundle_folder(tmp_path)), "--key", "sam"],
        env=env, text=True, capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "opal", "algo", "verify", "population_density"], env=env, text=True, capture_output=True)
    assert proc.returncode == 6
    assert proc.stderr == (
        "opal: error: bundle population_density@1.0.0 has 0 valid approval(s), the trust policy needs 1 "
        "(trust policy v1)\n"
    )
