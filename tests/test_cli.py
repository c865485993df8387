"""The ``modelrollout`` command: show, merge, routes, errors (one line, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_report_render import records, summary, workflow

from pytest_modelrollout import cli
from pytest_modelrollout._records import RecordSet
from pytest_modelrollout.report import write_json_report

tomllib: Any = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("modelrollout: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err


def write_report(
    path: Path, s: dict[str, Any] | None = None, rs: RecordSet | None = None, **config: Any
) -> Path:
    write_json_report(path, s if s is not None else summary(), rs, config=config or None)
    return path


# ----------------------------------------------------------------------------- show


def test_show_prints_terminal_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = write_report(tmp_path / "r.json", summary("BLOCKED"), records())
    code, out, err = run(capsys, "show", str(report))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[-1] == "rollout verdict: BLOCKED"
    assert "workflow json_extraction: BLOCKED  (sim:stable → sim:good)" in lines


def test_show_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = write_report(tmp_path / "r.json", summary("KILLED"))
    code, out, _ = run(capsys, "show", str(report), "--markdown")
    assert code == 0 and out.startswith("## 🛑 Rollout verdict: KILLED")


def test_show_never_recomputes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a READY verdict on numbers that look bad is shown as READY: show renders, never judges
    s = summary("READY", {"w": workflow("READY", candidate={"error_rate": 0.9})})
    code, out, _ = run(capsys, "show", str(write_report(tmp_path / "r.json", s)))
    assert code == 0 and out.splitlines()[-1] == "rollout verdict: READY"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such file"),
        ("{oops", "not valid JSON"),
        ('{"schema_version": 7, "verdict": "READY", "workflows": {}}', "schema_version 7"),
    ],
)
def test_show_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, fragment: str
) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, _, err = run(capsys, "show", str(path))
    assert_one_line_error(code, err, fragment, "r.json")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ((), "missing command"),
        (("frobnicate",), "invalid choice"),
        (("show",), "required"),
        (("show", "a.json", "--bogus"), "unrecognized arguments"),
        (("merge", "a.json"), "-o"),
        (("gate", "log.jsonl"), "--stable"),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], fragment: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, fragment)


def test_python_dash_m(tmp_path: Path) -> None:
    report = write_report(tmp_path / "r.json", summary("INCONCLUSIVE"))
    src = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_modelrollout", "show", str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "rollout verdict: INCONCLUSIVE"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_modelrollout.cli", "show", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- merge


def test_merge_mismatched_candidates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_report(tmp_path / "a.json", summary(), records(prefix="a"))
    b = write_report(tmp_path / "b.json", summary(candidate="sim:verbose"), records(prefix="b"))
    code, _, err = run(capsys, "merge", str(a), str(b), "-o", str(tmp_path / "all.json"))
    assert_one_line_error(code, err, "candidate", "sim:verbose", "sim:good")
    assert not (tmp_path / "all.json").exists()


def test_merge_duplicate_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_report(tmp_path / "a.json", summary(), records(prefix="a"))
    b = write_report(tmp_path / "b.json", summary(), records(prefix="a"))
    code, _, err = run(capsys, "merge", str(a), str(b), "-o", str(tmp_path / "all.json"))
    assert_one_line_error(code, err, "duplicate shard", "a.json", "b.json")


def test_merge_without_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_report(tmp_path / "a.json", summary(), None)
    code, _, err = run(capsys, "merge", str(a), "-o", str(tmp_path / "all.json"))
    assert_one_line_error(code, err, "no records")


def test_merge_bad_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_report(tmp_path / "a.json", summary(), records(prefix="a"))
    (tmp_path / "b.json").write_text("not json", encoding="utf-8")
    code, _, err = run(
        capsys, "merge", str(a), str(tmp_path / "b.json"), "-o", str(tmp_path / "all.json")
    )
    assert_one_line_error(code, err, "b.json", "not valid JSON")


def test_merge_rejudges_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pytest_modelrollout.summary")
    pytest.importorskip("pytest_modelrollout.gates")
    a = write_report(tmp_path / "a.json", summary(), records(20, prefix="a"))
    b = write_report(tmp_path / "b.json", summary(complete=False), records(20, prefix="b"))
    out = tmp_path / "all.json"
    code, stdout, err = run(capsys, "merge", str(a), str(b), "-o", str(out))
    merged = json.loads(out.read_text(encoding="utf-8"))
    assert code == (0 if merged["verdict"] == "READY" else 1), err
    assert merged["complete"] is False
    assert len(merged["records"]["calls"]) == 80
    assert merged["workflows"]["json_extraction"]["stable"]["requests"] == 40
    assert stdout.splitlines()[-2] == f"rollout verdict: {merged['verdict']}"
    # the merged report can be merged and shown again
    code, stdout, _ = run(capsys, "show", str(out))
    assert code == 0 and stdout.splitlines()[-1] == f"rollout verdict: {merged['verdict']}"


# ----------------------------------------------------------------------------- routes


def routes_summary() -> dict[str, Any]:
    return summary(
        "BLOCKED",
        {
            "ready_wf": workflow("READY"),
            "blocked_wf": workflow("BLOCKED"),
            "killed_stable": workflow("KILLED", stable_model="sim:flaky"),
            "客服": workflow("READY", candidate_model="qwen:qwen-plus"),
        },
    )


def test_routes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = write_report(tmp_path / "r.json", routes_summary(), killed=["sim:flaky"])
    out = tmp_path / "routes.json"
    code, stdout, err = run(capsys, "routes", str(report), "-o", str(out))
    assert code == 0, err
    routes = json.loads(out.read_text(encoding="utf-8"))["workflows"]
    assert routes["ready_wf"]["model"] == "sim:good"
    assert routes["ready_wf"]["traffic"] == {"sim:good": 0.01, "sim:stable": 0.99}
    assert routes["blocked_wf"]["model"] == "sim:stable"
    assert routes["blocked_wf"]["traffic"] == {"sim:stable": 1.0}
    assert "model" not in routes["killed_stable"]
    assert "sim:flaky" in routes["killed_stable"]["note"]
    assert routes["客服"]["traffic"] == {"qwen:qwen-plus": 0.01, "sim:stable": 0.99}
    for entry in routes.values():
        if "traffic" in entry:
            assert abs(sum(entry["traffic"].values()) - 1.0) < 1e-9
    assert "routes written to" in stdout


def test_routes_next_step_and_killed_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = write_report(
        tmp_path / "r.json", routes_summary(), traffic_share={"ready_wf": 0.05, "客服": 1.0}
    )
    out = tmp_path / "routes.json"
    code, _, _ = run(capsys, "routes", str(report), "-o", str(out), "--kill", "qwen:qwen-plus")
    assert code == 0
    routes = json.loads(out.read_text(encoding="utf-8"))["workflows"]
    assert routes["ready_wf"]["traffic"] == {"sim:good": 0.25, "sim:stable": 0.75}
    assert routes["客服"]["model"] == "sim:stable"  # killed candidate never routed
    assert "qwen:qwen-plus" not in routes["客服"]["traffic"]
    # a custom plan
    code, _, _ = run(capsys, "routes", str(report), "-o", str(out), "--plan", "10,50,100")
    routes = json.loads(out.read_text(encoding="utf-8"))["workflows"]
    assert routes["ready_wf"]["traffic"] == {"sim:good": 0.1, "sim:stable": 0.9}
    assert routes["客服"]["traffic"] == {"qwen:qwen-plus": 1.0}


def test_routes_toml_matches_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = routes_summary()
    s["workflows"]['we"ird\\name.x'] = workflow("READY")
    report = write_report(tmp_path / "r.json", s, killed=["sim:flaky"])
    assert run(capsys, "routes", str(report), "-o", str(tmp_path / "routes.json"))[0] == 0
    assert run(capsys, "routes", str(report), "-o", str(tmp_path / "routes.toml"))[0] == 0
    as_json = json.loads((tmp_path / "routes.json").read_text(encoding="utf-8"))
    as_toml = tomllib.loads((tmp_path / "routes.toml").read_text(encoding="utf-8"))
    assert as_toml == as_json


@pytest.mark.parametrize("plan", ["0,5", "5,1", "abc", "", "150"])
def test_routes_bad_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str], plan: str) -> None:
    report = write_report(tmp_path / "r.json", routes_summary())
    code, _, err = run(
        capsys, "routes", str(report), "-o", str(tmp_path / "x.json"), "--plan", plan
    )
    assert_one_line_error(code, err, "--plan")


def test_next_share() -> None:
    plan = cli.DEFAULT_PLAN
    assert cli.next_share(0.0, plan) == 0.01
    assert cli.next_share(0.01, plan) == 0.05
    assert cli.next_share(0.1, plan) == 0.25
    assert cli.next_share(1.0, plan) == 1.0
    assert cli.parse_plan("1%, 5%, 25%, 100%") == plan


def test_merge_equals_single_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary_mod = pytest.importorskip("pytest_modelrollout.summary")
    gates_mod = pytest.importorskip("pytest_modelrollout.gates")
    rs = records(40, prefix="t")
    for call in rs.calls:  # a slow candidate: the latency gate breaches
        if call.role == "candidate":
            call.latency_ms = (call.latency_ms or 0) * 3
    gates = [
        gates_mod.parse_gate("p95_latency:+25%", "cli"),
        gates_mod.parse_gate("error_rate:x2", "config"),
    ]

    def judge(part: RecordSet, complete: bool = True) -> dict[str, Any]:
        return dict(
            summary_mod.build_summary(
                part.sorted(),
                stable="sim:stable",
                candidate="sim:good",
                gates_by_workflow={"json_extraction": gates},
                complete=complete,
                started_at="2026-11-25T10:00:00+00:00",
                duration_s=2.0,
                plugin_version="0.1.0",
            )
        )

    full = judge(rs)
    halves = [RecordSet(), RecordSet()]
    for call in rs.calls:
        halves[int(call.test_id[1:]) % 2].calls.append(call)
    for check in rs.checks:
        halves[int(check.test_id[1:]) % 2].checks.append(check)
    paths = []
    for i, half in enumerate(halves):
        paths.append(str(write_report(tmp_path / f"shard{i}.json", judge(half), half)))
    out = tmp_path / "all.json"
    code, _, err = run(capsys, "merge", *paths, "-o", str(out))
    merged = json.loads(out.read_text(encoding="utf-8"))
    assert merged["verdict"] == full["verdict"] == "BLOCKED"
    assert code == 1, err
    assert merged["workflows"] == full["workflows"]
    assert merged["config"]["gates_by_workflow"]["json_extraction"][0]["source"] == "cli"
