"""Reports: render a finished summary (see ``docs/DESIGN.md``, "The summary").

Every renderer here takes the summary dict built by ``summary.build_summary`` and only formats
it: nothing in this package calls a model or recomputes a verdict. The helpers below format the
values the same way in every format (terminal, Markdown, HTML), so the numbers a person reads in
CI and in the HTML report are identical.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from pytest_modelrollout._atomic import atomic_stream_text, atomic_write_text
from pytest_modelrollout._exceptions import ModelRolloutError

__all__ = [
    "CHECK_HEADERS",
    "METRICS",
    "METRIC_HEADERS",
    "VERDICTS",
    "ReportError",
    "append_step_summary",
    "check_rows",
    "fmt_change",
    "fmt_value",
    "load_report",
    "metric_rows",
    "render_html",
    "render_markdown",
    "render_terminal",
    "tolerance_sentence",
    "write_html",
    "write_json_report",
    "write_markdown",
]

VERDICTS = ("READY", "BLOCKED", "INCONCLUSIVE", "KILLED")

NONE = "—"

# (key in the per-model metrics, label, kind). Kinds: count, rate, ms, tokens, usd.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("requests", "requests", "count"),
    ("success_rate", "success rate", "rate"),
    ("error_rate", "error rate", "rate"),
    ("timeout_rate", "timeout rate", "rate"),
    ("fallback_rate", "fallback rate", "rate"),
    ("latency_p50_ms", "latency p50", "ms"),
    ("latency_p95_ms", "latency p95", "ms"),
    ("input_tokens", "input tokens", "tokens"),
    ("output_tokens", "output tokens", "tokens"),
    ("cost_usd", "cost", "usd"),
    ("cost_per_success_usd", "cost per success", "usd"),
    ("validation_pass_rate", "validation pass rate", "rate"),
)

METRIC_HEADERS = ("metric", "stable", "candidate", "change")
CHECK_HEADERS = ("check", "stable", "candidate", "change", "regressions", "improvements")


class ReportError(ModelRolloutError):
    """A report cannot be read or written. The message is one line and names the file."""


# --------------------------------------------------------------------------- formatting


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _usd(v: float) -> str:
    if v == 0:
        return "$0"
    a = abs(v)
    if a >= 100:
        return f"${v:,.0f}"
    if a >= 1:
        return f"${v:,.2f}"
    # three significant digits, never scientific notation, at most 8 decimals
    decimals = min(8, max(2, 2 - math.floor(math.log10(a))))
    text = f"{v:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"${text}"


def fmt_value(value: Any, kind: str) -> str:
    """One metric value for people: rates as %, latency in ms, cost in $, None as ``—``."""
    v = _number(value)
    if v is None:
        return NONE
    if kind == "rate":
        pct = v * 100
        if pct in (0.0, 100.0):
            return f"{pct:.0f}%"
        return f"{pct:.1f}%"
    if kind == "ms":
        if abs(v) >= 100:
            return f"{v:,.0f} ms"
        return f"{v:.1f} ms"
    if kind == "usd":
        return _usd(v)
    if kind in ("count", "tokens"):
        return f"{round(v):,}"
    return f"{v:g}"


def fmt_change(stable: Any, candidate: Any, kind: str) -> str:
    """Candidate versus stable: ``+1.5pp`` for rates, ``+12%`` or ``x2.0`` otherwise."""
    s, c = _number(stable), _number(candidate)
    if s is None or c is None:
        return NONE
    if kind == "rate":
        pp = (c - s) * 100
        if abs(pp) < 0.05:
            return "±0pp"
        return f"{pp:+.1f}pp"
    if s == c:
        return "±0%"
    if s == 0:
        return NONE
    ratio = c / s
    if ratio >= 2:
        return f"x{ratio:.1f}"
    pct = (ratio - 1) * 100
    if abs(pct) < 0.05:
        return "±0%"
    if abs(pct) >= 10:
        return f"{pct:+.0f}%"
    return f"{pct:+.1f}%"


def _metrics(workflow: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    m = workflow.get(role)
    return m if isinstance(m, Mapping) else {}


def metric_rows(workflow: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows ``(label, stable, candidate, change)`` for the metrics of one workflow."""
    s, c = _metrics(workflow, "stable"), _metrics(workflow, "candidate")
    rows: list[tuple[str, str, str, str]] = []
    for key, label, kind in METRICS:
        rows.append(
            (
                label,
                fmt_value(s.get(key), kind),
                fmt_value(c.get(key), kind),
                fmt_change(s.get(key), c.get(key), kind),
            )
        )
    return rows


def check_rows(workflow: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows ``(check, stable, candidate, change, regressions, improvements)``."""
    checks = workflow.get("checks")
    if not isinstance(checks, Mapping):
        return []
    rows: list[tuple[str, str, str, str, str, str]] = []
    for name in sorted(checks, key=str):
        info = checks[name]
        if not isinstance(info, Mapping):
            continue
        sp, cp = info.get("stable_pass_rate"), info.get("candidate_pass_rate")
        rows.append(
            (
                str(name),
                fmt_value(sp, "rate"),
                fmt_value(cp, "rate"),
                fmt_change(sp, cp, "rate"),
                fmt_value(info.get("regressions"), "count"),
                fmt_value(info.get("improvements"), "count"),
            )
        )
    return rows


def tolerance_sentence(workflow: Mapping[str, Any]) -> str | None:
    """For a READY workflow with tolerated regressions: how many and why that is fine."""
    tol = workflow.get("tolerated")
    if not isinstance(tol, Mapping):
        return None
    n = _number(tol.get("regressions"))
    if not n:
        return None
    count = round(n)
    why = str(tol.get("why") or "").strip()
    text = f"{count} regressed case{'s' if count != 1 else ''} within the gates' tolerance"
    return f"{text}: {why}" if why else f"{text}."


def replay_counts(workflow: Mapping[str, Any]) -> list[str]:
    """``"stable: 12 replayed, 3 shadow"`` style notes, only for non-zero counts."""
    notes: list[str] = []
    for role in ("stable", "candidate"):
        m = _metrics(workflow, role)
        parts = []
        for key in ("replayed", "shadow"):
            n = _number(m.get(key))
            if n:
                parts.append(f"{round(n):,} {key}")
        if parts:
            notes.append(f"{role}: {', '.join(parts)}")
    return notes


def crashed_workers(summary: Mapping[str, Any]) -> list[str]:
    workers = summary.get("workers")
    if not isinstance(workers, Mapping):
        return []
    crashed = workers.get("crashed")
    if not isinstance(crashed, (list, tuple)):
        return []
    return [str(w) for w in crashed]


def workflows_of(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    wfs = summary.get("workflows")
    if not isinstance(wfs, Mapping):
        return []
    return [(str(k), v) for k, v in wfs.items() if isinstance(v, Mapping)]


def reason_messages(workflow: Mapping[str, Any]) -> list[str]:
    reasons = workflow.get("reasons")
    if not isinstance(reasons, (list, tuple)):
        return []
    out: list[str] = []
    for r in reasons:
        if isinstance(r, Mapping):
            msg = r.get("message") or r.get("gate") or ""
            out.append(" ".join(str(msg).split()))
        else:
            out.append(" ".join(str(r).split()))
    return out


# --------------------------------------------------------------------------- writing


def _write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``_atomic``); ``ReportError`` on OS errors.

    The text is produced before this is called, so a failure while building it never touches
    the old file.
    """
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _atomic_stream(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Stream UTF-8 text to ``path`` atomically (:func:`._atomic.atomic_stream_text`); a file
    system error is a ``ReportError`` naming ``path``, anything else the block raises
    propagates as it is. The old file is untouched either way."""
    try:
        with atomic_stream_text(path) as f:
            yield f
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None


# Re-exports (imported last: the renderers import the helpers above).
from pytest_modelrollout.report.html import render_html, write_html  # noqa: E402
from pytest_modelrollout.report.jsonreport import load_report, write_json_report  # noqa: E402
from pytest_modelrollout.report.markdown import (  # noqa: E402
    append_step_summary,
    render_markdown,
    write_markdown,
)
from pytest_modelrollout.report.terminal import render_terminal  # noqa: E402
