"""Reports render a finished summary: terminal, JSON, Markdown, HTML (hand-made summaries that
follow docs/DESIGN.md, "The summary")."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet, Role
from pytest_modelrollout.report import (
    ReportError,
    fmt_change,
    fmt_value,
    load_report,
    render_markdown,
    render_terminal,
    write_json_report,
)
from pytest_modelrollout.report.html import PlotlyMissingError, render_html, write_html
from pytest_modelrollout.report.markdown import append_step_summary, write_markdown
from pytest_modelrollout.report.terminal import display_width

VERDICTS = ("READY", "BLOCKED", "INCONCLUSIVE", "KILLED")


def model_metrics(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "requests": 30,
        "success_rate": 1.0,
        "error_rate": 0.0,
        "timeout_rate": 0.0,
        "fallback_rate": 0.0,
        "latency_p50_ms": 40.1,
        "latency_p95_ms": 80.2,
        "input_tokens": 1200,
        "output_tokens": 900,
        "cost_usd": 0.0012,
        "cost_per_success_usd": 4e-05,
        "validation_pass_rate": 0.97,
        "check_pass_rates": {"json": 1.0},
        "replayed": 0,
        "shadow": 0,
    }
    m.update(over)
    return m


def workflow(verdict: str = "READY", **over: Any) -> dict[str, Any]:
    wf: dict[str, Any] = {
        "verdict": verdict,
        "stable_model": "sim:stable",
        "candidate_model": "sim:good",
        "reasons": [],
        "stable": model_metrics(),
        "candidate": model_metrics(
            latency_p95_ms=120.0, cost_usd=0.0024, check_pass_rates={"json": 0.9}
        ),
        "checks": {
            "json": {
                "stable_pass_rate": 1.0,
                "candidate_pass_rate": 0.9,
                "regressions": 3,
                "improvements": 0,
                "pairs": 30,
            }
        },
        "tolerated": {"regressions": 0, "why": ""},
    }
    if verdict != "READY":
        status = {"BLOCKED": "breach", "INCONCLUSIVE": "insufficient", "KILLED": "killed"}[verdict]
        wf["reasons"] = [
            {
                "gate": "p95_latency:+25%",
                "status": status,
                "message": "p95 latency 80 ms -> 120 ms (+50%, 95% CI +21%..+80%) > +25%",
                "stable": 80.2,
                "candidate": 120.0,
                "change": 0.5,
                "interval": [0.21, 0.8],
                "threshold": 0.25,
            }
        ]
    wf.update(over)
    return wf


def summary(
    verdict: str = "READY", workflows: dict[str, Any] | None = None, **over: Any
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "schema_version": 1,
        "verdict": verdict,
        "stable": "sim:stable",
        "candidate": "sim:good",
        "complete": True,
        "started_at": "2026-11-25T10:00:00+00:00",
        "duration_s": 1.2,
        "plugin_version": "0.1.0",
        "gates": [
            {
                "metric": "p95_latency",
                "op": "+",
                "threshold": 0.25,
                "expr": "p95_latency:+25%",
                "source": "default",
            }
        ],
        "decision": "standard",
        "confidence": 0.95,
        "workflows": workflows if workflows is not None else {"json_extraction": workflow(verdict)},
        "workers": {"crashed": []},
    }
    s.update(over)
    return s


def records(n: int = 3, workflow_name: str = "json_extraction", prefix: str = "t") -> RecordSet:
    rs = RecordSet()
    for i in range(n):
        pair = f"{prefix}{i}#0"
        roles: tuple[tuple[Role, str], ...] = (("stable", "sim:stable"), ("candidate", "sim:good"))
        for role, model in roles:
            call_id = f"{pair}:{role}"
            rs.calls.append(
                CallRecord(
                    call_id=call_id,
                    pair_id=pair,
                    test_id=f"{prefix}{i}",
                    workflow=workflow_name,
                    role=role,
                    model=model,
                    status="ok",
                    latency_ms=10.0 + i,
                    input_tokens=10,
                    output_tokens=5,
                )
            )
            rs.checks.append(
                CheckRecord(
                    call_id=call_id,
                    pair_id=pair,
                    test_id=f"{prefix}{i}",
                    workflow=workflow_name,
                    role=role,
                    model=model,
                    check="json",
                    passed=True,
                )
            )
    return rs


# ----------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (None, "rate", "—"),
        (0.97, "rate", "97.0%"),
        (1.0, "rate", "100%"),
        (812.4, "ms", "812 ms"),
        (40.12, "ms", "40.1 ms"),
        (1204.0, "ms", "1,204 ms"),
        (4e-05, "usd", "$0.00004"),
        (0.0012, "usd", "$0.0012"),
        (1.234, "usd", "$1.23"),
        (0, "usd", "$0"),
        (12000, "tokens", "12,000"),
        (float("nan"), "ms", "—"),
    ],
)
def test_fmt_value(value: Any, kind: str, text: str) -> None:
    assert fmt_value(value, kind) == text


@pytest.mark.parametrize(
    ("s", "c", "kind", "text"),
    [
        (812, 1204, "ms", "+48%"),
        (100, 103, "ms", "+3.0%"),
        (10, 25, "ms", "x2.5"),
        (0.9, 0.915, "rate", "+1.5pp"),
        (1.0, 1.0, "rate", "±0pp"),
        (None, 1.0, "rate", "—"),
        (0, 5, "usd", "—"),
        (5, 5, "usd", "±0%"),
        (100, 80, "ms", "-20%"),
    ],
)
def test_fmt_change(s: Any, c: Any, kind: str, text: str) -> None:
    assert fmt_change(s, c, kind) == text


# ----------------------------------------------------------------------------- terminal


@pytest.mark.parametrize("verdict", VERDICTS)
def test_terminal_all_verdicts(verdict: str) -> None:
    lines = render_terminal(summary(verdict))
    assert lines[-1] == f"rollout verdict: {verdict}"
    assert f"workflow json_extraction: {verdict}  (sim:stable → sim:good)" in lines
    text = "\n".join(lines)
    assert "latency p95" in text and "80.2 ms" in text and "120 ms" in text and "+50%" in text
    assert "$0.0012" in text and "x2.0" in text
    assert "100%" in text and "-10.0pp" in text  # check json 100% -> 90%
    if verdict == "READY":
        assert "p95 latency 80 ms -> 120 ms" not in text
    else:
        assert "  - p95 latency 80 ms -> 120 ms (+50%, 95% CI +21%..+80%) > +25%" in lines
    assert all(display_width(line) <= 100 for line in lines)


def test_terminal_none_values_and_killed_workflow() -> None:
    killed = workflow("KILLED", candidate={}, checks={})
    s = summary("KILLED", {"support": killed}, complete=False, workers={"crashed": ["gw1"]})
    s["workflows"]["support"]["stable"]["cost_usd"] = None
    lines = render_terminal(s)
    text = "\n".join(lines)
    assert lines[-1] == "rollout verdict: KILLED"
    row = next(line for line in lines if line.strip().startswith("cost  "))
    assert row.split()[1:] == ["—", "—", "—"]
    assert "incomplete session" in text
    assert "crashed xdist workers: gw1" in text


def test_terminal_tolerance_replay_and_verbose() -> None:
    wf = workflow("READY", tolerated={"regressions": 2, "why": "McNemar p=0.5 at n=30"})
    wf["candidate"]["replayed"] = 12
    wf["stable"]["shadow"] = 30
    lines = render_terminal(summary("READY", {"w": wf}), verbose=True)
    text = "\n".join(lines)
    assert "2 regressed cases within the gates' tolerance: McNemar p=0.5 at n=30" in text
    assert "stable: 30 shadow" in text and "candidate: 12 replayed" in text
    assert "p95_latency:+25% (default)" in text
    assert "replayed" not in "\n".join(render_terminal(summary("READY")))
    # the tolerance sentence belongs to READY only
    blocked = workflow("BLOCKED", tolerated={"regressions": 2, "why": "x"})
    assert "tolerance" not in "\n".join(render_terminal(summary("BLOCKED", {"w": blocked})))


def test_terminal_chinese_names_align() -> None:
    wf = workflow("READY")
    wf["checks"]["语气自然"] = {
        "stable_pass_rate": 1.0,
        "candidate_pass_rate": 0.5,
        "regressions": 15,
        "improvements": 0,
        "pairs": 30,
    }
    lines = render_terminal(summary("READY", {"客服对话": wf}))
    assert "workflow 客服对话: READY  (sim:stable → sim:good)" in lines
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("check "))
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    assert any("语气自然" in line for line in block)
    # right-aligned last column: every line of the table has the same display width
    assert len({display_width(line) for line in block}) == 1, block


def test_terminal_no_workflows() -> None:
    lines = render_terminal(summary("INCONCLUSIVE", {}))
    assert lines[-1] == "rollout verdict: INCONCLUSIVE"
    assert "no workflow calls were recorded" in lines


# ----------------------------------------------------------------------------- JSON


def test_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    s = summary("BLOCKED", workflows={"json_extraction": workflow("BLOCKED"), "客服": workflow()})
    rs = records()
    write_json_report(path, s, rs)
    data = load_report(path)
    for key in (
        "schema_version",
        "verdict",
        "stable",
        "candidate",
        "complete",
        "started_at",
        "duration_s",
        "plugin_version",
        "gates",
        "workflows",
    ):
        assert data[key] == s[key]
    assert RecordSet.from_dict(data["records"]).to_dict() == rs.sorted().to_dict()
    cfg = data["config"]
    assert cfg["gates_by_workflow"]["客服"] == [
        {
            "expr": "p95_latency:+25%",
            "source": "default",
            "metric": "p95_latency",
            "op": "+",
            "threshold": 0.25,
        }
    ]
    assert cfg["workflow_models"]["json_extraction"] == {
        "stable": "sim:stable",
        "candidate": "sim:good",
    }
    assert cfg["confidence"] == 0.95 and cfg["decision"] == "standard"
    assert "客服" in path.read_text(encoding="utf-8")  # readable, not \\u escapes


def test_json_report_config_and_no_records(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_report(
        path, summary(), None, config={"killed": ["sim:flaky"], "traffic_share": 0.05}
    )
    data = load_report(path)
    assert data["records"] is None
    assert data["config"]["killed"] == ["sim:flaky"]
    assert data["config"]["traffic_share"] == 0.05


def test_json_nan_becomes_null(tmp_path: Path) -> None:
    s = summary()
    s["workflows"]["json_extraction"]["stable"]["latency_p95_ms"] = float("nan")
    write_json_report(tmp_path / "r.json", s, None)
    data = load_report(tmp_path / "r.json")
    assert data["workflows"]["json_extraction"]["stable"]["latency_p95_ms"] is None


def test_json_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json_report(path, summary(), records())
    before = path.read_bytes()
    bad = summary()
    bad["workflows"]["json_extraction"]["oops"] = object()  # not JSON-serialisable
    with pytest.raises(ReportError, match="cannot write"):
        write_json_report(path, bad, records())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON (line 1"),
        ("[1, 2]", "top level is not an object"),
        ('{"verdict": "READY"}', "no schema_version"),
        (
            '{"schema_version": 99, "verdict": "READY", "workflows": {}}',
            "unsupported schema_version 99",
        ),
        ('{"schema_version": 1, "verdict": "READY"}', "missing workflows"),
    ],
)
def test_load_report_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ReportError) as info:
        load_report(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_load_report_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a file"):
        load_report(tmp_path)


# ----------------------------------------------------------------------------- Markdown


@pytest.mark.parametrize(
    ("verdict", "emoji"),
    [("READY", "✅"), ("BLOCKED", "⛔"), ("INCONCLUSIVE", "⚠️"), ("KILLED", "🛑")],
)
def test_markdown_verdicts(verdict: str, emoji: str) -> None:
    md = render_markdown(summary(verdict))
    assert md.startswith(f"## {emoji} Rollout verdict: {verdict}\n")
    assert f"### {emoji} json\\_extraction: {verdict} (`sim:stable` → `sim:good`)" in md
    assert "| metric | stable | candidate | change |" in md
    assert "| latency p95 | 80.2 ms | 120 ms | +50% |" in md
    assert "| json | 100% | 90.0% | -10.0pp | 3 | 0 |" in md
    if verdict != "READY":
        assert "- p95 latency 80 ms -&gt; 120 ms (+50%, 95% CI +21%..+80%) &gt; +25%" in md


def test_markdown_escapes_and_notes() -> None:
    wf = workflow("READY", tolerated={"regressions": 1, "why": "within noise"})
    wf["checks"]["a|b"] = {
        "stable_pass_rate": 1.0,
        "candidate_pass_rate": 1.0,
        "regressions": 0,
        "improvements": 0,
        "pairs": 3,
    }
    s = summary(
        "READY", {"<script>x</script> 客服": wf}, complete=False, workers={"crashed": ["gw0"]}
    )
    md = render_markdown(s)
    assert "<script>" not in md
    assert "&lt;script&gt;x&lt;/script&gt; 客服" in md
    assert "| a\\|b |" in md
    assert "1 regressed case within the gates' tolerance: within noise" in md
    assert "Incomplete session" in md and "gw0" in md


def test_markdown_write_and_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_markdown(tmp_path / "s.md", summary("BLOCKED"))
    assert (tmp_path / "s.md").read_text(encoding="utf-8") == render_markdown(summary("BLOCKED"))

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary(summary()) is None
    target = tmp_path / "step.md"
    target.write_text("# earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    assert append_step_summary(summary("READY")) == str(target)
    assert append_step_summary(summary("BLOCKED")) == str(target)
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# earlier step\n")
    assert "Rollout verdict: READY" in text and "Rollout verdict: BLOCKED" in text


# ----------------------------------------------------------------------------- HTML


def html_summary() -> dict[str, Any]:
    wfs = {"json_extraction": workflow("BLOCKED"), "<b>客服</b>": workflow("KILLED", candidate={})}
    s = summary("BLOCKED", wfs)
    s["samples"] = {"json_extraction": {"stable": [10.0, 12.5, 30.0], "candidate": [20.0, 40.0]}}
    return s


def test_html_self_contained_and_escaped() -> None:
    pytest.importorskip("plotly")
    page = render_html(html_summary())
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("* plotly.js v") == 1  # plotly.js inlined exactly once
    assert "<script src=" not in page and 'src="http' not in page
    assert "<b>客服</b>" not in page and "&lt;b&gt;客服&lt;/b&gt;" in page
    assert "p95 latency 80 ms -&gt; 120 ms" in page
    assert page.count('class="plotly-graph-div"') >= 5
    assert "BLOCKED" in page and "KILLED" in page


def test_html_script_injection_in_names() -> None:
    pytest.importorskip("plotly")
    wf = workflow("READY")
    wf["checks"]["</script><script>alert(1)</script>"] = {
        "stable_pass_rate": 1.0,
        "candidate_pass_rate": 1.0,
        "regressions": 0,
        "improvements": 0,
        "pairs": 1,
    }
    page = render_html(summary("READY", {"w": wf}))
    assert "<script>alert(1)" not in page


def test_html_without_plotly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "plotly" or m.startswith("plotly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)
    with pytest.raises(PlotlyMissingError, match=r"pip install 'pytest-modelrollout\[html\]'"):
        render_html(summary())


def test_write_html(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    write_html(tmp_path / "r.html", html_summary())
    assert (tmp_path / "r.html").stat().st_size > 1_000_000


def test_renderers_do_not_mutate_summary() -> None:
    pytest.importorskip("plotly")
    s = html_summary()
    before = copy.deepcopy(s)
    render_terminal(s, verbose=True)
    render_markdown(s)
    render_html(s)
    assert s == before


# ----------------------------------------------------------------------------- real summary


def test_build_summary_renders(tmp_path: Path) -> None:
    summary_mod = pytest.importorskip("pytest_modelrollout.summary")
    gates_mod = pytest.importorskip("pytest_modelrollout.gates")
    rs = records(12)
    gates = [gates_mod.parse_gate("p95_latency:+25%", "cli")]
    s = summary_mod.build_summary(
        rs.sorted(),
        stable="sim:stable",
        candidate="sim:good",
        workflow_models={"json_extraction": ("sim:stable", "sim:good")},
        gates_by_workflow={"json_extraction": gates},
        killed=set(),
        confidence=0.95,
        decision="standard",
        complete=True,
        started_at="2026-11-25T10:00:00+00:00",
        duration_s=1.0,
        plugin_version="0.1.0",
    )
    lines = render_terminal(s)
    assert lines[-1] == f"rollout verdict: {s['verdict']}"
    assert any(line.startswith("workflow json_extraction: ") for line in lines)
    render_markdown(s)
    write_json_report(tmp_path / "r.json", s, rs)
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["records"]["calls"]
