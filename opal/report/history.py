"""What the board reads: runs, charges, refusals, versions and policies, derived
from signed ledger entries only.

Every figure here is parsed from the signed entry bodies (``LedgerEntry.body``
of the stored, signed bytes); the database's ``runs``, ``budget_events`` and
index columns are never read. A key's name comes from the board-signed trust
policy (or the board's ``key_added`` entry), never from the keyring table.
The same ``History`` is built from the node's ledger or from a verified export.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opal.ledger.records import Checkpoint, Cosignature, LedgerEntry
from opal.release.policy import MICRO, to_micro

if TYPE_CHECKING:
    from opal.ledger.log import Ledger

__all__ = ["Charge", "History", "RunFact", "refusal_cause"]

_RUN_TYPES = ("run_requested", "run_started", "run_finished")
_BUNDLE_TYPES = (
    "bundle_submitted",
    "bundle_approved",
    "bundle_rejected",
    "bundle_revoked",
    "bundle_pinned",
    "bundle_unpinned",
)
_KEY_TYPES = ("trust_policy", "key_added", "key_revoked")


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def refusal_cause(error_type: str | None, reason: str | None) -> str:
    """The board's category of a refused run: trust, budget, parameters or release policy."""
    if error_type == "TrustError":
        return "trust"
    if error_type == "BadInputError":
        return "parameters"
    if error_type == "ReleaseRefused":
        return "budget" if "budget" in (reason or "") else "release policy"
    return error_type or "other"


@dataclass(frozen=True, kw_only=True)
class RunFact:
    """One run as its signed ``run_requested`` / ``run_finished`` entries state it."""

    run_id: str
    algorithm: str
    digest: str
    dataset: str
    requester: str  # key id, as signed in the request
    epsilon: float  # requested
    requested_index: int
    requested_at: str
    outcome: str | None = None  # None: no outcome yet
    finished_index: int | None = None
    finished_at: str | None = None
    epsilon_spent: float = 0.0
    reason: str | None = None
    error_type: str | None = None
    cached_from: str | None = None

    @property
    def cause(self) -> str | None:
        return refusal_cause(self.error_type, self.reason) if self.outcome == "refused" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "digest": self.digest,
            "dataset": self.dataset,
            "requester": self.requester,
            "epsilon": self.epsilon,
            "requested_index": self.requested_index,
            "requested_at": self.requested_at,
            "outcome": self.outcome,
            "finished_index": self.finished_index,
            "finished_at": self.finished_at,
            "epsilon_spent": self.epsilon_spent,
            "reason": self.reason,
            "error_type": self.error_type,
            "cause": self.cause,
            "cached_from": self.cached_from,
        }


@dataclass(frozen=True, kw_only=True)
class Charge:
    """ε spent on a dataset by one run (a ``run_finished`` entry with ``epsilon_spent`` > 0)."""

    index: int
    time: str
    dataset: str
    run_id: str
    algorithm: str
    requester: str
    requester_name: str
    outcome: str
    epsilon_micro: int
    total_micro: int  # the dataset's spend after this charge

    @property
    def epsilon(self) -> float:
        return self.epsilon_micro / MICRO

    @property
    def total(self) -> float:
        return self.total_micro / MICRO

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "time": self.time,
            "dataset": self.dataset,
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "requester": self.requester,
            "requester_name": self.requester_name,
            "outcome": self.outcome,
            "epsilon": self.epsilon,
            "running_total": self.total,
        }


@dataclass
class History:
    """The ledger as the board reads it. Build with ``from_entries`` or ``from_ledger``."""

    size: int = 0
    names: dict[str, str] = field(default_factory=dict)  # key id -> name, from signed policies
    runs: dict[str, RunFact] = field(default_factory=dict)
    charges: list[Charge] = field(default_factory=list)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest -> lifecycle
    policies: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)  # key_added / key_revoked
    times: list[str] = field(default_factory=list)  # each entry's signed time, by index
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # registrations and budgets
    checkpoints: list[Checkpoint] = field(default_factory=list)
    cosignatures: list[Cosignature] = field(default_factory=list)
    first_time: str | None = None
    last_time: str | None = None
    _spent: dict[str, int] = field(default_factory=dict, repr=False)  # running micro-ε per dataset

    def name(self, key_id: str) -> str:
        return self.names.get(key_id, key_id[:12])

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> History:
        """Every entry of the node's ledger, with its checkpoints and cosignatures."""
        return cls.from_entries(
            ledger.iter_entries(), checkpoints=ledger.checkpoints(), cosignatures=ledger.cosignatures()
        )

    @classmethod
    def from_entries(
        cls,
        entries: Iterable[LedgerEntry],
        *,
        checkpoints: Iterable[Checkpoint] = (),
        cosignatures: Iterable[Cosignature] = (),
    ) -> History:
        """Fold signed entries (in index order) into the board's figures."""
        h = cls(checkpoints=list(checkpoints), cosignatures=list(cosignatures))
        finished: list[LedgerEntry] = []
        for e in entries:
            h.size = max(h.size, e.index + 1)
            h.times.append(e.time)
            if h.first_time is None:
                h.first_time = e.time
            h.last_time = e.time
            if e.type in ("dataset_registered", "policy_changed"):
                h._dataset_event(e)
            elif e.type in _KEY_TYPES:
                h._key_event(e)
            elif e.type in _BUNDLE_TYPES:
                h._bundle_event(e)
            elif e.type == "run_requested":
                h._requested(e)
            elif e.type == "run_finished":
                finished.append(e)
        for e in finished:  # a requester's name may be granted after the request
            h._finished(e)
        return h

    def growth(self, points: int = 400) -> list[tuple[str, int]]:
        """(time, entries so far) at about ``points`` evenly spaced entries, and the last."""
        n = len(self.times)
        step = max(1, n // points)
        picks = [*range(step - 1, n, step), n - 1] if n else []
        return [(self.times[i], i + 1) for i in sorted(set(picks))]

    # -- folding -------------------------------------------------------------

    def _key_event(self, e: LedgerEntry) -> None:
        b = e.body
        if e.type == "trust_policy":
            envelope = _obj(b.get("policy"))
            signed = _obj(envelope.get("signed"))
            keys = _obj(signed.get("keys"))
            for key_id, info in keys.items():
                if isinstance(info, dict) and info.get("name"):
                    self.names[str(key_id)] = str(info["name"])
            roles = _obj(signed.get("roles"))
            self.policies.append(
                {
                    "index": e.index,
                    "time": e.time,
                    "version": b.get("version"),
                    "digest": b.get("digest"),
                    "recorded_by": e.actor,
                    "signed_by": [s.get("keyid") for s in envelope.get("signatures", []) if isinstance(s, dict)],
                    "roles": {
                        str(r): {
                            "threshold": v.get("threshold"),
                            "keys": sorted(str(k) for k in v.get("keyids", [])),
                        }
                        for r, v in roles.items()
                        if isinstance(v, dict)
                    },
                    "approval_lifetime_days": signed.get("approval_lifetime_days"),
                    "author_may_approve": signed.get("author_may_approve"),
                    "expires": signed.get("expires"),
                }
            )
            return
        if e.type == "key_added" and b.get("name"):
            self.names.setdefault(str(b.get("key_id")), str(b["name"]))
        self.keys.append(
            {
                "index": e.index,
                "time": e.time,
                "type": e.type,
                "key_id": b.get("key_id"),
                "role": b.get("role"),
                "reason": b.get("reason"),
                "by": e.actor,
            }
        )

    def _dataset_event(self, e: LedgerEntry) -> None:
        b = e.body
        ds = self.datasets.setdefault(str(b.get("dataset")), {"registered": None, "total_epsilon": None,
                                                               "shared_with": None, "versions": 0})
        if e.type == "dataset_registered":
            ds.update(registered=e.time, shared_with=b.get("budget_shared_with"))
            ds["versions"] += 1
        else:
            ds["total_epsilon"] = _obj(b.get("policy")).get("total_epsilon")

    def _version(self, e: LedgerEntry) -> dict[str, Any]:
        b = e.body
        digest = str(b.get("digest"))
        return self.versions.setdefault(
            digest,
            {
                "digest": digest,
                "name": b.get("name") or e.subject,
                "version": b.get("version"),
                "submitted": None,
                "reviews": [],
                "revoked": None,
                "pins": [],
            },
        )

    def _bundle_event(self, e: LedgerEntry) -> None:
        b = e.body
        if e.type == "bundle_unpinned":
            for v in self.versions.values():
                if v["name"] == b.get("name") and v["pins"] and v["pins"][-1]["until"] is None:
                    v["pins"][-1]["until"] = e.time
            return
        v = self._version(e)
        if e.type == "bundle_submitted":
            v["submitted"] = {"index": e.index, "time": e.time, "author": e.actor}
        elif e.type in ("bundle_approved", "bundle_rejected"):
            statement = _obj(b.get("statement"))
            v["reviews"].append(
                {
                    "index": e.index,
                    "time": e.time,
                    "reviewer": e.actor,
                    "verdict": "approve" if e.type == "bundle_approved" else "reject",
                    "expires": statement.get("expires"),
                    "comment": statement.get("comment"),
                }
            )
        elif e.type == "bundle_revoked":
            v["revoked"] = {"index": e.index, "time": e.time, "by": e.actor, "reason": b.get("reason")}
        elif e.type == "bundle_pinned":
            for other in self.versions.values():
                if other["name"] == v["name"] and other["pins"] and other["pins"][-1]["until"] is None:
                    other["pins"][-1]["until"] = e.time
            v["pins"].append(
                {"index": e.index, "time": e.time, "by": e.actor, "reason": b.get("reason"), "until": None}
            )

    def _requested(self, e: LedgerEntry) -> None:
        b = e.body
        run_id = str(b.get("run_id"))
        self.runs[run_id] = RunFact(
            run_id=run_id,
            algorithm=str(b.get("algorithm")),
            digest=str(b.get("digest")),
            dataset=str(b.get("dataset")),
            requester=str(b.get("requester") or e.actor),
            epsilon=float(b.get("epsilon") or 0.0),
            requested_index=e.index,
            requested_at=e.time,
        )

    def _finished(self, e: LedgerEntry) -> None:
        b = e.body
        run_id = str(b.get("run_id"))
        req = self.runs.get(run_id)
        if req is None:
            return  # outside an export's range: no request to name it
        spent = to_micro(float(b.get("epsilon_spent") or 0.0), what="epsilon_spent") if b.get("epsilon_spent") else 0
        fact = RunFact(
            **{
                **req.__dict__,
                "outcome": str(b.get("outcome")),
                "finished_index": e.index,
                "finished_at": e.time,
                "epsilon_spent": spent / MICRO,
                "reason": b.get("reason"),
                "error_type": b.get("error_type"),
                "cached_from": b.get("cached_from"),
            }
        )
        self.runs[run_id] = fact
        if spent:
            total = self._spent.get(fact.dataset, 0) + spent
            self._spent[fact.dataset] = total
            self.charges.append(
                Charge(
                    index=e.index,
                    time=e.time,
                    dataset=fact.dataset,
                    run_id=run_id,
                    algorithm=fact.algorithm,
                    requester=fact.requester,
                    requester_name=self.name(fact.requester),
                    outcome=fact.outcome or "",
                    epsilon_micro=spent,
                    total_micro=total,
                )
            )

    # -- questions -------------------------------------------------------------

    def charges_of(self, dataset: str | None = None) -> list[Charge]:
        return [c for c in self.charges if dataset is None or c.dataset == dataset]

    def spent_by_dataset(self) -> dict[str, float]:
        return {d: m / MICRO for d, m in sorted(self._spent.items())}

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs.values():
            key = r.outcome or "open"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def refusals_by_cause(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs.values():
            if r.cause is not None:
                counts[r.cause] = counts.get(r.cause, 0) + 1
        return dict(sorted(counts.items()))

    def runs_by_algorithm(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for r in self.runs.values():
            row = table.setdefault(r.algorithm, {})
            key = r.outcome or "open"
            row[key] = row.get(key, 0) + 1
        return dict(sorted(table.items()))

    def summary(self) -> dict[str, Any]:
        return {
            "entries": self.size,
            "runs": len(self.runs),
            "outcomes": self.outcomes(),
            "refusals_by_cause": self.refusals_by_cause(),
            "epsilon_spent": self.spent_by_dataset(),
            "runs_by_algorithm": self.runs_by_algorithm(),
            "versions": len(self.versions),
            "policies": len(self.policies),
            "checkpoints": len(self.checkpoints),
            "cosignatures": len(self.cosignatures),
        }

