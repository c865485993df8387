"""Shadow traffic (recorded stable replies) and malformed datasets, end to end via pytester."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_modelrollout.sim import SimServer

XDIST = pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])

CONFIG = """
[tool.modelrollout]
stable = "sim:stable"
candidate = "sim:good"
"""

SUITE = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support")
@pytest.mark.parametrize("case", cases("data/shadow.jsonl"))
def test_shadow(rollout, case):
    pair = rollout.ask(case)
    assert pair.stable.source == "shadow", pair.stable.source
    assert pair.candidate.source == "live"
    pair.expect_language("same_as_prompt")
"""

N = 24
STABLE_LATENCY_MS = 250.0
IN_TOKENS, OUT_TOKENS = 40, 17


def shadow_rows() -> list[dict[str, Any]]:
    """Half ``stable_reply`` rows, half OpenAI request/response log rows."""
    rows: list[dict[str, Any]] = []
    for i in range(N):
        prompt = f"Where is my order A-{3000 + i}? It has not arrived yet."
        text = f"Your order A-{3000 + i} is on its way and should arrive within two days."
        if i % 2 == 0:
            rows.append(
                {
                    "id": f"reply-{i}",
                    "prompt": prompt,
                    "stable_reply": {
                        "text": text,
                        "latency_ms": STABLE_LATENCY_MS,
                        "input_tokens": IN_TOKENS,
                        "output_tokens": OUT_TOKENS,
                        "model": "gpt-4o-mini",
                        "finish_reason": "stop",
                    },
                }
            )
        else:
            rows.append(
                {
                    "id": f"log-{i}",
                    "request": {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": prompt}],
                    },
                    "response": {
                        "id": f"chatcmpl-{i}",
                        "object": "chat.completion",
                        "model": "gpt-4o-mini",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": IN_TOKENS,
                            "completion_tokens": OUT_TOKENS,
                            "total_tokens": IN_TOKENS + OUT_TOKENS,
                        },
                    },
                    "latency_ms": STABLE_LATENCY_MS,
                }
            )
    return rows


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A standalone simulator counting the requests it serves."""
    server = SimServer().start()
    count = [0]
    lock = threading.Lock()
    handle = server.simulator.handle

    def counting(*args: Any, **kwargs: Any) -> Any:
        with lock:
            count[0] += 1
        return handle(*args, **kwargs)

    server.simulator.handle = counting  # type: ignore[method-assign]
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", server.base_url)
    yield count
    server.stop()


@XDIST
def test_shadow_calls_only_the_candidate(
    pytester: pytest.Pytester, sim: list[int], xdist: list[str]
) -> None:
    pytester.makepyprojecttoml(CONFIG)
    data = pytester.mkdir("data")
    (data / "shadow.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in shadow_rows()) + "\n"
    )
    pytester.makepyfile(test_shadow_suite=SUITE)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", *xdist, "--rollout-report=r.json", "--rollout-no-gate"
    )
    result.assert_outcomes(passed=N)
    assert sim[0] == N  # the candidate only; no retries against a healthy persona
    report = json.loads((pytester.path / "r.json").read_text())
    wf = report["workflows"]["support"]
    stable, cand = wf["stable"], wf["candidate"]
    assert stable["shadow"] == N and stable["requests"] == N
    assert cand["shadow"] == 0 and cand["requests"] == N
    # the stable's metrics come from the log
    assert stable["latency_p50_ms"] == pytest.approx(STABLE_LATENCY_MS)
    assert stable["latency_p95_ms"] == pytest.approx(STABLE_LATENCY_MS)
    assert stable["input_tokens"] == N * IN_TOKENS
    assert stable["output_tokens"] == N * OUT_TOKENS
    assert cand["input_tokens"] > 0 and cand["latency_p50_ms"] > 0
    assert wf["verdict"] in ("READY", "BLOCKED", "INCONCLUSIVE")
    assert report["verdict"] == wf["verdict"]
    assert wf["checks"]["language"]["stable_pass_rate"] == 1.0
    result.stdout.fnmatch_lines([f"*stable: {N} shadow*", "rollout verdict: *"])


@XDIST
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"prompt": "ok"}\n{"prompt": "fine"}\n{"prompt": "broken"\n', "data/bad.jsonl:3"),
        ('{"prompt": "ok"}\n{"id": "x"}\n', "data/bad.jsonl:2"),
    ],
    ids=["invalid-json", "no-prompt"],
)
def test_malformed_dataset_is_one_line_collection_error(
    pytester: pytest.Pytester, content: str, needle: str, xdist: list[str]
) -> None:
    pytester.makepyprojecttoml(CONFIG)
    data = pytester.mkdir("data")
    (data / "bad.jsonl").write_text(content)
    pytester.makepyfile(
        test_bad="""
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("w")
        @pytest.mark.parametrize("case", cases("data/bad.jsonl"))
        def test_case(rollout, case):
            rollout.ask(case)
        """
    )
    pytester.makepyfile(test_other="def test_fine():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", *xdist)
    # a collection error stops the session (xdist: the other tests run, the session fails)
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if xdist else pytest.ExitCode.INTERRUPTED)
    out = result.stdout.str()
    assert "Traceback" not in out and "raise " not in out, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "ERROR collecting test_bad.py" in line)
    message = lines[header + 1]
    assert message.startswith("modelrollout: DatasetError: "), message
    assert needle in message, message
    assert lines[header + 2].startswith(("=", "_")), lines[header + 2]  # just that one line
