"""Rollback triggers (gates): expressions, config keys, defaults and verdicts (pure).

A gate compares the candidate with the stable model on one metric, or caps the candidate:

========================  =========================================================
``p95_latency:+25%``      relative increase allowed (lower-is-better metrics)
``success_rate:-5%``      relative drop allowed (higher-is-better metrics)
``check.json:-2pp``       drop in percentage points allowed (pass / success rates)
``error_rate:+1pp``       increase in percentage points allowed (error-like rates)
``error_rate:x2``         ratio allowed (lower-is-better metrics)
``fallback_rate:<5%``     absolute cap on the candidate (``<500`` ms for latencies)
``success_rate:>95%``     absolute minimum for the candidate (higher-is-better)
``min_samples:20``        fewer requests, or answered requests, on either side -> INCONCLUSIVE
``p95_latency:off``       remove the gates on a metric (e.g. a default)
========================  =========================================================

Every gate is judged on a point estimate *and* a confidence interval: BLOCKED only when the whole
interval is beyond the threshold, INCONCLUSIVE when the point estimate is beyond it but the
interval still reaches back, READY otherwise (``decision = "strict"``: READY also needs every
interval inside the threshold).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._exceptions import ConfigError
from .metrics import INFORMATIONAL_CHECKS, CheckComparison, RoleData, WorkflowData
from .stats import (
    DEFAULT_RESAMPLES,
    bootstrap_quantile_ratio,
    bootstrap_ratio_of_sums,
    mcnemar_exact_p,
    mover_ratio_interval,
    newcombe_interval,
    paired_difference_interval,
    quantile_interval,
    wilson_interval,
)

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_DECISION",
    "DEFAULT_GATES_CONFIG",
    "DEFAULT_RATE_FLOOR",
    "METRICS",
    "VERDICTS",
    "Evaluation",
    "Gate",
    "GateError",
    "GateResult",
    "GatesConfig",
    "default_gates",
    "evaluate",
    "gates_from_config",
    "merge_gates",
    "overall_verdict",
    "parse_gate",
    "parse_gates_config",
]

Verdict = Literal["READY", "BLOCKED", "INCONCLUSIVE", "KILLED"]
VERDICTS: tuple[str, ...] = ("READY", "BLOCKED", "INCONCLUSIVE", "KILLED")
Status = Literal["ok", "tolerated", "breach", "unconfirmed", "insufficient", "killed", "skipped"]
Direction = Literal["lower", "higher"]

DEFAULT_CONFIDENCE = 0.95
DEFAULT_DECISION = "standard"
# An error-like rate breaches a ratio gate only when it also rose by more than this many
# points: 0 errors -> 1 error in 20 is a ratio of infinity but not, by itself, a regression.
DEFAULT_RATE_FLOOR = 0.03

DEFAULT_GATES_CONFIG: dict[str, Any] = {
    "max_p95_latency_increase": 0.25,
    "max_error_rate_ratio": 2.0,
    "error_rate_floor": DEFAULT_RATE_FLOOR,
    "max_timeout_rate_ratio": 2.0,
    "max_check_failure_increase": 0.02,
    "max_fallback_rate": 0.05,
    "max_cost_per_success_increase": 0.20,
    "min_samples": 20,
}


class GateError(ConfigError, ValueError):
    """A bad gate expression or gate config value (one line; usable as an argparse type)."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    direction: Direction
    kind: Literal["latency", "rate", "check", "cps", "cost", "tokens", "samples"]
    label: str

    @property
    def is_rate(self) -> bool:
        return self.kind in ("rate", "check")


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("p95_latency", "lower", "latency", "p95 latency"),
        MetricSpec("p50_latency", "lower", "latency", "p50 latency"),
        MetricSpec("error_rate", "lower", "rate", "error rate"),
        MetricSpec("timeout_rate", "lower", "rate", "timeout rate"),
        MetricSpec("fallback_rate", "lower", "rate", "fallback rate"),
        MetricSpec("success_rate", "higher", "rate", "success rate"),
        MetricSpec("cost_per_success", "lower", "cps", "cost per success"),
        MetricSpec("cost", "lower", "cost", "cost"),
        MetricSpec("output_tokens", "lower", "tokens", "output tokens per request"),
        MetricSpec("validation", "higher", "check", "validation pass rate"),
        MetricSpec("min_samples", "higher", "samples", "samples"),
    )
}


def metric_spec(metric: str) -> MetricSpec | None:
    if metric.startswith("check."):
        return MetricSpec(metric, "higher", "check", f"check {metric[6:]} pass rate")
    return METRICS.get(metric)


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Gate:
    """One rollback trigger.

    ``op``: ``"+"`` / ``"-"`` relative change, ``"+pp"`` / ``"-pp"`` change in points,
    ``"x"`` ratio, ``"<"`` cap / ``">"`` minimum on the candidate, ``"min"`` minimum samples,
    ``"off"`` removes the gates on the metric when merged. ``threshold`` is a fraction for
    relative changes, points and rates (0.25 = 25%), a number for ratios and caps (ms, USD,
    tokens). ``floor`` (ratio and relative gates on error-like rates) is the rise in points
    that must also be exceeded; ``None`` means :data:`DEFAULT_RATE_FLOOR`.
    """

    metric: str
    op: str
    threshold: float
    expr: str
    source: str = "cli"
    floor: float | None = None

    @property
    def family(self) -> str:
        if self.op in ("<", ">"):
            return "cap"
        if self.op in ("min", "off"):
            return self.op
        return "compare"

    @property
    def limit_text(self) -> str:
        return self.expr.split(":")[-1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "expr": self.expr,
            "source": self.source,
        }
        if self.floor is not None:
            out["floor"] = self.floor
        return out


_NUM = r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_RE_REL = re.compile(rf"^([+-])\s*{_NUM}\s*(%|pp)$")
_RE_RATIO = re.compile(rf"^[xX×]\s*{_NUM}$")
_RE_CAP = re.compile(rf"^([<>])\s*=?\s*\$?\s*{_NUM}\s*(%|ms|s)?$")
_RE_INT = re.compile(r"^\d+$")
_RE_NAME = re.compile(r"^[A-Za-z0-9_.\-/*]+$")

_FORMS = "use +N%, -N%, +Npp, -Npp, xN, <N, >N or off"


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def parse_gate(expr: str, source: str = "cli") -> Gate:
    """Parse ``METRIC:LIMIT`` into a :class:`Gate`; raise :class:`GateError` (one line)."""
    text = str(expr).strip()

    def fail(why: str) -> GateError:
        return GateError(f"invalid gate {text!r}: {why}")

    if not text:
        raise GateError(
            "invalid gate '': empty expression; expected METRIC:LIMIT, e.g. p95_latency:+25%"
        )
    metric, sep, spec = text.rpartition(":")
    metric, spec = metric.strip(), spec.strip()
    if not sep or not metric:
        raise fail("expected METRIC:LIMIT, e.g. p95_latency:+25% or check.json:-2pp")
    if not spec:
        raise fail(f"the limit after ':' is missing; {_FORMS}")
    if metric.startswith("check."):
        name = metric[6:]
        if not name:
            raise fail("check name missing; use check.NAME or check.* (any check)")
        if not _RE_NAME.match(name) or ("*" in name and name != "*"):
            raise fail(f"bad check name {name!r}")
    ms = metric_spec(metric)
    if ms is None:
        known = ", ".join([*METRICS, "check.NAME", "check.*"])
        raise fail(f"unknown metric {metric!r} (known: {known})")

    if spec.lower() == "off":
        if ms.kind == "samples":
            return Gate(metric, "min", 0.0, f"{metric}:0", source)
        return Gate(metric, "off", 0.0, f"{metric}:off", source)

    if ms.kind == "samples":
        if not _RE_INT.match(spec) or int(spec) < 1:
            raise fail("min_samples needs a whole number >= 1, e.g. min_samples:20")
        return Gate(metric, "min", float(int(spec)), f"{metric}:{int(spec)}", source)

    better = "lower" if ms.direction == "lower" else "higher"
    if m := _RE_REL.match(spec):
        sign, value, unit = m.group(1), float(m.group(2)), m.group(3)
        if unit == "pp":
            if not ms.is_rate:
                raise fail(
                    f"'pp' (percentage points) applies to rates only; use {sign}N% for {metric}"
                )
            if value > 100:
                raise fail("a change in points must be at most 100pp")
        elif sign == "-" and value > 100:
            raise fail("a drop must be at most 100%")
        if ms.direction == "lower" and sign == "-":
            raise fail(f"{metric} is lower-is-better: allow an increase with +N%, +Npp or xN")
        if ms.direction == "higher" and sign == "+":
            raise fail(f"{metric} is higher-is-better: allow a drop with -N% or -Npp")
        op = sign + ("pp" if unit == "pp" else "")
        return Gate(metric, op, value / 100.0, f"{metric}:{sign}{_fmt_num(value)}{unit}", source)
    if m := _RE_RATIO.match(spec):
        value = float(m.group(1))
        if ms.direction == "higher":
            raise fail(
                f"{metric} is higher-is-better: a ratio gate applies to lower-is-better metrics; use -Npp or -N%"
            )
        if value < 1:
            raise fail("a ratio gate must allow at least x1 (x2 = up to double)")
        return Gate(metric, "x", value, f"{metric}:x{_fmt_num(value)}", source)
    if m := _RE_CAP.match(spec):
        op, value, unit = m.group(1), float(m.group(2)), m.group(3)
        if op == "<" and ms.direction == "higher":
            raise fail(f"{metric} is higher-is-better: set a minimum with >N%")
        if op == ">" and ms.direction == "lower":
            raise fail(f"{metric} is lower-is-better: set a cap with <N")
        if ms.is_rate:
            if unit in ("ms", "s"):
                raise fail(f"{metric} is a rate: write the limit as a percentage, e.g. {op}5%")
            if unit == "%":
                value /= 100.0
            if value > 1:
                raise fail(f"{metric} is a rate: write the limit as a percentage, e.g. {op}5%")
            return Gate(metric, op, value, f"{metric}:{op}{_fmt_num(value * 100)}%", source)
        if unit == "%":
            raise fail(f"a cap on {metric} is an absolute number, not a percentage")
        if ms.kind == "latency":
            if unit == "s":
                value *= 1000.0
            return Gate(metric, op, value, f"{metric}:{op}{_fmt_num(value)}ms", source)
        if unit in ("ms", "s"):
            raise fail(f"{metric} is not a latency; write a plain number")
        return Gate(metric, op, value, f"{metric}:{op}{_fmt_num(value)}", source)
    raise fail(f"cannot read the limit {spec!r}; {_FORMS} ({metric} is {better}-is-better)")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class _KeySpec:
    metric: str
    op: str
    low: float
    high: float
    hint: str


_KEYS: dict[str, _KeySpec] = {
    "max_p95_latency_increase": _KeySpec("p95_latency", "+", 0.0, 10.0, "a fraction: 0.25 = +25%"),
    "max_p50_latency_increase": _KeySpec("p50_latency", "+", 0.0, 10.0, "a fraction: 0.25 = +25%"),
    "max_error_rate_ratio": _KeySpec(
        "error_rate", "x", 1.0, 1e9, "a ratio >= 1: 2.0 = up to double"
    ),
    "max_timeout_rate_ratio": _KeySpec(
        "timeout_rate", "x", 1.0, 1e9, "a ratio >= 1: 2.0 = up to double"
    ),
    "max_check_failure_increase": _KeySpec(
        "check.*", "-pp", 0.0, 1.0, "a fraction of points: 0.02 = -2pp"
    ),
    "max_validation_drop": _KeySpec(
        "validation", "-pp", 0.0, 1.0, "a fraction of points: 0.02 = -2pp"
    ),
    "max_fallback_rate": _KeySpec("fallback_rate", "<", 0.0, 1.0, "a fraction: 0.05 = 5%"),
    "max_cost_per_success_increase": _KeySpec(
        "cost_per_success", "+", 0.0, 100.0, "a fraction: 0.20 = +20%"
    ),
}
CONFIG_KEYS: tuple[str, ...] = (
    *_KEYS,
    "error_rate_floor",
    "min_samples",
    "confidence",
    "decision",
    "expressions",
)


@dataclass(frozen=True)
class GatesConfig:
    """A validated gates table: its gates and the non-gate settings it sets (or None)."""

    gates: list[Gate] = field(default_factory=list)
    confidence: float | None = None
    decision: str | None = None


def _expr_for(metric: str, op: str, value: float) -> str:
    if op == "+":
        return f"{metric}:+{_fmt_num(round(value * 100, 10))}%"
    if op == "-pp":
        return f"{metric}:-{_fmt_num(round(value * 100, 10))}pp"
    if op == "x":
        return f"{metric}:x{_fmt_num(value)}"
    if op == "<":
        return f"{metric}:<{_fmt_num(round(value * 100, 10))}%"
    raise AssertionError(op)


def _number(key: str, value: Any, where: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GateError(f"{where}{key} must be a number ({hint}), got {value!r}")
    return float(value)


def parse_gates_config(data: Mapping[str, Any], source: str = "config") -> GatesConfig:
    """Validate a ``[tool.modelrollout.gates]`` (or per-workflow ``gates``) table.

    A gate key set to ``false`` removes that gate (e.g. a default). Unknown keys, wrong types
    and out-of-range values raise :class:`GateError` naming the key.
    """
    where = "gates." if source != "workflow" else "workflow gates."
    if not isinstance(data, Mapping):
        raise GateError(f"gates must be a table of keys, got {type(data).__name__}")
    unknown = sorted(k for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise GateError(f"unknown gate key {where}{unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})")
    gates: list[Gate] = []
    floor: float | None = None
    if "error_rate_floor" in data:
        floor = _number(
            "error_rate_floor", data["error_rate_floor"], where, "a fraction: 0.02 = 2 points"
        )
        if not 0.0 <= floor <= 1.0:
            raise GateError(f"{where}error_rate_floor must be between 0 and 1, got {floor:g}")
    for key, ks in _KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if value is False or value is None:
            gates.append(Gate(ks.metric, "off", 0.0, f"{ks.metric}:off", source))
            continue
        v = _number(key, value, where, ks.hint)
        if not ks.low <= v <= ks.high:
            raise GateError(
                f"{where}{key} must be between {ks.low:g} and {ks.high:g} ({ks.hint}), got {v:g}"
            )
        gate_floor = floor if ks.op == "x" else None
        gates.append(Gate(ks.metric, ks.op, v, _expr_for(ks.metric, ks.op, v), source, gate_floor))
    if floor is not None:
        # the floor alone still applies: re-emit the ratio gates it belongs to
        for key, metric in (
            ("max_error_rate_ratio", "error_rate"),
            ("max_timeout_rate_ratio", "timeout_rate"),
        ):
            if key not in data:
                ratio = float(DEFAULT_GATES_CONFIG[key])
                gates.append(Gate(metric, "x", ratio, _expr_for(metric, "x", ratio), source, floor))
    if "min_samples" in data:
        value = data["min_samples"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GateError(f"{where}min_samples must be a whole number >= 0, got {value!r}")
        gates.append(Gate("min_samples", "min", float(value), f"min_samples:{value}", source))
    confidence: float | None = None
    if "confidence" in data:
        confidence = _number("confidence", data["confidence"], where, "e.g. 0.95")
        if not 0.5 <= confidence < 1.0:
            raise GateError(
                f"{where}confidence must be at least 0.5 and below 1, got {confidence:g}"
            )
    decision: str | None = None
    if "decision" in data:
        decision = data["decision"]
        if decision not in ("standard", "strict"):
            raise GateError(f"{where}decision must be 'standard' or 'strict', got {decision!r}")
    if "expressions" in data:
        exprs = data["expressions"]
        if isinstance(exprs, str) or not isinstance(exprs, (list, tuple)):
            raise GateError(
                f'{where}expressions must be a list of strings, e.g. ["p95_latency:+25%"]'
            )
        for e in exprs:
            if not isinstance(e, str):
                raise GateError(f"{where}expressions must be a list of strings, got {e!r}")
            gates.append(parse_gate(e, source))
    return GatesConfig(gates=gates, confidence=confidence, decision=decision)


def gates_from_config(data: Mapping[str, Any], source: str = "config") -> list[Gate]:
    """The gates of a config table (see :func:`parse_gates_config`)."""
    return parse_gates_config(data, source).gates


def default_gates() -> list[Gate]:
    """The built-in gates (source ``"default"``)."""
    return gates_from_config(DEFAULT_GATES_CONFIG, "default")


def merge_gates(*layers: Iterable[Gate]) -> list[Gate]:
    """Merge gate lists; later layers override earlier ones for the same metric.

    Call as ``merge_gates(default_gates(), config, workflow, cli)``. Gates are keyed by metric
    and family (comparisons with the stable, caps, min_samples): ``error_rate:+1pp`` replaces
    ``error_rate:x2`` but not ``error_rate:<10%``; ``METRIC:off`` removes every gate on the
    metric. A ratio gate without its own floor keeps the floor of the gate it replaces.
    """
    merged: dict[tuple[str, str], Gate] = {}
    for layer in layers:
        for gate in layer:
            if gate.op == "off":
                for key in [k for k in merged if k[0] == gate.metric]:
                    del merged[key]
                continue
            key = (gate.metric, gate.family)
            old = merged.get(key)
            if old is not None and gate.floor is None and old.floor is not None:
                gate = Gate(gate.metric, gate.op, gate.threshold, gate.expr, gate.source, old.floor)
            merged.pop(key, None)
            merged[key] = gate
    return list(merged.values())


# --------------------------------------------------------------------------- evaluation


@dataclass
class GateResult:
    """The judgement of one gate on one workflow (one check for ``check.*``)."""

    gate: Gate
    label: str  # "p95 latency", "check json pass rate", ...
    status: Status
    message: str
    stable: float | None = None
    candidate: float | None = None
    change: float | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def reason(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gate": self.gate.expr,
            "status": self.status,
            "message": self.message,
            "stable": _finite(self.stable),
            "candidate": _finite(self.candidate),
            "change": _finite(self.change),
            "interval": None
            if self.interval is None
            else [_finite(self.interval[0]), _finite(self.interval[1])],
            "threshold": self.threshold,
        }
        out.update(self.extra)
        return out


@dataclass
class Evaluation:
    verdict: Verdict
    reasons: list[dict[str, Any]]  # the non-ok results, as report dicts
    results: list[GateResult]  # every gate judged (including ok and skipped)
    tolerated: dict[str, Any]


def _finite(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return v


# ---- formatting


def _pct(v: float | None, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v * 100:.{nd}f}%"


def _pp(v: float) -> str:
    return f"{v * 100:+.1f}pp"


def _rel(v: float) -> str:
    if math.isnan(v):  # an unbounded interval end (e.g. a bootstrap ratio over a zero cost)
        return "+inf%"
    if not math.isfinite(v):
        return "+inf%" if v > 0 else "-inf%"
    return f"{v * 100:+.0f}%"


def _ratio(v: float) -> str:
    if not math.isfinite(v):
        return "x inf"
    return f"x{v:.2f}"


def _value(ms: MetricSpec, v: float | None) -> str:
    if v is None:
        return "n/a"
    if not math.isfinite(v):
        return "inf"
    if ms.kind == "latency":
        return f"{v:.0f} ms"
    if ms.kind in ("cps", "cost"):
        return f"${v:.4g}"
    if ms.kind == "tokens":
        return f"{v:.1f}"
    return _pct(v)


# ---- judging


@dataclass(frozen=True)
class _Cond:
    """``value`` breaches when above ``limit`` (``above``) or below it; with its interval.

    ``null`` is the value meaning "no change" (0 for differences, 1 for ratios; ``None`` for
    caps, which are absolute); whether the candidate is significantly worse is decided by the
    caller's ``worse`` test at the Bonferroni-adjusted confidence.
    """

    value: float
    lo: float
    hi: float
    limit: float
    above: bool
    null: float | None = None

    def point(self) -> bool:
        return self.value > self.limit if self.above else self.value < self.limit

    def confirmed(self) -> bool:
        return self.lo > self.limit if self.above else self.hi < self.limit

    def inside(self) -> bool:
        return self.hi <= self.limit if self.above else self.lo >= self.limit


def _judge(
    conds: Sequence[_Cond], decision: str, worse: Callable[[], bool], adjusted: str = ""
) -> tuple[Status, str]:
    """A breach needs every condition (ratio *and* floor); returns (status, phrase).

    * whole interval beyond the limit -> ``breach``;
    * point estimate beyond the limit and the candidate significantly worse than the stable
      (``worse()``: an interval at the Bonferroni-adjusted confidence excludes "no change"),
      but the interval reaches back across the limit -> ``unconfirmed``;
    * point estimate beyond the limit but not significantly worse -> ``tolerated``: two
      identical models differ this much by chance (``unconfirmed`` under ``strict``);
    * ``strict``: an interval that is not inside the limit -> ``unconfirmed``.
    """
    if all(c.confirmed() for c in conds):
        return "breach", "exceeds {limit}"
    point = all(c.point() for c in conds)
    if point and worse():
        return "unconfirmed", "exceeds {limit}, not confirmed: the interval reaches back across it"
    if decision == "strict" and not any(c.inside() for c in conds):
        if point:
            return "unconfirmed", "exceeds {limit} (strict: not shown to be within it)"
        return "unconfirmed", "is within {limit} but not shown to stay within it (strict)"
    if point:
        return "tolerated", (
            "is beyond {limit} but not significantly worse than the stable"
            + (f" ({adjusted})" if adjusted else "")
            + ": within chance"
        )
    return "ok", "is within {limit}"


def _always() -> bool:
    return True


def _adjusted(worse_confidence: float, comparisons: int) -> str:
    if comparisons <= 1:
        return f"{_ci(worse_confidence)} includes no change"
    return f"{_ci(worse_confidence)} includes no change, adjusted for {comparisons} comparisons"


def _ci(conf: float) -> str:
    return f"{conf * 100:g}% CI"


def _seed(seed: int, workflow: str, label: str) -> int:
    return zlib.crc32(f"{seed}|{workflow}|{label}".encode()) ^ seed


@dataclass
class _Ctx:
    data: WorkflowData
    confidence: float
    decision: str
    n_resamples: int
    seed: int
    worse_confidence: float  # Bonferroni over the workflow's comparisons (see evaluate)
    comparisons: int = 1

    @property
    def adjusted(self) -> str:
        return _adjusted(self.worse_confidence, self.comparisons)


def _rate_counts(ms: MetricSpec, rd: RoleData) -> int:
    return {
        "error_rate": rd.errors,
        "timeout_rate": rd.timeouts,
        "fallback_rate": rd.fallbacks,
        "success_rate": rd.successes,
    }[ms.name]


def _result(
    gate: Gate,
    label: str,
    status: Status,
    phrase: str,
    body: str,
    limit: str | None = None,
    **kw: Any,
) -> GateResult:
    text = phrase.format(limit=limit or gate.limit_text)
    return GateResult(gate, label, status, f"{label} {body} {text}", threshold=gate.threshold, **kw)


def _judge_counts(
    ctx: _Ctx,
    gate: Gate,
    ms: MetricSpec,
    label: str,
    xs: int,
    ns: int,
    xc: int,
    nc: int,
    pairs: CheckComparison | None = None,
) -> GateResult:
    """Rates (error/success/check pass): Newcombe / paired / MOVER-R / Wilson intervals."""
    conf = ctx.confidence
    ps = xs / ns if ns else None
    pc = xc / nc if nc else None
    ci = _ci(conf)
    if gate.family == "cap":
        if pc is None:
            return GateResult(gate, label, "skipped", f"{label}: no candidate data")
        lo, hi = wilson_interval(xc, nc, conf)
        status, verb = _judge(
            [_Cond(pc, lo, hi, gate.threshold, gate.op == "<")], ctx.decision, lambda: True
        )
        body = f"{_pct(pc)} ({xc}/{nc}, {ci} {_pct(lo)}..{_pct(hi)})"
        return _result(
            gate, label, status, verb, body, stable=ps, candidate=pc, change=pc, interval=(lo, hi)
        )
    if ps is None or pc is None:
        return GateResult(gate, label, "skipped", f"{label}: no data on both sides")
    extra: dict[str, Any] = {}
    if gate.op in ("+pp", "-pp"):
        diff_iv: Callable[[float], tuple[float, float]]
        if pairs is not None and pairs.paired:
            ps, pc = pairs.stable_rate or 0.0, pairs.candidate_rate or 0.0
            pt = pairs

            def diff_iv(c: float) -> tuple[float, float]:
                return paired_difference_interval(
                    pt.both, pt.improvements, pt.regressions, pt.neither, c
                )

            p = mcnemar_exact_p(pairs.improvements, pairs.regressions)
            extra = {
                "regressions": pairs.regressions,
                "improvements": pairs.improvements,
                "pairs": pairs.pairs,
                "p_value": round(p, 4),
            }
            detail = (
                f"; {_n(pairs.regressions, 'regression')}, "
                f"{_n(pairs.improvements, 'improvement')} in {pairs.pairs} pairs, "
                f"McNemar p={_pval(p)}"
            )
        else:

            def diff_iv(c: float) -> tuple[float, float]:
                return newcombe_interval(xc, nc, xs, ns, c)

            detail = f"; {xs}/{ns} -> {xc}/{nc}"
        lo, hi = diff_iv(conf)
        diff = pc - ps
        up = gate.op == "+pp"
        limit = gate.threshold if up else -gate.threshold

        def worse_pp() -> bool:
            wlo, whi = diff_iv(ctx.worse_confidence)
            return wlo > 0 if up else whi < 0

        # Only paired check comparisons may tolerate a point breach that is within chance
        # (identical models disagree on a few cases by chance); any other breach that the
        # data cannot confirm is INCONCLUSIVE, as the contract says.
        paired = pairs is not None and pairs.paired
        status, verb = _judge(
            [_Cond(diff, lo, hi, limit, up, 0.0)],
            ctx.decision,
            worse_pp if paired else _always,
            ctx.adjusted,
        )
        body = f"{_pct(ps)} -> {_pct(pc)} ({_pp(diff)}, {ci} {_pp(lo)}..{_pp(hi)}{detail})"
        return _result(
            gate,
            label,
            status,
            verb,
            body,
            stable=ps,
            candidate=pc,
            change=diff,
            interval=(lo, hi),
            extra=extra,
        )
    # relative change or ratio: MOVER-R interval for the ratio of the proportions
    rlo, rhi = mover_ratio_interval(xc, nc, xs, ns, conf)
    ratio = pc / ps if ps > 0 else (math.inf if pc > 0 else 1.0)
    if gate.op == "x":
        limit = gate.threshold
        shown = f"{_ratio(ratio)}, {ci} {_ratio(rlo)}..{_ratio(rhi)}"
        change, interval = ratio, (rlo, rhi)
    else:
        limit = 1.0 + gate.threshold if gate.op == "+" else 1.0 - gate.threshold
        shown = f"{_rel(ratio - 1)}, {ci} {_rel(rlo - 1)}..{_rel(rhi - 1)}"
        change, interval = ratio - 1.0, (rlo - 1.0, rhi - 1.0)
    conds = [_Cond(ratio, rlo, rhi, limit, gate.op != "-", 1.0)]
    body = f"{_pct(ps)} -> {_pct(pc)} ({shown})"
    limit_text = gate.limit_text
    if ms.direction == "lower":
        floor = DEFAULT_RATE_FLOOR if gate.floor is None else gate.floor
        dlo, dhi = newcombe_interval(xc, nc, xs, ns, conf)
        conds.append(_Cond(pc - ps, dlo, dhi, floor, True, 0.0))
        body = f"{_pct(ps)} -> {_pct(pc)} ({shown}; {_pp(pc - ps)}, {ci} {_pp(dlo)}..{_pp(dhi)})"
        limit_text = f"{gate.limit_text} and {_pp(floor)}"
        extra["floor"] = floor

    def worse_rel() -> bool:
        wc = ctx.worse_confidence
        if ms.direction == "lower":
            return newcombe_interval(xc, nc, xs, ns, wc)[0] > 0
        return mover_ratio_interval(xc, nc, xs, ns, wc)[1] < 1

    del worse_rel  # rate breaches are never tolerated: confirmed (BLOCKED) or INCONCLUSIVE
    status, verb = _judge(conds, ctx.decision, _always, ctx.adjusted)
    return _result(
        gate,
        label,
        status,
        verb,
        body,
        limit_text,
        stable=ps,
        candidate=pc,
        change=change,
        interval=interval,
        extra=extra,
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pval(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _needs_interval(ctx: _Ctx, value: float, limit: float, above: bool) -> bool:
    """Standard decisions need an interval only when the point estimate is beyond the limit."""
    if ctx.decision == "strict":
        return True
    return value > limit if above else value < limit


def _judge_ratio(
    ctx: _Ctx,
    gate: Gate,
    ms: MetricSpec,
    label: str,
    vs: float,
    vc: float,
    interval: Callable[[float], tuple[float, float]],
) -> GateResult:
    """Comparisons by a ratio (latency quantiles, cost per success, means).

    ``interval`` (a bootstrap) is only computed when the point estimate alone cannot decide.
    """
    ci = _ci(ctx.confidence)
    ratio = vc / vs if vs > 0 else (math.inf if vc > 0 else 1.0)
    limit = gate.threshold if gate.op == "x" else 1.0 + float(f"{gate.op}1") * gate.threshold
    above = gate.op != "-"
    body = f"{_value(ms, vs)} -> {_value(ms, vc)} "
    change = ratio if gate.op == "x" else ratio - 1.0
    shown = _ratio(ratio) if gate.op == "x" else _rel(ratio - 1.0)
    if not _needs_interval(ctx, ratio, limit, above):
        return _result(
            gate,
            label,
            "ok",
            "is within {limit}",
            body + f"({shown})",
            stable=vs,
            candidate=vc,
            change=change,
        )
    lo, hi = interval(ctx.confidence)
    if gate.op == "x":
        shown_iv = (lo, hi)
        shown += f", {ci} {_ratio(lo)}..{_ratio(hi)}"
    else:
        shown_iv = (lo - 1.0, hi - 1.0)
        shown += f", {ci} {_rel(lo - 1)}..{_rel(hi - 1)}"

    def worse() -> bool:
        wlo, whi = interval(ctx.worse_confidence)
        return wlo > 1.0 if above else whi < 1.0

    del worse  # latency / cost breaches are never tolerated: confirmed or INCONCLUSIVE
    status, verb = _judge(
        [_Cond(ratio, lo, hi, limit, above, 1.0)], ctx.decision, _always, ctx.adjusted
    )
    return _result(
        gate,
        label,
        status,
        verb,
        body + f"({shown})",
        stable=vs,
        candidate=vc,
        change=change,
        interval=shown_iv,
    )


def _judge_cap(
    ctx: _Ctx,
    gate: Gate,
    ms: MetricSpec,
    label: str,
    vs: float | None,
    vc: float,
    interval: Callable[[float], tuple[float, float]],
) -> GateResult:
    above = gate.op == "<"
    if not _needs_interval(ctx, vc, gate.threshold, above):
        return _result(
            gate,
            label,
            "ok",
            "is within {limit}",
            _value(ms, vc),
            stable=vs,
            candidate=vc,
            change=vc,
        )
    lo, hi = interval(ctx.confidence)
    status, verb = _judge([_Cond(vc, lo, hi, gate.threshold, above)], ctx.decision, lambda: True)
    body = f"{_value(ms, vc)} ({_ci(ctx.confidence)} {_value(ms, lo)}..{_value(ms, hi)})"
    return _result(
        gate, label, status, verb, body, stable=vs, candidate=vc, change=vc, interval=(lo, hi)
    )


def _judge_gate(ctx: _Ctx, gate: Gate, ms: MetricSpec, check: str | None = None) -> GateResult:
    d = ctx.data
    st, ca = d.stable, d.candidate
    label = f"check {check} pass rate" if check is not None else ms.label
    seed = _seed(ctx.seed, d.workflow, f"{gate.metric}|{check}|{gate.op}")
    boots = ctx.n_resamples
    if ms.kind == "rate":
        return _judge_counts(
            ctx,
            gate,
            ms,
            label,
            _rate_counts(ms, st),
            st.requests,
            _rate_counts(ms, ca),
            ca.requests,
        )
    if ms.kind == "check":
        cmp = d.validation if check is None else d.checks[check]
        return _judge_counts(
            ctx,
            gate,
            ms,
            label,
            cmp.stable_passed,
            cmp.stable_total,
            cmp.candidate_passed,
            cmp.candidate_total,
            pairs=cmp,
        )
    if ms.kind == "latency":
        q = 0.95 if ms.name == "p95_latency" else 0.50
        vs, vc = st.latency_quantile(q), ca.latency_quantile(q)
        if vc is None:
            return GateResult(gate, label, "skipped", f"{label}: no candidate latencies")
        if gate.family == "cap":
            return _judge_cap(
                ctx, gate, ms, label, vs, vc, lambda c: quantile_interval(ca.latencies, q, c)
            )
        if vs is None:
            return GateResult(gate, label, "skipped", f"{label}: no stable latencies")
        return _judge_ratio(
            ctx,
            gate,
            ms,
            label,
            vs,
            vc,
            lambda c: bootstrap_quantile_ratio(
                st.latencies, ca.latencies, q, confidence=c, n_resamples=boots, seed=seed
            ),
        )
    if ms.kind == "cps":
        cs, cc = st.cost_per_success, ca.cost_per_success
        ca_vec = (ca.costs, [1.0 if ok else 0.0 for ok in ca.task_success])
        st_vec = (st.costs, [1.0 if ok else 0.0 for ok in st.task_success])
        if cc is None:
            return GateResult(gate, label, "skipped", f"{label}: candidate unpriced or no success")
        if gate.family == "cap":
            return _judge_cap(
                ctx,
                gate,
                ms,
                label,
                cs,
                cc,
                lambda c: bootstrap_ratio_of_sums(
                    ca_vec, confidence=c, n_resamples=boots, seed=seed
                ),
            )
        if cs is None:
            return GateResult(gate, label, "skipped", f"{label}: stable unpriced or no success")
        return _judge_ratio(
            ctx,
            gate,
            ms,
            label,
            cs,
            cc,
            lambda c: bootstrap_ratio_of_sums(
                st_vec, ca_vec, confidence=c, n_resamples=boots, seed=seed
            ),
        )
    if ms.kind == "cost":
        total_s, total_c = st.cost_usd, ca.cost_usd
        if total_c is None:
            return GateResult(gate, label, "skipped", f"{label}: candidate unpriced")
        if gate.family == "cap":  # the total cost of the run is observed, not estimated
            return _judge_cap(
                ctx, gate, ms, "total cost", total_s, total_c, lambda c: (total_c, total_c)
            )
        if total_s is None:
            return GateResult(gate, label, "skipped", f"{label}: stable unpriced")
        ones_s, ones_c = [1.0] * len(st.costs), [1.0] * len(ca.costs)
        return _judge_ratio(
            ctx,
            gate,
            ms,
            "cost per request",
            total_s / st.requests,
            total_c / ca.requests,
            lambda c: bootstrap_ratio_of_sums(
                (st.costs, ones_s),
                (ca.costs, ones_c),
                confidence=c,
                n_resamples=boots,
                seed=seed,
            ),
        )
    if ms.kind == "tokens":
        so, co = st.output_token_values, ca.output_token_values
        if not co:
            return GateResult(gate, label, "skipped", f"{label}: no candidate token usage")
        ms_ = sum(so) / len(so) if so else None
        mc = sum(co) / len(co)
        if gate.family == "cap":
            return _judge_cap(
                ctx,
                gate,
                ms,
                label,
                ms_,
                mc,
                lambda c: bootstrap_ratio_of_sums(
                    (co, [1.0] * len(co)), confidence=c, n_resamples=boots, seed=seed
                ),
            )
        if ms_ is None:
            return GateResult(gate, label, "skipped", f"{label}: no stable token usage")
        return _judge_ratio(
            ctx,
            gate,
            ms,
            label,
            ms_,
            mc,
            lambda c: bootstrap_ratio_of_sums(
                (so, [1.0] * len(so)),
                (co, [1.0] * len(co)),
                confidence=c,
                n_resamples=boots,
                seed=seed,
            ),
        )
    raise AssertionError(ms.kind)  # pragma: no cover


def _expand(gates: Sequence[Gate], data: WorkflowData) -> list[tuple[Gate, MetricSpec, str | None]]:
    """Gates to judge on this workflow; ``check.*`` becomes one judgement per check."""
    out: list[tuple[Gate, MetricSpec, str | None]] = []
    explicit = {
        (g.metric[6:], g.family)
        for g in gates
        if g.metric.startswith("check.") and g.metric != "check.*"
    }
    for gate in gates:
        if gate.op in ("min", "off"):
            continue
        ms = metric_spec(gate.metric)
        if ms is None:  # pragma: no cover - parse_gate rejects these
            continue
        if gate.metric == "check.*":
            for name in sorted(data.checks):
                if name in INFORMATIONAL_CHECKS:
                    continue
                if (name, gate.family) not in explicit:
                    out.append((gate, ms, name))
        elif gate.metric.startswith("check."):
            name = gate.metric[6:]
            if name in data.checks:  # a check this workflow does not run is not judged here
                out.append((gate, ms, name))
        else:
            out.append((gate, ms, None))
    return out


def _one_sided(n_stable: int, n_candidate: int) -> str:
    """Why one side has no calls at all, when that is the reason (there is nothing to compare)."""
    if n_stable == 0 and n_candidate > 0:
        return ("; no stable calls to compare with (tests that use only the candidate "
                "fixture: use rollout, or stable as well)")
    if n_candidate == 0 and n_stable > 0:
        return ("; no candidate calls to compare with (tests that use only the stable "
                "fixture: use rollout, or candidate as well)")
    return ""


def evaluate(
    data: WorkflowData,
    gates: Sequence[Gate],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    decision: str = DEFAULT_DECISION,
    killed: bool = False,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Evaluation:
    """Judge one workflow: READY, BLOCKED, INCONCLUSIVE or KILLED, with its reasons.

    ``gates`` is the merged list for this workflow (:func:`merge_gates`). ``killed``: the
    workflow's candidate is switched off (takes precedence over everything else).
    """
    if decision not in ("standard", "strict"):
        raise GateError(f"decision must be 'standard' or 'strict', got {decision!r}")
    expanded = _expand(gates, data)
    comparisons = max(1, sum(1 for g, _, _ in expanded if g.family == "compare"))
    worse_confidence = 1.0 - (1.0 - confidence) / comparisons
    ctx = _Ctx(data, confidence, decision, n_resamples, seed, worse_confidence, comparisons)
    results: list[GateResult] = []
    few_answered: list[GateResult] = []  # said after the gates' results (a breach first)
    insufficient = False
    for gate in gates:
        if gate.op == "min" and gate.threshold > 0:
            n_s, n_c = data.stable.requests, data.candidate.requests
            if min(n_s, n_c) < gate.threshold:
                insufficient = True
                results.append(
                    GateResult(
                        gate,
                        "samples",
                        "insufficient",
                        f"too few samples: {n_s} stable and {n_c} candidate requests "
                        f"(min_samples {gate.threshold:g})" + _one_sided(n_s, n_c),
                        stable=float(n_s),
                        candidate=float(n_c),
                        threshold=gate.threshold,
                    )
                )
                continue
            # the checks and the cost per success are judged on the answered requests: a run
            # whose calls all failed on both sides (no network, a revoked key) compared nothing
            # and was READY
            a_s, a_c = _answered(data.stable), _answered(data.candidate)
            if min(a_s, a_c) < gate.threshold:
                few_answered.append(
                    GateResult(
                        gate,
                        "answered samples",
                        "insufficient",
                        f"too few answered requests: {a_s} of {n_s} stable and {a_c} of {n_c} "
                        f"candidate requests were answered (min_samples {gate.threshold:g}): "
                        "too few answers to judge their checks and cost per success",
                        stable=float(a_s),
                        candidate=float(a_c),
                        threshold=gate.threshold,
                    )
                )
    for gate, ms, check in expanded:
        result = _judge_gate(ctx, gate, ms, check)
        if few_answered and ms.kind == "latency" and result.status == "breach":
            # the latencies of a run with too few answers are mostly those of its failures (a
            # refused connection, a revoked key), the machine's and the network's rather than
            # the model's: a latency breach there is not confirmed
            result.status = "unconfirmed"
            result.message += " (too few answered requests to judge the model's latency)"
        results.append(result)
    results.extend(few_answered)
    if insufficient:
        for r in results:
            if r.status == "breach":
                r.status = "unconfirmed"
                r.message += " (too few samples to confirm)"
    verdict: Verdict
    if killed:
        results.insert(
            0,
            GateResult(
                Gate("candidate", "off", 0.0, "kill switch", "config"),
                "candidate",
                "killed",
                "the candidate is killed (kill switch): it is never called",
            ),
        )
        verdict = "KILLED"
    elif any(r.status == "breach" for r in results):
        verdict = "BLOCKED"
    elif any(r.status in ("unconfirmed", "insufficient") for r in results):
        verdict = "INCONCLUSIVE"
    else:
        verdict = "READY"
    reasons = [r.reason() for r in results if r.status not in ("ok", "tolerated", "skipped")]
    return Evaluation(
        verdict, reasons, results, _tolerated(verdict, data, results, confidence, ctx.adjusted)
    )


def _answered(rd: RoleData) -> int:
    """A role's requests that got an answer (its model's or its fallback's)."""
    return rd.successes + rd.fallbacks


def _tolerated(
    verdict: str,
    data: WorkflowData,
    results: list[GateResult],
    confidence: float,
    adjusted: str,
) -> dict[str, Any]:
    """How many paired regressions a READY verdict lets through, and why.

    ``regressions`` counts pairs where the stable passed a check and the candidate failed it;
    ``why`` says, per check, how the net change compares with the gate and its interval, and
    names any gate whose point estimate is beyond its limit but within chance.
    """
    total = sum(c.regressions for c in data.checks.values())
    if verdict != "READY":
        return {"regressions": 0, "why": f"none tolerated: the verdict is {verdict}"}
    by_check: dict[str, GateResult] = {}
    for r in results:
        if r.label.startswith("check ") and r.gate.family == "compare":
            by_check[r.label[len("check ") : -len(" pass rate")]] = r
    parts: list[str] = []
    for name in sorted(data.checks):
        c = data.checks[name]
        if not c.regressions:
            continue
        text = (
            f"{name}: {c.regressions} regression{'s' if c.regressions != 1 else ''} in "
            f"{c.pairs} pairs ({c.regressions / c.pairs:.1%}) with {c.improvements} "
            f"improvement{'s' if c.improvements != 1 else ''}"
        )
        res = by_check.get(name)
        p = mcnemar_exact_p(c.improvements, c.regressions)
        if res is None:
            text += "; no gate applies to this check"
        elif res.gate.op == "-pp" and res.change is not None:
            lo, hi = paired_difference_interval(
                c.both, c.improvements, c.regressions, c.neither, confidence
            )
            net = f"net change {_pp(res.change)} ({_ci(confidence)} {_pp(lo)}..{_pp(hi)})"
            if res.status == "tolerated":
                text += (
                    f"; {net} is beyond the {res.gate.limit_text} gate but not significantly"
                    f" worse than the stable ({adjusted}; McNemar p={_pval(p)}):"
                    " consistent with chance"
                )
            else:
                text += f"; {net} is within the {res.gate.limit_text} gate (McNemar p={_pval(p)})"
        else:
            text += f"; within the {res.gate.limit_text} gate (McNemar p={_pval(p)})"
        parts.append(text)
    for r in results:
        if r.status == "tolerated" and not r.label.startswith("check "):
            parts.append(r.message)
    why = "; ".join(parts) if parts else "no paired regressions"
    return {"regressions": total, "why": why}


def overall_verdict(verdicts: Iterable[str]) -> Verdict:
    """KILLED > BLOCKED > INCONCLUSIVE > READY; no workflow at all is INCONCLUSIVE."""
    vs = list(verdicts)
    if not vs:
        return "INCONCLUSIVE"
    if "KILLED" in vs:
        return "KILLED"
    if "BLOCKED" in vs:
        return "BLOCKED"
    if "INCONCLUSIVE" in vs:
        return "INCONCLUSIVE"
    return "READY"
