"""The JSON report (contract section 5): the summary, plus the raw records and the config they
were judged with, so the reports of sharded runs can be merged and judged again
(``modelrollout merge``).

Layout::

    {schema_version, verdict, stable, candidate, complete, started_at, duration_s,
     plugin_version, gates, decision, confidence, workflows, workers, samples?,   <- the summary
     "config":  {"gates_by_workflow": {wf: [{"expr", "source", "metric", "op", "threshold",
                                             "floor"?}]},
                 "default_gates": [...],
                 "workflow_models": {wf: {"stable", "candidate"}}, "killed": [...],
                 "confidence": 0.95, "decision": "standard", ...},
     "records": {"calls": [CallRecord...], "checks": [CheckRecord...]} | null}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_modelrollout._records import RecordSet
from pytest_modelrollout.report import ReportError, _write_atomic

__all__ = ["SCHEMA_VERSION", "config_from_summary", "load_report", "write_json_report"]

SCHEMA_VERSION = 1

REQUIRED_KEYS = ("schema_version", "verdict", "workflows")


def _gate_entries(gates: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not isinstance(gates, (list, tuple)):
        return out
    for g in gates:
        if isinstance(g, Mapping) and g.get("expr"):
            entry = {"expr": str(g["expr"]), "source": str(g.get("source") or "config")}
            for key in ("metric", "op", "threshold", "floor"):  # exact gate, when known
                if g.get(key) is not None:
                    entry[key] = g[key]
            out.append(entry)
        elif isinstance(g, str):
            out.append({"expr": g, "source": "config"})
    return out


def config_from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The config a merge needs, as far as the summary tells it.

    Per-workflow gates: the workflow's own ``gates`` list when the summary has one, else the
    top-level ``gates``.
    """
    default = _gate_entries(summary.get("gates"))
    gates_by_workflow: dict[str, list[dict[str, Any]]] = {}
    workflow_models: dict[str, dict[str, Any]] = {}
    wfs = summary.get("workflows")
    if isinstance(wfs, Mapping):
        for name, wf in wfs.items():
            if not isinstance(wf, Mapping):
                continue
            own = _gate_entries(wf.get("gates"))
            gates_by_workflow[str(name)] = own if own else list(default)
            workflow_models[str(name)] = {
                "stable": wf.get("stable_model") or summary.get("stable"),
                "candidate": wf.get("candidate_model") or summary.get("candidate"),
            }
    killed = summary.get("killed")
    return {
        "default_gates": default,
        "gates_by_workflow": gates_by_workflow,
        "workflow_models": workflow_models,
        "killed": sorted(str(k) for k in killed) if isinstance(killed, (list, tuple, set)) else [],
        "confidence": summary.get("confidence"),
        "decision": summary.get("decision"),
    }


def write_json_report(
    path: str | os.PathLike[str],
    summary: Mapping[str, Any],
    records: RecordSet | None,
    *,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Write the JSON report atomically (the old file stays intact if anything fails).

    ``config`` is merged over what :func:`config_from_summary` derives from the summary (give
    the exact per-workflow gates, killed models, the current traffic share, ...).
    """
    report: dict[str, Any] = dict(summary)
    cfg = config_from_summary(summary)
    old_cfg = summary.get("config")
    if isinstance(old_cfg, Mapping):
        cfg.update(old_cfg)
    if config:
        cfg.update(config)
    report["config"] = cfg
    report["records"] = records.sorted().to_dict() if records is not None else None
    try:
        text = json.dumps(_finite(report), indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"cannot write {path}: {exc}") from None
    _write_atomic(path, text + "\n")


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON report. Raises ``ReportError`` with a one-line message naming the file."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p}: no such file")
    if not p.is_file():
        raise ReportError(f"{p}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{p}: not a JSON report (not UTF-8 text)") from None
    except OSError as exc:
        raise ReportError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ReportError(f"{p}: not a modelrollout report (top level is not an object)")
    if "schema_version" not in data:
        raise ReportError(f"{p}: not a modelrollout report (no schema_version)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ReportError(
            f"{p}: unsupported schema_version {data['schema_version']!r} "
            f"(this version of pytest-modelrollout reads {SCHEMA_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ReportError(f"{p}: not a modelrollout report (missing {', '.join(missing)})")
    if not isinstance(data["workflows"], dict):
        raise ReportError(f"{p}: not a modelrollout report (workflows is not an object)")
    return data
