"""Rollout metrics per workflow and role, from plain records (pure functions).

:func:`compute` turns a :class:`~pytest_modelrollout._records.RecordSet` into one
:class:`WorkflowData` per workflow: the contract's metrics dict for each role, the paired check
comparison, and the raw material the statistics need (sorted latencies, per-call cost and task
success vectors, outcome counts). Records are sorted first, so the result does not depend on
the order in which they arrived (xdist scheduling, shard merge order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

from ._records import ROLES, CallRecord, CheckRecord, RecordSet, Role
from .stats import percentile_of_sorted

__all__ = [
    "METRIC_KEYS",
    "CheckComparison",
    "RoleData",
    "WorkflowData",
    "compute",
    "compute_workflow",
]

# The keys of a role's metrics dict, in report order (CONTRACT section 5).
METRIC_KEYS: tuple[str, ...] = (
    "requests",
    "success_rate",
    "error_rate",
    "timeout_rate",
    "fallback_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cost_per_success_usd",
    "validation_pass_rate",
    "check_pass_rates",
    "replayed",
    "shadow",
)


@dataclass
class RoleData:
    """Everything measured for one role (stable or candidate) in one workflow."""

    requests: int = 0
    successes: int = 0  # status ok, primary model answered
    fallbacks: int = 0  # status ok, fallback model answered
    errors: int = 0
    timeouts: int = 0
    replayed: int = 0
    shadow: int = 0
    latencies: list[float] = field(default_factory=list)  # sorted ascending
    input_tokens: int | None = None
    output_tokens: int | None = None
    output_token_values: list[float] = field(default_factory=list)  # calls that reported usage
    cost_usd: float | None = None
    costs: list[float] = field(default_factory=list)  # per call (None counted as 0), call order
    task_success: list[bool] = field(default_factory=list)  # per call: ok and every check passed
    check_passed: dict[str, int] = field(default_factory=dict)
    check_total: dict[str, int] = field(default_factory=dict)

    @property
    def task_successes(self) -> int:
        return sum(self.task_success)

    @property
    def checks_passed(self) -> int:
        return sum(v for k, v in self.check_passed.items() if k not in INFORMATIONAL_CHECKS)

    @property
    def checks_total(self) -> int:
        return sum(v for k, v in self.check_total.items() if k not in INFORMATIONAL_CHECKS)

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None

    def rate(self, count: int) -> float | None:
        return count / self.requests if self.requests else None

    def latency_quantile(self, q: float) -> float | None:
        return percentile_of_sorted(self.latencies, q) if self.latencies else None

    @property
    def cost_per_success(self) -> float | None:
        ts = self.task_successes
        if self.cost_usd is None or ts == 0:
            return None
        return self.cost_usd / ts

    def metrics(self) -> dict[str, Any]:
        """The contract's metrics dict (unrounded)."""
        total = self.checks_total
        return {
            "requests": self.requests,
            "success_rate": self.rate(self.successes),
            "error_rate": self.rate(self.errors),
            "timeout_rate": self.rate(self.timeouts),
            "fallback_rate": self.rate(self.fallbacks),
            "latency_p50_ms": self.latency_quantile(0.50),
            "latency_p95_ms": self.latency_quantile(0.95),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "cost_per_success_usd": self.cost_per_success,
            "validation_pass_rate": self.checks_passed / total if total else None,
            "check_pass_rates": {
                name: self.check_passed[name] / self.check_total[name]
                for name in sorted(self.check_total)
            },
            "replayed": self.replayed,
            "shadow": self.shadow,
        }


@dataclass
class CheckComparison:
    """One check (or all checks pooled) compared between the roles.

    Paired counts come from outcomes with the same ``pair_id`` and check name on both sides
    (several outcomes of one check on one reply count as passed only if all passed); the
    unpaired counts are every outcome of each role, for data without pairs (canary logs).
    """

    pairs: int = 0
    both: int = 0  # both passed
    improvements: int = 0  # stable failed, candidate passed
    regressions: int = 0  # stable passed, candidate failed
    neither: int = 0  # both failed
    stable_passed: int = 0
    stable_total: int = 0
    candidate_passed: int = 0
    candidate_total: int = 0

    @property
    def paired(self) -> bool:
        return self.pairs > 0

    @property
    def stable_rate(self) -> float | None:
        """Stable pass rate: over the pairs when there are pairs, else over all outcomes."""
        if self.pairs:
            return (self.both + self.regressions) / self.pairs
        return self.stable_passed / self.stable_total if self.stable_total else None

    @property
    def candidate_rate(self) -> float | None:
        if self.pairs:
            return (self.both + self.improvements) / self.pairs
        return self.candidate_passed / self.candidate_total if self.candidate_total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stable_pass_rate": self.stable_rate,
            "candidate_pass_rate": self.candidate_rate,
            "regressions": self.regressions,
            "improvements": self.improvements,
            "pairs": self.pairs,
        }


@dataclass
class WorkflowData:
    """Metrics and samples of one workflow."""

    workflow: str
    stable: RoleData
    candidate: RoleData
    checks: dict[str, CheckComparison]  # by check name, sorted
    validation: CheckComparison  # every (pair, check) pooled

    def role(self, role: Role) -> RoleData:
        return self.stable if role == "stable" else self.candidate

    def checks_dict(self) -> dict[str, dict[str, Any]]:
        return {name: self.checks[name].to_dict() for name in sorted(self.checks)}


_R = TypeVar("_R", CallRecord, CheckRecord)

# Recorded for the report but not judged: "json_lenient" tells fenced/prose-wrapped JSON from
# broken JSON, while "json" (which fails both) is the check that counts.
INFORMATIONAL_CHECKS = frozenset({"json_lenient"})


def _role_data(calls: list[CallRecord], checks: list[CheckRecord]) -> RoleData:
    rd = RoleData()
    # task success needs every check outcome of the call
    failed_calls = {c.call_id for c in checks if not c.passed}
    passed: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for ck in checks:
        total[ck.check] += 1
        if ck.passed:
            passed[ck.check] += 1
    rd.check_passed = {k: passed[k] for k in sorted(total)}
    rd.check_total = {k: total[k] for k in sorted(total)}

    latencies: list[float] = []
    in_tok: list[int] = []
    out_tok: list[int] = []
    priced: list[float] = []
    for call in calls:
        rd.requests += 1
        if call.status == "ok":
            if call.fallback:
                rd.fallbacks += 1
            else:
                rd.successes += 1
        elif call.status == "timeout":
            rd.timeouts += 1
        else:
            rd.errors += 1
        if call.source == "replay":
            rd.replayed += 1
        elif call.source == "shadow":
            rd.shadow += 1
        if call.latency_ms is not None:
            latencies.append(float(call.latency_ms))
        if call.input_tokens is not None:
            in_tok.append(int(call.input_tokens))
        if call.output_tokens is not None:
            out_tok.append(int(call.output_tokens))
        if call.cost_usd is not None:
            priced.append(float(call.cost_usd))
        rd.costs.append(float(call.cost_usd) if call.cost_usd is not None else 0.0)
        rd.task_success.append(call.status == "ok" and call.call_id not in failed_calls)
    latencies.sort()
    rd.latencies = latencies
    rd.input_tokens = sum(in_tok) if in_tok else None
    rd.output_tokens = sum(out_tok) if out_tok else None
    rd.output_token_values = [float(t) for t in out_tok]
    rd.cost_usd = sum(priced) if priced else None
    return rd


def _compare(
    stable: dict[tuple[str, str], bool],
    candidate: dict[tuple[str, str], bool],
    stable_outcomes: tuple[int, int],
    candidate_outcomes: tuple[int, int],
) -> CheckComparison:
    cmp = CheckComparison(
        stable_passed=stable_outcomes[0],
        stable_total=stable_outcomes[1],
        candidate_passed=candidate_outcomes[0],
        candidate_total=candidate_outcomes[1],
    )
    for key in sorted(stable.keys() & candidate.keys()):
        s, c = stable[key], candidate[key]
        cmp.pairs += 1
        if s and c:
            cmp.both += 1
        elif s:
            cmp.regressions += 1
        elif c:
            cmp.improvements += 1
        else:
            cmp.neither += 1
    return cmp


def compute_workflow(
    workflow: str, calls: list[CallRecord], checks: list[CheckRecord]
) -> WorkflowData:
    """Metrics of one workflow from its (already sorted) records."""
    roles: dict[Role, RoleData] = {}
    # (pair_id, check) -> passed, per role; several outcomes on one reply: all must pass
    outcome: dict[Role, dict[tuple[str, str], bool]] = {r: {} for r in ROLES}
    for role in ROLES:
        role_calls = [c for c in calls if c.role == role]
        role_checks = [c for c in checks if c.role == role]
        roles[role] = _role_data(role_calls, role_checks)
        table = outcome[role]
        for ck in role_checks:
            key = (ck.pair_id, ck.check)
            table[key] = table.get(key, True) and ck.passed
    st, ca = roles["stable"], roles["candidate"]
    names = sorted(set(st.check_total) | set(ca.check_total))
    comparisons: dict[str, CheckComparison] = {}
    for name in names:
        comparisons[name] = _compare(
            {k: v for k, v in outcome["stable"].items() if k[1] == name},
            {k: v for k, v in outcome["candidate"].items() if k[1] == name},
            (st.check_passed.get(name, 0), st.check_total.get(name, 0)),
            (ca.check_passed.get(name, 0), ca.check_total.get(name, 0)),
        )
    validation = _compare(
        {k: v for k, v in outcome["stable"].items() if k[1] not in INFORMATIONAL_CHECKS},
        {k: v for k, v in outcome["candidate"].items() if k[1] not in INFORMATIONAL_CHECKS},
        (st.checks_passed, st.checks_total),
        (ca.checks_passed, ca.checks_total),
    )
    return WorkflowData(workflow, st, ca, comparisons, validation)


def _total_order(items: Sequence[_R], key: Callable[[_R], tuple[str, ...]]) -> list[_R]:
    """``sorted(items, key=lambda x: (*key(x), repr(x)))`` without a ``repr`` of every record:
    only records whose key ties (duplicated records) are ordered by their content."""
    keyed = sorted(((key(x), x) for x in items), key=itemgetter(0))
    out: list[_R] = []
    i, n = 0, len(keyed)
    while i < n:
        k = keyed[i][0]
        j = i + 1
        while j < n and keyed[j][0] == k:
            j += 1
        if j - i == 1:
            out.append(keyed[i][1])
        else:
            out.extend(sorted((x for _, x in keyed[i:j]), key=repr))
        i = j
    return out


def compute(records: RecordSet) -> dict[str, WorkflowData]:
    """Metrics of every workflow in ``records`` (in any order), keyed and sorted by name."""
    # a total order (ties on call_id, e.g. duplicated records, are ordered by content)
    ordered_calls = _total_order(records.calls, lambda c: (c.workflow, c.call_id))
    ordered_checks = _total_order(records.checks, lambda c: (c.workflow, c.call_id, c.check))
    calls: dict[str, list[CallRecord]] = defaultdict(list)
    checks: dict[str, list[CheckRecord]] = defaultdict(list)
    for call in ordered_calls:
        calls[call.workflow].append(call)
    for ck in ordered_checks:
        checks[ck.workflow].append(ck)
    names = sorted(set(calls) | set(checks))
    return {name: compute_workflow(name, calls[name], checks[name]) for name in names}
