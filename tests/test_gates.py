"""Gate expressions, config gates, merging and verdicts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_modelrollout._exceptions import ConfigError
from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet, Role, Status
from pytest_modelrollout.gates import (
    CONFIG_KEYS,
    Gate,
    GateError,
    default_gates,
    evaluate,
    gates_from_config,
    merge_gates,
    overall_verdict,
    parse_gate,
    parse_gates_config,
)
from pytest_modelrollout.metrics import WorkflowData, compute

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("expr", "metric", "op", "threshold", "canonical"),
    [
        ("p95_latency:+25%", "p95_latency", "+", 0.25, "p95_latency:+25%"),
        (" p50_latency : +10 % ", "p50_latency", "+", 0.10, "p50_latency:+10%"),
        ("error_rate:x2", "error_rate", "x", 2.0, "error_rate:x2"),
        ("error_rate:X1.5", "error_rate", "x", 1.5, "error_rate:x1.5"),
        ("error_rate:+1pp", "error_rate", "+pp", 0.01, "error_rate:+1pp"),
        ("check.json:-2pp", "check.json", "-pp", 0.02, "check.json:-2pp"),
        ("check.*:-2pp", "check.*", "-pp", 0.02, "check.*:-2pp"),
        ("validation:-2pp", "validation", "-pp", 0.02, "validation:-2pp"),
        ("success_rate:-5%", "success_rate", "-", 0.05, "success_rate:-5%"),
        ("fallback_rate:<5%", "fallback_rate", "<", 0.05, "fallback_rate:<5%"),
        ("fallback_rate:<0.05", "fallback_rate", "<", 0.05, "fallback_rate:<5%"),
        ("success_rate:>95%", "success_rate", ">", 0.95, "success_rate:>95%"),
        ("p95_latency:<500", "p95_latency", "<", 500.0, "p95_latency:<500ms"),
        ("p95_latency:<2s", "p95_latency", "<", 2000.0, "p95_latency:<2000ms"),
        ("cost_per_success:+20%", "cost_per_success", "+", 0.20, "cost_per_success:+20%"),
        ("cost_per_success:<$0.01", "cost_per_success", "<", 0.01, "cost_per_success:<0.01"),
        ("cost:x1.5", "cost", "x", 1.5, "cost:x1.5"),
        ("output_tokens:+30%", "output_tokens", "+", 0.30, "output_tokens:+30%"),
        ("output_tokens:<500", "output_tokens", "<", 500.0, "output_tokens:<500"),
        ("min_samples:20", "min_samples", "min", 20.0, "min_samples:20"),
        ("p95_latency:off", "p95_latency", "off", 0.0, "p95_latency:off"),
    ],
)
def test_parse_valid(expr: str, metric: str, op: str, threshold: float, canonical: str) -> None:
    g = parse_gate(expr)
    assert (g.metric, g.op, g.expr, g.source) == (metric, op, canonical, "cli")
    assert g.threshold == pytest.approx(threshold)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "empty expression"),
        ("p95_latency", "expected METRIC:LIMIT"),
        ("p95_latency:", "the limit after ':' is missing"),
        ("p99_latency:+25%", "unknown metric 'p99_latency'"),
        ("check.:-2pp", "check name missing"),
        ("check.js*n:-2pp", "bad check name"),
        ("p95_latency:+25", "cannot read the limit '+25'"),
        ("p95_latency:fast", "cannot read the limit 'fast'"),
        ("p95_latency:-2pp", "'pp' (percentage points) applies to rates only"),
        ("success_rate:+5%", "success_rate is higher-is-better: allow a drop"),
        ("check.json:+2pp", "check.json is higher-is-better"),
        ("error_rate:-1pp", "error_rate is lower-is-better: allow an increase"),
        ("error_rate:x0.5", "a ratio gate must allow at least x1"),
        ("check.json:x2", "check.json is higher-is-better: a ratio gate applies"),
        ("success_rate:<90%", "set a minimum with >N%"),
        ("error_rate:>1%", "set a cap with <N"),
        ("fallback_rate:<5", "write the limit as a percentage"),
        ("fallback_rate:<5ms", "write the limit as a percentage"),
        ("p95_latency:<5%", "is an absolute number, not a percentage"),
        ("cost:<5ms", "is not a latency"),
        ("min_samples:ten", "min_samples needs a whole number >= 1"),
        ("min_samples:0", "min_samples needs a whole number >= 1"),
        ("validation:-150pp", "at most 100pp"),
        ("success_rate:-150%", "a drop must be at most 100%"),
    ],
)
def test_parse_invalid(expr: str, message: str) -> None:
    with pytest.raises(GateError) as info:
        parse_gate(expr)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith(f"invalid gate {expr.strip()!r}")
    # usable both as a config error and as an argparse type
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- config


def test_default_gates() -> None:
    exprs = [g.expr for g in default_gates()]
    assert exprs == [
        "p95_latency:+25%",
        "error_rate:x2",
        "timeout_rate:x2",
        "check.*:-2pp",
        "fallback_rate:<5%",
        "cost_per_success:+20%",
        "min_samples:20",
    ]
    assert all(g.source == "default" for g in default_gates())
    assert next(g for g in default_gates() if g.metric == "error_rate").floor == 0.03


def test_config_gates_all_keys() -> None:
    cfg = parse_gates_config(
        {
            "max_p95_latency_increase": 0.3,
            "max_p50_latency_increase": 0.1,
            "max_error_rate_ratio": 3,
            "error_rate_floor": 0.05,
            "max_timeout_rate_ratio": 2.5,
            "max_check_failure_increase": 0.0,
            "max_validation_drop": 0.01,
            "max_fallback_rate": 0.1,
            "max_cost_per_success_increase": 0.5,
            "min_samples": 50,
            "confidence": 0.9,
            "decision": "strict",
            "expressions": ["output_tokens:+40%"],
        },
        "config",
    )
    exprs = {g.expr for g in cfg.gates}
    assert exprs == {
        "p95_latency:+30%",
        "p50_latency:+10%",
        "error_rate:x3",
        "timeout_rate:x2.5",
        "check.*:-0pp",
        "validation:-1pp",
        "fallback_rate:<10%",
        "cost_per_success:+50%",
        "min_samples:50",
        "output_tokens:+40%",
    }
    assert {g.floor for g in cfg.gates if g.op == "x"} == {0.05}
    assert (cfg.confidence, cfg.decision) == (0.9, "strict")
    assert set(CONFIG_KEYS) >= {"confidence", "decision", "expressions"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_p95_latency": 0.2}, "unknown gate key gates.'max_p95_latency'"),
        ({"max_p95_latency_increase": "25%"}, "max_p95_latency_increase must be a number"),
        ({"max_p95_latency_increase": True}, "max_p95_latency_increase must be a number"),
        ({"max_p95_latency_increase": -0.1}, "must be between 0 and 10"),
        ({"max_error_rate_ratio": 0.5}, "max_error_rate_ratio must be between 1"),
        ({"max_fallback_rate": 5}, "max_fallback_rate must be between 0 and 1"),
        ({"error_rate_floor": 2}, "error_rate_floor must be between 0 and 1"),
        ({"min_samples": 2.5}, "min_samples must be a whole number"),
        ({"confidence": 95}, "confidence must be at least 0.5 and below 1"),
        ({"decision": "lenient"}, "decision must be 'standard' or 'strict'"),
        ({"expressions": "p95_latency:+25%"}, "expressions must be a list of strings"),
        ({"expressions": ["p95_latency:+25"]}, "invalid gate 'p95_latency:+25'"),
    ],
)
def test_config_invalid(data: dict[str, object], message: str) -> None:
    with pytest.raises(GateError, match=None) as info:
        gates_from_config(data)
    assert message in str(info.value)


def test_config_false_disables_and_floor_alone() -> None:
    merged = merge_gates(default_gates(), gates_from_config({"max_p95_latency_increase": False}))
    assert "p95_latency" not in {g.metric for g in merged}
    floor_only = gates_from_config({"error_rate_floor": 0.1})
    assert {(g.expr, g.floor) for g in floor_only} == {
        ("error_rate:x2", 0.1),
        ("timeout_rate:x2", 0.1),
    }


def test_merge_later_sources_win() -> None:
    merged = merge_gates(
        default_gates(),
        gates_from_config({"max_p95_latency_increase": 0.5}, "config"),
        gates_from_config({"max_check_failure_increase": 0.0}, "workflow"),
        [parse_gate("p95_latency:+10%"), parse_gate("error_rate:+1pp"), parse_gate("cost:off")],
    )
    by_metric = {(g.metric, g.family): g for g in merged}
    assert by_metric[("p95_latency", "compare")].expr == "p95_latency:+10%"
    assert by_metric[("p95_latency", "compare")].source == "cli"
    assert by_metric[("check.*", "compare")].threshold == 0.0
    assert by_metric[("check.*", "compare")].source == "workflow"
    # a replacement comparison on a rate keeps the floor of the gate it replaced
    assert by_metric[("error_rate", "compare")].op == "+pp"
    assert by_metric[("fallback_rate", "cap")].source == "default"
    merged2 = merge_gates(default_gates(), [parse_gate("error_rate:x3")])
    g = next(g for g in merged2 if g.metric == "error_rate")
    assert (g.threshold, g.floor) == (3.0, 0.03)


def test_gate_to_dict() -> None:
    d = parse_gate("p95_latency:+25%").to_dict()
    assert d == {
        "metric": "p95_latency",
        "op": "+",
        "threshold": 0.25,
        "expr": "p95_latency:+25%",
        "source": "cli",
    }


# --------------------------------------------------------------------------- verdicts


def build(
    n: int,
    *,
    s_err: int = 0,
    c_err: int = 0,
    s_lat: Callable[[int], float] = lambda i: 100.0 + i,
    c_lat: Callable[[int], float] = lambda i: 100.0 + i,
    regressions: int = 0,
    improvements: int = 0,
    c_fallback: int = 0,
    cost: tuple[float, float] | None = (0.001, 0.001),
) -> WorkflowData:
    """Deterministic records: the first ``*_err`` calls fail, json regressions at the end."""
    rs = RecordSet()
    for i in range(n):
        pair = f"t[{i}]#0"
        sides: tuple[tuple[Role, int, Callable[[int], float]], ...] = (
            ("stable", s_err, s_lat),
            ("candidate", c_err, c_lat),
        )
        for role, errs, lat in sides:
            status: Status = "error" if i < errs else "ok"
            fb = role == "candidate" and errs <= i < errs + c_fallback
            rs.calls.append(
                CallRecord(
                    f"{pair}:{role}",
                    pair,
                    f"t[{i}]",
                    "wf",
                    role,
                    role,
                    status,
                    latency_ms=lat(i),
                    output_tokens=50,
                    cost_usd=None if cost is None else cost[role == "candidate"],
                    fallback=fb,
                )
            )
            passed = status == "ok"
            if role == "candidate" and n - regressions <= i:
                passed = False
            if role == "stable" and i < improvements + s_err and i >= s_err:
                passed = False
            rs.checks.append(
                CheckRecord(f"{pair}:{role}", pair, f"t[{i}]", "wf", role, role, "json", passed)
            )
    return compute(rs)["wf"]


def test_ready_when_equal() -> None:
    ev = evaluate(build(50), default_gates())
    assert ev.verdict == "READY"
    assert ev.reasons == []
    assert ev.tolerated == {"regressions": 0, "why": "no paired regressions"}


def test_killed_takes_precedence() -> None:
    ev = evaluate(build(50, c_err=40), default_gates(), killed=True)
    assert ev.verdict == "KILLED"
    assert ev.reasons[0]["status"] == "killed"


def test_insufficient_samples() -> None:
    ev = evaluate(build(8, c_err=8), default_gates())
    assert ev.verdict == "INCONCLUSIVE"
    statuses = {r["status"] for r in ev.reasons}
    assert "insufficient" in statuses and "breach" not in statuses
    assert (
        "too few samples: 8 stable and 8 candidate requests (min_samples 20)"
        in (ev.reasons[0]["message"])
    )


def test_a_run_whose_calls_all_failed_on_both_sides_is_not_ready() -> None:
    """No network or a revoked key in CI: every call of both models fails, no error rate is
    worse than the other's, no check can be compared. That is no evidence for the candidate:
    INCONCLUSIVE (it was READY)."""
    ev = evaluate(build(200, s_err=200, c_err=200), default_gates())
    assert ev.verdict == "INCONCLUSIVE"
    (reason,) = ev.reasons
    assert reason["status"] == "insufficient"
    assert reason["message"] == (
        "too few answered requests: 0 of 200 stable and 0 of 200 candidate requests were "
        "answered (min_samples 20): too few answers to judge their checks and cost per success")
    # a few answers on each side are not enough either
    assert evaluate(build(200, s_err=190, c_err=190), default_gates()).verdict == "INCONCLUSIVE"
    assert evaluate(build(200, s_err=180, c_err=180), default_gates()).verdict == "READY"
    # a candidate that fails where the stable answers is BLOCKED, as before: its error rate is
    # confirmed on all its requests, not only on the answered ones
    blocked = evaluate(build(200, c_err=195), default_gates())
    assert blocked.verdict == "BLOCKED"
    assert {r["status"] for r in blocked.reasons} == {"breach", "insufficient"}


def test_the_latency_of_a_run_with_too_few_answers_is_not_a_confirmed_breach() -> None:
    """Every call fails on both sides and the candidate's failures happen to take longer (a
    refused connection timed on a busy machine: in CI it was 28 ms against 36 ms at p50): the
    run is INCONCLUSIVE, as when the failures take as long, not BLOCKED on a latency that is
    not the model's. Latency with answers blocks as before (the next test)."""
    ev = evaluate(build(200, s_err=200, c_err=200, c_lat=lambda i: 2.0 * (100.0 + i)),
                  default_gates(), n_resamples=500)  # fmt: skip
    assert ev.verdict == "INCONCLUSIVE"
    latency = next(r for r in ev.reasons if r["gate"] == "p95_latency:+25%")
    assert latency["status"] == "unconfirmed"
    assert latency["message"].endswith(
        "exceeds +25% (too few answered requests to judge the model's latency)")
    assert {r["status"] for r in ev.reasons} == {"unconfirmed", "insufficient"}


def test_blocked_on_latency_with_message() -> None:
    ev = evaluate(build(200, c_lat=lambda i: 2.0 * (100.0 + i)), default_gates(), n_resamples=500)
    assert ev.verdict == "BLOCKED"
    (reason,) = ev.reasons
    assert reason["gate"] == "p95_latency:+25%" and reason["status"] == "breach"
    assert reason["message"].startswith("p95 latency 289 ms -> 578 ms (+100%, 95% CI +")
    assert reason["message"].endswith("exceeds +25%")
    assert reason["change"] == pytest.approx(1.0)
    assert reason["interval"][0] > 0.25 and reason["threshold"] == 0.25


def test_blocked_on_error_rate_and_checks() -> None:
    ev = evaluate(build(200, s_err=2, c_err=40), default_gates(), n_resamples=200)
    assert ev.verdict == "BLOCKED"
    gates = {r["gate"]: r for r in ev.reasons}
    err = gates["error_rate:x2"]
    assert err["status"] == "breach"
    assert "error rate 1.0% -> 20.0% (x20.00, 95% CI x" in err["message"]
    assert "exceeds x2 and +3.0pp" in err["message"]
    js = gates["check.*:-2pp"]
    assert js["regressions"] == 38 and js["pairs"] == 200
    assert "check json pass rate 99.0% -> 80.0% (-19.0pp" in js["message"]


def test_error_floor_zero_to_one() -> None:
    # 0 -> 1 error in 40 is an infinite ratio but only +2.5pp, below the 3pp floor: no breach
    ev = evaluate(build(40, c_err=1), default_gates())
    err = next(r for r in ev.results if r.gate.metric == "error_rate")
    assert err.status == "ok"
    assert ev.verdict == "READY"
    # 0 -> 1 in 20 (+5pp) is beyond the floor but cannot be confirmed: INCONCLUSIVE, never
    # BLOCKED on an "infinite" ratio
    ev = evaluate(build(20, c_err=1), default_gates())
    err = next(r for r in ev.results if r.gate.metric == "error_rate")
    assert err.status == "unconfirmed"
    assert ev.verdict == "INCONCLUSIVE"


@pytest.mark.parametrize(
    ("regressions", "gates", "verdict", "status"),
    [
        # 30 pairs, all passed on the stable, none improved on the candidate. With the five
        # default comparisons, "significantly worse" is judged at 99% (Bonferroni).
        (4, "default", "READY", "tolerated"),  # -13.3pp, 95% CI -29.7..+0.6
        (5, "default", "READY", "tolerated"),  # -16.7pp, 95% CI -33.6..-2.0, 99% CI has 0
        (6, "default", "BLOCKED", "breach"),  # -20.0pp, 95% CI -37.3..-4.5: beyond -2pp
        # a single comparison gate: no adjustment
        (4, "single", "READY", "tolerated"),
        (5, "single", "INCONCLUSIVE", "unconfirmed"),  # worse, but not confirmed beyond -2pp
        (6, "single", "BLOCKED", "breach"),
    ],
)
def test_paired_check_verdict_table(
    regressions: int, gates: str, verdict: str, status: str
) -> None:
    chosen = default_gates() if gates == "default" else [parse_gate("check.*:-2pp")]
    ev = evaluate(build(30, regressions=regressions), chosen)
    assert ev.verdict == verdict
    (res,) = [r for r in ev.results if r.label == "check json pass rate"]
    assert res.status == status
    assert f"{regressions} regressions, 0 improvements in 30 pairs" in res.message
    if status == "unconfirmed":
        assert "exceeds -2pp, not confirmed" in res.message
        assert ev.reasons[0]["regressions"] == regressions
    if status == "tolerated":
        assert ev.reasons == []
        assert "is beyond the -2pp gate but not significantly worse" in ev.tolerated["why"]
        assert ev.tolerated["regressions"] == regressions


def test_tolerated_regressions_explained() -> None:
    ev = evaluate(build(100, regressions=3, improvements=2), default_gates())
    assert ev.verdict == "READY"
    assert ev.tolerated["regressions"] == 3
    why = ev.tolerated["why"]
    assert why.startswith("json: 3 regressions in 100 pairs (3.0%) with 2 improvements")
    assert "net change -1.0pp (95% CI" in why and "within the -2pp gate" in why


def test_strict_requires_interval_inside() -> None:
    wd = build(30)
    assert evaluate(wd, default_gates()).verdict == "READY"
    ev = evaluate(wd, default_gates(), decision="strict", n_resamples=300)
    assert ev.verdict == "INCONCLUSIVE"
    assert any("strict" in r["message"] for r in ev.reasons)
    with pytest.raises(GateError):
        evaluate(wd, default_gates(), decision="lenient")


def test_absolute_cap_on_candidate() -> None:
    gates = [*default_gates(), parse_gate("p95_latency:<250")]
    ev = evaluate(build(200, c_fallback=30), gates)
    reasons = {r["gate"]: r for r in ev.reasons}
    assert reasons["fallback_rate:<5%"]["status"] == "breach"
    assert reasons["fallback_rate:<5%"]["message"].startswith("fallback rate 15.0% (30/200, 95% CI")
    assert reasons["p95_latency:<250ms"]["status"] == "breach"
    assert ev.verdict == "BLOCKED"


def test_cost_gates_and_unpriced() -> None:
    gates = [*default_gates(), parse_gate("cost:<0.1")]
    ev = evaluate(build(100, cost=(0.001, 0.002)), gates, n_resamples=300)
    reasons = {r["gate"]: r for r in ev.reasons}
    assert reasons["cost_per_success:+20%"]["status"] == "breach"
    assert "cost per success $0.001 -> $0.002 (+100%" in reasons["cost_per_success:+20%"]["message"]
    assert reasons["cost:<0.1"]["status"] == "breach"  # total $0.2
    ev = evaluate(build(100, cost=None), default_gates())
    cps = next(r for r in ev.results if r.gate.metric == "cost_per_success")
    assert cps.status == "skipped" and ev.verdict == "READY"


def test_specific_check_gate_overrides_wildcard() -> None:
    wd = build(100, regressions=4)
    gates = merge_gates(default_gates(), [parse_gate("check.json:-10pp")])
    ev = evaluate(wd, gates)
    judged = [r.gate.expr for r in ev.results if r.label.startswith("check ")]
    assert judged == ["check.json:-10pp"]
    # a gate on a check this workflow does not run is not judged here
    ev = evaluate(wd, [parse_gate("check.language:-2pp")])
    assert ev.results == [] and ev.verdict == "READY"


def test_evaluate_is_deterministic() -> None:
    wd = build(60, c_lat=lambda i: 1.3 * (100.0 + i))
    a = evaluate(wd, default_gates(), seed=1)
    b = evaluate(wd, default_gates(), seed=1)
    assert a.reasons == b.reasons and a.verdict == b.verdict


@pytest.mark.parametrize(
    ("verdicts", "overall"),
    [
        ([], "INCONCLUSIVE"),
        (["READY"], "READY"),
        (["READY", "INCONCLUSIVE"], "INCONCLUSIVE"),
        (["INCONCLUSIVE", "BLOCKED", "READY"], "BLOCKED"),
        (["BLOCKED", "KILLED"], "KILLED"),
    ],
)
def test_overall_verdict(verdicts: list[str], overall: str) -> None:
    assert overall_verdict(verdicts) == overall


def test_gate_is_hashable_and_frozen() -> None:
    g = parse_gate("error_rate:x2")
    assert {g: 1}[Gate("error_rate", "x", 2.0, "error_rate:x2", "cli")] == 1


@pytest.mark.parametrize("missing", ["stable", "candidate"])
def test_one_sided_workflow_says_there_is_nothing_to_compare(missing: str) -> None:
    """A workflow whose tests use only one model fixture is INCONCLUSIVE, and says why."""
    present: Role = "candidate" if missing == "stable" else "stable"
    rs = RecordSet(calls=[
        CallRecord(f"t[{i}]#0:{present}", f"t[{i}]#0", f"t[{i}]", "wf", present, present,
                   "ok", latency_ms=100.0 + i, input_tokens=10, output_tokens=20, cost_usd=0.001)
        for i in range(30)
    ])
    ev = evaluate(compute(rs)["wf"], default_gates())
    assert ev.verdict == "INCONCLUSIVE"
    n_s, n_c = (0, 30) if missing == "stable" else (30, 0)
    (reason,) = ev.reasons
    assert reason["message"] == (
        f"too few samples: {n_s} stable and {n_c} candidate requests (min_samples 20); "
        f"no {missing} calls to compare with (tests that use only the {present} fixture: use "
        f"rollout, or {missing} as well)"
    )
    # both sides present but few: no such remark
    few = evaluate(build(8), default_gates())
    assert all("compare with" not in r["message"] for r in few.reasons)
