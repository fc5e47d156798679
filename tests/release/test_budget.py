"""The privacy budget: exact (integer micro-ε), never negative, owned by the
data's content rather than by a name (issue #14)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from opal.data import catalog, synthesize
from opal.errors import BadInputError, ReleaseRefused
from opal.node import Node
from opal.release import budget
from opal.release.policy import ReleasePolicy, to_micro


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node.open(tmp_path / "home")
    n.keyring.new("olga", "operator", n.ledger)
    return n


@pytest.fixture(scope="module")
def cdr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "cdr.parquet"
    synthesize(out, subscribers=200, days=2, seed=4)
    return out


def spend(node: Node, dataset: str, epsilon: float) -> None:
    """Reserve and commit ``epsilon`` for a fresh run id, as the worker does."""
    run_id = uuid.uuid4().hex
    with node.db.transaction() as tx:
        budget.reserve(tx, dataset=dataset, run_id=run_id, epsilon=epsilon, actor="olga")
    with node.db.transaction() as tx:
        budget.commit(tx, run_id=run_id, actor="olga")


def test_spent_is_exact_after_a_thousand_runs_of_a_thousandth(node: Node, cdr: Path) -> None:
    signer = node.keyring.signer("olga")
    catalog.register(node, "cdr", cdr, policy=ReleasePolicy(total_epsilon=1.0, min_epsilon_per_run=0.001,
                                                               default_epsilon=0.001), signer=signer)
    for _ in range(1000):
        spend(node, "cdr", 0.001)
    (state,) = budget.show(node, "cdr")
    assert state.spent_micro == 1_000_000 and state.spent == 1.0
    assert sum([0.001] * 1000) != 1.0  # what accumulated floats would have given
    # the budget is exactly used up: nothing more is admitted, however small
    with pytest.raises(ReleaseRefused, match="exhausted"):
        spend(node, "cdr", 0.001)
    assert budget.show(node, "cdr")[0].reserved_micro == 0


def test_admission_is_exact_at_the_boundary(node: Node, cdr: Path) -> None:
    signer = node.keyring.signer("olga")
    catalog.register(node, "cdr", cdr, policy=ReleasePolicy(total_epsilon=0.3), signer=signer)
    spend(node, "cdr", 0.1)
    spend(node, "cdr", 0.2)  # 0.1 + 0.2 > 0.3 in floats; exactly 0.3 here
    assert budget.show(node, "cdr")[0].left == 0.0


def test_epsilon_that_is_not_a_whole_micro_epsilon_is_refused(node: Node, cdr: Path) -> None:
    # unlimited-probe attack (issue #14): ε = 1e-17 was admitted after exhaustion
    catalog.register(node, "cdr", cdr, signer=node.keyring.signer("olga"))
    with node.db.transaction() as tx, pytest.raises(BadInputError) as exc:
        budget.reserve(tx, dataset="cdr", run_id="r1", epsilon=1e-17, actor="olga")
    assert exc.value.exit_code == 2
    assert to_micro(0.000001) == 1 and to_micro("0.5") == 500_000


def test_reserved_never_goes_negative(node: Node, cdr: Path) -> None:
    catalog.register(node, "cdr", cdr, signer=node.keyring.signer("olga"))
    with node.db.transaction() as tx:
        budget.reserve(tx, dataset="cdr", run_id="r1", epsilon=0.5, actor="olga")
    with node.db.transaction() as tx:
        assert budget.give_back(tx, run_id="r1", actor="olga") == 0.5
    with node.db.transaction() as tx:  # a second settlement finds nothing to return
        assert budget.give_back(tx, run_id="r1", actor="olga") == 0.0
    assert budget.show(node, "cdr")[0].reserved_micro == 0
    with pytest.raises(Exception, match="CHECK|constraint"):  # the table itself refuses it
        with node.db.transaction() as tx:
            tx.execute("UPDATE budget SET reserved = -1")


def test_a_second_registration_of_the_same_file_shares_the_budget(node: Node, cdr: Path, tmp_path: Path) -> None:
    # issue #14: the same file under four names gave four budgets of 10
    signer = node.keyring.signer("olga")
    catalog.register(node, "first", cdr, signer=signer)
    copy = tmp_path / "copy.parquet"
    shutil.copyfile(cdr, copy)
    catalog.register(node, "second", copy, signer=signer)
    spend(node, "first", 1.0)
    spend(node, "second", 1.0)
    first, second = budget.show(node, "first")[0], budget.show(node, "second")[0]
    assert first.spent == second.spent == 2.0 and first.total == 10.0
    assert first.shared_with == ["second"] and second.shared_with == ["first"]
    entry = [e for e in node.ledger.entries() if e.type == "dataset_registered"][-1]
    assert entry.body["budget_shared_with"] == "first"


def test_refresh_keeps_the_budget_of_the_dataset(node: Node, cdr: Path, tmp_path: Path) -> None:
    signer = node.keyring.signer("olga")
    path = tmp_path / "live.parquet"
    shutil.copyfile(cdr, path)
    catalog.register(node, "live", path, signer=signer)
    spend(node, "live", 1.0)
    synthesize(path, subscribers=150, days=2, seed=5)  # new content under the same name
    ds = catalog.refresh(node, "live", signer=signer)
    assert ds.version != catalog.fingerprint_file(cdr)
    assert budget.show(node, "live")[0].spent == 1.0
    # the old content, registered again under a new name, still shares that budget
    catalog.register(node, "old", cdr, signer=signer)
    assert budget.show(node, "old")[0].spent == 1.0
