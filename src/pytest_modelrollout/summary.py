"""Records + gates -> the summary dict that every report renders (pure).

The dict's shape is documented in ``docs/DESIGN.md`` ("The summary"). It is JSON-serialisable
(no infinities or NaNs), its keys are in a stable order, floats are rounded for display, and
the same records give the same summary whatever their order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._records import RecordSet
from .gates import (
    DEFAULT_CONFIDENCE,
    DEFAULT_DECISION,
    Gate,
    default_gates,
    evaluate,
    overall_verdict,
)
from .metrics import METRIC_KEYS, WorkflowData, compute, compute_workflow
from .stats import DEFAULT_RESAMPLES

__all__ = ["SCHEMA_VERSION", "build_summary", "round_metrics"]

SCHEMA_VERSION = 1

# decimals per metric key (rates as fractions: 4 decimals = 0.01 percentage points)
_RATE_DIGITS = 4
_MS_DIGITS = 1


def _r(v: Any, digits: int) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return round(v, digits)
    return v


def _sig(v: float | None, sig: int = 6) -> float | None:
    """Round to significant digits (costs span many orders of magnitude)."""
    if v is None or not math.isfinite(v):
        return None
    if v == 0:
        return 0.0
    return float(f"{v:.{sig}g}")


def round_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """A role's metrics dict, rounded for reports, keys in contract order."""
    out: dict[str, Any] = {}
    for key in METRIC_KEYS:
        v = m.get(key)
        if key in ("latency_p50_ms", "latency_p95_ms"):
            out[key] = _r(v, _MS_DIGITS)
        elif key in ("cost_usd", "cost_per_success_usd"):
            out[key] = _sig(v)
        elif key == "check_pass_rates":
            out[key] = {k: _r(x, _RATE_DIGITS) for k, x in sorted((v or {}).items())}
        else:
            out[key] = _r(v, _RATE_DIGITS)
    return out


def _round_reason(reason: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in reason.items():
        if k in ("stable", "candidate") and isinstance(v, float):
            out[k] = _sig(v)
        elif k == "interval" and isinstance(v, list):
            out[k] = [None if x is None else _sig(float(x)) for x in v]
        elif isinstance(v, float):
            out[k] = _sig(v)
        else:
            out[k] = v
    return out


def _round_checks(checks: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: _r(v, _RATE_DIGITS) for k, v in c.items()} for name, c in sorted(checks.items())
    }


def build_summary(
    records: RecordSet,
    *,
    stable: str,
    candidate: str,
    workflow_models: Mapping[str, tuple[str, str]] | None = None,
    gates_by_workflow: Mapping[str, Sequence[Gate]] | None = None,
    killed: set[str] | frozenset[str] = frozenset(),
    confidence: float = DEFAULT_CONFIDENCE,
    decision: str = DEFAULT_DECISION,
    complete: bool = True,
    started_at: str = "",
    duration_s: float = 0.0,
    plugin_version: str = "",
    include_samples: bool = True,
    extra: Mapping[str, Any] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    data: Mapping[str, WorkflowData] | None = None,
) -> dict[str, Any]:
    """Judge every workflow in ``records`` and build the report dict.

    ``workflow_models``: ``{workflow: (stable_ref, candidate_ref)}`` where a workflow compares
    other models than ``stable`` / ``candidate``. ``gates_by_workflow``: the merged gates per
    workflow (:func:`~pytest_modelrollout.gates.merge_gates`); the key ``"*"`` applies to
    workflows not listed; without either, :func:`~pytest_modelrollout.gates.default_gates`.
    ``killed``: model references switched off -- a workflow whose candidate is killed is
    KILLED (also when it has no record, if it is listed in ``workflow_models``). ``extra`` adds top-level keys (e.g. ``workers``), never replacing the computed ones.
    ``data``: per-workflow metrics computed elsewhere (``canary`` streams logs into them without
    records); when given, ``records`` is not read.
    """
    gates_map: Mapping[str, Sequence[Gate]] = gates_by_workflow or {}
    fallback_gates: Sequence[Gate] = gates_map.get("*", default_gates())
    models = workflow_models or {}
    # ``data``: metrics already aggregated (streamed canary logs); ``records`` is then ignored
    data = dict(data) if data is not None else compute(records)
    # workflows with records; a known workflow without records is judged only when its
    # candidate is killed (its tests were skipped: the verdict is KILLED, not "no workflow")
    for name, (_, c_model) in models.items():
        if name not in data and c_model in killed:
            data[name] = compute_workflow(name, [], [])
    names = sorted(data)

    workflows: dict[str, Any] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    for name in names:
        wd = data[name]
        s_model, c_model = models.get(name, (stable, candidate))
        gates = list(gates_map.get(name, fallback_gates))
        ev = evaluate(
            wd,
            gates,
            confidence=confidence,
            decision=decision,
            killed=c_model in killed,
            n_resamples=n_resamples,
            seed=seed,
        )
        workflows[name] = {
            "verdict": ev.verdict,
            "stable_model": s_model,
            "candidate_model": c_model,
            "reasons": [_round_reason(r) for r in ev.reasons],
            "stable": round_metrics(wd.stable.metrics()),
            "candidate": round_metrics(wd.candidate.metrics()),
            "checks": _round_checks(wd.checks_dict()),
            "tolerated": ev.tolerated,
            "gates": [g.to_dict() for g in gates],
        }
        if include_samples:
            samples[name] = {
                "stable": [round(x, _MS_DIGITS) for x in wd.stable.latencies],
                "candidate": [round(x, _MS_DIGITS) for x in wd.candidate.latencies],
            }

    # the gates list at the top: the common gates, then any workflow-specific ones
    top: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for gate_list in [fallback_gates, *(gates_map.get(n, fallback_gates) for n in names)]:
        for g in gate_list:
            key = (g.expr, g.source, g.metric)
            if key not in seen:
                seen.add(key)
                top.append(g.to_dict())

    # a check gate no workflow could apply (``check.jsno``: a typo, or a check no test runs)
    ran = {check for n in names for check in data[n].checks}
    unused = [
        g for g in top
        if str(g["metric"]).startswith("check.") and g["metric"] != "check.*"
        and str(g["metric"])[6:] not in ran
    ]

    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "verdict": overall_verdict(w["verdict"] for w in workflows.values()),
        "stable": stable,
        "candidate": candidate,
        "complete": complete,
        "started_at": started_at,
        "duration_s": round(float(duration_s), 3),
        "plugin_version": plugin_version,
        "gates": top,
        "decision": decision,
        "confidence": confidence,
        "workflows": workflows,
        "workers": {"crashed": []},
        "unused_gates": [
            {"expr": g["expr"], "source": g["source"], "check": str(g["metric"])[6:],
             "checks_run": sorted(ran)}
            for g in unused
        ],
    }
    if include_samples:
        summary["samples"] = samples
    for k, v in (extra or {}).items():
        if k not in summary or k == "workers":
            summary[k] = v
    return summary
