"""Metrics per workflow and role from plain records."""

from __future__ import annotations

import random

import pytest

from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet
from pytest_modelrollout.metrics import METRIC_KEYS, compute


def call(i: int, role: str, status: str = "ok", **kw: object) -> CallRecord:
    pair = f"t[{i}]#0"
    return CallRecord(
        call_id=f"{pair}:{role}",
        pair_id=pair,
        test_id=f"t[{i}]",
        workflow=str(kw.pop("workflow", "wf")),
        role=role,  # type: ignore[arg-type]
        model=f"sim:{role}",
        status=status,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def check(i: int, role: str, name: str, passed: bool, workflow: str = "wf") -> CheckRecord:
    pair = f"t[{i}]#0"
    return CheckRecord(
        call_id=f"{pair}:{role}",
        pair_id=pair,
        test_id=f"t[{i}]",
        workflow=workflow,
        role=role,  # type: ignore[arg-type]
        model=f"sim:{role}",
        check=name,
        passed=passed,
    )


def sample() -> RecordSet:
    rs = RecordSet()
    # stable: 4 calls, all ok; candidate: ok, fallback, error, timeout
    for i, lat in enumerate([100.0, 200.0, 300.0, 400.0]):
        rs.calls.append(
            call(i, "stable", latency_ms=lat, input_tokens=10, output_tokens=5, cost_usd=0.01)
        )
    rs.calls.append(
        call(
            0,
            "candidate",
            latency_ms=50.0,
            input_tokens=10,
            output_tokens=7,
            cost_usd=0.02,
            source="replay",
        )
    )
    rs.calls.append(
        call(1, "candidate", latency_ms=150.0, fallback=True, cost_usd=0.03, source="shadow")
    )
    rs.calls.append(call(2, "candidate", "error", error_kind="server"))
    rs.calls.append(call(3, "candidate", "timeout", latency_ms=3000.0))
    for i in range(4):
        rs.checks.append(check(i, "stable", "json", True))
        rs.checks.append(check(i, "stable", "length", i != 3))
    rs.checks.append(check(0, "candidate", "json", True))
    rs.checks.append(check(0, "candidate", "length", False))
    rs.checks.append(check(1, "candidate", "json", True))
    rs.checks.append(check(1, "candidate", "length", True))
    rs.checks.append(check(2, "candidate", "json", False))
    rs.checks.append(check(3, "candidate", "json", False))
    rs.checks.append(check(3, "candidate", "length", True))
    return rs


def test_metrics_keys_and_values() -> None:
    wd = compute(sample())["wf"]
    s, c = wd.stable.metrics(), wd.candidate.metrics()
    assert tuple(s) == METRIC_KEYS == tuple(c)
    assert s["requests"] == 4 and s["success_rate"] == 1.0 and s["error_rate"] == 0.0
    assert s["latency_p50_ms"] == pytest.approx(250.0)
    assert s["latency_p95_ms"] == pytest.approx(385.0)  # linear interpolation
    assert s["input_tokens"] == 40 and s["output_tokens"] == 20
    assert s["cost_usd"] == pytest.approx(0.04)
    # task success: ok and every check passed -> 3 of 4 (length failed on call 3)
    assert s["cost_per_success_usd"] == pytest.approx(0.04 / 3)
    assert s["validation_pass_rate"] == pytest.approx(7 / 8)
    assert s["check_pass_rates"] == {"json": 1.0, "length": 0.75}

    assert c["requests"] == 4
    assert (c["success_rate"], c["fallback_rate"], c["error_rate"], c["timeout_rate"]) == (
        0.25,
        0.25,
        0.25,
        0.25,
    )
    assert sum(c[k] for k in ("success_rate", "fallback_rate", "error_rate", "timeout_rate")) == 1
    assert c["latency_p50_ms"] == pytest.approx(150.0)  # 50, 150, 3000 (the error had none)
    assert c["input_tokens"] == 10 and c["output_tokens"] == 7
    assert c["cost_usd"] == pytest.approx(0.05)
    # call 0 failed length, call 1 (fallback, ok) passed everything -> 1 task success
    assert c["cost_per_success_usd"] == pytest.approx(0.05)
    assert c["validation_pass_rate"] == pytest.approx(4 / 7)
    assert (c["replayed"], c["shadow"]) == (1, 1)


def test_paired_check_comparison() -> None:
    wd = compute(sample())["wf"]
    json_ = wd.checks["json"].to_dict()
    assert json_ == {
        "stable_pass_rate": 1.0,
        "candidate_pass_rate": 0.5,
        "regressions": 2,
        "improvements": 0,
        "pairs": 4,
    }
    length = wd.checks["length"]
    # pairs: 0 (T,F) regression, 1 (T,T), 3 (F,T) improvement; pair 2 has no candidate outcome
    assert (length.pairs, length.regressions, length.improvements, length.both) == (3, 1, 1, 1)
    assert wd.validation.pairs == 7


def test_none_when_nothing_reported() -> None:
    rs = RecordSet(calls=[call(0, "stable"), call(0, "candidate", "error")])
    m = compute(rs)["wf"].candidate.metrics()
    assert m["latency_p95_ms"] is None and m["input_tokens"] is None
    assert m["cost_usd"] is None and m["cost_per_success_usd"] is None
    assert m["validation_pass_rate"] is None and m["check_pass_rates"] == {}
    # a role without any call
    rs = RecordSet(calls=[call(0, "candidate")])
    m = compute(rs)["wf"].stable.metrics()
    assert m["requests"] == 0 and m["success_rate"] is None


def test_unpaired_checks_fall_back_to_per_role_rates() -> None:
    rs = RecordSet(
        calls=[call(0, "stable"), call(1, "candidate")],
        checks=[check(0, "stable", "json", True), check(1, "candidate", "json", False)],
    )
    cmp = compute(rs)["wf"].checks["json"]
    assert cmp.pairs == 0
    assert (cmp.stable_rate, cmp.candidate_rate) == (1.0, 0.0)


def test_several_outcomes_of_one_check_on_one_reply() -> None:
    rs = RecordSet(
        calls=[call(0, "stable"), call(0, "candidate")],
        checks=[
            check(0, "stable", "json", True),
            check(0, "candidate", "json", True),
            check(0, "candidate", "json", False),
        ],
    )
    cmp = compute(rs)["wf"].checks["json"]
    assert (cmp.pairs, cmp.regressions) == (1, 1)


def test_order_independent_and_per_workflow() -> None:
    rs = sample()
    rs.calls.append(call(9, "stable", workflow="other", latency_ms=1.0))
    base = compute(rs)
    assert list(base) == ["other", "wf"]
    for seed in range(5):
        shuffled = RecordSet(calls=list(rs.calls), checks=list(rs.checks))
        random.Random(seed).shuffle(shuffled.calls)
        random.Random(seed).shuffle(shuffled.checks)
        again = compute(shuffled)
        for name in base:
            assert again[name].stable.metrics() == base[name].stable.metrics()
            assert again[name].candidate.metrics() == base[name].candidate.metrics()
            assert again[name].checks_dict() == base[name].checks_dict()
            assert again[name].candidate.costs == base[name].candidate.costs
