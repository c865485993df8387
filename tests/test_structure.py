"""Structural summaries and the syrupy snapshot extension."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_modelrollout.providers.base import ToolCall
from pytest_modelrollout.replies import Reply
from pytest_modelrollout.structure import (
    StructureSnapshotExtension,
    length_band,
    structure,
    type_summary,
)


def reply(text: str = "", **kw: Any) -> Reply:
    return Reply(text=text, **kw)


def test_json_structure() -> None:
    text = json.dumps(
        {
            "order_id": "A-1001",
            "amount": 12.5,
            "qty": 2,
            "paid": True,
            "note": None,
            "items": [{"sku": "X1", "qty": 1}, {"sku": "X2", "qty": 3}],
            "tags": [],
        }
    )
    assert structure(reply(text)) == {
        "kind": "json",
        "json_format": "strict",
        "json": {
            "amount": "number",
            "items": [{"qty": "integer", "sku": "string"}],
            "note": "null",
            "order_id": "string",
            "paid": "boolean",
            "qty": "integer",
            "tags": [],
        },
        "language": "unknown",
        "length": "200-1000" if len(text) >= 200 else "50-200",
    }


def test_same_shape_different_values_same_structure() -> None:
    a = reply('{"order_id": "A-1", "reason": "the item arrived damaged"}', latency_ms=10, model="a")
    b = reply('{"reason": "it was broken on arrival", "order_id": "B-2"}', latency_ms=99, model="b")
    assert structure(a) == structure(b)


def test_heterogeneous_lists_are_sorted_distinct_shapes() -> None:
    assert type_summary([1, "a", 2, None, {"k": 1}]) == [
        "integer",
        "null",
        "string",
        {"k": "integer"},
    ]
    assert type_summary([{"a": 1}, {"a": 2, "b": "x"}, {"a": 3}]) == [
        {"a": "integer", "b": "string"},
        {"a": "integer"},
    ]


def test_fenced_json_is_json_but_says_so() -> None:
    s = structure(reply('```json\n{"a": "你好，订单已发货"}\n```'))
    assert s["kind"] == "json" and s["json_format"] == "fenced" and s["language"] == "zh"


def test_text_and_prose_json() -> None:
    assert structure(reply("Your refund is on its way.")) == {
        "kind": "text",
        "language": "en",
        "length": "<50",
    }
    assert structure(reply('Here it is: {"a": 1}'))["kind"] == "text"


def test_tool_calls_sorted_without_ids() -> None:
    calls = [
        ToolCall("search_orders", {"q": "A-1", "limit": 5}, id="call_2"),
        ToolCall("get_weather", {"city": "Paris"}, id="call_1"),
        ToolCall("create_return", None, raw_arguments="{bad", id="call_3"),
    ]
    s = structure(reply(tool_calls=calls))
    assert s == {
        "kind": "tool_calls",
        "tool_calls": [
            {"arguments": "invalid JSON", "name": "create_return"},
            {"arguments": {"city": "string"}, "name": "get_weather"},
            {"arguments": {"limit": "integer", "q": "string"}, "name": "search_orders"},
        ],
    }
    swapped = reply(tool_calls=[calls[2], calls[0], calls[1]])
    assert structure(swapped) == s
    assert "call_" not in json.dumps(s)
    with_text = structure(reply("Let me look that up.", tool_calls=calls[:1]))
    assert with_text["text"] == {"language": "en", "length": "<50"}


def test_error_reply() -> None:
    assert structure(reply(error="timeout after 30 s")) == {"kind": "error"}


def test_length_bands() -> None:
    assert [length_band(n) for n in (0, 49, 50, 199, 200, 999, 1000, 10**6)] == [
        "<50",
        "<50",
        "50-200",
        "50-200",
        "200-1000",
        "200-1000",
        ">1000",
        ">1000",
    ]


def test_reply_structure_method_is_deterministic() -> None:
    r = reply('{"b": [1, 2], "a": {"z": 1, "y": "x"}}')
    first = json.dumps(r.structure())
    for _ in range(3):
        assert json.dumps(r.structure()) == first
    assert list(r.structure()["json"]) == ["a", "b"]


def test_extension_serializes_sorted_indented_json() -> None:
    ext = StructureSnapshotExtension()
    r = reply('{"b": 1, "a": "x"}')
    out = ext.serialize(r)
    assert isinstance(out, str)
    assert out == ext.serialize(r.structure())
    assert json.loads(out) == r.structure()
    assert out.startswith('{\n  "json": {\n    "a": "string",')
    assert out.endswith("}\n")


SNAPSHOT_TEST = """
from pytest_modelrollout.replies import Reply
from pytest_modelrollout.providers.base import ToolCall
from pytest_modelrollout.structure import StructureSnapshotExtension

def make(latency):
    return Reply(
        text='{"order_id": "A-1", "items": [{"sku": "X", "qty": 1}]}',
        latency_ms=latency,
        model="sim:stable",
    )

def test_default(snapshot):
    import random
    assert make(random.random()).structure() == snapshot

def test_json_files(snapshot):
    import random
    snap = snapshot.use_extension(StructureSnapshotExtension)
    assert make(random.random()).structure() == snap

def test_reply_directly(snapshot):
    snap = snapshot.use_extension(StructureSnapshotExtension)
    r = Reply(tool_calls=[ToolCall("search", {"q": "x"}, id="call_9")], latency_ms=3.0)
    assert r == snap
"""


def _snapshot_files(pytester: pytest.Pytester) -> dict[str, str]:
    root = pytester.path / "__snapshots__"
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_syrupy_snapshots_are_stable_and_catch_changes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_snap=SNAPSHOT_TEST)
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=3)
    files = _snapshot_files(pytester)
    assert "test_snap.ambr" in files
    json_files = {k: v for k, v in files.items() if k.endswith(".json")}
    assert len(json_files) == 2
    content = next(v for k, v in json_files.items() if "test_json_files" in k)
    assert json.loads(content)["json"] == {
        "items": [{"qty": "integer", "sku": "string"}],
        "order_id": "string",
    }
    assert content.startswith("{\n  ")  # indented, readable
    assert "latency" not in content and "sim:stable" not in content
    # rerunning compares equal, and updating again changes nothing
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=3)
    assert _snapshot_files(pytester) == files
    # a structural change (an integer becomes a string) fails both snapshot styles
    pytester.makepyfile(test_snap=SNAPSHOT_TEST.replace('"qty": 1', '"qty": "1"'))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=2)
