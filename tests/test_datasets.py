from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_modelrollout._exceptions import DatasetError, ServerError, TimeoutError_
from pytest_modelrollout.datasets import (
    _CACHE,
    Case,
    StableReply,
    cases,
    load_cases,
    sanitize_id,
)
from pytest_modelrollout.providers.base import ChatRequest, ProviderResponse, ToolCall

DATA = Path(__file__).parent / "data" / "datasets"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    _CACHE.clear()
    yield
    _CACHE.clear()


def _cases(params: list[Any]) -> list[Case]:
    out = []
    for p in params:
        (value,) = p.values
        assert isinstance(value, Case)
        assert p.id == value.id
        out.append(value)
    return out


# ------------------------------------------------------------------------------------------
# formats


def test_jsonl_relative_to_calling_test_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # not the tests directory: resolution uses this file's dir
    params = cases("data/datasets/refunds.jsonl")
    got = _cases(params)
    assert [c.id for c in got] == ["r1", "refunds-1", "r3"]
    r1, r2, r3 = got
    assert r1.prompt == "Refund order A1, 12.50 EUR"
    assert r1.messages is None
    assert r1.expected == {"order_id": "A1", "amount": 12.5}
    assert r1.meta == {"lang": "en"}
    assert r1.index == 0
    assert r1.source.endswith("refunds.jsonl:2")
    assert r2.prompt == "退款订单 A2，金额 30 元"
    assert r2.source.endswith("refunds.jsonl:5")
    assert r2.index == 1
    # leading system message split out; unknown keys go to meta
    assert r3.system == "Reply with JSON only."
    assert r3.messages == [{"role": "user", "content": "Refund A3 please"}]
    assert r3.prompt is None
    assert r3.meta == {"tier": "gold"}
    assert r3.source.endswith("refunds.jsonl:6")


def test_json_list_with_item_lines() -> None:
    got = _cases(cases("data/datasets/refunds.json"))
    assert [c.id for c in got] == ["r1", "refunds-1", "r3"]
    assert [c.source.rsplit(":", 1)[1] for c in got] == ["2", "3", "7"]
    assert got[2].system == "Reply with JSON only."
    assert got[1].meta == {"lang": "zh"}


def test_json_wrapped_cases_object() -> None:
    got = _cases(cases("data/datasets/wrapped.json"))
    assert [c.id for c in got] == ["w1", "w2"]
    assert [c.source.rsplit(":", 1)[1] for c in got] == ["4", "5"]


def test_csv_columns() -> None:
    got = _cases(cases("data/datasets/refunds.csv"))
    assert [c.id for c in got] == ["r1", "refunds-1", "r3"]
    r1, r2, r3 = got
    assert r1.prompt == "Refund order A1, 12.50 EUR"
    assert r1.expected == {"order_id": "A1", "amount": 12.5}  # parsed: looks like JSON
    assert r1.meta == {"lang": "en", "source": "web", "tier": "gold"}
    assert r1.system is None
    assert r1.source.endswith("refunds.csv:2")
    assert r2.expected == "plain text answer"
    assert r2.system == "Reply in Chinese."
    assert r2.meta == {"lang": "zh"}
    assert r3.prompt == "A prompt\nspanning two lines"
    assert r3.expected == [1, 2]
    assert r3.source.endswith("refunds.csv:4")


def test_yaml() -> None:
    pytest.importorskip("yaml")
    got = _cases(cases("data/datasets/refunds.yaml"))
    assert [c.id for c in got] == ["r1", "refunds-1", "r3"]
    assert got[0].expected == {"order_id": "A1", "amount": 12.5}
    assert got[1].meta == {"lang": "zh"}
    assert got[2].messages == [{"role": "user", "content": "Refund A3 please"}]
    assert [c.source.rsplit(":", 1)[1] for c in got] == ["3", "6", "8"]


def test_yaml_without_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    with pytest.raises(DatasetError, match=r"refunds\.yaml: .*pip install pyyaml.*\[yaml\]"):
        load_cases(DATA / "refunds.yaml")


def test_base_argument_and_cwd_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"prompt": "hi"}\n', encoding="utf-8")
    assert [c.id for c in load_cases("d.jsonl", base=tmp_path)] == ["d-0"]
    assert [c.id for c in load_cases("d.jsonl", base=tmp_path / "test_x.py")] == ["d-0"]
    monkeypatch.chdir(tmp_path)
    # not beside this test file, but in the current directory
    assert [c.id for c in _cases(cases("d.jsonl"))] == ["d-0"]


def test_cache_invalidated_when_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"prompt": "one"}\n', encoding="utf-8")
    assert [c.prompt for c in load_cases(f)] == ["one"]
    assert load_cases(f) == load_cases(f)
    f.write_text('{"prompt": "one"}\n{"prompt": "two"}\n', encoding="utf-8")
    assert [c.prompt for c in load_cases(f)] == ["one", "two"]


# ------------------------------------------------------------------------------------------
# ids


def test_sanitize_id() -> None:
    assert sanitize_id("simple-id_1") == "simple-id_1"
    assert sanitize_id("  two words\tand\nnewline ") == "two_words_and_newline"
    assert sanitize_id("a[1]") == "a(1)"
    assert sanitize_id("mod::name") == "mod_name"
    assert sanitize_id("退款-订单") == "退款-订单"
    assert sanitize_id("bell\x07") == "bell_"
    assert sanitize_id("   ") == "_"


def test_ids_sanitized_and_unique(tmp_path: Path) -> None:
    f = tmp_path / "ids.jsonl"
    rows = [
        {"id": "a b", "prompt": "1"},
        {"id": "a_b", "prompt": "2"},  # same id once sanitised -> suffixed
        {"prompt": "3"},  # ids-2
        {"id": "ids-2", "prompt": "4"},  # explicit id equal to an automatic one -> suffixed
        {"id": 7, "prompt": "5"},
        {"id": "订单 [加急]", "prompt": "6"},
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    got = load_cases(f)
    assert [c.id for c in got] == ["a_b", "a_b-2", "ids-2", "ids-2-2", "7", "订单_(加急)"]


def test_pytest_collects_ids(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".jsonl",
        **{
            "data/qs": "\n".join(
                [
                    '{"id": "first case", "prompt": "hello"}',
                    '{"prompt": "你好"}',
                    '{"id": "x[1]", "messages": [{"role": "user", "content": "hey"}]}',
                ]
            )
        },
    )
    pytester.makepyfile(
        test_ds="""
        import pytest
        from pytest_modelrollout import datasets

        @pytest.mark.parametrize("case", datasets.cases("data/qs.jsonl"))
        def test_case(case):
            assert case.prompt_text()
            assert case.request_messages()[-1]["role"] == "user"
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*test_case?first_case? PASSED*", "*test_case?qs-1? PASSED*", "*test_case?x(1)? PASSED*"]
    )


# ------------------------------------------------------------------------------------------
# Case helpers


def test_case_helpers() -> None:
    c = Case(
        id="c",
        messages=[{"role": "user", "content": "hi"}],
        system="sys",
        params={"temperature": 0},
    )
    msgs = c.request_messages()
    msgs[0]["content"] = "changed"
    assert c.messages == [{"role": "user", "content": "hi"}]
    req = c.to_request(system="default", tools=[{"type": "function"}], params={"top_p": 1})
    assert isinstance(req, ChatRequest)
    assert req.system == "sys"  # the case's own system wins over the default
    assert req.tools == [{"type": "function"}]
    assert req.params == {"top_p": 1, "temperature": 0}
    assert req.prompt_text() == "hi"
    p = Case(id="p", prompt="hello")
    assert p.request_messages() == [{"role": "user", "content": "hello"}]
    assert p.to_request(system="d").system == "d"
    assert hash(p) == hash(Case(id="p", prompt="other"))
    assert "hello" in repr(p)
    with pytest.raises(AttributeError):
        p.id = "x"  # type: ignore[misc]


def test_loaded_cases_compare_copy_and_pickle() -> None:
    import copy
    import dataclasses
    import pickle

    a = load_cases(DATA / "shadow_reply.jsonl")
    b = load_cases(DATA / "shadow_reply.jsonl")
    assert a == b
    c = a[0]
    assert pickle.loads(pickle.dumps(c)) == c
    assert copy.deepcopy(c) == c
    assert dataclasses.replace(c, id="new").id == "new"
    assert {c: 1}[c] == 1


# ------------------------------------------------------------------------------------------
# shadow mode


def test_shadow_stable_reply_shape() -> None:
    got = _cases(cases("data/datasets/shadow_reply.jsonl"))
    t1, t2, t3 = got
    sr = t1.stable_reply
    assert sr is not None and t1.shadow and sr.ok
    assert sr.text == "Ticket 7 is open."
    assert sr.tool_calls == (ToolCall(name="lookup", arguments={"ticket": 7}),)
    assert sr.latency_ms == 412.5
    assert (sr.input_tokens, sr.output_tokens, sr.cost_usd) == (31, 9, 0.00002)
    assert sr.model == "gpt-4o-mini" and sr.finish_reason == "stop"
    resp = sr.to_provider_response()
    assert isinstance(resp, ProviderResponse)
    assert resp.text == "Ticket 7 is open."
    assert resp.tool_calls[0].name == "lookup"
    assert (resp.input_tokens, resp.output_tokens, resp.model_id) == (31, 9, "gpt-4o-mini")
    assert sr.to_error() is None

    failed = t2.stable_reply
    assert failed is not None and not failed.ok
    assert failed.status == "error"
    err = failed.to_error()
    assert isinstance(err, ServerError)
    assert str(err) == "server: HTTP 503"

    assert t3.stable_reply == StableReply(text="hi")
    assert not Case(id="x", prompt="y").shadow


def test_shadow_openai_log_shape() -> None:
    s1, s2, s3 = _cases(cases("data/datasets/shadow_openai.jsonl"))
    assert s1.id == "s1"
    assert s1.system == "You are a support bot."
    assert s1.messages == [{"role": "user", "content": "Where is my order 42?"}]
    assert s1.params == {"temperature": 0}
    assert s1.tools is not None and s1.tools[0]["function"]["name"] == "lookup_order"
    assert s1.meta == {"request_model": "gpt-4o-mini"}
    sr = s1.stable_reply
    assert sr is not None and sr.ok
    assert sr.text == ""
    assert sr.tool_calls == (
        ToolCall(
            name="lookup_order",
            arguments={"order_id": "42"},
            raw_arguments='{"order_id": "42"}',
            id="call_1",
        ),
    )
    assert (sr.input_tokens, sr.output_tokens) == (57, 17)
    assert sr.latency_ms == 812.5 and sr.cost_usd == 0.00011
    assert sr.finish_reason == "tool_calls"
    assert sr.model == "gpt-4o-mini-2024-07-18"
    req = s1.to_request()
    assert req.system == "You are a support bot." and req.tools == s1.tools

    assert s2.id == "shadow_openai-1"
    assert s2.system is None
    assert s2.meta == {"ts": "2026-11-25T10:00:00Z", "request_model": "gpt-4o-mini"}
    assert s2.stable_reply is not None
    assert s2.stable_reply.text == "你好！有什么可以帮您？"
    assert s2.stable_reply.latency_ms == 301

    sr3 = s3.stable_reply
    assert sr3 is not None and sr3.status == "timeout" and not sr3.ok
    assert isinstance(sr3.to_error(), TimeoutError_)


def test_shadow_log_variants(tmp_path: Path) -> None:
    rows = [
        # invalid JSON arguments are kept raw, arguments None
        {
            "request": {"messages": [{"role": "user", "content": "q"}]},
            "response": {
                "choices": [
                    {
                        "message": {
                            "content": "x",
                            "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}],
                        },
                        "finish_reason": "stop",
                    }
                ]
            },
        },
        # an API error body
        {
            "request": {"messages": [{"role": "user", "content": "q2"}]},
            "response": {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
            "error_kind": "rate_limit",
        },
        # Anthropic Messages request/response
        {
            "request": {
                "model": "claude",
                "system": "Be brief.",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "q3"}],
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
            },
            "response": {
                "type": "message",
                "content": [
                    {"type": "text", "text": "ok "},
                    {"type": "tool_use", "id": "tu1", "name": "t", "input": {"a": 1}},
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 5, "output_tokens": 6},
            },
        },
    ]
    f = tmp_path / "log.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    a, b, c = load_cases(f)
    assert a.stable_reply is not None
    assert a.stable_reply.tool_calls[0].arguments is None
    assert a.stable_reply.tool_calls[0].raw_arguments == "{bad"
    assert b.stable_reply is not None and b.stable_reply.status == "error"
    assert b.stable_reply.error == "Rate limit reached"
    assert b.stable_reply.to_error() is not None
    assert b.stable_reply.to_error().kind == "rate_limit"  # type: ignore[union-attr]
    assert c.system == "Be brief."
    assert c.params == {"max_tokens": 100}
    assert c.tools == [
        {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
    ]
    assert c.stable_reply is not None
    assert c.stable_reply.text == "ok "
    assert c.stable_reply.tool_calls[0].arguments == {"a": 1}
    assert (c.stable_reply.input_tokens, c.stable_reply.output_tokens) == (5, 6)


def test_stable_reply_from_dict() -> None:
    sr = StableReply.from_dict({"text": "t", "tool_calls": [{"name": "f", "arguments": "{}"}]})
    assert sr.tool_calls[0].arguments == {}
    with pytest.raises(DatasetError, match=r"stable_reply\.status"):
        StableReply.from_dict({"status": "weird"})
    assert StableReply.from_dict({"status": "ok"}).ok


# ------------------------------------------------------------------------------------------
# malformed datasets: one line, naming the file and the line

_MALFORMED: list[tuple[str, str, str]] = [
    # (file name, content, expected message: regex, matched from the start)
    ("bad.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n', r"bad\.jsonl:3: invalid JSON: "),
    (
        "bad.jsonl",
        '{"prompt": "a"}\n{"prompt": "b"} x\n',
        r"bad\.jsonl:2: invalid JSON: Extra data",
    ),
    ("bad.jsonl", '# c\n["a list"]\n', r"bad\.jsonl:2: row is not a JSON object \(got list\)"),
    (
        "bad.jsonl",
        '{"prompt": "a"}\n{"id": "x"}\n',
        r"bad\.jsonl:2: row has neither 'prompt' nor 'messages'",
    ),
    (
        "bad.jsonl",
        '{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}\n',
        r"bad\.jsonl:1: row has both 'prompt' and 'messages'",
    ),
    ("bad.jsonl", '\n\n{"prompt": 42}\n', r"bad\.jsonl:3: 'prompt' must be a string, got number"),
    ("bad.jsonl", '{"prompt": "   "}\n', r"bad\.jsonl:1: 'prompt' is empty"),
    (
        "bad.jsonl",
        '{"messages": "hi"}\n',
        r"bad\.jsonl:1: 'messages' must be a list of messages, got string",
    ),
    (
        "bad.jsonl",
        '{"prompt": "a"}\n{"messages": [{"role": "robot", "content": "b"}]}\n',
        r"bad\.jsonl:2: 'messages\[0\]\.role' must be one of",
    ),
    (
        "bad.jsonl",
        '{"prompt": "a", "meta": [1]}\n',
        r"bad\.jsonl:1: 'meta' must be an object, got list",
    ),
    (
        "bad.jsonl",
        '{"prompt": "a", "id": [1]}\n',
        r"bad\.jsonl:1: 'id' must be a string or an integer",
    ),
    (
        "bad.jsonl",
        '// x\n{"id": "a", "prompt": "1"}\n{"prompt": "2"}\n{"id": "a", "prompt": "3"}\n',
        r"bad\.jsonl:4: duplicate id 'a' \(first used on line 2\)",
    ),
    ("bad.jsonl", "", r"no cases in bad\.jsonl$"),
    ("bad.jsonl", "# only\n// comments\n\n", r"no cases in bad\.jsonl$"),
    (
        "bad.jsonl",
        '{"prompt": "a", "stable_reply": {"text": "t", "latency_ms": "fast"}}\n',
        r"bad\.jsonl:1: 'stable_reply\.latency_ms' must be a non-negative number",
    ),
    (
        "bad.jsonl",
        '{"prompt": "a"}\n{"prompt": "b", "stable_reply": {"status": "maybe"}}\n',
        r"bad\.jsonl:2: 'stable_reply\.status' must be ok, error or timeout",
    ),
    (
        "bad.jsonl",
        '{"prompt": "a", "stable_reply": {"tool_calls": [{"name": "f", "arguments": 3}]}}\n',
        r"bad\.jsonl:1: 'stable_reply\.tool_calls\[0\]\.arguments' must be an object",
    ),
    (
        "bad.jsonl",
        '{"request": {"messages": [{"role": "user", "content": "q"}]}}\n',
        r"bad\.jsonl:1: 'response' is missing",
    ),
    (
        "bad.jsonl",
        '{"request": {"messages": [{"role": "user", "content": "q"}]}, "response": {"choices": []}}\n',
        r"bad\.jsonl:1: 'response\.choices' must be a non-empty list",
    ),
    ("bad.jsonl", '{"prompt": "a", "system": 1}\n', r"bad\.jsonl:1: 'system' must be a string"),
    (
        "bad.json",
        '[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]\n',
        r"bad\.json:3: invalid JSON: ",
    ),
    (
        "bad.json",
        '[\n  {"prompt": "a"},\n\n  {"id": "no-prompt"}\n]\n',
        r"bad\.json:4: row has neither 'prompt' nor 'messages'",
    ),
    (
        "bad.json",
        '{"name": "x",\n "cases": [\n   {"prompt": "a"},\n   "oops"\n ]}\n',
        r"bad\.json:4: row is not a JSON object \(got string\)",
    ),
    ("bad.json", '"just a string"\n', r"bad\.json:1: expected a JSON list of cases"),
    ("bad.json", "[]\n", r"no cases in bad\.json$"),
    (
        "bad.csv",
        'id,prompt,expected\na,one,1\nb,two,"{""x"": }"\n',
        r"bad\.csv:3: column 'expected' looks like JSON but is not valid",
    ),
    (
        "bad.csv",
        "id,question\na,one\n",
        r"bad\.csv:1: CSV header has no 'prompt' or 'messages' column",
    ),
    (
        "bad.csv",
        'id,prompt\na,"multi\nline"\nb,two,extra\n',
        r"bad\.csv:4: row has 3 fields but the header has 2",
    ),
    ("bad.csv", "id,prompt\nx,\n", r"bad\.csv:2: row has neither 'prompt' nor 'messages'"),
    ("bad.csv", "id,prompt,meta\nx,p,[1]\n", r"bad\.csv:2: 'meta' must be an object, got list"),
    (
        "bad.yaml",
        "- prompt: a\n- prompt: b\n- just text\n",
        r"bad\.yaml:3: row is not a JSON object",
    ),
    ("bad.yaml", "- prompt: a\n- prompt: [unclosed\n", r"bad\.yaml:\d+: invalid YAML: "),
    (
        "bad.yml",
        "- id: a\n  prompt: x\n- id: a\n  prompt: y\n",
        r"bad\.yml:3: duplicate id 'a' \(first used on line 1\)",
    ),
    ("bad.txt", "prompt\n", r"bad\.txt: unknown dataset format '\.txt'"),
]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    _MALFORMED,
    ids=[f"{i}-{m[0]}" for i, m in enumerate(_MALFORMED)],
)
def test_malformed(
    name: str, content: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name.endswith((".yaml", ".yml")):
        pytest.importorskip("yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        cases(name)
    text = str(info.value)
    assert "\n" not in text
    assert _search_from_start(message, text), text


def _search_from_start(pattern: str, text: str) -> bool:
    return re.match(pattern, text) is not None


def test_malformed_count() -> None:
    assert len(_MALFORMED) >= 12


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset file not found: nope\.jsonl \(looked for "):
        cases("nope.jsonl", base=tmp_path)
    with pytest.raises(DatasetError, match="dataset file not found: /"):
        cases(tmp_path / "absent.jsonl")


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_cases(f)


def test_utf8_bom_accepted(tmp_path: Path) -> None:
    f = tmp_path / "bom.jsonl"
    f.write_bytes('\ufeff{"prompt": "hi"}\n'.encode())
    assert load_cases(f)[0].prompt == "hi"
    g = tmp_path / "bom.csv"
    g.write_bytes("\ufeffid,prompt\na,hi\n".encode())
    assert load_cases(g)[0].id == "a"


def test_large_jsonl_is_fast(tmp_path: Path) -> None:
    import time

    f = tmp_path / "big.jsonl"
    line = json.dumps({"prompt": "Refund order A1, 12.50 EUR", "meta": {"lang": "en"}})
    f.write_text("\n".join([line] * 20_000), encoding="utf-8")
    t0 = time.perf_counter()
    params = cases(f)
    elapsed = time.perf_counter() - t0
    assert len(params) == 20_000
    assert params[-1].id == "big-19999"
    assert elapsed < 5.0  # generous: ~0.2 s on a laptop
    _CACHE.clear()


def test_crlf_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "crlf.jsonl"
    f.write_bytes(
        b'// header\r\n{"prompt": "a"}\r\n\r\n  # indented comment\r\n{"prompt": "b"}\r\n'
    )
    got = load_cases(f)
    assert [c.prompt for c in got] == ["a", "b"]
    assert [c.source.rsplit(":", 1)[1] for c in got] == ["2", "5"]


def test_unicode_line_separator_inside_string(tmp_path: Path) -> None:
    # U+2028 is legal unescaped inside a JSON string; it must not split the line
    f = tmp_path / "ls.jsonl"
    f.write_text('{"prompt": "a\u2028b"}\n', encoding="utf-8")
    assert load_cases(f)[0].prompt == "a\u2028b"
