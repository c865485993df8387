"""The built-in simulator over real HTTP on loopback (httpx), both wire formats.

Latency is switched off (``MODELROLLOUT_SIM_LATENCY_SCALE=0``) except where it is the subject;
latency *distributions* are checked on the computed delays, without sleeping.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from pytest_modelrollout.sim import PERSONAS, SimServer, get_simulator
from pytest_modelrollout.sim.personas import LATENCY_SCALE_ENV
from pytest_modelrollout.sim.server import Simulator
from pytest_modelrollout.sim.text import detect_language

# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def _no_latency() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LATENCY_SCALE_ENV, "0")
        yield


@pytest.fixture(scope="module")
def sim() -> SimServer:
    return get_simulator()


@pytest.fixture(scope="module")
def http(sim: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        yield client


def chat(
    http: httpx.Client,
    model: str,
    prompt: str | list[dict[str, Any]],
    *,
    system: str | None = None,
    attempt: int | None = None,
    **extra: Any,
) -> httpx.Response:
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system:
        msgs = [{"role": "system", "content": system}, *msgs]
    headers = {} if attempt is None else {"x-modelrollout-attempt": str(attempt)}
    return http.post(
        "/v1/chat/completions", json={"model": model, "messages": msgs, **extra}, headers=headers
    )


def content(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"] or "")


# 60 prompts: 20 English, 20 Chinese, 20 mixed

_EN = [
    "Where is my order A-{n}? It was supposed to arrive on Monday.",
    "I want a refund for order #{n}, the jacket I got was damaged. It cost ${n2}.99.",
    "How do I reset my password? I can't log in to account {n}.",
    "Why was I charged twice for my subscription this month? Invoice {n}.",
    "The app keeps crashing when I open the settings page on my phone (build {n}).",
]
_ZH = [
    "你好，我的订单 A-{n} 什么时候到？",
    "我想退货，订单号 #{n}，商品有破损，花了 {n2}.50 元。",
    "怎么重置密码？我登录不了账户 {n}。",
    "为什么这个月的订阅扣了两次款？发票号 {n}。",
    "应用 {n} 版本一打开设置页面就闪退，怎么办？",
]
_MIX = [
    "帮我 check 一下 order A-{n} 的 delivery status 好吗",
    "我的 refund request 还没有 process，订单号 {n}",
    "这个 bug 在 login page 上一直出现（第 {n} 次），能帮我 debug 一下吗",
    "请问 subscription {n} 的 billing cycle 是怎么计算的",
    "帮我 review 一下 feature {n} 的 design document",
]


def prompts() -> list[str]:
    out: list[str] = []
    for bank in (_EN, _ZH, _MIX):
        for i in range(20):
            out.append(bank[i % len(bank)].format(n=1000 + 37 * i, n2=10 + i))
    return out


PROMPTS = prompts()
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order's status by its order id",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string"},
                    "include_items": {"type": "boolean"},
                },
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_flight",
            "description": "Book a flight between two cities",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "destination": {"type": "string"},
                    "date": {"type": "string"},
                    "passengers": {"type": "integer", "minimum": 1},
                    "cabin": {"type": "string", "enum": ["economy", "business"]},
                },
                "required": ["origin", "destination", "date", "passengers"],
            },
        },
    },
]
TOOL_PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
_CITIES = ["Paris", "London", "Berlin", "Tokyo", "Madrid", "Sydney"]
_ZH_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都"]


def tool_prompts() -> list[str]:
    out: list[str] = []
    for i in range(20):
        c, z = _CITIES[i % 6], _ZH_CITIES[i % 6]
        out += [
            f"What's the weather like in {c} today?" if i % 2 else f"{z}今天天气怎么样？",
            f"Where is my order B-{2000 + i}?" if i % 2 else f"帮我查一下订单 B-{2000 + i} 的物流",
            f"Book a flight from {c} to {_CITIES[(i + 1) % 6]} on 2025-04-{i + 1:02d} for {1 + i % 3} people",
        ]
    return out


REFUND_SCHEMA: dict[str, Any] = {
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"],
        },
        "Reason": {"type": "string", "enum": ["damaged", "late", "wrong_item", "other"]},
    },
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number", "minimum": 0},
        "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "reason": {"$ref": "#/$defs/Reason"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
        "urgent": {"type": "boolean"},
        "language": {"type": "string"},
    },
    "required": ["order_id", "amount", "reason", "items"],
    "additionalProperties": False,
}


def validate(obj: Any, schema: dict[str, Any]) -> None:
    """jsonschema.validate without re-checking the schema on every call (that is slow)."""
    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        jsonschema.Draft202012Validator.check_schema(schema)
        _VALIDATORS[key] = jsonschema.Draft202012Validator(schema)
    _VALIDATORS[key].validate(obj)


_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "refund", "schema": schema}}


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


# ------------------------------------------------------------------------------------ server


def test_singleton_and_models(sim: SimServer, http: httpx.Client) -> None:
    assert get_simulator() is sim
    assert sim.base_url.startswith("http://127.0.0.1:")
    r = http.get("/v1/models")
    assert r.status_code == 200
    ids = {m["id"] for m in r.json()["data"]}
    for name in (
        "stable",
        "good",
        "verbose",
        "slow",
        "flaky",
        "sloppy-json",
        "wrong-language",
        "bad-tools",
        "fault-429",
        "fault-hang",
    ):
        assert name in ids
        assert name in PERSONAS
    assert r.headers["content-length"] == str(len(r.content))


def test_private_server_stops() -> None:
    with SimServer() as s:
        r = httpx.post(
            f"{s.base_url}/v1/chat/completions",
            json={"model": "stable", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.base_url}/v1/models", timeout=1)


def test_keep_alive_and_concurrency(sim: SimServer) -> None:
    errors: list[str] = []
    limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
    client = httpx.Client(base_url=sim.base_url, timeout=10, limits=limits)

    def worker(i: int) -> None:
        try:
            for j in range(3):
                r = chat(client, "stable?latency_ms=200&jitter=0", f"question {i} {j}")
                if r.status_code != 200:
                    errors.append(r.text)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    t0 = time.perf_counter()
    with client:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    # 192 calls of 200 ms each: served concurrently over kept-alive connections
    assert time.perf_counter() - t0 < 3


def test_bad_requests(http: httpx.Client) -> None:
    r = chat(http, "no-such-persona", "hi")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = chat(http, "stable?nonsense=1", "hi")
    assert r.status_code == 400
    assert "nonsense" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    r = http.post(
        "/v1/messages",
        json={"model": "nope", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"


# ------------------------------------------------------------------------------------ wire


def test_openai_shape(http: httpx.Client) -> None:
    r = chat(http, "stable", "How do I reset my password?")
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "stable"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert "password" in choice["message"]["content"].lower()
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["completion_tokens"] > 20
    words = len(choice["message"]["content"].split())
    assert 0.9 * words <= u["completion_tokens"] <= 1.8 * words


def test_anthropic_shape_and_tools(http: httpx.Client) -> None:
    body = {
        "model": "stable",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "You are a support agent."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "你好，我的订单什么时候到？"}]}
        ],
    }
    r = http.post("/v1/messages", json=body)
    assert r.status_code == 200
    m = r.json()
    assert m["type"] == "message" and m["role"] == "assistant"
    assert m["id"].startswith("msg_")
    assert m["stop_reason"] == "end_turn"
    assert m["content"][0]["type"] == "text"
    assert detect_language(m["content"][0]["text"]) == "zh"
    assert set(m["usage"]) == {"input_tokens", "output_tokens"}
    assert m["usage"]["output_tokens"] >= 0.8 * sum(
        1 for ch in m["content"][0]["text"] if "\u4e00" <= ch <= "\u9fff"
    )

    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "input_schema": t["function"]["parameters"],
        }
        for t in TOOLS
    ]
    r = http.post(
        "/v1/messages",
        json={
            "model": "stable",
            "max_tokens": 256,
            "tools": tools,
            "system": "Use tools.",
            "messages": [{"role": "user", "content": "What's the weather in Tokyo?"}],
        },
    )
    m = r.json()
    assert m["stop_reason"] == "tool_use"
    use = next(b for b in m["content"] if b["type"] == "tool_use")
    assert use["name"] == "get_weather"
    assert use["input"]["city"] == "Tokyo"

    # tool result -> a text answer
    r = http.post(
        "/v1/messages",
        json={
            "model": "stable",
            "max_tokens": 256,
            "tools": tools,
            "messages": [
                {"role": "user", "content": "What's the weather in Tokyo?"},
                {"role": "assistant", "content": [use]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": use["id"],
                            "content": "22°C and sunny",
                        }
                    ],
                },
            ],
        },
    )
    m = r.json()
    assert m["stop_reason"] == "end_turn"
    assert "22°C and sunny" in m["content"][0]["text"]


def test_same_reply_on_both_wires(http: httpx.Client) -> None:
    prompt = "I want a refund for order #4411, it arrived damaged."
    a = content(chat(http, "stable", prompt, system="Be brief."))
    r = http.post(
        "/v1/messages",
        json={
            "model": "stable",
            "max_tokens": 1000,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": prompt}],
        },
    )
    assert r.json()["content"][0]["text"] == a


def test_max_tokens_truncates(http: httpx.Client) -> None:
    r = chat(http, "stable", "How do I reset my password?", max_tokens=10)
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 11


# ------------------------------------------------------------------------------------ determinism


def test_determinism(http: httpx.Client) -> None:
    for p in PROMPTS[::7]:
        for persona in ("stable", "verbose", "sloppy-json", "wrong-language"):
            a = chat(
                http, persona, p, system="Reply with JSON only." if "json" in persona else None
            )
            b = chat(
                http, persona, p, system="Reply with JSON only." if "json" in persona else None
            )
            assert content(a) == content(b)
            assert a.json()["usage"] == b.json()["usage"]
    # attempt does not change a stable reply
    assert content(chat(http, "stable", PROMPTS[0], attempt=2)) == content(
        chat(http, "stable", PROMPTS[0])
    )


def test_latency_is_deterministic_per_attempt() -> None:
    s = Simulator()
    body = json.dumps({"model": "stable", "messages": [{"role": "user", "content": "hello there"}]})
    d0 = s.handle("openai", body.encode(), {}).delay_s
    assert d0 == 0.0  # scale 0 in this module
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LATENCY_SCALE_ENV, "1")
        a = s.handle("openai", body.encode(), {}).delay_s
        b = s.handle("openai", body.encode(), {}).delay_s
        c = s.handle("openai", body.encode(), {"x-modelrollout-attempt": "1"}).delay_s
        assert a == b > 0
        assert a != c


# ------------------------------------------------------------------------------------ personas


def _delays(persona: str) -> list[float]:
    s = Simulator()
    out = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LATENCY_SCALE_ENV, "1")
        for i in range(400):
            body = {
                "model": persona,
                "messages": [{"role": "user", "content": f"q{i} {PROMPTS[i % 60]}"}],
            }
            resp = s.handle("openai", json.dumps(body).encode(), {})
            out.append(resp.delay_s * 1000)
    return out


def p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * len(xs))]


def test_latency_profiles() -> None:
    stable, good, slow = _delays("stable"), _delays("good"), _delays("slow")
    assert 90 <= statistics.median(stable) <= 165
    assert p95(stable) < 3 * statistics.median(stable)
    assert statistics.median(good) < statistics.median(stable)
    assert 3.0 <= p95(slow) / p95(stable) <= 5.0
    assert abs(statistics.median(slow) - statistics.median(stable)) < 36
    fixed = _delays("stable?latency_ms=100&jitter=0")
    assert set(fixed) == {100.0}


def test_latency_is_real_and_scaled(http: httpx.Client) -> None:
    t0 = time.perf_counter()
    content(chat(http, "stable?latency_ms=150&jitter=0", "hello"))  # explicit: not scaled
    assert time.perf_counter() - t0 >= 0.14
    t0 = time.perf_counter()
    content(chat(http, "slow", "hello again"))  # scale 0: no waiting
    assert time.perf_counter() - t0 < 0.1
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LATENCY_SCALE_ENV, "3")
        t0 = time.perf_counter()
        content(chat(http, "stable", "hello"))
        assert time.perf_counter() - t0 >= 0.09  # ~120 ms x 3


def _stable_language_ok(reply: str, prompt: str) -> bool:
    want, got = detect_language(prompt), detect_language(reply)
    return got == want or (want == "mixed" and got == "zh")


def test_reply_language(http: httpx.Client) -> None:
    assert [detect_language(p) for p in PROMPTS] == ["en"] * 20 + ["zh"] * 20 + ["mixed"] * 20
    for persona in ("stable", "good"):
        for p in PROMPTS:
            reply = content(chat(http, persona, p))
            assert _stable_language_ok(reply, p), (persona, p, reply)
    wrong = [not _stable_language_ok(content(chat(http, "wrong-language", p)), p) for p in PROMPTS]
    assert 0.65 <= rate(wrong) <= 0.95


def test_reply_language_with_plugin_detector(http: httpx.Client) -> None:
    language = pytest.importorskip("pytest_modelrollout.language")
    for p in PROMPTS[::3]:
        ok, detail = language.language_matches(
            "same_as_prompt", content(chat(http, "stable", p)), p
        )
        assert ok, (p, detail)
    zh = content(chat(http, "stable", "帮我 check 一下 order A-1001 的 delivery status 好吗"))
    assert language.language_matches("mixed", zh)[0]


def test_lengths(http: httpx.Client) -> None:
    ratios_v, ratios_g = [], []
    for p in PROMPTS:
        s = len(content(chat(http, "stable", p)))
        ratios_v.append(len(content(chat(http, "verbose", p))) / s)
        ratios_g.append(len(content(chat(http, "good", p))) / s)
    assert 2.4 <= statistics.median(ratios_v) <= 3.1
    assert min(ratios_v) >= 2.0
    assert 0.7 <= statistics.median(ratios_g) < 1.0
    assert max(ratios_g) <= 1.0


def test_json_schema_valid_for_good_personas(http: httpx.Client) -> None:
    rf = response_format(REFUND_SCHEMA)
    for persona in ("stable", "good", "verbose", "slow", "wrong-language", "bad-tools"):
        for p in PROMPTS[::2]:
            obj = json.loads(
                content(chat(http, persona, p, system="Reply with JSON only.", response_format=rf))
            )
            validate(obj, REFUND_SCHEMA)
    obj = json.loads(
        content(
            chat(
                http,
                "stable",
                "Order A-9921 arrived damaged, please refund $49.99 to jo@example.com",
                system="Reply with JSON only.",
                response_format=rf,
            )
        )
    )
    assert obj["order_id"] == "A-9921"
    assert obj["amount"] == 49.99
    assert obj["email"] == "jo@example.com"
    assert obj["reason"] == "damaged"


def test_json_without_schema(http: httpx.Client) -> None:
    generic = json.loads(
        content(chat(http, "stable", "你好，我的订单什么时候到？", system="Reply with JSON only."))
    )
    assert set(generic) == {"answer", "language"}
    assert generic["language"] == "zh"
    embedded = {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["order_id", "amount"],
    }
    obj = json.loads(
        content(
            chat(
                http,
                "stable",
                "Refund 12.50 for order #7731 please",
                system="Return JSON matching this schema: " + json.dumps(embedded),
            )
        )
    )
    validate(obj, embedded)
    assert obj == {"order_id": "7731", "amount": 12.5}
    obj = json.loads(
        content(
            chat(
                http,
                "stable",
                "Refund 12.50 for order A-7731",
                system="Extract JSON with keys order_id, amount and currency.",
            )
        )
    )
    assert set(obj) == {"order_id", "amount", "currency"}


def test_sloppy_json_rates(http: httpx.Client) -> None:
    kinds = []
    for p in PROMPTS:
        text = content(chat(http, "sloppy-json", p, system="Reply with JSON only."))
        try:
            json.loads(text)
            kinds.append("clean")
        except ValueError:
            if text.startswith("```json"):
                kinds.append("fence")
            elif text.startswith(("Sure", "好的")):
                kinds.append("prose")
            else:
                kinds.append("broken")
    n = len(kinds)
    assert 0.22 <= kinds.count("fence") / n <= 0.48
    assert 0.05 <= kinds.count("prose") / n <= 0.27
    assert 0.05 <= kinds.count("broken") / n <= 0.27
    assert 0.2 <= kinds.count("clean") / n <= 0.5


def _tool_call(http: httpx.Client, persona: str, prompt: str) -> dict[str, Any]:
    r = chat(http, persona, prompt, tools=TOOLS)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", (prompt, choice)
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"]
    return dict(call["function"])


def _valid(fn: dict[str, Any]) -> bool:
    try:
        args = json.loads(fn["arguments"])
        validate(args, TOOL_PARAMS[fn["name"]])
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_tool_calls(http: httpx.Client) -> None:
    expected = ["get_weather", "lookup_order", "book_flight"]
    for persona in ("stable", "good"):
        for i, p in enumerate(tool_prompts()):
            fn = _tool_call(http, persona, p)
            assert fn["name"] == expected[i % 3], p
            assert _valid(fn), (p, fn)
    fn = _tool_call(http, "stable", "Book a flight from Paris to London on 2025-04-02 for 2 people")
    assert json.loads(fn["arguments"]) == {
        "origin": "Paris",
        "destination": "London",
        "date": "2025-04-02",
        "passengers": 2,
    }
    assert json.loads(_tool_call(http, "stable", "帮我查一下订单 B-2002 的物流")["arguments"]) == {
        "order_id": "B-2002"
    }
    # no tool needed -> text
    r = chat(http, "stable", "Hello!", tools=TOOLS)
    assert r.json()["choices"][0]["finish_reason"] == "stop"


def test_bad_tools_rate(http: httpx.Client) -> None:
    calls = [_tool_call(http, "bad-tools", p) for p in tool_prompts()]
    invalid = [not _valid(fn) for fn in calls]
    assert 0.35 <= rate(invalid) <= 0.65
    not_json = 0
    for fn in calls:
        try:
            json.loads(fn["arguments"])
        except ValueError:
            not_json += 1
    assert 1 <= not_json <= 0.25 * len(calls)


def test_flaky(http: httpx.Client) -> None:
    first = [chat(http, "flaky", p, attempt=0).status_code for p in PROMPTS]
    second = [chat(http, "flaky", p, attempt=1).status_code for p in PROMPTS]
    assert set(first) <= {200, 429, 500, 503}
    assert 0.1 <= rate([s != 200 for s in first]) <= 0.32
    permanent = [s != 200 for s in second]
    assert 0.0 < rate(permanent) <= 0.12
    for a, b in zip(first, second, strict=True):
        if b != 200:
            assert a == b == 500  # permanent errors are errors on every attempt
    # deterministic per prompt + attempt
    assert first == [chat(http, "flaky", p, attempt=0).status_code for p in PROMPTS]
    # overrides
    codes = [
        chat(http, "flaky?error_rate=0&transient_rate=0&rate_limit_rate=1", p).status_code
        for p in PROMPTS[:10]
    ]
    assert codes == [429] * 10
    codes = [chat(http, "stable?error_rate=1", p).status_code for p in PROMPTS[:5]]
    assert codes == [500] * 5


def test_rag(http: httpx.Client) -> None:
    ctx = (
        "Context:\nRefunds are accepted within 30 days of delivery. Shipping is free for "
        "orders over $50. Our support team is available 9am-6pm on weekdays.\n\n"
    )
    a = content(chat(http, "stable", ctx + "Question: How long do I have to request a refund?"))
    assert "30 days" in a
    a = content(chat(http, "good", ctx + "Question: When is the support team available?"))
    assert "9am-6pm" in a
    a = content(
        chat(
            http,
            "stable",
            "Who founded the company?",
            system="Answer only from the context.\n" + ctx,
        )
    )
    assert a == "The context does not contain this information."
    zh = "资料：\n退货须在签收后7天内申请。运费满99元包邮。客服工作时间为每天9点到18点。\n"
    assert "9点到18点" in content(chat(http, "stable", zh + "问题：客服几点下班？"))
    assert content(chat(http, "stable", zh + "问题：公司的CEO是谁？")) == "资料中没有相关信息。"


# ------------------------------------------------------------------------------------ faults


def test_fault_retry_after(http: httpx.Client) -> None:
    r = chat(http, "fault-429", "hi", attempt=0)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert chat(http, "fault-429", "hi", attempt=1).status_code == 200
    r = chat(http, "fault-429-date", "hi")
    when = email.utils.parsedate_to_datetime(r.headers["retry-after"]).timestamp()
    assert 0.5 <= when - time.time() <= 2.5
    r = chat(http, "fault-429-noretry", "hi")
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert chat(http, "fault-503-once", "hi").status_code == 503
    assert chat(http, "fault-503-once", "hi", attempt=1).status_code == 200


@pytest.mark.parametrize("code", [500, 502, 503, 504, 529])
def test_fault_status_every_attempt(http: httpx.Client, code: int) -> None:
    for attempt in (0, 1, 2):
        r = chat(http, f"fault-{code}", "hi", attempt=attempt)
        assert r.status_code == code
        assert set(r.json()["error"]) >= {"message", "type", "code"}
    r = http.post(
        "/v1/messages",
        json={
            "model": f"fault-{code}",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == code
    assert r.json()["type"] == "error"
    if code == 529:
        assert r.json()["error"]["type"] == "overloaded_error"


def test_fault_bodies(http: httpx.Client) -> None:
    r = chat(http, "fault-html", "hi")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    r = chat(http, "fault-html-200", "hi")
    assert r.status_code == 200 and "<html>" in r.text
    r = chat(http, "fault-notjson", "hi")
    assert r.status_code == 200 and r.content == b"not json"
    r = chat(http, "fault-truncated", "hi")
    with pytest.raises(ValueError):
        json.loads(r.content)
    r = chat(http, "fault-badutf8", "hi")
    with pytest.raises(UnicodeDecodeError):
        r.content.decode("utf-8")
    assert r.json is not None
    assert chat(http, "fault-empty-choices", "hi").json()["choices"] == []
    body = chat(http, "fault-choices-null", "hi").json()
    assert body["choices"] is None and body["base_resp"]["status_code"] == 1002
    r = chat(http, "fault-error-200", "hi")
    assert r.status_code == 200 and "error" in r.json()
    body = chat(http, "fault-no-usage", "hi").json()
    assert "usage" not in body and body["choices"][0]["message"]["content"]
    fn = chat(http, "fault-badargs", "hi", tools=TOOLS).json()["choices"][0]["message"][
        "tool_calls"
    ][0]
    with pytest.raises(ValueError):
        json.loads(fn["function"]["arguments"])
    r = chat(http, "fault-huge", "hi")
    assert len(r.json()["choices"][0]["message"]["content"]) == 5 * 1024 * 1024
    r = chat(http, "fault-404", "hi")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_fault_auth_echoes_credential(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions",
        headers={"Authorization": "Bearer sk-canary-123"},
        json={"model": "fault-auth", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 401
    assert "sk-canary-123" in r.json()["error"]["message"]
    r = http.post(
        "/v1/messages",
        headers={"x-api-key": "sk-ant-canary"},
        json={
            "model": "fault-auth",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 401 and "sk-ant-canary" in r.json()["error"]["message"]


def test_fault_reset_and_hang(sim: SimServer) -> None:
    with (
        httpx.Client(base_url=sim.base_url, timeout=5) as c,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        chat(c, "fault-reset", "hi")
    with httpx.Client(base_url=sim.base_url, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        chat(c, "fault-hang", "hi")


def test_hang_ends_when_server_stops() -> None:
    s = SimServer().start()
    done = threading.Event()

    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{s.base_url}/v1/chat/completions",
                timeout=30,
                json={"model": "fault-hang", "messages": [{"role": "user", "content": "x"}]},
            )
        done.set()

    threading.Thread(target=call, daemon=True).start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    s.stop()
    assert done.wait(5)
    assert time.perf_counter() - t0 < 5


def test_summary_and_classification(http: httpx.Client) -> None:
    art = (
        "Summarize the following article:\nThe city council approved a new budget on Tuesday. "
        "The plan increases funding for public transport by 12 percent. Critics say the tax "
        "increase will hurt small businesses. The mayor defended the plan. Voting is next month."
    )
    s = content(chat(http, "stable", art))
    assert s.startswith("Summary: The city council approved") and len(s) < len(art)
    system = "Classify the sentiment. Answer with one of: positive, negative, neutral"
    assert content(chat(http, "stable", "I love this phone, great battery!", system=system)) == "positive"
    assert content(chat(http, "good", "这个产品太差了，非常失望", system=system)) == "negative"


def test_the_simulator_child_answers_each_wire_format_once_before_it_says_its_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh simulator process answered its first requests tens of ms after their latency:
    the first calls of every run measured that as the model's latency (a p95 gate flapped).
    The child answers one request of each wire format, over HTTP, before it is used."""
    from pytest_modelrollout.sim import process
    from pytest_modelrollout.sim.server import SimServer, Simulator

    answered: list[tuple[str, int]] = []
    handle = Simulator.handle

    def counting(self: Simulator, wire: Any, raw: bytes, headers: dict[str, str]) -> Any:
        resp = handle(self, wire, raw, headers)
        answered.append((wire, resp.status))
        return resp

    monkeypatch.setattr(Simulator, "handle", counting)
    server = SimServer().start()
    try:
        process._warm(server.port)
    finally:
        server.stop()
    assert sorted(answered) == [("anthropic", 200), ("openai", 200)]
