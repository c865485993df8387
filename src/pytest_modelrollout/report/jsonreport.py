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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet
from pytest_modelrollout.report import ReportError, _atomic_stream

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

    The text is exactly ``json.dumps(report, indent=2, ensure_ascii=False)`` (NaN and
    infinities as null) plus a newline, but it is streamed to the file: the summary part is
    encoded first (an unserialisable summary fails before any file is created), then the
    records a batch at a time, so memory does not grow with the size of the report (no
    document of per-record dicts, no string of the whole report).
    """
    report: dict[str, Any] = dict(summary)
    cfg = config_from_summary(summary)
    old_cfg = summary.get("config")
    if isinstance(old_cfg, Mapping):
        cfg.update(old_cfg)
    if config:
        cfg.update(config)
    report["config"] = cfg
    report["records"] = _RECORDS if records is not None else None
    try:
        # each top-level item as json.dumps(report, indent=2) writes it: '"key": value'
        items: list[str | None] = [
            None if value is _RECORDS else _dumps({key: _finite(value)})[4:-2]
            for key, value in report.items()
        ]
        with _atomic_stream(path) as f:
            f.write("{")
            for n, ((key, _), text) in enumerate(zip(report.items(), items, strict=True)):
                f.write(",\n  " if n else "\n  ")
                if text is not None:
                    f.write(text)
                else:
                    assert records is not None
                    f.write(_dumps(key) + ": ")
                    _write_records(f, records.sorted())
            f.write("\n}\n")
    except (TypeError, ValueError) as exc:
        raise ReportError(f"cannot write {path}: {exc}") from None


_RECORDS: Any = object()  # stands for the records in the report dict while it is written

_INDENT = " " * 2


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)


# Flat records (scalar values only) at depth 3 of the report ({"records": {"calls": [{...}]}})
# exactly as json.dumps(indent=2) writes them, but with the C encoder (the indenting encoder is
# pure Python) and a batch of records per call: the item separator carries the newline and the
# indentation of a record's fields. A list of records then comes out as
# '[{"k": v,<SEP>"k": v},<SEP>{"k": v, ...}]' and, as a string value cannot hold a raw newline,
# '},<SEP>{' occurs only between two records, where the braces get their own lines.
_FIELD_SEP = ",\n" + _INDENT * 4
_RECORD_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(_FIELD_SEP, ": "))
_BETWEEN = "}" + _FIELD_SEP + "{"
_BETWEEN_INDENTED = "\n" + _INDENT * 3 + "},\n" + _INDENT * 3 + "{\n" + _INDENT * 4
_SCALARS = frozenset({str, int, float, bool, type(None)})
_BATCH = 512


def _flat_records_text(batch: list[dict[str, Any]]) -> str:
    """Records (non-empty, scalar values) separated as in the list of records."""
    try:
        text = _RECORD_ENCODER.encode(batch)
    except ValueError:  # NaN or infinity: null, as everywhere in the report
        text = _RECORD_ENCODER.encode([_finite(d) for d in batch])
    body = text[2:-2].replace(_BETWEEN, _BETWEEN_INDENTED)  # without '[{' and '}]'
    return "{\n" + _INDENT * 4 + body + "\n" + _INDENT * 3 + "}"


def _record_text(data: dict[str, Any]) -> str:
    """One record that is not flat (e.g. merged from a hand-edited report)."""
    return _dumps(_finite(data)).replace("\n", "\n" + _INDENT * 3)


def _write_record_list(f: TextIO, items: Sequence[CallRecord | CheckRecord]) -> None:
    sep = ",\n" + _INDENT * 3
    first = True

    def emit(text: str) -> None:
        nonlocal first
        if not first:
            f.write(sep)
        f.write(text)
        first = False

    batch: list[dict[str, Any]] = []
    for rec in items:
        data = rec.to_dict()
        if data and set(map(type, data.values())) <= _SCALARS:
            batch.append(data)
            if len(batch) >= _BATCH:
                emit(_flat_records_text(batch))
                batch = []
        else:
            if batch:
                emit(_flat_records_text(batch))
                batch = []
            emit(_record_text(data))
    if batch:
        emit(_flat_records_text(batch))


def _write_records(f: TextIO, records: RecordSet) -> None:
    """``{"calls": [...], "checks": [...]}`` at depth 1, a batch of records at a time."""
    f.write("{")
    lists: tuple[tuple[str, Sequence[CallRecord | CheckRecord]], ...] = (
        ("calls", records.calls),
        ("checks", records.checks),
    )
    for n, (key, items) in enumerate(lists):
        f.write(",\n" if n else "\n")
        f.write(f'{_INDENT * 2}"{key}": ')
        if not items:
            f.write("[]")
            continue
        f.write("[\n" + _INDENT * 3)
        _write_record_list(f, items)
        f.write("\n" + _INDENT * 2 + "]")
    f.write("\n" + _INDENT + "}")


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
