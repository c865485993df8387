"""The example suites (example_suites/) run end to end against the simulator, and the outcomes
documented in the README ("What a worse candidate does to the verdict") still hold.

Every run is a real ``python -m pytest`` subprocess in ``example_suites/``, made by a module
fixture that has the machine to itself (no other test of the suite runs meanwhile): the two runs
that must be READY first, one at a time, then the others three at a time, which keeps this file
under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

SUITES = Path(__file__).resolve().parent.parent / "example_suites"
TIMEOUT_S = 300
PARALLEL = 3  # runs at a time, for the runs whose outcome does not hang on small latencies; the
# default and xdist runs assert READY, p95 gate included, and run one at a time, alone: two runs
# at once on a 2-core CI box turn scheduling stalls into p95 latency

# name -> (extra arguments, workflow folders (empty: the whole suite), simulator latency scale)
# The check-driven personas run with the simulator's sleeps off (their verdicts do not depend on
# latency); the default, xdist, slow and flaky runs keep the real latencies and back-off.
# The default runs assert READY, which includes the p95 latency gate: with the simulator's
# default latencies (~120 ms median) scheduling stalls of a busy 2-core CI box stay small against
# the +25% threshold, as they are for real providers' latencies.
RUNS: dict[str, tuple[list[str], list[str], str | None]] = {
    "default": ([], [], None),
    "xdist": (["-n", "2"], [], None),
    "flaky": (["--candidate=sim:flaky"], ["json_extraction"], None),
    "slow": (["--candidate=sim:slow"], ["automation_tasks"], None),
    "verbose": (["--candidate=sim:verbose"], ["support_chat"], "0"),
    "sloppy-json": (["--candidate=sim:sloppy-json"], ["json_extraction"], "0"),
    "wrong-language": (["--candidate=sim:wrong-language"], ["multilingual", "support_chat"], "0"),
    "bad-tools": (["--candidate=sim:bad-tools"], ["agent_planning"], "0"),
}


@dataclass
class Run:
    returncode: int
    output: str
    report: dict

    @property
    def verdicts(self) -> dict[str, str]:
        return {name: w["verdict"] for name, w in self.report["workflows"].items()}

    def reasons(self, workflow: str) -> list[str]:
        return [
            r["gate"] + " " + r["message"] for r in self.report["workflows"][workflow]["reasons"]
        ]


def _run(name: str, out: Path) -> Run:
    args, folders, latency_scale = RUNS[name]
    env = dict(os.environ)
    # the documented outcomes are with the default back-off and latencies
    for var in (
        "MODELROLLOUT_BACKOFF_SCALE",
        "MODELROLLOUT_SIM_LATENCY_SCALE",
        "MODELROLLOUT_SIM_URL",
        "MODELROLLOUT_KILLED",
        "GITHUB_STEP_SUMMARY",
        "PYTEST_ADDOPTS",
    ):
        env.pop(var, None)
    if latency_scale is not None:
        env["MODELROLLOUT_SIM_LATENCY_SCALE"] = latency_scale
    report = out / f"{name}.json"
    cmd = [sys.executable, "-m", "pytest", "-q", f"--rollout-report={report}", *args, *folders]
    try:
        proc = subprocess.run(
            cmd,
            cwd=SUITES,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        return Run(-1, f"timed out after {TIMEOUT_S} s: {exc.output!r}"[-3000:], {})
    data = json.loads(report.read_text(encoding="utf-8")) if report.exists() else {}
    return Run(proc.returncode, proc.stdout + proc.stderr, data)


def _latency_unconfirmed_only(run: Run) -> bool:
    """The run is INCONCLUSIVE only because a latency gate's breach was not confirmed (the
    interval reaches back across the threshold), every other gate passing."""
    if run.report.get("verdict") != "INCONCLUSIVE":
        return False
    reasons = [
        r
        for w in run.report.get("workflows", {}).values()
        if w.get("verdict") != "READY"
        for r in w.get("reasons", [])
    ]
    return bool(reasons) and all(
        str(r.get("gate", "")).startswith(("p95_latency", "p50_latency"))
        and r.get("status") == "unconfirmed"
        for r in reasons
    )


# the runs that assert READY, whose p95 gate also measures this machine's scheduling
READY_RUNS = ("default", "xdist")


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, the_machine_to_itself: None
) -> dict[str, Run]:
    out = tmp_path_factory.mktemp("example_suites")
    results: dict[str, Run] = {}
    # The simulator's latencies are deterministic, but it shares the CI box's 2 cores with the
    # run: a stall of 100 ms or more on one of ~35 replies moves a p95, and the gate then says
    # "exceeds +25 %, not confirmed" (INCONCLUSIVE; seen about once in five full CI runs, on
    # agent_planning, when these runs still shared the machine with the rest of the suite).
    # Such a run, and only such a run, is made once more; a second INCONCLUSIVE, or any other
    # reason, fails the test.
    for name in READY_RUNS:
        results[name] = _run(name, out)
        if _latency_unconfirmed_only(results[name]):
            results[name] = _run(name, out)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {name: pool.submit(_run, name, out) for name in RUNS if name not in results}
        results.update({name: f.result() for name, f in futures.items()})
    return results


def _tail(run: Run) -> str:
    return run.output[-4000:]


WORKFLOWS = {
    "support_chat",
    "rag_answers",
    "agent_planning",
    "json_extraction",
    "automation_tasks",
    "multilingual",
}


def test_default_run_is_ready(runs: dict[str, Run]) -> None:
    run = runs["default"]
    assert run.returncode == 0, _tail(run)
    assert "rollout readiness" in run.output
    assert "rollout verdict: READY" in run.output, _tail(run)
    assert run.report["verdict"] == "READY"
    assert run.report["complete"] is True
    assert set(run.verdicts) == WORKFLOWS
    assert set(run.verdicts.values()) == {"READY"}, run.verdicts
    for name, w in run.report["workflows"].items():
        # at least 30 cases per workflow: every workflow clears the default min_samples
        assert w["stable"]["requests"] >= 30, name
        assert w["candidate"]["success_rate"] == 1.0, name


def test_default_run_with_xdist_agrees(runs: dict[str, Run]) -> None:
    """Same verdicts and request counts with -n 2 as in one process."""
    one, two = runs["default"], runs["xdist"]
    assert two.returncode == 0, _tail(two)
    assert "rollout verdict: READY" in two.output
    assert two.verdicts == one.verdicts
    for name, w in one.report["workflows"].items():
        w2 = two.report["workflows"][name]
        for role in ("stable", "candidate"):
            assert w2[role]["requests"] == w[role]["requests"], (name, role)
            assert w2[role]["input_tokens"] == w[role]["input_tokens"], (name, role)
            assert w2[role]["output_tokens"] == w[role]["output_tokens"], (name, role)
        assert {c: v["regressions"] for c, v in w2["checks"].items()} == {
            c: v["regressions"] for c, v in w["checks"].items()
        }, name


def _blocked_on(run: Run, workflow: str, gate_word: str) -> None:
    assert run.returncode == 1, _tail(run)
    assert "rollout verdict: BLOCKED" in run.output, _tail(run)
    assert run.report["verdict"] == "BLOCKED"
    assert run.verdicts[workflow] == "BLOCKED", run.verdicts
    assert any(gate_word in r for r in run.reasons(workflow)), run.reasons(workflow)


def test_verbose_is_blocked_by_length_in_support_chat(runs: dict[str, Run]) -> None:
    run = runs["verbose"]
    _blocked_on(run, "support_chat", "check length pass rate")
    checks = run.report["workflows"]["support_chat"]["checks"]
    # every verbose answer is over the budget (the test stops there, before length_ratio)
    assert checks["length"]["candidate_pass_rate"] == 0.0
    assert checks["length"]["regressions"] == checks["length"]["pairs"]


def test_sloppy_json_is_blocked_in_json_extraction(runs: dict[str, Run]) -> None:
    run = runs["sloppy-json"]
    _blocked_on(run, "json_extraction", "check json pass rate")
    checks = run.report["workflows"]["json_extraction"]["checks"]
    # fenced / prose-wrapped JSON still parses leniently: strict is the one that breaks
    assert checks["json"]["candidate_pass_rate"] < checks["json_lenient"]["candidate_pass_rate"]
    assert "snapshot" in run.output  # the structure snapshot catches fenced JSON too


def test_wrong_language_is_blocked_in_multilingual_and_support_chat(runs: dict[str, Run]) -> None:
    run = runs["wrong-language"]
    _blocked_on(run, "multilingual", "check language pass rate")
    _blocked_on(run, "support_chat", "check language pass rate")


def test_bad_tools_is_blocked_in_agent_planning(runs: dict[str, Run]) -> None:
    run = runs["bad-tools"]
    _blocked_on(run, "agent_planning", "check tool_call pass rate")
    assert run.report["workflows"]["agent_planning"]["checks"]["tool_call"]["regressions"] >= 10


def test_slow_is_caught_by_the_latency_gate(runs: dict[str, Run]) -> None:
    run = runs["slow"]
    assert run.returncode == 1, _tail(run)
    assert run.report["verdict"] in ("BLOCKED", "INCONCLUSIVE")
    # every test passes (each call is under its 4 s budget): the p95 gate is what catches it
    assert " failed" not in run.output.strip().splitlines()[-1], _tail(run)
    assert any(r.startswith("p95_latency") for r in run.reasons("automation_tasks")), run.reasons(
        "automation_tasks"
    )


def test_flaky_is_not_ready(runs: dict[str, Run]) -> None:
    run = runs["flaky"]
    assert run.returncode == 1, _tail(run)
    assert run.report["verdict"] in ("BLOCKED", "INCONCLUSIVE")
    assert "regression" in run.output  # permanent 500s on the candidate fail their tests
    reasons = [r for w in run.verdicts for r in run.reasons(w)]
    assert any(r.startswith(("p95_latency", "error_rate", "success_rate")) for r in reasons), (
        reasons
    )


def test_the_ci_workflow_keeps_the_stated_limits_where_the_plugin_writes_them() -> None:
    """The GitHub Actions recipe restores and saves pytest's cache of the limits the providers
    stated, so a CI job keeps to them from its first request (no first burst of 429s): its
    path must be the directory the plugin writes them to, under the suites' rootdir."""
    import yaml

    from pytest_modelrollout.plugin import LIMITS_CACHE_KEY

    root = Path(__file__).resolve().parent.parent
    workflow = yaml.safe_load((root / "example_suites/ci/github-actions.yml").read_text("utf-8"))
    steps = workflow["jobs"]["rollout"]["steps"]
    cached = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache@")]
    assert len(cached) == 1
    path = Path(cached[0]["with"]["path"])
    assert (root / "example_suites/pytest.ini").exists()  # the suites' rootdir: its cache dir
    assert path / LIMITS_CACHE_KEY.split("/", 1)[1] == (
        Path("example_suites/.pytest_cache/v") / LIMITS_CACHE_KEY
    )
    assert "${{ github.run_id }}" in cached[0]["with"]["key"]  # saved by every run
    assert cached[0]["with"]["restore-keys"]
    run = next(s for s in steps if "working-directory" in s)
    assert steps.index(cached[0]) < steps.index(run)  # restored before the suites run
