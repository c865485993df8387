"""A rollout run closes what it opens: sockets, files, pipes, threads.

Run in a subprocess under ``python -X dev`` with ResourceWarnings as errors: every socket, file
or pipe left for the garbage collector prints "Exception ignored in ... ResourceWarning" on
stderr (during the run or at exit), which a team running its suite with warnings as errors sees
as noise at best, and a long session sees as descriptors running out.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[tool.modelrollout]
stable = "sim:stable?latency_ms=20&jitter=0"
candidate = "sim:good?latency_ms=20&jitter=0"
record = "new"

# times out: its calls and its smoke probe fail, and failures must close what they opened too
[tool.modelrollout.models.slow]
provider = "sim"
model = "good?latency_ms=3000&jitter=0"
timeout_s = 0.3
max_retries = 1
"""

SUITE = """
import pytest

@pytest.mark.workflow("support_chat")
@pytest.mark.parametrize("i", range(12))
def test_chat(rollout, i):
    rollout.ask(f"Where is my order A-{1000 + i}?").expect_length(max_chars=5000)

@pytest.mark.workflow("slow_path", candidate="slow")
def test_times_out(rollout):
    rollout.ask("Say hi")  # the candidate times out: a timeout, not a failure
"""

LEAK_SIGNS = ("ResourceWarning", "Exception ignored in")


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_a_rollout_run_closes_what_it_opens(
    pytester: pytest.Pytester,
    xdist: list[str],
    subprocess_env: dict[str, str],
    one_heavy_run_at_a_time: None,
) -> None:
    pytester.makepyprojecttoml(CONFIG)
    pytester.makepyfile(test_suite=SUITE)
    proc = _run(pytester.path, subprocess_env, "-m", "pytest", "-p", "no:cacheprovider", "--rollout-smoke",
                "--rollout-report=r.json", *xdist)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "INTERNALERROR" not in out, out
    assert "rollout verdict" in out, out
    report = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    assert report["workflows"]["slow_path"]["candidate"]["timeout_rate"] == 1.0, out  # timed out
    leaks = [line for line in out.splitlines() if any(s in line for s in LEAK_SIGNS)]
    assert leaks == [], out


def test_the_canary_gate_closes_every_log(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.modelrollout]\nstable = "sim:stable"\ncandidate = "sim:good"\n', encoding="utf-8"
    )
    for name, model in (("a.jsonl.gz", "sim:stable"), ("b.log", "sim:good")):  # gzip by magic
        lines = [
            json.dumps({"workflow": "chat", "model": model, "status": "ok", "latency_ms": 100 + i})
            for i in range(30)
        ]
        (tmp_path / name).write_bytes(gzip.compress("\n".join(lines).encode()))
    proc = _run(tmp_path, subprocess_env, "-m", "pytest_modelrollout.cli", "gate", "a.jsonl.gz", "b.log")
    out = proc.stdout + proc.stderr
    assert "30 stable, 30 candidate requests" in out, out
    leaks = [line for line in out.splitlines() if any(s in line for s in LEAK_SIGNS)]
    assert leaks == [], out
