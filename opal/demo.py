"""``opal demo``: the whole OPAL story on the embedded default, told as it runs.

Every step is a real ``opal`` command in a subprocess, printed before it runs,
so a person watching sees exactly what they would type.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from opal._internal.procs import stop_group
from opal.errors import InternalError

__all__ = ["run_demo", "find_algorithms"]

MARKER = ".opal-demo"


def find_algorithms() -> Path:
    """The reference bundles: ./algorithms from a checkout, else next to the package."""
    for candidate in (Path.cwd() / "algorithms", Path(__file__).resolve().parent.parent / "algorithms"):
        if (candidate / "population_density" / "opal.toml").exists():
            return candidate
    raise InternalError("cannot find algorithms/population_density; run opal demo from the OPAL checkout")


def run_demo(
    home: Path, *, say: Callable[[str], None], subscribers: int = 20_000, days: int = 14, seed: int = 7
) -> None:
    if home.exists():
        if not (home / MARKER).exists():
            raise InternalError(f"{home} exists and was not made by opal demo; choose another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("made by opal demo; safe to delete\n")
    # The auditor's state of an earlier demo's ledger: this demo starts a new
    # log, which that state would (rightly) refuse as another log.
    auditor_state = home.parent / (home.name + "-auditor.json")
    auditor_state.unlink(missing_ok=True)
    env = dict(os.environ, OPAL_HOME=str(home))
    env.pop("OPAL_WORKER_KEY", None)
    algorithms = find_algorithms()
    data = home / "demo-cdr.parquet"
    started = time.monotonic()

    def opal(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        if not quiet:
            say(f"[bold cyan]$ opal {' '.join(shlex.quote(a) for a in args)}[/]")
        proc = subprocess.run([sys.executable, "-m", "opal", *args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else subprocess.STDOUT)
        out = proc.stdout.rstrip()
        if out and not quiet:
            say(out, markup=False)  # type: ignore[call-arg]
        if check and proc.returncode != 0:
            raise InternalError(f"demo step 'opal {' '.join(args)}' failed with exit {proc.returncode}")
        return proc

    say(f"[bold]OPAL demo[/] — state in {home}\n")
    say("[bold]1. The operator holds private call-detail records.[/] Here: a synthetic world, seeded.")
    opal("dataset", "synth", str(data), "--subscribers", str(subscribers), "--days", str(days), "--seed", str(seed))

    say("\n[bold]2. Everyone gets an Ed25519 key.[/] A key holds a role only when the board says so.")
    opal("keys", "new", "olga", "--role", "operator")
    opal("keys", "new", "sam", "--role", "statistician")
    opal("keys", "new", "rita", "--role", "reviewer")
    opal("keys", "new", "ravi", "--role", "reviewer")
    opal("keys", "new", "wendy", "--role", "witness")
    say("\n   The governance board signs the trust policy: who reviews, who runs the log, who witnesses.")
    say("   Without it the node refuses every run; the operator alone cannot mint reviewers.")
    opal("keys", "new", "bea", "--role", "board")
    opal("trust", "init", "--board", "bea", "--approvals", "2")
    opal("dataset", "register", "demo", str(data), "--schema", "cdr", "--key", "olga")

    say("\n[bold]3. The statistician checks, tests locally and submits an algorithm.[/] The bundle digest is signed.")
    bundle = str(algorithms / "population_density")
    opal("algo", "check", bundle)
    opal("algo", "submit", bundle, "--key", "sam")

    say("\n[bold]4. Two reviewers read the code and sign approvals[/] (trust policy: 2 of 2).")
    opal(
        "algo", "approve", "population_density@1.0.0", "--key", "rita", "--comment", "counts distinct subscribers only"
    )
    opal("algo", "approve", "population_density@1.0.0", "--key", "ravi")

    say("\n[bold]5. The operator starts a broker and a worker next to the data.[/]")
    broker_started = False
    if os.environ.get("OPAL_BROKER_URL"):
        say(f"using the broker at OPAL_BROKER_URL ({os.environ['OPAL_BROKER_URL'].split('@')[-1]})")
    else:
        opal("broker", "start")
        broker_started = True
    say("[bold cyan]$ opal worker start --dataset demo --key olga &[/]")
    log = (home / "run" / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "opal", "worker", "start",
            "--dataset", "demo", "--key", "olga", "--loglevel", "WARNING",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        say("\n[bold]6. The statistician requests a run.[/] The worker verifies digest, signatures and approvals,")
        say("   runs the code in the sandbox on per-run pseudonyms, then the release gate bounds each subscriber,")
        say("   adds noise to every cell of the public domains and marks cells whose noisy count is under 15.")
        params = f'{{"start_day": 0, "end_day": {days - 1:d}}}'
        opal("run", "population_density", "--dataset", "demo", "--params", params, "--epsilon", "1", "--key", "sam")
        run_id = json.loads(opal("runs", "list", "--json", quiet=True).stdout)[0]["run_id"]
        say("\n   The operator (only) sees every cell decision, suppressed cells by reason:")
        opal("runs", "decisions", run_id)
        say("\n   The statistician takes the table with its ledger receipt; anyone can check it offline:")
        result = home / "result.json"
        opal("runs", "result", run_id, "--out", str(result))
        opal("runs", "verify", str(result))
        say("\n[bold]7. The same question again is served from the cache:[/] no fresh noise to average, no new spend.")
        opal("run", "population_density", "--dataset", "demo", "--params", params, "--epsilon", "1", "--key", "sam")
        opal("budget", "show", "--dataset", "demo")
    finally:
        say("\n[bold]8. Stopping the worker and the broker.[/]")
        stop_group(worker)
        log.close()
        if broker_started:
            opal("broker", "stop", check=False)

    say("\n[bold]9. The board audits the ledger:[/] every leaf, the Merkle root, every signature and role")
    say("   re-derived; the auditor keeps its own state, so the next audit must extend this one.")
    opal("ledger", "checkpoint", "--key", "olga", quiet=True)
    opal("ledger", "cosign", "--key", "wendy")
    opal("ledger", "show")
    opal("ledger", "verify", "--state", str(auditor_state))
    say(
        f"\n[bold green]demo finished in {time.monotonic() - started:.1f} s[/]; "
        f"nothing left running. State kept in {home}"
    )
