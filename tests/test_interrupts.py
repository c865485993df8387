"""Interrupts: Ctrl-C mid-run and a crashing xdist worker still leave a usable report.

* SIGINT to a real ``pytest`` process after its first tests passed: the JSON report exists,
  is valid JSON, says ``complete: false`` and holds the calls made so far; the cassettes
  written before the interrupt are intact.
* A test that kills its xdist worker (``os._exit``): the session finishes, the report is
  written, names the crashed worker under ``workers.crashed`` and keeps the records of every
  test that finished (workers send records with each test's report, not only at the end),
  each exactly once, and the workflow marker's gates reach the controller.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

SLOW_CONFIG = """
[tool.modelrollout]
stable = "sim:stable?latency_ms=300&jitter=0"
candidate = "sim:good?latency_ms=300&jitter=0"
record = "new"
"""

SLOW_SUITE = """
import pytest

@pytest.mark.workflow("support_chat")
@pytest.mark.parametrize("i", range(40))
def test_slow(rollout, i):
    pair = rollout.ask(f"Where is my order A-{1000 + i}?")
    pair.expect_length(max_chars=5000)
"""


def _cassettes_intact(root: Path) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))  # raises on a torn file
        assert isinstance(doc, dict), path
    leftovers = [p for p in files if p.suffix != ".json"]
    assert not leftovers, leftovers  # no temporary files left behind by atomic writes
    return len(files)


def _sigint_default() -> None:
    """In the child: Ctrl-C as a terminal delivers it, even when this suite runs as a background
    job of a non-interactive shell (which starts its commands with SIGINT ignored, inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_writes_incomplete_report_with_calls_so_far(
    pytester: pytest.Pytester, subprocess_env: dict[str, str]
) -> None:
    pytester.makepyprojecttoml(SLOW_CONFIG)
    pytester.makepyfile(test_slow=SLOW_SUITE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
         "--rollout-report=report.json"],
        cwd=pytester.path, env=subprocess_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, preexec_fn=_sigint_default,
    )  # fmt: skip
    watchdog = threading.Timer(90, proc.kill)  # never hang the suite
    watchdog.start()
    lines: list[str] = []
    passed = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if " PASSED" in line:
                passed += 1
                if passed == 3:
                    proc.send_signal(signal.SIGINT)
                    break
        lines.append(proc.stdout.read())
        ret = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # pragma: no cover - only when something hangs
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    out = "".join(lines)
    assert passed == 3, out
    assert ret == pytest.ExitCode.INTERRUPTED, out
    assert "INTERNALERROR" not in out
    assert "rollout readiness" in out and "interrupted" in out

    report = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    assert report["complete"] is False
    wf = report["workflows"]["support_chat"]
    # the calls of the tests that finished (and at most the one in flight when Ctrl-C came):
    # those that passed before the signal got there, which may be more than the three seen
    # (tests whose replies came in together pass within a millisecond of each other)
    finished = out.count(" PASSED")
    assert finished >= passed
    assert finished <= wf["stable"]["requests"] <= finished + 1
    assert finished <= wf["candidate"]["requests"] <= finished + 1
    assert wf["stable"]["success_rate"] == 1.0
    n_cassettes = _cassettes_intact(pytester.path / "model_cassettes")
    assert n_cassettes >= 2 * finished


CRASH_SUITE = """
import os
import pytest

@pytest.mark.workflow("support_chat", gates={"max_p95_latency_increase": 5.0})
@pytest.mark.parametrize("i", range(12))
def test_ok(rollout, i):
    rollout.ask(f"Where is my order A-{1000 + i}?").expect_length(max_chars=5000)

@pytest.mark.workflow("support_chat")
def test_zz_crash(rollout):
    rollout.ask("Where is my order Z-1?")
    os._exit(1)  # the worker dies mid-test
"""


def test_crashed_xdist_worker_is_reported_and_records_kept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makepyprojecttoml(
        """
        [tool.modelrollout]
        stable = "sim:stable?latency_ms=40&jitter=0"
        candidate = "sim:good?latency_ms=40&jitter=0"
        record = "new"
        """
    )
    pytester.makepyfile(test_crash=CRASH_SUITE)
    result = pytester.runpytest("-n", "2", "-p", "no:cacheprovider", "--rollout-report=r.json")
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out
    result.assert_outcomes(passed=12, failed=1)
    assert "crashed" in out

    report = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    crashed = report["workers"]["crashed"]
    assert len(crashed) == 1 and crashed[0].startswith("gw"), crashed
    assert report["complete"] is False  # the crashing test's call may be lost
    wf = report["workflows"]["support_chat"]
    # every finished test's calls are there; only the crashing test's own call may be missing
    assert 12 <= wf["stable"]["requests"] <= 13
    assert 12 <= wf["candidate"]["requests"] <= 13
    # records travel with each test report and the rest with the final payload: never twice
    call_ids = [c["call_id"] for c in report["records"]["calls"]]
    assert len(call_ids) == len(set(call_ids))
    assert wf["checks"]["length"]["pairs"] == 12
    # the marker's gate reached the controller too (markers are read on the workers only)
    assert any(g["expr"] == "p95_latency:+500%" for g in report["gates"]), report["gates"]
    _cassettes_intact(pytester.path / "model_cassettes")
