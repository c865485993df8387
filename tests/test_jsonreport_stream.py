"""The streamed JSON report is byte for byte what json.dumps(indent=2) of the whole document gives."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet
from pytest_modelrollout.metrics import compute
from pytest_modelrollout.report.jsonreport import _finite, config_from_summary, write_json_report


def _expected(summary: dict[str, Any], records: RecordSet | None) -> str:
    report = dict(summary)
    report["config"] = config_from_summary(summary)
    report["records"] = records.sorted().to_dict() if records is not None else None
    return json.dumps(_finite(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _records(n: int) -> RecordSet:
    rng = random.Random(1)
    rs = RecordSet()
    for i in range(n):
        pair = f"t.py::test[c{i}]#0"
        for role in ("stable", "candidate"):
            rs.calls.append(CallRecord(
                call_id=f"{pair}:{role}", pair_id=pair, test_id=pair[:-2], workflow="客服",
                role=role, model=f"sim:{role}", status="ok" if i % 7 else "error",
                latency_ms=rng.random() * 1000 if i != 3 else math.nan, input_tokens=i,
                output_tokens=None if i % 5 == 0 else 2 * i, cost_usd=1e-7 * i,
                error=None if i % 7 else 'HTTP 500: "boom"\n中文 \u2028', ts=1.5e9 + i))
            rs.checks.append(CheckRecord(
                call_id=f"{pair}:{role}", pair_id=pair, test_id=pair[:-2], workflow="客服",
                role=role, model=f"sim:{role}", check="json", passed=bool(i % 3),
                detail="}},\n        {", value=-0.0 if i % 2 else math.inf))
    rng.shuffle(rs.calls)
    return rs


def test_streamed_report_is_json_dumps_of_the_document(tmp_path: Path) -> None:
    summary = {"schema_version": 1, "verdict": "READY", "workflows": {"客服": {"x": math.nan}},
               "samples": {"客服": {"stable": [1.0, 2.5], "candidate": []}}, "empty": {}}
    for records in (_records(1100), RecordSet(), None, RecordSet(calls=_records(2).calls)):
        path = tmp_path / "r.json"
        write_json_report(path, summary, records)
        assert path.read_text(encoding="utf-8") == _expected(summary, records)


def test_metrics_order_does_not_depend_on_arrival_order() -> None:
    rs = _records(50)
    rs.calls.append(CallRecord(**{**rs.calls[0].to_dict(), "latency_ms": 1.0}))  # duplicate id
    first = repr(compute(rs))
    random.Random(2).shuffle(rs.calls)
    random.Random(3).shuffle(rs.checks)
    assert repr(compute(rs)) == first


def test_interrupted_stream_leaves_the_old_report(tmp_path: Path) -> None:
    """A report that fails half-way (Ctrl-C, a full disk) never replaces the previous one."""
    import pytest

    from pytest_modelrollout._atomic import atomic_stream_text

    path = tmp_path / "report.json"
    path.write_text('{"old": true}\n', encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), atomic_stream_text(path) as f:
        f.write('{"new": ')
        raise KeyboardInterrupt
    assert path.read_text(encoding="utf-8") == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic_stream_text(path) as f:
        f.write("中文\n")
    assert path.read_text(encoding="utf-8") == "中文\n"
    assert path.stat().st_mode & 0o777 == 0o644
