"""Provider replies parsed without a network: recorded bodies, error classification, requests."""

from __future__ import annotations

import email.utils
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_modelrollout._exceptions import (
    AuthError,
    BadResponseError,
    ClientError,
    ProviderError,
    RateLimitError,
    ServerError,
    TimeoutError_,
)
from pytest_modelrollout.providers import anthropic, openai
from pytest_modelrollout.providers.base import ChatRequest, ModelSpec
from pytest_modelrollout.providers.client import backoff_delay, make_provider
from pytest_modelrollout.providers.presets import PRESETS, sim_base_url

DATA = Path(__file__).parent / "data" / "provider_replies"
FIXTURES = sorted(DATA.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _body(d: dict[str, Any]) -> bytes:
    if "body_text" in d:
        return str(d["body_text"]).encode("utf-8")
    return json.dumps(d["body"], ensure_ascii=False).encode("utf-8")


def _parse(d: dict[str, Any], secrets: tuple[str, ...] = ()) -> Any:
    mod = anthropic if d["wire"] == "anthropic" else openai
    return mod.parse_response(d["status"], d["headers"], _body(d), secrets=secrets, now=0.0)


def test_fixture_set_is_complete() -> None:
    names = {p.stem for p in FIXTURES}
    for needed in (
        "openai_text", "openai_tool_call", "deepseek_reasoner", "qwen_dashscope",
        "moonshot_usage_in_choice", "zhipu_glm", "minimax_ok", "minimax_error", "doubao_ark",
        "gemini_openai_compat", "openrouter_ok", "openrouter_error_in_200", "ollama_v1", "vllm",
        "llamacpp_server", "anthropic_text", "anthropic_tool_use", "anthropic_error_400",
        "anthropic_overloaded_529", "openai_error_401", "openai_error_404", "openai_error_429",
    ):  # fmt: skip
        assert needed in names


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture(path: Path) -> None:
    d = _load(path)
    expect = d["expect"]
    if "error" in expect:
        with pytest.raises(ProviderError) as info:
            _parse(d)
        err = info.value
        assert err.kind == expect["error"], str(err)
        msg = str(err)
        assert len(msg) < 200 and "\n" not in msg
        assert msg.startswith(err.kind + ":")
        if "contains" in expect:
            assert expect["contains"] in msg
        if "not_contains" in expect:
            assert expect["not_contains"] not in msg
        if "retry_after" in expect:
            assert err.retry_after == pytest.approx(expect["retry_after"])
        if "retryable" in expect:
            assert err.retryable is expect["retryable"]
        for key in ("stated_rpm", "stated_tokens"):  # the limits the 429's headers state
            if key in expect:
                assert getattr(err, key) == expect[key], key
        return
    resp = _parse(d)
    for key in ("text", "finish_reason", "input_tokens", "limited_input_tokens",
                "output_tokens", "model_id", "stated_rpm", "stated_tokens"):
        if key in expect:
            assert getattr(resp, key) == expect[key], key
    if "tool_calls" in expect:
        assert len(resp.tool_calls) == len(expect["tool_calls"])
        for got, want in zip(resp.tool_calls, expect["tool_calls"], strict=True):
            assert got.name == want["name"]
            assert got.arguments == want["arguments"]
            if "raw_arguments" in want:
                assert got.raw_arguments == want["raw_arguments"]
            if "id" in want:
                assert got.id == want["id"]
            if got.arguments is not None:
                assert json.loads(got.raw_arguments or "null") == got.arguments
    assert resp.raw is not None


# ------------------------------------------------------------------------------ classification

J = {"content-type": "application/json"}


def _err(status: int, body: Any = None, headers: dict[str, str] | None = None) -> ProviderError:
    raw = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    with pytest.raises(ProviderError) as info:
        openai.parse_response(status, headers or J, raw, secrets=("sk-canary-123456",), now=0.0)
    return info.value


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ClientError),
        (401, AuthError),
        (402, ClientError),
        (403, AuthError),
        (404, ClientError),
        (408, TimeoutError_),
        (409, ClientError),
        (422, ClientError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (529, ServerError),
        (302, BadResponseError),
    ],
)
def test_status_classification(status: int, cls: type[ProviderError]) -> None:
    err = _err(status, {"error": {"message": "boom"}})
    assert type(err) is cls
    assert err.status_code == status
    assert err.retryable is (cls in (RateLimitError, ServerError, TimeoutError_))
    assert f"HTTP {status}" in str(err)


def test_404_plain_is_not_model_not_found() -> None:
    err = _err(404, {"error": {"message": "Invalid URL (POST /v1/chat/completion)"}})
    assert "model not found" not in str(err)
    err = _err(404, {"error": {"code": "1211", "message": "模型不存在，请检查模型代码。"}})
    assert "model not found" in str(err)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json at all", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"", "empty"),
        (b"<html><body>hi</body></html>", "HTML"),
        (b"[1, 2]", "not an object"),
        (b'{"choices": null}', "choices"),
        (b'{"choices": [null]}', "choices"),
        (b'{"error": "upstream exploded"}', "upstream exploded"),
    ],
)
def test_bad_bodies_with_200(body: bytes, why: str) -> None:
    with pytest.raises(BadResponseError) as info:
        openai.parse_response(200, {}, body)
    assert why in str(info.value)


def test_body_size_limit() -> None:
    big = b" " * (openai.MAX_BODY_BYTES + 1)
    with pytest.raises(BadResponseError, match="too large"):
        openai.parse_response(200, J, big)


def test_retry_after_forms() -> None:
    assert openai.parse_retry_after({"Retry-After": "3"}) == 3.0
    assert openai.parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert openai.parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(1000.0 + 42, usegmt=True)
    assert openai.parse_retry_after({"retry-after": date}, now=1000.0) == pytest.approx(42)
    assert openai.parse_retry_after({"retry-after": "soon"}) is None
    assert openai.parse_retry_after({}) is None
    err = _err(503, {"error": {"message": "busy"}}, {"retry-after": "2", **J})
    assert err.retry_after == 2.0


def test_backoff_delay() -> None:
    assert backoff_delay(1, 5.0) == 5.0
    assert backoff_delay(1, 500.0) == 60.0
    assert backoff_delay(1, 4.0, scale=0.5) == 2.0
    for attempt in range(1, 12):
        d = backoff_delay(attempt, None)
        assert 0.0 <= d <= min(20.0, 0.5 * 2 ** (attempt - 1))
    assert backoff_delay(3, None, scale=0.0) == 0.0


# ------------------------------------------------------------------------------ secrets

CANARY = "sk-canary-0123456789abcdef"


@pytest.mark.parametrize("status", [200, 400, 401, 429, 500])
def test_key_never_in_messages(status: int) -> None:
    body = {
        "error": {"message": f"bad key {CANARY} / Bearer {CANARY} / key=AIzaSyABCDEFGHIJKLMNOP"}
    }
    for mod in (openai, anthropic):
        with pytest.raises(ProviderError) as info:
            mod.parse_response(status, J, json.dumps(body).encode(), secrets=(CANARY,))
        msg = str(info.value)
        assert CANARY not in msg
        assert "0123456789" not in msg
        assert "AIzaSyABCDEF" not in msg


def test_scrub_patterns() -> None:
    text = "Authorization: Bearer abc.def-ghi and sk-ant-api03-XYZxyz and secretvalue"
    out = openai.scrub(text, ("secretvalue",))
    assert "abc.def" not in out and "XYZxyz" not in out and "secretvalue" not in out


def test_message_is_one_short_line() -> None:
    err = _err(400, {"error": {"message": "line one\nline two " + "x" * 1000}})
    assert "\n" not in str(err) and len(str(err)) < 200


# ------------------------------------------------------------------------------ requests


def _spec(wire: str = "openai", **kw: Any) -> ModelSpec:
    base = {"openai": "https://api.example.com/v1", "anthropic": "https://api.anthropic.com"}
    return ModelSpec(ref="m", provider=wire, wire=wire, model="model-x", base_url=base[wire], **kw)


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "refund",
            "description": "Refund an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]


def test_openai_request() -> None:
    p = openai.OpenAIProvider(_spec(params={"temperature": 0, "stream": True}))
    req = ChatRequest(
        messages=[{"role": "user", "content": "hi"}],
        system="be brief",
        tools=TOOLS,
        response_format={"type": "json_object"},
        params={"max_tokens": 50},
    )
    body = p.build_body(req)
    assert body["model"] == "model-x"
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][1] == {"role": "user", "content": "hi"}
    assert body["tools"] == TOOLS
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0 and body["max_tokens"] == 50
    assert "stream" not in body
    assert p.url() == "https://api.example.com/v1/chat/completions"
    h = p.headers("sk-key", 2)
    assert h["authorization"] == "Bearer sk-key"
    assert h["x-modelrollout-attempt"] == "2"
    assert "authorization" not in p.headers(None, 1)


def test_anthropic_request_translation() -> None:
    p = anthropic.AnthropicProvider(_spec("anthropic", params={"temperature": 0.2, "seed": 1}))
    req = ChatRequest(
        messages=[
            {"role": "user", "content": "refund A1"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "refund", "arguments": '{"order_id": "A1"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
            {"role": "user", "content": "thanks"},
        ],
        system="be brief",
        tools=TOOLS,
        response_format={"type": "json_object"},
        params={"tool_choice": {"type": "function", "function": {"name": "refund"}}},
    )
    body = p.build_body(req)
    assert body["max_tokens"] == 1024
    assert body["system"].startswith("be brief") and "JSON" in body["system"]
    assert body["tools"] == [
        {
            "name": "refund",
            "description": "Refund an order",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "refund"}
    assert body["temperature"] == 0.2 and "seed" not in body and "response_format" not in body
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "refund", "input": {"order_id": "A1"}}
    ]
    assert msgs[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": "done",
    }
    assert msgs[2]["content"][1] == {"type": "text", "text": "thanks"}
    h = p.headers("key-1", 1)
    assert h["x-api-key"] == "key-1" and h["anthropic-version"] == "2023-06-01"
    assert "authorization" not in h


@pytest.mark.parametrize(
    ("choice", "want"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
    ],
)
def test_anthropic_tool_choice(choice: str, want: dict[str, Any]) -> None:
    assert anthropic.translate_tool_choice(choice) == want


def test_anthropic_url_no_double_v1() -> None:
    assert (
        anthropic.messages_url("https://api.anthropic.com")
        == "https://api.anthropic.com/v1/messages"
    )
    assert anthropic.messages_url("http://h:1/v1/") == "http://h:1/v1/messages"
    assert anthropic.messages_url("http://h:1/anthropic") == "http://h:1/anthropic/v1/messages"


def test_anthropic_max_tokens_param() -> None:
    body = anthropic.build_body(
        "m", ChatRequest(messages=[{"role": "user", "content": "x"}], params={"max_tokens": 77}), {}
    )
    assert body["max_tokens"] == 77


def test_anthropic_prompt_cache_breakpoints_reach_the_wire() -> None:
    """A team that caches its long system prompt in production marks the breakpoint on the
    part (``cache_control``); the request the plugin sends keeps it, or the candidate's
    latency and its input tokens a minute are measured without the cache it will run with."""
    policy = {"type": "text", "text": "退货政策：" * 400, "cache_control": {"type": "ephemeral"}}
    req = ChatRequest(messages=[
        {"role": "system", "content": [{"type": "text", "text": "You answer refunds."}, policy]},
        {"role": "user", "content": [
            {"type": "text", "text": "order history ...", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Can B-2041 be refunded?"}]},
    ], system="Be brief.")
    body = anthropic.build_body("m", req, {})
    assert body["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "You answer refunds."}, policy]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "order history ...", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Can B-2041 be refunded?"}]
    # without a breakpoint the system prompt stays one text, as before
    plain = anthropic.build_body("m", ChatRequest(messages=[
        {"role": "system", "content": [{"type": "text", "text": "You answer refunds."}]},
        {"role": "user", "content": "hi"}], system="Be brief."), {})
    assert plain["system"] == "Be brief.\n\nYou answer refunds."


# ------------------------------------------------------------------------------ presets


def test_presets() -> None:
    want = {
        "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        "anthropic": ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
        "qwen": (
            "openai",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
        ),
        "zhipu": ("openai", "https://open.bigmodel.cn/api/paas/v4", None),
        "doubao": ("openai", "https://ark.cn-beijing.volces.com/api/v3", "ARK_API_KEY"),
        "gemini": (
            "openai",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "GEMINI_API_KEY",
        ),
        "ollama": ("openai", "http://localhost:11434/v1", None),
        "vllm": ("openai", "http://localhost:8000/v1", None),
        "llamacpp": ("openai", "http://localhost:8080/v1", None),
    }
    for name, (wire, url, key) in want.items():
        p = PRESETS[name]
        assert p.wire == wire and p.base_url == url
        if key is not None or name in ("ollama", "vllm", "llamacpp"):
            assert p.api_key_env == key
    for name in ("deepseek", "moonshot", "minimax", "openrouter"):
        assert PRESETS[name].api_key_env and PRESETS[name].base_url
        assert PRESETS[name].default_prices("any") is None
    assert PRESETS["vllm"].optional_api_key_env == "VLLM_API_KEY"
    assert PRESETS["sim"].wire == "openai" and PRESETS["sim-anthropic"].wire == "anthropic"
    assert PRESETS["sim"].default_prices("stable") == (0.15, 0.60)
    assert PRESETS["sim"].default_prices("good?latency_ms=5") == (0.10, 0.40)
    assert PRESETS["openai"].default_prices("gpt-4o") is None


def test_sim_base_url_from_env() -> None:
    env = {"MODELROLLOUT_SIM_URL": "http://127.0.0.1:9999/"}
    assert sim_base_url("openai", env) == "http://127.0.0.1:9999/v1"
    assert sim_base_url("anthropic", env) == "http://127.0.0.1:9999"
    env = {"MODELROLLOUT_SIM_URL": "http://127.0.0.1:9999/v1"}
    assert sim_base_url("openai", env) == "http://127.0.0.1:9999/v1"
    assert PRESETS["sim-anthropic"].resolve_base_url(env) == "http://127.0.0.1:9999"


def test_make_provider() -> None:
    assert isinstance(make_provider(_spec("anthropic")), anthropic.AnthropicProvider)
    assert isinstance(make_provider(_spec("openai")), openai.OpenAIProvider)
