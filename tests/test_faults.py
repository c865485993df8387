"""Fault matrix: every failure mode of a provider, over real loopback HTTP, both wire formats.

Each case resolves a model through the real config (``resolve_model``), calls it through the
real :class:`ModelRegistry` / :class:`ModelClient` on the :class:`Runner` loop against the
simulator's ``fault-*`` personas (or a closed port / a hanging reply), and asserts

* the classification (``error_kind``) and the call status,
* that it was retried only when retrying can help (attempt count),
* the metric bucket the call lands in (success / fallback / error / timeout),
* that nothing escapes (``call`` returns a result; the error text is one short line).

The last test runs a small workflow suite whose candidates are fault personas through pytester
and checks that the session finishes, writes the JSON report with the right counts and shows
no traceback.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_modelrollout._records import RecordSet
from pytest_modelrollout.config import parse_config, resolve_model
from pytest_modelrollout.metrics import compute
from pytest_modelrollout.providers.base import ChatRequest, ModelSpec
from pytest_modelrollout.providers.client import CallResult, ModelRegistry
from pytest_modelrollout.runner import Runner
from pytest_modelrollout.session import call_record

WIRES = {"openai": "sim", "anthropic": "sim-anthropic"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look an order up",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]
REQ = ChatRequest(
    messages=[{"role": "user", "content": "Where is my order A-1042?"}],
    system="You are a concise support agent.",
    tools=TOOLS,
)
MAX_RETRIES = 2


@dataclass(frozen=True)
class Case:
    """Expected outcome of one fault on one wire."""

    persona: str
    status: str  # ok / error / timeout
    kind: str | None  # error_kind
    attempts: int
    bucket: str  # success / fallback / error / timeout
    note: str = ""


def _c(persona: str, status: str, kind: str | None, attempts: int, note: str = "") -> Case:
    bucket = {"ok": "success", "error": "error", "timeout": "timeout"}[status]
    return Case(persona, status, kind, attempts, bucket, note)


ALL = MAX_RETRIES + 1  # every attempt used: retrying could help
# (persona, wire) -> expected; "*" = both wires
MATRIX: dict[tuple[str, str], Case] = {}
for _wire in WIRES:
    for _case in (
        _c("fault-429", "ok", None, 2, "429 + retry-after: 1 (seconds), then OK"),
        _c("fault-429-date", "ok", None, 2, "429 + retry-after as HTTP-date, then OK"),
        _c("fault-429-noretry", "ok", None, 2, "429 without retry-after, then OK"),
        _c("fault-503-once", "ok", None, 2, "503 once, then OK"),
        _c("fault-500", "error", "server", ALL, "HTTP 500 on every attempt"),
        _c("fault-502", "error", "server", ALL, "HTTP 502 on every attempt"),
        _c("fault-503", "error", "server", ALL, "HTTP 503 on every attempt"),
        _c("fault-504", "error", "server", ALL, "HTTP 504 on every attempt"),
        _c("fault-529", "error", "server", ALL, "Anthropic 529 overloaded_error"),
        _c("fault-html", "error", "server", ALL, "502 with an nginx HTML page"),
        _c("fault-html-200", "error", "bad_response", 1, "200 with an HTML login page"),
        _c("fault-reset", "error", "connection", ALL, "connection reset mid-body"),
        _c("fault-notjson", "error", "bad_response", 1, "200, body not JSON"),
        _c("fault-truncated", "error", "bad_response", 1, "200, truncated JSON"),
        _c("fault-badutf8", "error", "bad_response", 1, "200, invalid UTF-8"),
        _c("fault-error-200", "error", "server", ALL, "200 with a server_error object"),
        _c("fault-no-usage", "ok", None, 1, "valid reply without usage"),
        _c("fault-badargs", "ok", None, 1, "tool-call arguments not JSON"),
        _c("fault-huge", "ok", None, 1, "a 5 MB reply"),
        _c("fault-auth", "error", "auth", 1, "401 echoing the credential"),
        _c("fault-404", "error", "client", 1, "404 model not found"),
    ):
        MATRIX[(_case.persona, _wire)] = _case
# wire-specific shapes
MATRIX[("fault-empty-choices", "openai")] = _c(
    "fault-empty-choices", "error", "bad_response", 1, "choices: []"
)
MATRIX[("fault-empty-choices", "anthropic")] = _c(
    "fault-empty-choices", "ok", None, 1, "content: [] is a valid (empty) Messages reply"
)
MATRIX[("fault-choices-null", "openai")] = _c(
    "fault-choices-null", "error", "rate_limit", ALL, "choices: null + MiniMax base_resp 1002"
)
MATRIX[("fault-choices-null", "anthropic")] = _c(
    "fault-choices-null", "error", "bad_response", 1, "content: null"
)


@pytest.fixture(autouse=True, params=["asyncio", "httpx"])
def network_layer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every fault through both network layers: the asyncio transport (the default) and httpx's
    own (used where a proxy is set, or with MODELROLLOUT_TRANSPORT=httpx)."""
    if request.param == "httpx":
        monkeypatch.setenv("MODELROLLOUT_TRANSPORT", "httpx")
    else:
        monkeypatch.delenv("MODELROLLOUT_TRANSPORT", raising=False)
    return str(request.param)


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    r = Runner()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else can take it) but not listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def _registry(
    runner: Runner, models: dict[str, dict[str, Any]], env: dict[str, str] | None = None
) -> ModelRegistry:
    cfg = parse_config({"models": models})

    def resolve(ref: str) -> ModelSpec:
        return resolve_model(cfg, ref)

    reg = ModelRegistry(resolve, set(), env or {"MODELROLLOUT_BACKOFF_SCALE": "0"})
    runner.register(reg)
    return reg


def _call(runner: Runner, reg: ModelRegistry, ref: str, req: ChatRequest = REQ) -> CallResult:
    # nothing may escape: a ProviderError (or anything else) raised here fails the test
    return runner.run(reg.call(ref, req), timeout=60)


def _bucket(result: CallResult, wire: str) -> str:
    """The metric bucket the call lands in, through the real record -> metrics path."""
    rec = call_record(
        result, source="live", pair_id="t#0", test_id="t", workflow="w", role="candidate",
        model=result.ref, case_id=None,
    )  # fmt: skip
    rd = compute(RecordSet(calls=[rec], checks=[]))["w"].candidate
    counts = {
        "success": rd.successes, "fallback": rd.fallbacks, "error": rd.errors,
        "timeout": rd.timeouts,
    }  # fmt: skip
    assert sum(counts.values()) == rd.requests == 1
    (bucket,) = [k for k, v in counts.items() if v]
    return bucket


def _check_common(result: CallResult) -> None:
    if result.error is not None:
        msg = str(result.error)
        assert msg.startswith(result.error.kind + ":"), msg
        assert "\n" not in msg and len(msg) <= 200, msg
        assert result.response is None
    else:
        assert result.response is not None


@pytest.mark.parametrize(
    ("persona", "wire"),
    sorted(MATRIX),
    ids=[f"{w}-{p}" for p, w in sorted(MATRIX)],
)
def test_fault_matrix(runner: Runner, persona: str, wire: str) -> None:
    expected = MATRIX[(persona, wire)]
    name = f"{wire}-{persona}"
    reg = _registry(
        runner,
        {name: {"provider": WIRES[wire], "model": persona, "max_retries": MAX_RETRIES,
                "timeout_s": 20}},
    )  # fmt: skip
    result = _call(runner, reg, name)
    got = (result.status, result.error_kind, result.attempts)
    assert got == (expected.status, expected.kind, expected.attempts), (name, str(result.error))
    assert reg.client(name).requests_sent == expected.attempts
    assert _bucket(result, wire) == expected.bucket
    assert result.fallback is False and result.served_by == name
    _check_common(result)
    resp = result.response
    if persona == "fault-no-usage":
        assert resp is not None and (resp.text or resp.tool_calls)
        assert (resp.input_tokens, resp.output_tokens) == (None, None)
        assert result.cost_usd is None  # unknown usage: no made-up cost
    elif persona == "fault-badargs":
        assert resp is not None and len(resp.tool_calls) == 1
        tc = resp.tool_calls[0]
        assert tc.name == "lookup" and tc.arguments is None  # recorded as "not JSON"
        if wire == "openai":
            assert tc.raw_arguments == '{"query": "unterminated'
    elif persona == "fault-huge":
        assert resp is not None and len(resp.text) == 5 * 1024 * 1024
    elif persona == "fault-empty-choices" and wire == "anthropic":
        assert resp is not None and resp.text == "" and resp.tool_calls == []


@pytest.mark.parametrize("wire", list(WIRES))
def test_retry_after_is_parsed_from_seconds_and_http_date(runner: Runner, wire: str) -> None:
    models = {
        f"{p}": {"provider": WIRES[wire], "model": p, "max_retries": 0}
        for p in ("fault-429", "fault-429-date", "fault-429-noretry")
    }
    reg = _registry(runner, models)
    secs = _call(runner, reg, "fault-429")
    date = _call(runner, reg, "fault-429-date")
    none = _call(runner, reg, "fault-429-noretry")
    for res in (secs, date, none):
        # no retries allowed: the 429 itself is the result, classified as a rate limit
        assert (res.status, res.error_kind, res.attempts) == ("error", "rate_limit", 1)
        assert _bucket(res, wire) == "error"
    assert secs.error is not None and secs.error.retry_after == 1.0
    assert date.error is not None and date.error.retry_after is not None
    assert 0.0 <= date.error.retry_after <= 2.0  # "now + ~1 s" at 1 s resolution
    assert none.error is not None and none.error.retry_after is None


def test_retry_after_is_honoured(runner: Runner) -> None:
    # retry-after: 1 at back-off scale 0.3 -> the retry waits ~0.3 s, not the jittered back-off
    reg = _registry(
        runner,
        {"ra": {"provider": "sim", "model": "fault-429", "max_retries": 1}},
        env={"MODELROLLOUT_BACKOFF_SCALE": "0.3"},
    )
    t0 = time.perf_counter()
    res = _call(runner, reg, "ra")
    elapsed = time.perf_counter() - t0
    assert res.ok and res.attempts == 2
    assert elapsed >= 0.29
    # the 429 and the wait it asked for are the account's rate limit, not the model's latency
    assert res.latency_ms < 250


@pytest.mark.parametrize("wire", list(WIRES))
def test_read_timeout_is_retried_then_timeout_bucket(runner: Runner, wire: str) -> None:
    reg = _registry(
        runner,
        {"hang": {"provider": WIRES[wire], "model": "fault-hang", "max_retries": 1,
                  "timeout_s": 0.3}},
    )  # fmt: skip
    t0 = time.perf_counter()
    res = _call(runner, reg, "hang")
    elapsed = time.perf_counter() - t0
    assert (res.status, res.error_kind, res.attempts) == ("timeout", "timeout", 2)
    assert _bucket(res, wire) == "timeout"
    assert 0.55 <= elapsed < 5.0
    _check_common(res)


@pytest.mark.parametrize("wire", list(WIRES))
def test_connection_refused(runner: Runner, wire: str, refused_port: int) -> None:
    port = refused_port
    base = f"http://127.0.0.1:{port}" + ("/v1" if wire == "openai" else "")
    reg = _registry(
        runner,
        {"gone": {"provider": wire, "model": "m", "base_url": base, "api_key_env": "NOKEY_X",
                  "max_retries": MAX_RETRIES, "timeout_s": 5}},
        env={"MODELROLLOUT_BACKOFF_SCALE": "0", "NOKEY_X": "k-123456"},
    )  # fmt: skip
    res = _call(runner, reg, "gone")
    assert (res.status, res.error_kind, res.attempts) == ("error", "connection", ALL)
    assert _bucket(res, wire) == "error"
    assert f"127.0.0.1:{port}" in str(res.error)
    assert "k-123456" not in str(res.error)
    _check_common(res)


def test_fault_falls_back_and_lands_in_fallback_bucket(runner: Runner) -> None:
    reg = _registry(
        runner,
        {
            "primary": {"provider": "sim", "model": "fault-503", "max_retries": 1,
                        "fallback": "backup"},
            "backup": {"provider": "sim-anthropic", "model": "stable"},
        },
    )  # fmt: skip
    res = _call(runner, reg, "primary")
    assert res.ok and res.fallback and res.served_by == "backup"
    assert res.attempts == 3  # 2 on the primary, 1 on the fallback
    assert _bucket(res, "openai") == "fallback"


def test_non_retryable_fault_still_falls_back(runner: Runner) -> None:
    reg = _registry(
        runner,
        {
            "primary": {"provider": "sim", "model": "fault-notjson", "fallback": "backup"},
            "backup": {"provider": "sim", "model": "fault-404"},
        },
    )
    res = _call(runner, reg, "primary")
    assert (res.status, res.error_kind, res.attempts) == ("error", "bad_response", 2)
    assert "fallback backup failed too: client" in str(res.error)
    assert _bucket(res, "openai") == "error"


# ------------------------------------------------------------------------ the whole plugin

SUITE = """
import pytest

PROMPTS = ["Where is my order A-1042?", "Can I get a refund for order B-7?",
           "你好，我的订单什么时候到？"]

@pytest.mark.workflow("{wf}", candidate="{model}")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_{wf}(rollout, prompt):
    pair = rollout.ask(prompt, system="You are a concise support agent.")
    pair.expect_length(max_chars=20000)
"""

FAULTS_IN_SUITE = {
    # workflow: (model config, expected candidate bucket counts over 3 requests)
    "f500": ({"provider": "sim", "model": "fault-500", "max_retries": 1}, "error"),
    "f529": ({"provider": "sim-anthropic", "model": "fault-529", "max_retries": 1}, "error"),
    "reset": ({"provider": "sim", "model": "fault-reset", "max_retries": 1}, "error"),
    "notjson": ({"provider": "sim", "model": "fault-notjson"}, "error"),
    "hang": ({"provider": "sim", "model": "fault-hang", "max_retries": 0, "timeout_s": 0.3},
             "timeout"),
    "ratelimited": ({"provider": "sim", "model": "fault-429-noretry"}, "success"),
    "fellback": ({"provider": "sim", "model": "fault-503", "max_retries": 0,
                  "fallback": "sim:good"}, "fallback"),
}  # fmt: skip


def _toml_value(v: Any) -> str:
    return json.dumps(v)


def test_suite_against_fault_personas(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROLLOUT_BACKOFF_SCALE", "0")
    lines = ["[tool.modelrollout]", 'stable = "sim:stable"', 'candidate = "sim:good"']
    for wf, (model, _) in FAULTS_IN_SUITE.items():
        lines.append(f"[tool.modelrollout.models.cand-{wf}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in model.items()]
    pytester.makepyprojecttoml("\n".join(lines) + "\n")
    for wf in FAULTS_IN_SUITE:
        pytester.makepyfile(**{f"test_{wf}": SUITE.format(wf=wf, model=f"cand-{wf}")})
    result = pytester.runpytest("--rollout-report=report.json", "-p", "no:cacheprovider")
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback (most recent call last)" not in out
    assert "INTERNALERROR" not in out
    assert "httpx." not in out  # no library exception reaches the user
    # candidate failures are regressions (stable passes): the failing workflows fail their tests
    outcomes = result.parseoutcomes()
    n_fail = sum(1 for _, b in FAULTS_IN_SUITE.values() if b in ("error", "timeout"))
    assert outcomes.get("failed", 0) == 3 * n_fail
    assert outcomes.get("passed", 0) == 3 * (len(FAULTS_IN_SUITE) - n_fail)
    result.stdout.fnmatch_lines(["*rollout readiness*", "rollout verdict: *"])
    assert result.ret == 1

    report = json.loads((pytester.path / "report.json").read_text())
    assert report["complete"] is True
    assert set(report["workflows"]) == set(FAULTS_IN_SUITE)
    for wf, (_, bucket) in FAULTS_IN_SUITE.items():
        st = report["workflows"][wf]["stable"]
        ca = report["workflows"][wf]["candidate"]
        assert st["requests"] == ca["requests"] == 3, wf
        assert st["success_rate"] == 1.0, wf
        rates = {
            "success": ca["success_rate"], "fallback": ca["fallback_rate"],
            "error": ca["error_rate"], "timeout": ca["timeout_rate"],
        }  # fmt: skip
        assert rates == {k: (1.0 if k == bucket else 0.0) for k in rates}, (wf, rates)
