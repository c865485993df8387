"""Verdicts on synthetic records with known differences (seeded), and the summary dict.

These show the gates behave as promised: a clearly worse candidate is BLOCKED, an equal one
is READY (the gates do not flap on chance differences), a tiny sample is INCONCLUSIVE, and a
candidate slightly beyond a threshold is INCONCLUSIVE with few samples rather than BLOCKED.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet, Role, Status
from pytest_modelrollout.gates import default_gates, evaluate, parse_gate
from pytest_modelrollout.metrics import compute
from pytest_modelrollout.summary import build_summary

BOOT = 1000  # resamples in these tests (the default is 2000)


@dataclass(frozen=True)
class Model:
    error_rate: float = 0.02
    median_ms: float = 800.0
    sigma: float = 0.35  # lognormal spread of latencies
    json_pass: float = 0.98
    cost_usd: float = 0.001


def simulate(
    seed: int, n: int, stable: Model, candidate: Model, workflow: str = "json_extraction"
) -> RecordSet:
    rng = random.Random(seed)
    rs = RecordSet()
    for i in range(n):
        pair = f"test_case[{i}]#0"
        sides: tuple[tuple[Role, Model], ...] = (("stable", stable), ("candidate", candidate))
        for role, m in sides:
            status: Status = "error" if rng.random() < m.error_rate else "ok"
            call_id = f"{pair}:{role}"
            rs.calls.append(
                CallRecord(
                    call_id,
                    pair,
                    f"test_case[{i}]",
                    workflow,
                    role,
                    f"sim:{role}",
                    status,
                    latency_ms=m.median_ms * rng.lognormvariate(0.0, m.sigma),
                    input_tokens=120,
                    output_tokens=rng.randint(40, 60),
                    cost_usd=m.cost_usd * rng.uniform(0.8, 1.2),
                )
            )
            passed = status == "ok" and rng.random() < m.json_pass
            rs.checks.append(
                CheckRecord(
                    call_id,
                    pair,
                    f"test_case[{i}]",
                    workflow,
                    role,
                    f"sim:{role}",
                    "json",
                    passed,
                )
            )
    return rs


def verdict(seed: int, n: int, stable: Model, candidate: Model) -> tuple[str, list[str]]:
    wd = compute(simulate(seed, n, stable, candidate))["json_extraction"]
    ev = evaluate(wd, default_gates(), n_resamples=BOOT)
    return ev.verdict, [r["gate"] for r in ev.reasons]


def test_clearly_worse_candidate_is_blocked() -> None:
    worse = Model(error_rate=0.15, median_ms=800.0 * 1.8, json_pass=0.80 / 0.85)
    for seed in range(3):
        v, gates = verdict(seed, 200, Model(), worse)
        assert v == "BLOCKED"
        assert {"p95_latency:+25%", "check.*:-2pp"} <= set(gates)


def test_equal_candidate_is_ready_and_does_not_flap() -> None:
    counts = Counter(verdict(seed, 200, Model(), Model())[0] for seed in range(100))
    assert counts["READY"] >= 95, counts
    assert counts["BLOCKED"] <= 2, counts


def test_tiny_sample_is_inconclusive() -> None:
    for seed in range(5):
        v, gates = verdict(seed, 8, Model(), Model(error_rate=0.3))
        assert v == "INCONCLUSIVE"
        assert "min_samples:20" in gates


def test_slightly_worse_near_threshold_is_inconclusive_not_blocked() -> None:
    # p95 +40% against a +25% gate: with 30 samples the data shows the candidate is slower
    # but cannot confirm it is more than 25% slower
    slower = Model(median_ms=800.0 * 1.4, sigma=0.2)
    counts = Counter(verdict(seed, 30, Model(sigma=0.2), slower)[0] for seed in range(20))
    assert counts["INCONCLUSIVE"] > counts["BLOCKED"], counts
    assert counts.most_common(1)[0][0] == "INCONCLUSIVE", counts
    v, gates = verdict(0, 30, Model(sigma=0.2), slower)
    assert v == "INCONCLUSIVE"
    assert "p95_latency:+25%" in gates
    # more data settles it
    counts = Counter(verdict(seed, 400, Model(sigma=0.2), slower)[0] for seed in range(5))
    assert counts["BLOCKED"] >= 4, counts


# --------------------------------------------------------------------------- the summary


def summary_of(rs: RecordSet, **kw: object) -> dict[str, Any]:
    args: dict[str, object] = {
        "stable": "sim:stable",
        "candidate": "sim:candidate",
        "workflow_models": None,
        "gates_by_workflow": {"*": default_gates()},
        "killed": set(),
        "confidence": 0.95,
        "decision": "standard",
        "complete": True,
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.23456,
        "plugin_version": "0.1.0",
        "n_resamples": BOOT,
    }
    args.update(kw)
    return build_summary(rs, **args)  # type: ignore[arg-type]


def test_summary_shape_and_json() -> None:
    rs = simulate(1, 60, Model(), Model(median_ms=2000.0))
    rs.extend(simulate(2, 40, Model(), Model(), workflow="support_chat"))
    s = summary_of(rs)
    assert list(s)[:12] == [
        "schema_version",
        "verdict",
        "stable",
        "candidate",
        "complete",
        "started_at",
        "duration_s",
        "plugin_version",
        "gates",
        "decision",
        "confidence",
        "workflows",
    ]
    assert s["verdict"] == "BLOCKED"
    wfs = s["workflows"]
    assert isinstance(wfs, dict)
    assert list(wfs) == ["json_extraction", "support_chat"]
    wf = wfs["json_extraction"]
    assert wf["verdict"] == "BLOCKED"
    assert wf["stable_model"] == "sim:stable"
    assert set(wf) >= {"verdict", "reasons", "stable", "candidate", "checks", "tolerated"}
    assert set(wf["checks"]["json"]) == {
        "stable_pass_rate",
        "candidate_pass_rate",
        "regressions",
        "improvements",
        "pairs",
    }
    reason = wf["reasons"][0]
    assert set(reason) >= {
        "gate",
        "status",
        "message",
        "stable",
        "candidate",
        "change",
        "interval",
        "threshold",
    }
    assert wfs["support_chat"]["verdict"] == "READY"
    assert s["gates"][0] == parse_gate("p95_latency:+25%", "default").to_dict()
    assert s["workers"] == {"crashed": []}
    assert len(s["samples"]["json_extraction"]["stable"]) == 60
    json.dumps(s, allow_nan=False)


def test_summary_same_for_any_record_order() -> None:
    rs = simulate(3, 80, Model(), Model(median_ms=1000.0, json_pass=0.9))
    base = json.dumps(summary_of(rs), sort_keys=False)
    for seed in range(3):
        shuffled = RecordSet(calls=list(rs.calls), checks=list(rs.checks))
        random.Random(seed).shuffle(shuffled.calls)
        random.Random(seed).shuffle(shuffled.checks)
        assert json.dumps(summary_of(shuffled), sort_keys=False) == base


def test_summary_killed_models_and_extra() -> None:
    rs = simulate(4, 30, Model(), Model())
    s = summary_of(
        rs,
        workflow_models={"json_extraction": ("sim:stable", "sim:bad")},
        killed={"sim:bad"},
        include_samples=False,
        extra={"workers": {"crashed": ["gw1"]}, "verdict": "READY", "note": "x"},
    )
    assert s["verdict"] == "KILLED"
    assert s["workflows"]["json_extraction"]["candidate_model"] == "sim:bad"
    assert s["workers"] == {"crashed": ["gw1"]} and s["note"] == "x"
    assert "samples" not in s
    assert summary_of(RecordSet())["verdict"] == "INCONCLUSIVE"  # no workflow at all
    # every test skipped because the candidate is killed: still KILLED, not "no workflow"
    s = summary_of(
        RecordSet(),
        workflow_models={"json_extraction": ("sim:stable", "sim:bad"), "other": ("a", "b")},
        killed={"sim:bad"},
    )
    assert s["verdict"] == "KILLED"
    assert list(s["workflows"]) == ["json_extraction"]
    assert s["workflows"]["json_extraction"]["stable"]["requests"] == 0
