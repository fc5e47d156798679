"""An identical repeat is served the cached release without touching a
sandbox: the released run passed ``check_params`` with the very bytes and
parameters, and the data is not read again (no new noise, no new spend)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_an_identical_repeat_is_served_from_the_cache_without_a_runtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str) -> None:
    from benchmarks.scenario import build
    from opal.release import budget
    from opal.runs import request_run
    from opal.worker import state
    from opal.worker.pipeline import execute_run

    monkeypatch.setenv("OPAL_BROKER_URL", broker_url)
    sc = build(tmp_path / "home", subscribers=200, days=1)
    monkeypatch.setenv("OPAL_HOME", str(sc.node.home.root))
    sam, olga = sc.node.keyring.signer("sam"), sc.node.keyring.signer("olga")

    def ask() -> str:
        return request_run(sc.node, algorithm="spin_count", dataset=sc.dataset, params={"tag": 7}, epsilon=0.25,
                           signer=sam).run_id

    try:
        first = execute_run(sc.node, ask(), signer=olga, runtime_for=state.runtime_for)
    finally:
        state.close_runtimes()  # this process's resident runtimes are shared with later tests
    assert first["state"] == "released"

    def no_runtime(*_: object, **__: object) -> object:
        raise AssertionError("a cached repeat asked for a sandbox runtime")

    repeat = execute_run(sc.node, ask(), signer=olga, runtime_for=no_runtime)
    assert repeat["state"] == "released"
    assert repeat["cached_from"] == first["run_id"]
    assert repeat["release"] == first["release"]
    (state_of,) = budget.show(sc.node, sc.dataset)
    assert state_of.spent_micro == 250_000 and state_of.reserved_micro == 0  # spent once
