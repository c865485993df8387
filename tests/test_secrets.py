"""Secrets: a canary API key never appears in any output, and keys go only to their provider.

A whole project runs with canary keys in the environment (``OPENAI_API_KEY`` for an OpenAI
provider pointed at the simulator, and a custom ``api_key_env`` whose name does not look like a
key at all), including models whose failed-auth replies echo the credential back (sim persona
``fault-auth``, both wire formats). It produces every kind of output: terminal at ``-v`` and
``-vv`` with failures and debug logging, JSON, Markdown, ``$GITHUB_STEP_SUMMARY``, HTML,
JUnit XML, cassettes (record mode ``new``) and ``modelrollout show / merge / routes``. Then
every file under the project directory and every captured output is searched for the canaries.

The second part checks where keys are *sent*: a sim model with key variable A whose fallback
is another provider on another host with key variable B; a recording server in place of that
host sees B's key and never A's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from quiet_server import QuietHTTPServer

from pytest_modelrollout import cli
from pytest_modelrollout.sim import get_simulator

CANARY_OPENAI = "sk-canary-openai-5Hq8ZkT2wN4vR7yP"
CANARY_CUSTOM = "plaincanary-9f3e1d7c5b2a48e6"  # no key-like prefix: only exact scrubbing helps
CANARIES = (CANARY_OPENAI, CANARY_CUSTOM)

SUITE = """
import pytest

PROMPTS = ["Where is my order A-1042?", "Can I get a refund for order B-7?",
           "你好，我的订单什么时候到？"]

@pytest.mark.workflow("support")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_support(rollout, prompt):
    pair = rollout.ask(prompt, system="You are a concise support agent.")
    pair.expect_language("same_as_prompt")
    pair.expect_length(max_chars=5)  # fails on both sides: a shared failure

@pytest.mark.workflow("leak_openai", candidate="leaky")
def test_leak_openai(rollout):
    pair = rollout.ask("Where is my order A-1042?")
    pair.expect_length(max_chars=100000)  # the candidate's 401 makes this a regression

@pytest.mark.workflow("leak_anthropic", candidate="leaky-anthropic")
def test_leak_anthropic(candidate):
    reply = candidate.ask("Where is my order A-1042?")
    assert not reply.ok
    print("ERROR TEXT:", reply.error)
    reply.expect_length(max_chars=100000)
"""


def _config(sim_url: str) -> str:
    return f"""
[tool.modelrollout]
stable = "st"
candidate = "ca"

[tool.modelrollout.models.st]
provider = "openai"
model = "stable"
base_url = "{sim_url}/v1"

[tool.modelrollout.models.ca]
provider = "sim"
model = "good"
api_key_env = "MR_CANARY_SECRET"

[tool.modelrollout.models.leaky]
provider = "sim"
model = "fault-auth"
api_key_env = "MR_CANARY_SECRET"

[tool.modelrollout.models.leaky-anthropic]
provider = "sim-anthropic"
model = "fault-auth"
api_key_env = "MR_CANARY_SECRET"
"""


def _everything_under(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


def _assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for canary in CANARIES:
        assert canary.encode() not in data, f"canary {canary[:12]}... leaked in {where}"
        # no fragment long enough to be useful either (e.g. a truncated message)
        assert canary[:16].encode() not in data, f"canary prefix leaked in {where}"


def test_canary_keys_appear_nowhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_OPENAI)
    monkeypatch.setenv("MR_CANARY_SECRET", CANARY_CUSTOM)
    monkeypatch.setenv("MODELROLLOUT_BACKOFF_SCALE", "0")
    summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyprojecttoml(_config(get_simulator().base_url))
    pytester.makepyfile(test_suite=SUITE)

    outputs: dict[str, str] = {}
    first = pytester.runpytest(
        "-k", "not leak_anthropic", "-v", "-rA", "-s", "--log-cli-level=DEBUG",
        "--rollout-record=new",
        "--rollout-report=r1.json", "--rollout-markdown=r1.md", "--rollout-html=r1.html",
        "--junitxml=j1.xml", "-p", "no:cacheprovider",
    )  # fmt: skip
    outputs["run -v"] = first.stdout.str() + first.stderr.str()
    assert first.ret == 1
    first.assert_outcomes(failed=1, xfailed=3)
    # the auth failure is reported -- classified, without the key
    assert "auth: HTTP 401" in outputs["run -v"]

    # the other shard (for merge)
    second = pytester.runpytest(
        "-k", "leak_anthropic", "-vv", "-s", "--tb=long", "--rollout-record=new",
        "--rollout-report=r2.json", "--junitxml=j2.xml", "-p", "no:cacheprovider",
    )  # fmt: skip
    outputs["run -vv"] = second.stdout.str() + second.stderr.str()
    assert second.ret == 1
    second.assert_outcomes(failed=1)
    assert "ERROR TEXT: auth: HTTP 401: invalid x-api-key: ***" in outputs["run -vv"]

    # cassettes were written (and hold replies, not headers)
    cassettes = list((pytester.path / "model_cassettes").rglob("*.json"))
    assert cassettes
    for path in cassettes:
        json.loads(path.read_text())

    # the command line tools on those reports
    capsys.readouterr()
    codes = {
        "show": cli.main(["show", str(pytester.path / "r1.json")]),
        "merge": cli.main(["merge", str(pytester.path / "r1.json"), str(pytester.path / "r2.json"),
                           "-o", str(pytester.path / "all.json")]),
        "routes": cli.main(["routes", str(pytester.path / "r1.json"),
                            "-o", str(pytester.path / "routes.json")]),
    }  # fmt: skip
    captured = capsys.readouterr()
    outputs["modelrollout show/merge/routes"] = captured.out + captured.err
    assert codes["show"] in (0, 1) and codes["merge"] in (0, 1) and codes["routes"] == 0, (
        codes,
        outputs["modelrollout show/merge/routes"],
    )
    assert "rollout verdict" in outputs["modelrollout show/merge/routes"]

    written = {p.name for p, _ in _everything_under(pytester.path)}
    for name in ("r1.json", "r1.md", "r1.html", "j1.xml", "r2.json", "j2.xml", "all.json",
                 "routes.json", "step_summary.md"):  # fmt: skip
        assert name in written, name
    for where, text in outputs.items():
        _assert_clean(text, where)
    for path, data in _everything_under(pytester.path):
        _assert_clean(data, str(path.relative_to(pytester.path)))


# ----------------------------------------------------------------- keys go to their provider


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                req = json.loads(self.rfile.read(length) or b"{}")
                with recorder.lock:
                    recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({
                    "id": "x", "object": "chat.completion", "model": req.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Your order ships today."}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 6},
                }).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    rec = _Recorder()
    try:
        yield rec
    finally:
        rec.close()


def test_fallback_gets_its_own_key_only(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, recorder: _Recorder
) -> None:
    key_a, key_b = "key-A-primary-3c9d1e7f", "key-B-fallback-8a2b6c4d"
    monkeypatch.setenv("MR_KEY_A", key_a)
    monkeypatch.setenv("MR_KEY_B", key_b)
    monkeypatch.setenv("MODELROLLOUT_BACKOFF_SCALE", "0")
    pytester.makepyprojecttoml(
        f"""
        [tool.modelrollout]
        stable = "sim:stable"
        candidate = "primary"

        [tool.modelrollout.models.primary]
        provider = "sim"
        model = "fault-503"
        api_key_env = "MR_KEY_A"
        max_retries = 1
        fallback = "other"

        [tool.modelrollout.models.other]
        provider = "openai"
        model = "other-model"
        base_url = "{recorder.url}/v1"
        api_key_env = "MR_KEY_B"
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.workflow("w")
        @pytest.mark.parametrize("i", range(3))
        def test_ask(candidate, i):
            reply = candidate.ask(f"Where is my order A-{i}?")
            assert reply.ok and reply.fallback, reply.error
            assert reply.text == "Your order ships today."
        """
    )
    result = pytester.runpytest("--rollout-no-gate", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert len(recorder.seen) == 3
    for headers in recorder.seen:
        assert headers.get("authorization") == f"Bearer {key_b}"
        assert key_a not in json.dumps(headers)
