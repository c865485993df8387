"""Checks on hand-written replies: outcomes, records, messages and pair semantics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from pytest_modelrollout._records import CheckRecord, Role
from pytest_modelrollout.checks import (
    BUILTIN_CHECKS,
    RegressionError,
    parse_json_reply,
    validate,
)
from pytest_modelrollout.providers.base import ChatRequest, ToolCall
from pytest_modelrollout.replies import CheckContext, Pair, Reply

PROMPT = "Extract the refund as JSON: order A-1001, 12.50 EUR"


def make(
    records: list[CheckRecord],
    text: str = "",
    *,
    role: Role = "candidate",
    prompt: str = PROMPT,
    tools: list[dict[str, Any]] | None = None,
    strict: bool = False,
    **kw: Any,
) -> Reply:
    ctx = CheckContext(
        workflow="wf",
        role=role,
        test_id="test_x",
        pair_id="test_x#0",
        call_id=f"test_x#0:{role}",
        record=records.append,
        strict=strict,
    )
    request = ChatRequest(messages=[{"role": "user", "content": prompt}], tools=tools)
    kw.setdefault("model", f"sim:{role}")
    kw.setdefault("latency_ms", 120.0)
    return Reply(text=text, request=request, context=ctx, **kw)


def pair_of(
    records: list[CheckRecord],
    stable: str | dict[str, Any],
    candidate: str | dict[str, Any],
    **kw: Any,
) -> Pair:
    def build(role: Role, spec: str | dict[str, Any]) -> Reply:
        args = {"text": spec} if isinstance(spec, str) else dict(spec)
        return make(records, role=role, **kw, **args)

    return Pair(stable=build("stable", stable), candidate=build("candidate", candidate))


def outcomes(records: list[CheckRecord]) -> list[tuple[str, str, bool, str | None]]:
    return [(r.role, r.check, r.passed, r.detail) for r in records]


@pytest.fixture
def records() -> list[CheckRecord]:
    return []


class Refund(BaseModel):
    order_id: str
    amount: float


# --------------------------------------------------------------------------- JSON


def test_json_strict_valid_records_both_checks(records: list[CheckRecord]) -> None:
    reply = make(records, ' {"order_id": "A-1001", "amount": 12.5}\n')
    assert reply.expect_json() is reply
    assert [(r.check, r.passed) for r in records] == [("json", True), ("json_lenient", True)]
    rec = records[0]
    assert (rec.workflow, rec.role, rec.call_id, rec.pair_id, rec.model) == (
        "wf",
        "candidate",
        "test_x#0:candidate",
        "test_x#0",
        "sim:candidate",
    )


def test_json_fenced_fails_strict_but_passes_lenient(records: list[CheckRecord]) -> None:
    reply = make(records, '```json\n{"order_id": "A-1001", "amount": 12.5}\n```')
    with pytest.raises(AssertionError, match="fenced"):
        reply.expect_json(Refund)
    assert [(r.check, r.passed, r.detail) for r in records] == [
        ("json", False, "fenced"),
        ("json_lenient", True, "valid JSON matching Refund (fenced)"),
    ]


def test_json_prose_around(records: list[CheckRecord]) -> None:
    reply = make(
        records, 'Sure! Here is the refund:\n{"order_id": "A-1001", "amount": 12.5}\nThanks.'
    )
    with pytest.raises(AssertionError, match="prose around JSON"):
        reply.expect_json(Refund)
    assert [(r.check, r.passed) for r in records] == [("json", False), ("json_lenient", True)]


def test_json_fence_with_prose_is_prose(records: list[CheckRecord]) -> None:
    text = 'Here you go:\n```json\n{"order_id": "A-1", "amount": 1}\n```\nAnything else?'
    assert parse_json_reply(text).form == "prose"


@pytest.mark.parametrize(
    "text",
    [
        '{"order_id": "A-1001", "amount": 12.5,}',
        '{"items": [1, 2, 3,], "ok": true}',
        '```json\n{"order_id": "A-1001",}\n```',
    ],
)
def test_json_trailing_commas_invalid(records: list[CheckRecord], text: str) -> None:
    reply = make(records, text)
    with pytest.raises(AssertionError, match="trailing comma"):
        reply.expect_json()
    assert [(r.check, r.passed) for r in records] == [("json", False), ("json_lenient", False)]


def test_json_nan_is_invalid(records: list[CheckRecord]) -> None:
    with pytest.raises(AssertionError, match="invalid JSON"):
        make(records, '{"amount": NaN}').expect_json()


@pytest.mark.parametrize("text", ["", "   \n", "I'm sorry, but I can't help with that request."])
def test_json_empty_and_refusal(records: list[CheckRecord], text: str) -> None:
    with pytest.raises(AssertionError):
        make(records, text).expect_json()
    assert [r.passed for r in records] == [False, False]


def test_json_schema_dict_with_ref(records: list[CheckRecord]) -> None:
    schema = {
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"],
            }
        },
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}}},
        "required": ["items"],
    }
    make(records, '{"items": [{"sku": "X1", "qty": 2}]}').expect_json(schema)
    with pytest.raises(AssertionError, match=r"\$\.items\[1\]\.qty"):
        make(records, '{"items": [{"sku": "X1", "qty": 2}, {"sku": "X2", "qty": 0}]}').expect_json(
            schema
        )
    assert records[-2].detail is not None and "schema" in records[-2].detail


def test_json_pydantic_model(records: list[CheckRecord]) -> None:
    make(records, '{"order_id": "A-1001", "amount": 12.5}').expect_json(Refund)
    with pytest.raises(AssertionError, match="amount"):
        make(records, '{"order_id": "A-1001", "amount": "twelve"}').expect_json(Refund)
    assert records[-2].detail is not None and records[-2].detail.startswith(
        "schema: Refund: amount"
    )


def test_json_bad_schema_is_a_test_error_and_records_nothing(records: list[CheckRecord]) -> None:
    reply = make(records, "{}")
    with pytest.raises(TypeError):
        reply.expect_json(42)  # type: ignore[arg-type]
    with pytest.raises(jsonschema.SchemaError):
        reply.expect_json({"type": "no-such-type"})
    assert records == []


def test_validate_returns_none_or_reason() -> None:
    assert validate({"a": 1}, None) is None
    assert validate({"a": 1}, {"type": "object"}) is None
    reason = validate({"a": "x"}, {"properties": {"a": {"type": "integer"}}})
    assert reason is not None and reason.startswith("$.a:")


# --------------------------------------------------------------------------- tool calls

ORDER_TOOL = {
    "type": "function",
    "function": {
        "name": "create_return",
        "description": "Open a return for items of an order",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "reason": {"type": "string", "enum": ["damaged", "wrong_item", "other"]},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "qty": {"type": "integer", "minimum": 1},
                            "address": {"$ref": "#/$defs/address"},
                        },
                        "required": ["sku", "qty"],
                    },
                },
            },
            "required": ["order_id", "reason", "items"],
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"],
                }
            },
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_orders",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    },
}
TOOLS = [ORDER_TOOL, SEARCH_TOOL]
GOOD_ARGS: dict[str, Any] = {
    "order_id": "A-1001",
    "reason": "damaged",
    "items": [{"sku": "X1", "qty": 1, "address": {"city": "Berlin"}}],
}


def call(
    name: str = "create_return", args: dict[str, Any] | None = None, raw: str | None = None
) -> ToolCall:
    return ToolCall(name=name, arguments=args, raw_arguments=raw, id="call_1")


def test_tool_call_valid(records: list[CheckRecord]) -> None:
    reply = make(records, tools=TOOLS, tool_calls=[call(args=GOOD_ARGS)])
    assert reply.expect_tool_call("create_return") is reply
    reply.expect_tool_call()
    assert [(r.check, r.passed, r.value) for r in records] == [
        ("tool_call", True, 1.0),
        ("tool_call", True, 1.0),
    ]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"order_id": "A-1", "reason": "damaged"}, "'items' is a required property"),
        ({**GOOD_ARGS, "order_id": 1001}, r"\$\.order_id: 1001 is not of type 'string'"),
        ({**GOOD_ARGS, "reason": "changed_mind"}, r"\$\.reason: 'changed_mind' is not one of"),
        ({**GOOD_ARGS, "items": [{"sku": "X1", "qty": 0}]}, r"\$\.items\[0\]\.qty"),
        ({**GOOD_ARGS, "items": [{"sku": "X1", "qty": 1, "address": {"zip": "1"}}]}, "city"),
    ],
    ids=["required", "type", "enum", "nested", "ref"],
)
def test_tool_call_schema_violations(
    records: list[CheckRecord], args: dict[str, Any], match: str
) -> None:
    reply = make(records, tools=TOOLS, tool_calls=[call(args=args)])
    with pytest.raises(AssertionError, match=match):
        reply.expect_tool_call("create_return")
    assert records[-1].check == "tool_call" and not records[-1].passed


def test_tool_call_arguments_not_json(records: list[CheckRecord]) -> None:
    reply = make(records, tools=TOOLS, tool_calls=[call(args=None, raw='{"order_id": "A-1",')])
    with pytest.raises(AssertionError, match="arguments are not valid JSON"):
        reply.expect_tool_call()


def test_tool_call_undeclared_and_wrong_name(records: list[CheckRecord]) -> None:
    reply = make(records, tools=TOOLS, tool_calls=[call("delete_account", {})])
    with pytest.raises(AssertionError, match="not a declared tool"):
        reply.expect_tool_call()
    reply = make(records, tools=TOOLS, tool_calls=[call("search_orders", {"q": "A-1"})])
    with pytest.raises(AssertionError, match="no call to 'create_return'"):
        reply.expect_tool_call("create_return")


def test_tool_call_missing(records: list[CheckRecord]) -> None:
    reply = make(records, "I have opened the return for you.", tools=TOOLS)
    with pytest.raises(AssertionError, match="no tool call; text reply"):
        reply.expect_tool_call()
    assert records[-1].value == 0.0


def test_tool_call_explicit_schema_overrides(records: list[CheckRecord]) -> None:
    class Search(BaseModel):
        q: str
        limit: int

    reply = make(records, tools=TOOLS, tool_calls=[call("search_orders", {"q": "A-1"})])
    reply.expect_tool_call("search_orders")  # declared parameters: fine
    with pytest.raises(AssertionError, match="limit"):
        reply.expect_tool_call("search_orders", schema=Search)


def test_tool_call_without_declared_tools(records: list[CheckRecord]) -> None:
    reply = make(records, tools=None, tool_calls=[call("anything", {"x": 1})])
    reply.expect_tool_call()
    reply.expect_tool_call("anything")
    with pytest.raises(AssertionError):
        reply.expect_tool_call(schema={"type": "object", "required": ["y"]})


def test_tool_call_all_parallel_calls_checked(records: list[CheckRecord]) -> None:
    calls = [call("search_orders", {"q": "a"}), call("search_orders", {"q": 5})]
    reply = make(records, tools=TOOLS, tool_calls=calls)
    with pytest.raises(AssertionError, match="is not of type"):
        reply.expect_tool_call("search_orders")
    assert records[-1].value == 2.0


# --------------------------------------------------------------------------- length, latency


def test_length_chars_and_words(records: list[CheckRecord]) -> None:
    reply = make(records, "Your refund of 12.50 EUR is on its way.")
    reply.expect_length(max_chars=100).expect_length(min_chars=10).expect_length(max_words=12)
    with pytest.raises(AssertionError, match="chars > max_chars 10"):
        reply.expect_length(max_chars=10)
    assert records[-1].value == len(reply.text)
    with pytest.raises(AssertionError, match="words > max_words 3"):
        reply.expect_length(max_words=3)
    assert records[-1].value == 9.0  # words only: value is the word count


def test_length_counts_han_characters_as_words(records: list[CheckRecord]) -> None:
    reply = make(records, "您的退款已经处理 OK")  # 8 Han + 1 word
    reply.expect_length(max_words=9)
    with pytest.raises(AssertionError, match="9 words > max_words 8"):
        reply.expect_length(max_words=8)


def test_length_empty_reply_and_bad_args(records: list[CheckRecord]) -> None:
    with pytest.raises(AssertionError, match="0 chars < min_chars 1"):
        make(records, "").expect_length(min_chars=1)
    with pytest.raises(ValueError):
        make(records, "x").expect_length()
    with pytest.raises(ValueError):
        make(records, "x").expect_length(max_chars=5, min_chars=10)


def test_latency(records: list[CheckRecord]) -> None:
    make(records, "hi", latency_ms=900.0).expect_latency(max_ms=1000)
    with pytest.raises(AssertionError, match="1500 ms > max_ms 1000"):
        make(records, "hi", latency_ms=1500.0).expect_latency(max_ms=1000)
    assert records[-1].value == 1500.0
    with pytest.raises(AssertionError, match="latency not measured"):
        make(records, "hi", latency_ms=None).expect_latency(max_ms=1000)


# --------------------------------------------------------------------------- language


def test_language_checks(records: list[CheckRecord]) -> None:
    make(records, "Your refund has been processed.").expect_language("en")
    make(records, "您的退款已经处理完毕，请注意查收。").expect_language("zh")
    make(records, "您的退款已處理完畢。").expect_language("zh-TW")
    make(records, "请帮我 check 一下 order status").expect_language("mixed")
    with pytest.raises(AssertionError, match="expected zh, detected ja"):
        make(records, "ご注文の商品は本日発送されました。").expect_language("zh")
    with pytest.raises(AssertionError, match="expected zh, detected en"):
        make(records, "Your refund has been processed.").expect_language("zh")


def test_language_same_as_prompt(records: list[CheckRecord]) -> None:
    zh_prompt = "你好，我的订单什么时候到？"
    make(records, "您的订单预计明天送达。", prompt=zh_prompt).expect_language("same_as_prompt")
    with pytest.raises(AssertionError, match="prompt zh"):
        make(records, "Your order arrives tomorrow.", prompt=zh_prompt).expect_language(
            "same_as_prompt"
        )
    make(records, "Arrives tomorrow.", prompt="A-1001 / 2024-05-01").expect_language(
        "same_as_prompt"
    )
    assert records[-1].passed and "not judged" in (records[-1].detail or "")


def test_language_empty_reply_fails(records: list[CheckRecord]) -> None:
    with pytest.raises(AssertionError, match="detected unknown"):
        make(records, "").expect_language("en")


# --------------------------------------------------------------------------- custom


def test_custom_check(records: list[CheckRecord]) -> None:
    reply = make(records, "Your refund of 12.50 EUR is on its way.")
    reply.expect(lambda r: "refund" in r.text, "mentions_refund")

    def no_apology(r: Reply) -> None:
        assert "sorry" not in r.text.lower(), "reply apologises"

    reply.expect(no_apology)  # name defaults to the function's name; None passes
    assert [(r.check, r.passed) for r in records] == [
        ("mentions_refund", True),
        ("no_apology", True),
    ]
    with pytest.raises(AssertionError, match="predicate returned False"):
        reply.expect(lambda r: "EUR" not in r.text, "no_currency")
    with pytest.raises(AssertionError, match="reply apologises"):
        make(records, "Sorry for the delay").expect(no_apology)
    assert (records[-1].detail or "").startswith("reply apologises")


def test_custom_check_other_exception_recorded_then_raised(records: list[CheckRecord]) -> None:
    def broken(r: Reply) -> bool:
        fields: dict[str, str] = {}
        return bool(fields["missing"])

    with pytest.raises(KeyError):
        make(records, "x").expect(broken, "broken")
    assert records[-1].check == "broken" and not records[-1].passed
    assert records[-1].detail is not None and records[-1].detail.startswith("KeyError")


def test_custom_check_names(records: list[CheckRecord]) -> None:
    reply = make(records, "x")
    with pytest.raises(ValueError, match="name"):
        reply.expect(lambda r: True)
    for name in BUILTIN_CHECKS:
        with pytest.raises(ValueError, match="built-in"):
            reply.expect(lambda r: True, name)
    assert records == []


# --------------------------------------------------------------------------- error replies


def test_error_reply_fails_every_check(records: list[CheckRecord]) -> None:
    reply = make(records, error="timeout after 30 s", tools=TOOLS, latency_ms=30000.0)
    assert not reply.ok
    checks: list[Callable[[], object]] = [
        lambda: reply.expect_json(),
        lambda: reply.expect_tool_call(),
        lambda: reply.expect_length(max_chars=10),
        lambda: reply.expect_language("en"),
        lambda: reply.expect_latency(max_ms=60000),
        lambda: reply.expect(lambda r: True, "custom"),
    ]
    for run in checks:
        with pytest.raises(AssertionError, match="no reply: timeout after 30 s"):
            run()
    assert {r.check for r in records} == {
        "json",
        "json_lenient",
        "tool_call",
        "length",
        "language",
        "latency",
        "custom",
    }
    assert all(not r.passed and r.detail == "no reply: timeout after 30 s" for r in records)


def test_failure_message_is_actionable(records: list[CheckRecord]) -> None:
    reply = make(records, "word " * 400, model="sim:verbose")
    with pytest.raises(AssertionError) as info:
        reply.expect_length(max_chars=500)
    msg = str(info.value)
    assert msg.startswith("check 'length' failed: 2000 chars > max_chars 500")
    assert "threshold: max_chars=500" in msg
    assert "measured:  2000" in msg
    assert "[sim:verbose]" in msg and "[2000 chars]" in msg  # reply, truncated
    assert PROMPT in msg
    assert len(msg) < 1000


# --------------------------------------------------------------------------- 1 MB reply


def test_one_megabyte_reply(records: list[CheckRecord]) -> None:
    text = (
        "The refund for order A-1001 was approved and will be paid within five days. " * 14_000
    )[:1_000_000]
    reply = make(records, text)
    start = time.perf_counter()
    with pytest.raises(AssertionError, match="chars > max_chars"):
        reply.expect_length(max_chars=10_000)
    with pytest.raises(AssertionError, match="invalid JSON"):
        reply.expect_json()
    reply.expect_language("en")
    reply.structure()
    assert time.perf_counter() - start < 5.0
    big_json = '{"rows": [' + ",".join(['{"id": 1, "name": "x"}'] * 40_000) + "]}"
    make(records, big_json).expect_json({"type": "object", "required": ["rows"]})


# --------------------------------------------------------------------------- pair semantics


def test_pair_both_pass_records_both(records: list[CheckRecord]) -> None:
    pair = pair_of(records, '{"a": 1}', '{"a": 2}')
    assert pair.expect_json() is pair
    assert [(r.role, r.check, r.passed) for r in records] == [
        ("stable", "json", True),
        ("stable", "json_lenient", True),
        ("candidate", "json", True),
        ("candidate", "json_lenient", True),
    ]
    assert {r.call_id for r in records} == {"test_x#0:stable", "test_x#0:candidate"}


def test_pair_regression(records: list[CheckRecord]) -> None:
    pair = pair_of(
        records, '{"order_id": "A-1001", "amount": 12.5}', '```json\n{"order_id": "A-1001"}\n```'
    )
    with pytest.raises(RegressionError) as info:
        pair.expect_json(Refund)
    msg = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert msg.startswith(
        "regression: check 'json' fails on the candidate but passes on the stable"
    )
    assert "threshold: strict JSON matching Refund" in msg
    assert "stable    passed: valid JSON matching Refund" in msg
    assert "candidate FAILED: fenced; schema: Refund: amount: Field required" in msg
    assert "[sim:stable]" in msg and "[sim:candidate]" in msg and PROMPT in msg
    assert [(r.role, r.check, r.passed) for r in records] == [
        ("stable", "json", True),
        ("stable", "json_lenient", True),
        ("candidate", "json", False),
        ("candidate", "json_lenient", False),
    ]


def test_pair_regression_truncates_long_replies(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "short", "long " * 2000)
    with pytest.raises(RegressionError) as info:
        pair.expect_length(max_chars=100)
    assert len(str(info.value)) < 1500


def test_pair_shared_failure_xfails(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "not json", "still not json")
    with pytest.raises(pytest.xfail.Exception) as info:
        pair.expect_json()
    assert str(info.value).startswith("stable fails too: not a regression: json: invalid JSON")
    assert [r.passed for r in records] == [False, False, False, False]


def test_pair_shared_failure_strict(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "not json", "still not json", strict=True)
    with pytest.raises(AssertionError) as info:
        pair.expect_json()
    assert not isinstance(info.value, RegressionError)
    assert str(info.value).startswith("shared failure (strict)")
    assert len(records) == 4


def test_pair_improvement_passes(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "not json", '{"ok": true}')
    pair.expect_json()
    assert [(r.role, r.check, r.passed) for r in records][::2] == [
        ("stable", "json", False),
        ("candidate", "json", True),
    ]


def test_pair_errors(records: list[CheckRecord]) -> None:
    pair = pair_of(records, {"text": "ok"}, {"error": "rate_limit: HTTP 429"})
    with pytest.raises(RegressionError, match="no reply: rate_limit"):
        pair.expect_latency(max_ms=10_000)
    both = pair_of(records, {"error": "server: HTTP 503"}, {"error": "timeout"})
    with pytest.raises(pytest.xfail.Exception):
        both.expect_language("en")


def test_pair_custom_and_chaining(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "Refund approved.", "Refund approved, paid in 5 days.")
    pair.expect_language("en").expect_length(max_chars=200).expect(
        lambda r: "Refund" in r.text, "mentions_refund"
    ).expect_latency(max_ms=1000)
    assert len(records) == 8 and all(r.passed for r in records)


# --------------------------------------------------------------------------- length ratio


def test_length_ratio_passes_and_records_both(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "x" * 100, "y" * 140)
    assert pair.expect_length_ratio(max=1.5) is pair
    assert [(r.role, r.check, r.passed, r.value) for r in records] == [
        ("stable", "length_ratio", True, 1.0),
        ("candidate", "length_ratio", True, 1.4),
    ]


def test_length_ratio_regression(records: list[CheckRecord]) -> None:
    pair = pair_of(records, "x" * 100, "y" * 250)
    with pytest.raises(RegressionError, match=r"250 / 100 chars = 2\.50x > max 1\.5"):
        pair.expect_length_ratio(max=1.5)
    assert records[0].passed and not records[1].passed and records[1].value == 2.5


def test_length_ratio_without_baseline(records: list[CheckRecord]) -> None:
    pair = pair_of(records, {"error": "server: HTTP 500"}, {"text": "y" * 50})
    with pytest.raises(pytest.xfail.Exception, match="no baseline"):
        pair.expect_length_ratio(max=1.5)
    assert [r.passed for r in records] == [False, False]


def test_length_ratio_edge_cases(records: list[CheckRecord]) -> None:
    pair_of(records, "", "").expect_length_ratio(max=1.0)
    with pytest.raises(RegressionError, match="stable reply is empty"):
        pair_of(records, "", "text").expect_length_ratio(max=1.0)
    with pytest.raises(RegressionError, match="no reply: timeout"):
        pair_of(records, {"text": "abc"}, {"error": "timeout"}).expect_length_ratio(max=2)
    with pytest.raises(ValueError):
        pair_of(records, "a", "b").expect_length_ratio(max=0)
