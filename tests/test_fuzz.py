"""Property-based fuzzing of every parser that reads input the project does not control.

* provider reply parsers (OpenAI and Anthropic wire): arbitrary bytes, arbitrary JSON-ish
  structures built from the keys real replies use, random status codes and headers -> a
  well-formed :class:`ProviderResponse` or a :class:`ProviderError` subclass, nothing else;
* the gate-expression parser -> a Gate or ConfigError / ValueError;
* the config parser and model resolution -> a config or ConfigError;
* gate config tables -> gates or ConfigError;
* dataset rows and dataset files (JSONL / JSON / CSV) -> cases or DatasetError.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import itertools
import json
import math
import os
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from pytest_modelrollout._exceptions import ConfigError, DatasetError, ProviderError
from pytest_modelrollout.asked import (
    ANY_REPLY,
    MISSING,
    REPLIES,
    evaluate,
    later_asks,
    replies_read,
    source_asks,
)
from pytest_modelrollout.config import parse_config, resolve_model
from pytest_modelrollout.datasets import Case, load_cases
from pytest_modelrollout.gates import Gate, parse_gate, parse_gates_config
from pytest_modelrollout.providers import anthropic, openai
from pytest_modelrollout.providers.base import ProviderResponse

SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),  # longer: FUZZ_EXAMPLES=5000
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# file-based and pydantic-based properties are slower per example
SLOW = settings(SETTINGS, max_examples=100)

# ------------------------------------------------------------------------------ strategies

KEYS = [
    "choices", "message", "content", "tool_calls", "function", "name", "arguments", "usage",
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "finish_reason",
    "stop_reason", "error", "type", "code", "message", "msg", "detail", "status", "base_resp",
    "status_code", "status_msg", "text", "model", "id", "role", "input", "tool_use",
    "function_call", "cache_read_input_tokens", "cache_creation_input_tokens", "index",
]  # fmt: skip
VALUES = [
    "text", "tool_use", "error", "overloaded_error", "rate_limit_error", "authentication_error",
    "server_error", "insufficient_quota", "end_turn", "tool_calls", "stop", "assistant",
    "{\"a\": 1}", "{bad json", "", "null", "1002", "1004",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(VALUES),
)
json_ish: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                        max_size=6),
    ),
    max_leaves=12,
)  # fmt: skip


def _reply_shaped(draw: st.DrawFn) -> Any:
    """A structure close to a real reply, with random holes and wrong types."""
    msg = draw(st.dictionaries(st.sampled_from(KEYS), json_ish, max_size=5))
    choice = draw(st.dictionaries(st.sampled_from(KEYS), json_ish, max_size=4))
    if draw(st.booleans()):
        choice["message"] = msg
    body = draw(st.dictionaries(st.sampled_from(KEYS), json_ish, max_size=5))
    if draw(st.booleans()):
        body["choices"] = draw(st.one_of(st.just([choice]), json_ish))
    if draw(st.booleans()):
        body["content"] = draw(st.lists(st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "tool_use", "x"])},
                                  optional={"text": json_ish, "input": json_ish,
                                            "name": json_ish, "id": json_ish}),
            json_ish), max_size=3))  # fmt: skip
    return body


reply_shaped = st.composite(_reply_shaped)()


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, default=str).encode("utf-8")


bodies = st.one_of(
    st.binary(max_size=400),
    json_ish.map(_encode),
    reply_shaped.map(_encode),
    # valid JSON cut short / with bad bytes inside
    reply_shaped.map(_encode).flatmap(
        lambda b: st.integers(0, max(0, len(b))).map(lambda n: b[:n] + b"\xff\xfe" + b[n:])
    ),
)
statuses = st.one_of(
    st.sampled_from([200, 201, 204, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503,
                     504, 529]),
    st.integers(min_value=100, max_value=599),
)  # fmt: skip
header_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["1", "0", "-1", "1e309", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT",
                     "Fri, 31 Dec 9999 23:59:59 GMT", "text/html", "application/json"]),
)  # fmt: skip
headers = st.dictionaries(
    st.sampled_from(["retry-after", "Retry-After", "retry-after-ms", "content-type",
                     "Content-Type", "x-request-id", "content-length"]),
    header_values,
    max_size=4,
)  # fmt: skip


def _check_response(resp: ProviderResponse) -> None:
    assert isinstance(resp, ProviderResponse)
    assert isinstance(resp.text, str)
    assert isinstance(resp.tool_calls, list)
    for tc in resp.tool_calls:
        assert isinstance(tc.name, str)
        assert tc.arguments is None or isinstance(tc.arguments, dict)
    for n in (resp.input_tokens, resp.output_tokens):
        assert n is None or (isinstance(n, int) and not isinstance(n, bool))
    assert resp.finish_reason is None or isinstance(resp.finish_reason, str)


def _check_error(exc: ProviderError) -> None:
    msg = str(exc)
    assert msg.startswith(exc.kind + ":"), msg
    assert "\n" not in msg and len(msg) <= 200, msg
    assert exc.retry_after is None or (math.isfinite(exc.retry_after) and exc.retry_after >= 0)


# ---------------------------------------------------------------------------------- parsers


@SETTINGS
@given(status=statuses, hdrs=headers, body=bodies)
def test_openai_parse_response_raises_only_provider_errors(
    status: int, hdrs: dict[str, str], body: bytes
) -> None:
    try:
        resp = openai.parse_response(status, hdrs, body, secrets=("sk-fuzz-secret",), now=0.0)
    except ProviderError as exc:
        _check_error(exc)
    else:
        assert 200 <= status < 300
        _check_response(resp)


@SETTINGS
@given(status=statuses, hdrs=headers, body=bodies)
def test_anthropic_parse_response_raises_only_provider_errors(
    status: int, hdrs: dict[str, str], body: bytes
) -> None:
    try:
        resp = anthropic.parse_response(status, hdrs, body, secrets=("sk-fuzz-secret",), now=0.0)
    except ProviderError as exc:
        _check_error(exc)
    else:
        assert 200 <= status < 300
        _check_response(resp)


@SETTINGS
@given(hdrs=headers)
def test_retry_after_is_finite_or_none(hdrs: dict[str, str]) -> None:
    value = openai.parse_retry_after(hdrs, now=0.0)
    assert value is None or (math.isfinite(value) and value >= 0)


# ------------------------------------------------------------------------------------ gates

gate_texts = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda m, s, v, u: f"{m}:{s}{v}{u}",
        st.sampled_from(["p95_latency", "p50_latency", "error_rate", "timeout_rate",
                         "fallback_rate", "cost_per_success", "check.json", "check.*", "check.",
                         "validation", "min_samples", "bogus", ""]),
        st.sampled_from(["+", "-", "x", "<", ">", "<=", "", "×", "$"]),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.integers(-5, 10**6).map(str), st.text(max_size=4)),
        st.sampled_from(["%", "pp", "ms", "s", "", "x", "%%"]),
    ),
)  # fmt: skip


@SETTINGS
@given(text=gate_texts)
def test_parse_gate_raises_only_config_or_value_errors(text: str) -> None:
    try:
        gate = parse_gate(text)
    except (ConfigError, ValueError) as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(gate, Gate)
        assert math.isfinite(gate.threshold)


gate_tables = st.dictionaries(
    st.one_of(
        st.sampled_from(["max_p95_latency_increase", "max_error_rate_ratio", "min_samples",
                         "max_fallback_rate", "error_rate_floor", "confidence", "decision",
                         "expressions", "max_check_failure_increase"]),
        st.text(max_size=10),
    ),
    st.one_of(json_ish, st.lists(gate_texts, max_size=3)),
    max_size=4,
)  # fmt: skip


@SETTINGS
@given(table=gate_tables)
def test_gate_tables_raise_only_config_errors(table: dict[str, Any]) -> None:
    # NB: not asserted one-line: a key containing a newline is echoed verbatim (gates.py)
    with contextlib.suppress(ConfigError):
        parse_gates_config(table)


# ----------------------------------------------------------------------------------- config

CONFIG_KEYS = [
    "stable", "candidate", "killed", "models", "workflows", "gates", "record", "cassette_dir",
    "exit", "decision", "confidence", "concurrency", "strict", "prefetch", "traffic_plan",
]  # fmt: skip
MODEL_KEYS = [
    "provider", "model", "base_url", "api_key_env", "timeout_s", "max_retries",
    "max_concurrency", "input_price_per_mtok", "output_price_per_mtok", "fallback", "params",
    "headers", "rpm", "tpm",
]  # fmt: skip
providers = st.sampled_from(["openai", "anthropic", "sim", "sim-anthropic", "ollama", "nosuch"])
model_tables = st.dictionaries(
    st.one_of(st.sampled_from(MODEL_KEYS), st.text(max_size=6)),
    st.one_of(json_ish, providers),
    max_size=6,
)
config_dicts = st.dictionaries(
    st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=8)),
    st.one_of(
        json_ish,
        st.dictionaries(st.text(max_size=6), model_tables, max_size=3),
        st.lists(st.floats(allow_nan=True), max_size=4),
    ),
    max_size=6,
)
refs = st.one_of(
    st.text(max_size=20),
    st.builds(lambda p, m: f"{p}:{m}", providers, st.text(max_size=12)),
    st.sampled_from(["m", "sim:stable?latency_ms=nan", "sim:good?latency_ms=-1", "sim:", ":x"]),
)


@SLOW
@given(data=config_dicts, ref=refs)
def test_parse_config_raises_only_config_errors(data: dict[str, Any], ref: str) -> None:
    try:
        cfg = parse_config(data, "fuzz.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for r in (ref, *list(cfg.models)[:2]):
        try:
            resolve_model(cfg, r)
        except ConfigError as exc:
            assert "\n" not in str(exc)


# --------------------------------------------------------------------------------- datasets

ROW_KEYS = [
    "id", "prompt", "messages", "expected", "meta", "system", "tools", "params",
    "response_format", "stable_reply", "request", "response", "latency_ms", "role", "content",
]  # fmt: skip
rows = st.one_of(
    json_ish,
    st.dictionaries(st.sampled_from(ROW_KEYS), json_ish, max_size=5),
    st.fixed_dictionaries(
        {"prompt": st.one_of(st.text(max_size=20), json_ish)},
        optional={"id": json_ish, "messages": json_ish, "stable_reply": json_ish,
                  "tools": json_ish, "meta": json_ish},
    ),
)  # fmt: skip


def _load(suffix: str, data: bytes) -> list[Case]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"cases{suffix}"
        path.write_bytes(data)
        return load_cases(path)


def _check_cases(loaded: list[Case]) -> None:
    assert loaded
    ids = [c.id for c in loaded]
    assert len(ids) == len(set(ids))
    for case in loaded:
        assert case.prompt is not None or case.messages is not None


@SLOW
@given(data=st.lists(rows, min_size=0, max_size=5))
def test_jsonl_rows_raise_only_dataset_errors(data: list[Any]) -> None:
    text = "\n".join(json.dumps(r, allow_nan=True, default=str) for r in data)
    try:
        _check_cases(_load(".jsonl", text.encode()))
    except DatasetError as exc:
        assert "\n" not in str(exc) and "cases.jsonl" in str(exc)


@SLOW
@given(data=st.one_of(st.lists(rows, max_size=4), json_ish, st.fixed_dictionaries(
    {"cases": st.one_of(st.lists(rows, max_size=3), json_ish)})))  # fmt: skip
def test_json_files_raise_only_dataset_errors(data: Any) -> None:
    try:
        _check_cases(_load(".json", json.dumps(data, allow_nan=True, default=str).encode()))
    except DatasetError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(suffix=st.sampled_from([".jsonl", ".json", ".csv"]), data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_dataset_errors(suffix: str, data: bytes) -> None:
    try:
        _check_cases(_load(suffix, data))
    except DatasetError as exc:
        assert "\n" not in str(exc)


csv_cells = st.one_of(st.text(max_size=12), st.sampled_from(['{"a":', "[1,2]", '"', "", "x,y"]))


@SLOW
@given(
    header=st.lists(st.one_of(st.sampled_from(["prompt", "id", "expected", "messages", "meta",
                                               "stable_reply", "tools", "meta.x", "system"]),
                              st.text(max_size=6)), min_size=1, max_size=4),
    body=st.lists(st.lists(csv_cells, max_size=5), max_size=4),
)  # fmt: skip
def test_csv_files_raise_only_dataset_errors(header: list[str], body: list[list[str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    try:
        _check_cases(_load(".csv", buf.getvalue().encode()))
    except DatasetError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------- what prefetch reads from a test's source
class _Row:
    TEXT = "class attribute"

    def __init__(self, text: str) -> None:
        self.text = text


class _Tuple(NamedTuple):
    text: str


@dataclasses.dataclass(slots=True)
class _Slots:
    text: str


class _Computed:
    def __init__(self, text: str) -> None:
        self.__dict__["text"] = text

    @property
    def text(self) -> str:  # what the test reads, not the instance's __dict__
        return "computed"


class _Ended(Exception):
    """What :class:`_Outcomes` raises: the test ends there."""


class _Outcomes:
    """``pytest`` in a generated test: ``skip`` and ``xfail`` end it (with an ``Exception``,
    which the property catches as any other)."""

    @staticmethod
    def skip(reason: str = "") -> None:
        raise _Ended(reason)

    @staticmethod
    def xfail(reason: str = "") -> None:
        raise _Ended(reason)


class _Asker:
    """A ``rollout`` that keeps what the first ``ask`` was given."""

    def __init__(self) -> None:
        self.asked: list[Any] = []
        self.kwargs: list[dict[str, Any]] = []
        self.reached = False
        self.reaches = 0

    def reach(self) -> None:
        self.reached = True
        self.reaches += 1

    def ask(self, prompt: Any, **kwargs: Any) -> None:
        self.asked.append(prompt)
        self.kwargs.append(kwargs)


_LEAVES = ["x", "p_str", "p_int", "p_float", "p_bool", "p_dict['k']", "p_dict['missing']", "p_list[0]",
           "'%s'", "'<%s|%d>'", "'%(k)s'", "'{k}|{0}'", "G_FORMAT", "p_list", "p_tuple",
           "p_list[3]", "p_obj.text", "p_obj.missing", "G_STR", "G_TEMPLATE", "'lit'", "3", "1.5",
           "True", "None", "local", "p_tuple.text", "p_slots.text", "p_computed.text", "p_obj.TEXT",
           "G_CLASS.TEXT", "os.environ.get('MR_FUZZ_REGION', 'none')", "os.environ['MR_FUZZ_REGION']",
           "os.getenv('MR_FUZZ_UNSET', default='d')", "os.environ.get('MR_FUZZ_UNSET')",
           "os.environ['MR_FUZZ_UNSET']"]  # fmt: skip
# the environment the generated tests read (MR_FUZZ_UNSET is never set)
os.environ["MR_FUZZ_REGION"] = "EU 区"
# what a comprehension goes over (its target is x; x as a leaf reads it)
_iterables = st.sampled_from(["p_list", "p_dict", "G_DICT", "p_dict.items()", "G_DICT.keys()",
                              "p_str", "[p_str, 'x']", "p_tuple", "enumerate(p_list)",
                              "enumerate(p_list, 1)", "zip(p_list, G_DICT)", "sorted(p_list)",
                              "reversed(p_list)", "range(p_int)", "list(p_dict.items())",
                              "reversed(enumerate(p_list))", "sorted(G_DICT)"])
_expr_sources = st.recursive(
    st.sampled_from(_LEAVES),
    lambda inner: st.one_of(
        st.builds(lambda e: f'f"<{{{e}}}>"', inner),
        st.builds(lambda a, b: f"({a} + {b})", inner, inner),
        st.builds(lambda a, b, c: f"{a}.format({b}, x={c})", inner, inner, inner),
        st.builds(lambda a, b, d: f"{a}.format({b}, **{d})", inner, inner,
                  st.sampled_from(["p_dict", "G_DICT", "{'k': p_str}", "{'x': p_list}"])),
        st.builds(lambda a, d: f"{a}.format(x=p_str, **{d})", inner,
                  st.sampled_from(["p_dict", "{'x': 'twice'}"])),
        st.builds(lambda a, b: f"'-'.join([{a}, {b}])", inner, inner),
        st.builds(lambda a, d: f"{a}.format_map({d})", inner,
                  st.sampled_from(["p_dict", "G_DICT", "{'k': p_str}", "p_list"])),
        st.builds(lambda a, m: f"{a}.{m}", inner, st.sampled_from(
            ["split(',')", "rsplit(maxsplit=1)", "splitlines()", "split(None, 1)"])),
        st.builds(lambda a, m: f"{a}.{m}", inner, st.sampled_from(
            ["strip()", "upper()", "replace('a', 'b')", "split()", "casefold()"])),
        st.builds(lambda a: f"[{{'role': 'user', 'content': {a}}}]", inner),
        st.builds(lambda d, k: f"{d}[{k}]", st.sampled_from(["G_DICT", "p_dict", "p_list"]),
                  inner),  # an item whose key is read too
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(["-", "*", "//"]),
                  inner),  # arithmetic, a string repeated
        st.builds(lambda a, b: f"({a} % {b})", inner, inner),  # %-formatting
        st.builds(lambda a, b, c: f"({a} % ({b}, {c}))", inner, inner, inner),
        st.builds(lambda a, b: f"({a} % ({b},))", inner, inner),
        st.builds(lambda a, b: f"({a} % [{b}])", inner, inner),  # a list: formatted as one
        st.builds(lambda a, sl: f"{a}[{sl}]", inner,
                  st.sampled_from([":2", "1:", "-3:", "::2", "1:-1", "::-1", "::0", "2:1"])),
        st.builds(lambda a, b, c: f"({a} if {b} else {c})", inner, inner, inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(["and", "or"]),
                  inner),
        st.builds(lambda a: f"(not {a})", inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner,
                  st.sampled_from(["==", "!=", "in", "not in", "is", "is not", "<", "<=", ">",
                                   ">="]), inner),
        st.builds(lambda d, k: f"{d}.get({k})", st.sampled_from(["G_DICT", "p_dict", "p_str"]),
                  inner),  # a dict's get (a str has none)
        st.builds(lambda d, k, v: f"{d}.get({k}, {v})", st.sampled_from(["G_DICT", "p_dict"]),
                  inner, inner),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(
            ["len", "str", "sorted", "list", "tuple", "enumerate", "reversed", "min", "max"]),
            inner),
        st.builds(lambda f, a, k: f"{f}({a}, key={k})", st.sampled_from(["sorted", "min", "max"]),
                  inner, st.sampled_from(["len", "str.lower", "str.strip"])),
        st.builds(lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(["min", "max"]), inner,
                  inner),
        # f-string conversions and format specs
        st.builds(lambda a, spec: f'f"<{{{a}{spec}}}>"', inner,
                  st.sampled_from(["!r", "!s", "!a", ":>6", ":.2f", ":d", "!r:^9", ":x"])),
        st.builds(lambda a, b: f'f"<{{{a}:{{{b}}}}}>"', inner,  # a spec read too (not from
                  st.sampled_from(["p_str", "p_int", "'>4'", "G_STR", "x"])),  # p_float: GBs)
        # comprehensions, a generator joined, a dict's views
        st.builds(lambda a, it: f"[{a} for x in {it}]", inner, _iterables),
        st.builds(lambda it, c: f"[x for x in {it} if {c}]", _iterables, inner),
        st.builds(lambda a, it: f"'-'.join({a} for x in {it})", inner, _iterables),
        # more than one for: each later one goes over what the one before gives (x, then y)
        st.builds(lambda it, inner_it, c: f"[y for x in {it} for y in {inner_it} if {c}]",
                  _iterables, st.sampled_from(["[x, 'y']", "(x, p_str)", "x", "p_list", "[]"]),
                  inner),
        st.builds(lambda a, it: f"'-'.join({a} for x in {it} for y in (1, 2))", inner,
                  _iterables),
        st.builds(lambda d, m: f"{d}.{m}()", st.sampled_from(["G_DICT", "p_dict", "p_list"]),
                  st.sampled_from(["keys", "values", "items"])),
        # dicts merged, and copies (of a list or dict, or of anything)
        st.builds(lambda d, a: f"{{**{d}, 'k': {a}}}", st.sampled_from(
            ["p_dict", "G_DICT", "p_list", "{'j': p_str}", "p_obj"]), inner),
        st.builds(lambda d, a: f"dict({d}, k={a})", st.sampled_from(["p_dict", "G_DICT", "p_list"]),
                  inner),
        st.builds(lambda c: f"{c}.copy()", st.sampled_from(["p_dict", "p_list", "G_DICT", "p_str"])),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(["copy.copy", "copy.deepcopy"]), inner),
        # the standard library's string builders
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(
            ["textwrap.dedent", "json.dumps", "inspect.cleandoc"]), inner),
        st.builds(lambda a, b: f"textwrap.indent({a}, {b})", inner, inner),
        st.builds(lambda a: f"json.dumps({a}, ensure_ascii=False, sort_keys=True, indent=1)",
                  inner),
    ),
    max_leaves=6,
)
_texts = st.text(alphabet=st.sampled_from(list("ab {}x0_.!中文")), max_size=8)


@SETTINGS
@given(local=_expr_sources, asked=_expr_sources, p_str=_texts, template=_texts,
       p_int=st.integers(-5, 5), p_float=st.floats(allow_nan=False), p_bool=st.booleans(),
       p_dict=st.dictionaries(st.sampled_from(["k", "j"]), _texts, max_size=2),
       p_list=st.lists(_texts, max_size=4))  # fmt: skip
@example(local="os.environ['MR_FUZZ_REGION']", asked="f'{local} {os.getenv(\"MR_FUZZ_UNSET\", p_str)}'",
         p_str="ab", template="", p_int=0, p_float=0.0, p_bool=False, p_dict={}, p_list=[])
@example(local="'x'", asked="max(p_list, key=len) + min(p_str, G_STR) + max(p_str, 'a', local)",
         p_str="ab", template="", p_int=0, p_float=0.0, p_bool=False, p_dict={},
         p_list=["a", "bbb", "cc"])
@example(local="'x'", asked="'-'.join(sorted(p_list, key=str.lower)) + min(p_dict, default='')",
         p_str="", template="", p_int=0, p_float=0.0, p_bool=False, p_dict={"k": "v", "j": ""},
         p_list=["b", "A", "a", "C"])
def test_what_prefetch_reads_from_a_test_is_what_the_test_asks(
    local: str, asked: str, p_str: str, template: str, p_int: int, p_float: float,
    p_bool: bool, p_dict: dict[str, str], p_list: list[str],
) -> None:  # fmt: skip
    """For any test built from the forms prefetch reads, the value it plans is exactly what the
    test passes to ``ask`` when it runs (a planned request the test would not send is a wasted
    call); forms it cannot know are left unplanned, never guessed."""
    import ast

    from pytest_modelrollout.asked import MISSING, evaluate, read_asks

    source = (
        "def test_x(rollout, p_str, p_int, p_float, p_bool, p_dict, p_list, p_obj, p_tuple,"
        " p_slots, p_computed):\n"
        f"    local = {local}\n"
        "    rollout.reach()\n"
        f"    rollout.ask({asked})\n"
    )
    names: dict[str, Any] = {**_STDLIB, "G_STR": "Customer message", "G_TEMPLATE": template, "G_CLASS": _Row,
                             "G_FORMAT": "Customer (%s): %s",
                             "G_DICT": {"k": "from k", "lit": "from lit", 3: "from 3",
                                        True: "from True", "a": ["x", "y"]}}
    params = {"p_str": p_str, "p_int": p_int, "p_float": p_float, "p_bool": p_bool,
              "p_dict": p_dict, "p_list": p_list, "p_obj": _Row(p_str), "p_tuple": _Tuple(p_str),
              "p_slots": _Slots(p_str), "p_computed": _Computed(p_str)}  # fmt: skip
    try:
        fdef = ast.parse(source).body[0]
    except SyntaxError:  # an f-string in an f-string with the same quotes (Python < 3.12)
        assume(False)
    assert isinstance(fdef, ast.FunctionDef)
    reads = read_asks(fdef)[0]
    planned = evaluate(reads[0][0], params, names) if reads else MISSING
    try:
        code = compile(source, "<test>", "exec")
    except SyntaxError:  # a literal subscripted (3[:2]): the compiler's warning, as an error
        assume(False)
    exec(code, names)
    _asks_what_was_planned(names["test_x"], params, planned)


def _asks_what_was_planned(test: Any, params: dict[str, Any], planned: Any) -> None:
    """Runs the generated test: what it passes to ``ask`` is what was planned for it, when
    something was."""
    from pytest_modelrollout.asked import MISSING

    rollout = _Asker()
    try:
        test(rollout, **params)
    except Exception:
        # building what it asks failed: the test never asks, nothing may be sent for it (a
        # test that fails before it gets there, like any failing test, is not known ahead)
        assert planned is MISSING or not rollout.reached
        return
    if planned is not MISSING:
        assert rollout.asked == [planned]


class _Snapshots(_Asker):
    """An ``_Asker`` that keeps a copy of what it was asked (the test may change it after)."""

    def ask(self, prompt: Any, **kwargs: Any) -> None:
        import copy

        super().ask(copy.deepcopy(prompt), **copy.deepcopy(kwargs))


class _Said:
    """A reply a generated conversation reads (``reply.text``, ``reply.candidate.text``)."""

    def __init__(self, text: str, inner: bool = False) -> None:
        self.text = text
        if not inner:
            self.stable, self.candidate = _Said(text + "/s", True), _Said(text + "/c", True)

    def check(self) -> None:
        """A check on the reply (``pair.expect_language(...)``): it changes nothing."""


class _Replying(_Snapshots):
    """A ``_Snapshots`` whose asks return a reply of their own (:class:`_Said`)."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[_Said] = []

    def ask(self, prompt: Any, **kwargs: Any) -> _Said:  # type: ignore[override]
        super().ask(prompt, **kwargs)
        self.replies.append(_Said(f"reply {len(self.replies)} 回复"))
        return self.replies[-1]


def _touch(messages: list[Any]) -> None:
    """A function of the suite that changes the list it is given."""
    messages.append({"role": "user", "content": "touched"})


# statements that change (or only read) the test's values in place, before or after its ask
_CHANGES = [
    "messages.append({'role': 'assistant', 'content': p_str})",
    "messages[0]['content'] = p_str + '!'",
    "del messages[-1]",
    "history = messages\n    history.append({'role': 'user', 'content': 'again'})",
    "G_TOUCH(messages)",
    "kept = {'all': messages}\n    kept['all'].append({'role': 'user', 'content': 'kept'})",
    "row['text'] = p_str + '?'",
    "row.update(text='updated')",
    "row.setdefault('more', []).append('x')",
    "p_list.append('z')",
    "p_list.sort()",
    "n = len(messages)",
    "print(messages, row, p_list)",
    "text = json.dumps(messages)",
    "copied = dict(row)\n    copied['text'] = 'not the row'",
    "turns = list(messages)\n    turns.append({'role': 'user', 'content': 'a copy'})",
    "messages.extend([{'role': 'user', 'content': t} for t in p_list])",
    "messages.extend(p_list)",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': t})",
    "for i, t in enumerate(p_list):\n        if t:\n"
    "            messages.append({'role': 'user', 'content': f'{i}: {t}'})",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': t})\n"
    "        messages.append({'role': 'user', 'content': 'twice'})",
    "for t in p_list:\n        messages.extend([{'role': 'user', 'content': t}])",
    "for t in p_list:\n        turn = {'role': 'user', 'content': t}\n        messages.append(turn)\n"
    "        messages.append({'role': 'assistant', 'content': p_str})",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': t})\n        p_list.sort()",
    "for t in p_list:\n        turn = {'role': 'user', 'content': t}\n        messages.append(turn)\n"
    "        turn['content'] = 'changed'",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': str(len(messages))})",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': t})\n    else:\n"
    "        messages.append({'role': 'user', 'content': 'done'})",
    "if p_str:\n        messages.append({'role': 'user', 'content': 'maybe'})",
    "if p_str:\n        messages.append({'role': 'user', 'content': 'maybe'})\n    else:\n"
    "        messages.extend(p_list)",
    "if row['text'] == p_str:\n        pass\n    elif p_list:\n"
    "        messages.append({'role': 'user', 'content': p_list[0]})\n"
    "        if len(messages) < 4:\n            messages.append({'role': 'user', 'content': p_str})",
    "if len(messages) < 3:\n        messages.append({'role': 'user', 'content': 'short'})",
    "if p_str:\n        messages.append({'role': 'user', 'content': 'x'})\n"
    "        row['text'] = 'changed'",
    "if p_list:\n        messages.extend(p_list)\n        p_list.append('later')",
    "messages.append({'role': 'user', 'content': str(len(messages))})",
    # functions of the suite given the list: ones that only add to it are read
    "add_turns(messages, p_list)",
    "add_turns(messages, p_list, role='assistant')",
    "add_then_return(messages, p_str)",
    "add_reading(messages)",
    "add_aliased(messages)",
    "add_turns(messages + [], p_list)",
    "add_turns(messages, sorted(p_list))",
]
# the functions of the suite those call (in the generated module, where prefetch reads them)
_ADDERS = """
def add_turns(messages, turns, role='user'):
    for t in turns:
        if not t:
            continue
        messages.append({'role': role, 'content': t})

def add_then_return(messages, text):
    messages.extend([{'role': 'user', 'content': text}])
    return messages

def add_reading(messages):
    messages.append({'role': 'user', 'content': str(len(messages))})

def add_aliased(messages):
    other = messages
    other.append({'role': 'user', 'content': 'aliased'})

"""
_CHANGED_ASKS = ["rollout.ask(messages)", "rollout.ask(row['text'])",
                 "rollout.ask(p_list[-1] if p_list else 'none')", "rollout.ask([messages[-1]])",
                 "rollout.ask(row.get('text', 'none'), system=messages[0]['content'])"]


@SETTINGS
@example(before=["messages.append({'role': 'assistant', 'content': p_str})"],
         ask="rollout.ask(messages)", after=[], p_str="a", text="b", p_list=[])
@example(before=[], ask="rollout.ask(messages)",
         after=["messages.append({'role': 'assistant', 'content': p_str})"], p_str="a",
         text="b", p_list=[])
@given(before=st.lists(st.sampled_from(_CHANGES), max_size=3),
       ask=st.sampled_from(_CHANGED_ASKS), after=st.lists(st.sampled_from(_CHANGES), max_size=2),
       p_str=_texts, text=_texts, p_list=st.lists(_texts, max_size=3))
def test_what_is_planned_is_what_the_test_asks_after_changing_its_values(
    before: list[str], ask: str, after: list[str], p_str: str, text: str, p_list: list[str]
) -> None:
    """A test that builds a message list (``messages = [...]``) and changes it, or its
    parameters, in place before or after its ask (``messages.append(...)`` / ``.extend(...)``,
    in a loop or under an ``if`` too, an item set or deleted, ``row.update(...)``,
    ``p_list.sort()``, the list handed to a function of the suite or to another name that
    changes it) or only reads them (``len``, ``print``, ``json.dumps``, a copy changed): what is
    planned for its first ask is what it asks, the value as it is when the test asks, or
    nothing."""
    body = "".join(f"    {stmt}\n" for stmt in before)
    source = (_ADDERS + "def test_x(rollout, p_str, row, p_list):\n"
              "    messages = [{'role': 'system', 'content': 'S'},"
              " {'role': 'user', 'content': p_str}]\n"
              f"{body}    rollout.reach()\n    {ask}\n"
              + "".join(f"    {stmt}\n" for stmt in after))  # fmt: skip
    names: dict[str, Any] = {**_STDLIB, "G_TOUCH": _touch}
    params = {"p_str": p_str, "row": {"text": text}, "p_list": p_list}
    # (del messages[-1] of an empty list: it asks nothing)
    _first_ask_is_planned_as_asked(source, names, params, IndexError)


def _first_ask_is_planned_as_asked(source: str, names: dict[str, Any], params: dict[str, Any],
                                   *failures: type[Exception]) -> None:
    """What prefetch plans for the generated test's first ask (its prompt and keyword
    arguments, for ``params``; nothing when it reads a parameter the test binds again, or a
    value that is not known) is what the test asks when it runs (a copy of it, as the test may
    change it after), unless it fails first with one of ``failures``; and what it asks when
    it runs again (the plans of a run's items are made before their tests run: a test that
    changes the module's values, a list it adds to that is the module's, would ask another
    thing the next time)."""
    from pytest_modelrollout.asked import MISSING, evaluate, params_read, source_asks

    with _source_of(source, names) as func:
        found, rebound = source_asks(func)
        planned = MISSING
        if found and found[0][1] is not None and not rebound & params_read(found[0][0]).union(
                *(params_read(v) for _, v in found[0][1])):
            prompt = evaluate(found[0][0], params, func.__globals__)
            keywords = {k: evaluate(v, params, func.__globals__) for k, v in found[0][1]}
            if prompt is not MISSING and MISSING not in keywords.values():
                planned = copy.deepcopy((prompt, keywords))  # (as sent: not changed after)
        runs = []
        for _ in range(2):
            rollout = _Snapshots()
            with contextlib.suppress(*failures):
                func(rollout, **copy.deepcopy(params))
            runs.append(rollout)
    event("planned" if planned is not MISSING else "not planned")
    for rollout in runs:
        if planned is not MISSING and rollout.asked:  # (one that fails first asks nothing)
            assert (rollout.asked[0], rollout.kwargs[0]) == planned


# statements that assign the test's names before its ask: again, with ``+=``, under an ``if``
_ASSIGNS = [
    "prompt += '!'",
    "prompt = prompt + p_str",
    "prompt = prompt.upper()",
    "system = 'S1'",
    "if p_str:\n        system = 'S2'",
    "if p_str == 'a':\n        prompt = 'A'\n    elif p_list:\n        prompt = p_list[0]\n"
    "    else:\n        prompt += '?'",
    "if p_list:\n        system = p_list[-1]\n        prompt = system + '!'",
    "if p_str:\n        prompt += 'x'\n        prompt += 'y'",
    "if p_str:\n        system = 'a'\n        system += p_str",
    "if p_str:\n        system = 'a'\n        system = system + 'b'",
    "if p_list:\n        messages.append({'role': 'user', 'content': p_list[0]})\n"
    "        messages.append({'role': 'user', 'content': str(len(messages))})",
    "if p_str:\n        messages.append({'role': 'user', 'content': 'A'})\n"
    "        messages.extend([{'role': 'user', 'content': t} for t in p_list])",
    "if p_str:\n        messages.append({'role': 'user', 'content': prompt})\n"
    "        system = 'S3'",
    "messages.append({'role': 'user', 'content': prompt})",
    "messages.append({'role': 'user', 'content': str(len(messages))})",
    "if len(messages) > 1:\n        prompt = 'long'",
    "if p_str:\n        if p_list:\n            system = 'nested'\n    else:\n        pass",
    "if p_str:\n        pass\n    else:\n        system = p_str + system",
    "for t in p_list:\n        prompt += t",
    "with contextlib.nullcontext('W') as w:\n        system = w",
    "messages[0]['content'] = prompt",
    "prompt, extra = p_str, prompt\n    prompt += extra",
    "if p_list:\n        ctx = p_list[0]\n        messages.append({'role': 'user', 'content': ctx})\n"
    "        prompt = prompt + ctx",
    "if p_str:\n        prompt = p_str\n"
    "        messages.extend([{'role': 'user', 'content': prompt} for prompt in p_list])",
    "if p_str:\n        a, b = prompt, p_str\n        prompt = b + a",
    "words = [prompt, p_str]\n    if p_list:\n        words.append(p_list[-1])\n"
    "    prompt = ' '.join(words)",
    "text = json.dumps(messages)",
    "if p_list:\n        prompt = p_list[0]\n        messages.append({'role': 'user', 'content': prompt})",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': prompt + t})",
    "for t in p_list:\n        if t:\n            system += t",
    "for t in p_list:\n        prompt += prompt",
    "for i, t in enumerate(p_list):\n        prompt += f'{i}{t}'\n"
    "        messages.append({'role': 'user', 'content': t})",
    "for t in p_list:\n        prompt += [t]",
    # few-shot turns: more than one add a turn, names set in the turn, a continue, an else
    "for t in p_list:\n        q = t.strip()\n        messages.append({'role': 'user', 'content': q})\n"
    "        messages.append({'role': 'assistant', 'content': q + prompt})",
    "for t in p_list:\n        if not t:\n            continue\n"
    "        messages.extend([{'role': 'user', 'content': t}, {'role': 'assistant', 'content': p_str}])",
    "for t in p_list:\n        if t == p_str:\n            prompt += t\n        else:\n"
    "            system += '-'\n            messages.append({'role': 'user', 'content': t})",
    "for t in p_list:\n        prompt += t\n        prompt += '|'\n        messages.extend(t)",
    "for t in p_list:\n        if p_str:\n            last = t\n        else:\n            last = '-'\n"
    "        messages.append({'role': 'user', 'content': last})",
    "prev = 'P'\n    for t in p_list:\n        messages.append({'role': 'user', 'content': prev})\n"
    "        prev = t",
    "for t in p_list:\n        messages.append({'role': 'user', 'content': t})\n"
    "        messages.append(messages[0])",
    "for t in p_list:\n        words = [t, prompt]\n        messages.extend(words)",
    "for t in p_list:\n        if t:\n            prompt += t\n        system = prompt",
    "for t in p_list:\n        prompt = t\n        messages.append({'role': 'user', 'content': prompt})",
    "for t in p_list:\n        if t:\n            system = t\n        else:\n            system += '?'",
    "for t in p_list:\n        if not t:\n            continue\n        elif t == p_str:\n"
    "            system += '='\n        system += t",
    # a payload dict: items set, under an if too, read in the item, changed another way
    "payload['q'] = prompt",
    "if p_str:\n        payload['ctx'] = p_str\n    else:\n        payload['q'] = payload['q'] + '?'",
    "payload['n'] = str(len(payload))",
    "for t in p_list:\n        payload[t] = t",
    "payload.update(x=p_str)",
    "del payload['q']",
    "payload[p_str] = 'computed key'",
]
# how the message list and the payload start: built, copied, or the module's own (an add to
# that one changes it for every test after)
_LIST_STARTS = ["[{'role': 'system', 'content': 'S'}]", "list(G_BASE)", "copy.deepcopy(G_BASE)",
                "G_BASE.copy()", "G_BASE[:]", "G_BASE + []", "[*G_BASE]", "G_BASE",
                "sorted(G_BASE, key=len)", "copy.copy(G_BASE)"]
_DICT_STARTS = ["{'q': p_str}", "dict(q=p_str)", "{**G_META, 'q': p_str}", "G_META.copy()",
                "G_META", "dict(G_META, q=p_str)", "copy.deepcopy(G_META)", "{**p_list}"]
_ASSIGNED_ASKS = ["rollout.ask(prompt)", "rollout.ask(prompt, system=system)",
                  "rollout.ask(messages)", "rollout.ask(prompt + system)",
                  "rollout.ask([*messages, {'role': 'user', 'content': prompt}])",
                  "rollout.ask(' '.join([m['content'] for m in messages]))",
                  "rollout.ask([c for m in messages for c in (m['role'], m['content'])])",
                  "rollout.ask(json.dumps(payload, sort_keys=True), system=system)",
                  "rollout.ask(str(payload.get('q')) + str(payload.get('ctx')))"]


@SETTINGS
@given(before=st.lists(st.sampled_from(_ASSIGNS), max_size=4),
       ask=st.sampled_from(_ASSIGNED_ASKS), after=st.lists(st.sampled_from(_ASSIGNS), max_size=2),
       system=st.booleans(), start=st.sampled_from(_LIST_STARTS),
       dstart=st.sampled_from(_DICT_STARTS), prompt=_texts, p_str=_texts,
       p_list=st.lists(_texts, max_size=2))
def test_what_is_planned_is_what_the_test_asks_after_assigning_its_names(
    before: list[str], ask: str, after: list[str], system: bool, start: str, dstart: str,
    prompt: str, p_str: str, p_list: list[str],
) -> None:
    """A test that assigns its names before its ask more than once, with ``+=``, or under an
    ``if`` / ``elif`` / ``else`` (a system prompt by a condition, a prompt extended for some
    cases; nested, along with adds to a message list; in a loop or a ``with``, not read), that
    starts its message list as a copy of the module's (or as the module's own list), or sets
    items of a payload dict: what is planned for its first ask is what it asks, each time it
    runs, or nothing."""
    source = ("def test_x(rollout, p_str, p_list, prompt):\n"
              f"    messages = {start}\n    payload = {dstart}\n"
              + ("    system = 'S0'\n" if system else "")
              + "".join(f"    {stmt}\n" for stmt in before)
              + f"    rollout.reach()\n    {ask}\n"
              + "".join(f"    {stmt}\n" for stmt in after))  # fmt: skip
    params = {"p_str": p_str, "p_list": p_list, "prompt": prompt}
    # (system never assigned on the way; a str added a list)
    names = {**_STDLIB, "contextlib": contextlib,
             "G_BASE": [{"role": "system", "content": "S"}], "G_META": {"lang": "en"}}
    _first_ask_is_planned_as_asked(source, names, params, NameError, TypeError, KeyError)


_TURN_STEPS = [
    "messages.append({'role': 'user', 'content': turn})",
    "messages.append({'role': 'user', 'content': p_str})",
    "messages.extend([{'role': 'user', 'content': t} for t in p_list])",
    "if turn:\n            messages.append({'role': 'user', 'content': 'maybe'})",
    "messages[-1]['content'] += '!'",
    "note = turn + p_str",
    "if not turn:\n            continue",
    "messages += [{'role': 'user', 'content': turn}]",
    "q = turn.strip()\n        messages.append({'role': 'user', 'content': q})",
]


# what a conversation's turn does after its ask: adds reading its reply, checks, and more
_AFTER_ASK = [
    "messages.append({'role': 'assistant', 'content': str(reply)})",
    "messages.append({'role': 'assistant', 'content': reply.text})",
    "messages.append({'role': 'assistant', 'content': reply.candidate.text + p_str})",
    "messages.extend([{'role': 'assistant', 'content': f'{reply.stable.text}|{turn}'}])",
    "messages.append({'role': 'user', 'content': str(len(messages))})",
    "reply.check()",
    "assert reply.text",
    "turn = reply.text",
    "messages += [{'role': 'assistant', 'content': reply.text}]",
    "said = reply.candidate.text\n        messages.append({'role': 'assistant', 'content': said})",
    "if turn:\n            reply.check()",
    "n = len(messages)",
]


@SETTINGS
@given(before=st.lists(st.sampled_from([*_CHANGES[:1], *_TURN_STEPS[1:3],
                                        "messages += [{'role': 'user', 'content': p_str}]"]),
                      max_size=2),
       steps=st.lists(st.sampled_from([*_TURN_STEPS[:3] * 3, *_TURN_STEPS]), max_size=3),
       after=st.lists(st.sampled_from([*_TURN_STEPS[:3], *_AFTER_ASK[1:4] * 2, *_AFTER_ASK]),
                      max_size=3),
       p_str=_texts, p_list=st.lists(_texts, max_size=2), turns=st.lists(_texts, max_size=3))
@example(before=[], steps=[_TURN_STEPS[0]], after=[_AFTER_ASK[1], _AFTER_ASK[5]], p_str="x",
         p_list=[], turns=["hi", "你好", "bye"])
@example(before=[], steps=[_TURN_STEPS[-1]], after=[_AFTER_ASK[-1]], p_str="x", p_list=[],
         turns=["hi", "你好", "bye"])
def test_what_is_planned_for_a_conversation_is_what_the_test_asks(
    before: list[str], steps: list[str], after: list[str], p_str: str, p_list: list[str],
    turns: list[str],
) -> None:
    """A conversation: a message list built, added to, then a ``for`` loop over the turns that
    adds to it (or changes it, or not) before each ask and after, reading the turn's reply
    (``reply.text``, ``reply.candidate.text``) or not, checking it or not: what is planned for
    each iteration's ask (the first, then the later ones) is what the test asks there, or
    nothing; a later turn that reads earlier replies is not known before they are in, and
    worked out from them, is what the test asks."""
    import copy

    source = ("def test_x(rollout, p_str, p_list, turns):\n"
              "    messages = [{'role': 'system', 'content': 'S'}]\n"
              + "".join(f"    {stmt}\n" for stmt in before)
              + "    for turn in turns:\n"
              + "".join(f"        {stmt}\n" for stmt in steps)
              + "        rollout.reach()\n        reply = rollout.ask(messages)\n"
              + "".join(f"        {stmt}\n" for stmt in after))  # fmt: skip
    params = {"p_str": p_str, "p_list": p_list, "turns": turns}
    with _source_of(source, {}) as func:
        names = func.__globals__
        found = source_asks(func)[0]
        planned = [evaluate(found[0][0], params, names) if found else MISSING]
        later = [expr for _, expr, _ in later_asks(func)]
        rollout = _Replying()
        with contextlib.suppress(IndexError, AssertionError):
            func(rollout, **copy.deepcopy(params))
    worked = 0
    for expr in later:
        plan = evaluate(expr, params, names)
        read = replies_read(expr)
        if plan is MISSING and read:  # worked out once the replies it reads are in
            turns_read = {turn for _, turn in read}
            assert max(turns_read) < len(planned), "it reads a reply asked after it"
            there = evaluate(expr, {**params, REPLIES: ANY_REPLY}, names) is not MISSING
            if max(turns_read) < len(rollout.replies):
                plan = evaluate(expr, {**params, REPLIES: {
                    (loop, turn): rollout.replies[turn] for loop, turn in read}}, names)
                assert plan is MISSING or there  # (str(reply): not read, never sent)
                worked += plan is not MISSING
            else:
                assert not there or len(planned) >= len(rollout.asked)
        planned.append(plan)
    for i, plan in enumerate(planned[: len(rollout.asked)]):
        assert plan is MISSING or plan == rollout.asked[i], i
    for plan in planned[len(rollout.asked):]:
        assert plan is MISSING  # (no such iteration)
    event(f"first {'planned' if planned[0] is not MISSING else 'not planned'}, "
          f"{sum(p is not MISSING for p in planned[1:])} later planned, {worked} from replies")


# what a test does between its first ask and a follow-up that may hold the first reply
_FOLLOW_UP_STEPS = [
    "messages.append({'role': 'assistant', 'content': first.text})",
    "messages.append({'role': 'assistant', 'content': first.candidate.text + p_str})",
    "messages.append({'role': 'assistant', 'content': str(first)})",
    "messages.append({'role': 'user', 'content': p_str})",
    "messages.extend([{'role': 'user', 'content': t} for t in p_list])",
    "first.check()",
    "messages[0]['content'] = p_str",
    "first = rollout.ask(p_str)",
]


@SETTINGS
@given(steps=st.lists(st.sampled_from([*_FOLLOW_UP_STEPS[:2] * 3, *_FOLLOW_UP_STEPS]),
                      max_size=4),
       asked=st.sampled_from(["messages", "first.text", "f'{first.stable.text}: {p_str}'",
                              "[{'role': 'user', 'content': first.text}]", "p_str"]),
       p_str=_texts, p_list=st.lists(_texts, max_size=2))
@example(steps=_FOLLOW_UP_STEPS[:1], asked="messages", p_str="x", p_list=[])
def test_what_is_planned_for_a_follow_up_is_what_the_test_asks(
    steps: list[str], asked: str, p_str: str, p_list: list[str],
) -> None:
    """A follow-up: a test asks, adds to its message list (the reply it got, ``first.text``,
    another message, or changes it some other way), and asks again (the list, the reply in a
    prompt of its own): what is planned for the follow-up, worked out from the first reply
    once it is in, is what the test asks, or nothing."""
    import copy

    source = ("def test_x(rollout, p_str, p_list):\n"
              "    messages = [{'role': 'system', 'content': 'S'}, "
              "{'role': 'user', 'content': p_str}]\n"
              "    first = rollout.ask(messages)\n"
              + "".join(f"    {stmt}\n" for stmt in steps)
              + f"    rollout.ask({asked})\n")  # fmt: skip
    params = {"p_str": p_str, "p_list": p_list}
    with _source_of(source, {}) as func:
        names = func.__globals__
        first = source_asks(func)[0][0][0]
        later = [expr for _, expr, _ in later_asks(func)]
        rollout = _Replying()
        func(rollout, **copy.deepcopy(params))
    again = steps.count(_FOLLOW_UP_STEPS[-1])  # asks between the first and the follow-up
    assert len(later) <= 1 + again and len(rollout.asked) == 2 + again
    follow_up = later[-1] if later else None
    plan = MISSING if follow_up is None else evaluate(follow_up, params, names)
    read = replies_read(follow_up) if follow_up is not None else set()
    if plan is MISSING and read:  # worked out once the first reply is in
        ((ask, turn),) = read
        assert ask[0] == "ask" and ask[1] == first and turn == 0
        there = evaluate(follow_up, {**params, REPLIES: ANY_REPLY}, names) is not MISSING
        plan = evaluate(follow_up, {**params, REPLIES: {(ask, 0): rollout.replies[0]}}, names)
        assert plan is MISSING or there
        event("worked out from the first reply" if plan is not MISSING else "not worked out")
    else:
        event("planned" if plan is not MISSING else "not planned")
    if again:  # (follow_up may be one of those)
        assert plan is MISSING or plan in rollout.asked[1:]
    else:
        assert plan is MISSING or plan == rollout.asked[-1]


def _parsed(source: str) -> tuple[Any, Any]:
    """A generated test's definition and code (an example Python rejects is not one)."""
    import ast

    try:
        fdef = ast.parse(source).body[0]
        code = compile(source, "<test>", "exec")
    except SyntaxError:
        assume(False)
    assert isinstance(fdef, ast.FunctionDef)
    return fdef, code


_LOOPS = ["p_list", "p_dict", "G_DICT", "[p_str, 'x']", "G_PAIRS", "p_pairs", "p_str", "p_int",
          "p_obj", "p_dict['k']", "()", "G_LONG", "enumerate(p_list)", "zip(p_list, G_LONG)",
          "range(p_int)", "sorted(p_dict)", "p_dict.items()"]  # fmt: skip


@SETTINGS
@given(items=st.sampled_from(_LOOPS), target=st.sampled_from(["item", "a, b"]),
       local=_expr_sources, asked=_expr_sources, system=_expr_sources, first=st.booleans(),
       comprehension=st.booleans(),
       where=st.sampled_from(["", " if {item}", " if not {item}", " if len({item}) > 1",
                              " if {item} != p_str", " if {item} in G_DICT",
                              " if {item} and p_int > 0", " if {item} != LOCAL"]),
       guard=st.sampled_from(["if", "else", "continue"]),
       stops=st.sampled_from(["", "after the ask", "after the if"]), in_helper=st.booleans(),
       wrap=st.sampled_from(["", "try", "with"]),
       orelse=st.sampled_from(["", "pass", "rollout.ask(p_str)", "raise ValueError(p_str)"]),
       p_str=_texts, p_int=st.integers(-5, 5),
       p_dict=st.dictionaries(st.sampled_from(["k", "j", "a"]), _texts, max_size=3),
       p_list=st.lists(_texts, max_size=4),
       p_pairs=st.lists(st.tuples(_texts, _texts), max_size=3))  # fmt: skip
# the loop ends on its first item, which the if turns away: what it would ask for the next is
# not what the test asks (nothing)
@example(items="G_DICT", target="item", local="p_str", asked="p_str", system="p_str",
         first=False, comprehension=False, where=" if len({item}) > 1", guard="if",
         stops="after the if", in_helper=False, wrap="", orelse="", p_str="", p_int=0, p_dict={},
         p_list=[], p_pairs=[])
# a retry loop: for ... in range(...): ask; if ...: break / else: fail
@example(items="range(p_int)", target="item", local="p_str", asked="p_str", system="p_str",
         first=False, comprehension=False, where="", guard="if", stops="after the ask",
         in_helper=False, wrap="", orelse="raise ValueError(p_str)", p_str="x", p_int=3, p_dict={},
         p_list=[], p_pairs=[])
def test_the_asks_of_a_loop_are_planned_as_the_test_makes_them(
    items: str, target: str, local: str, asked: str, system: str, first: bool,
    comprehension: bool, where: str, guard: str, stops: str, in_helper: bool, wrap: str,
    orelse: str, p_str: str,
    p_int: int, p_dict: dict[str, str], p_list: list[str], p_pairs: list[tuple[str, str]],
) -> None:
    """A test that asks in a ``for`` loop (over a parameter, a module's dict or list, a list
    written in the test; its target a name or a pair), with a name the loop's body assigns
    from the target (the ask under an ``if``, in its ``else``, or after an ``if ...:
    continue`` on the target or that name, or not; a ``break`` after the ask, or after the
    ``if`` it is under, or none; an ``else`` of the loop that asks, raises, or does nothing,
    or none; the body in a ``try: ... except ValueError: pass`` or a ``with``, or not), or in
    a list
    comprehension (with an ``if`` on its target or not); or the same in a helper of the
    module the test calls (after an ask of the helper's, or not): what prefetch plans for each
    ask (the first, then the later ones) is exactly what the test asks there, with the same
    keyword arguments; an iteration the loop does not have is not planned."""

    from pytest_modelrollout.asked import LOOP_AHEAD, MISSING, evaluate, later_asks, source_asks

    item = "item" if target == "item" else "(a + b)"
    local = local.replace("local", item)  # the body's name reads the loop's target
    ask = f"rollout.reach()\nrollout.ask({asked}, system={system})\n"
    condition = where.removeprefix(" if ").format(item=item).replace("LOCAL", "local")
    # after the if: on the items it does not ask for (the loop ends before it asks for more)
    stop = f"if {item} == p_str:\n    break\n" if stops != "after the if" or not where else (
        f"if not ({condition}):\n    break\n")
    if stops == "after the ask":
        ask += stop
    if not where:
        body = ask
    elif guard == "if":
        body = f"if {condition}:\n" + textwrap.indent(ask, "    ")
    elif guard == "else":
        body = f"if not ({condition}):\n    pass\nelse:\n" + textwrap.indent(ask, "    ")
    else:
        body = f"if not ({condition}):\n    continue\n" + ask
    if wrap == "try":  # (a retry: try: ask ... break / except ...: pass)
        body = "try:\n" + textwrap.indent(body, "    ") + "except ValueError:\n    pass\n"
    elif wrap == "with":
        body = "with contextlib.nullcontext():\n" + textwrap.indent(body, "    ")
    loop = (
        f"    replies = [rollout.ask({asked.replace('local', local)}, system={system})"
        f" for {target} in {items}{where.format(item=item).replace('LOCAL', 'p_str')}]\n"
        if comprehension else
        f"    for {target} in {items}:\n"
        f"        local = {local}\n"
        + textwrap.indent(body + (stop if stops == "after the if" else ""), "        ")
        + (f"    else:\n        {orelse}\n" if orelse else "")
    )
    signature = "(rollout, p_str, p_int, p_dict, p_list, p_pairs, p_obj)"
    source = (
        f"def {'helper_x' if in_helper else 'test_x'}{signature}:\n"
        + ("    rollout.ask('before')\n" if first else "")
        + loop
        + (f"\n\ndef test_x{signature}:\n    helper_x{signature}\n" if in_helper else "")
    )
    names: dict[str, Any] = {**_STDLIB, "G_STR": "Customer message", "G_TEMPLATE": "{}", "G_CLASS": _Row,
                             "G_FORMAT": "Customer (%s): %s", "G_PAIRS": [("x", "y"), ("中", "文")],
                             "G_DICT": {"k": "from k", "lit": "from lit", "a": ["x", "y"]},
                             "G_LONG": [str(i) for i in range(LOOP_AHEAD + 3)],
                             "contextlib": contextlib}  # fmt: skip
    params = {"p_str": p_str, "p_int": p_int, "p_dict": p_dict, "p_list": p_list,
              "p_pairs": p_pairs, "p_obj": _Row(p_str)}
    _, code = _parsed(source)

    def value(expr: Any, keywords: Any, names: dict[str, Any]) -> Any:
        if keywords is None:
            return MISSING  # a keyword not read: sent by what a probe learns, not planned
        prompt = evaluate(expr, params, names)
        kw = {k: evaluate(v, params, names) for k, v in keywords or ()}
        return MISSING if prompt is MISSING or MISSING in kw.values() else (prompt, kw)

    with _source_of(source, names) as func:  # its module's names: the helper's among them
        planned = [value(*read, func.__globals__) for read in source_asks(func)[0][:1]]
        planned += [value(expr, keywords, func.__globals__)
                    for _, expr, keywords in later_asks(func)]
    exec(code, names)
    rollout = _Asker()
    try:
        names["test_x"](rollout, **params)
        raised = False
    except Exception:
        raised = True
    made = list(zip(rollout.asked, rollout.kwargs, strict=True))
    if first:
        assert planned[0] == ("before", {})
        planned, made = planned[1:], made[1:]
    for i, plan in enumerate(planned):
        if i < len(made):
            assert plan is MISSING or plan == made[i]
        elif not raised or (i == len(made) and (comprehension or rollout.reaches > len(made))):
            # no such iteration; or the one that raised building what it asks (one that
            # raised before, at `local = ...`, is a test failing before its ask, like any:
            # what was sent for it goes unused)
            assert plan is MISSING
    if not raised and len(made) <= LOOP_AHEAD:
        form = ("a comprehension" + (" with an if" if where else "")) if comprehension else (
            "a for loop" + (f" ({guard})" if where else "") + (f", a break {stops}" if stops else "")
            + (", an else" if orelse else ""))
        form += " in a helper" if in_helper else ""
        every = len(planned) >= len(made) and MISSING not in planned[: len(made)]
        event(f"{form}: every iteration planned" if every else f"{form}: some not planned")


@contextlib.contextmanager
def _source_of(source: str, names: dict[str, Any]) -> Iterator[Any]:
    """The test function of ``source``, its source where :mod:`inspect` finds it meanwhile."""
    import linecache

    filename = f"<loop-test-{next(_HELPERS)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        scope = dict(names)
        exec(compile(source, filename, "exec"), scope)
        yield scope["test_x"]
    finally:
        del linecache.cache[filename]

@SETTINGS
@given(cond=_expr_sources, asked=_expr_sources, other=_expr_sources, system=_expr_sources,
       orelse=st.booleans(), form=st.sampled_from(["{}", "assert {} is None", "reply = {}"]),
       guard=st.sampled_from(["", "return", "raise ValueError(p_str)", "pytest.skip(p_str)",
                              "pytest.xfail('no')"]),
       guard_cond=_expr_sources, plain=st.booleans(), branch_local=st.booleans(),
       walrus=st.booleans(), p_str=_texts, p_int=st.integers(-5, 5),
       p_dict=st.dictionaries(st.sampled_from(["k", "j"]), _texts, max_size=2),
       p_list=st.lists(_texts, max_size=4))  # fmt: skip
# a skip taken on a condition read: nothing planned; not taken: the ask after it
@example(cond="x", asked="p_str", other="x", system="G_STR", orelse=False, form="{}",
         guard="pytest.skip(p_str)", guard_cond="not p_list", plain=True, branch_local=False, walrus=False, p_str="a", p_int=0,
         p_dict={}, p_list=[])
@example(cond="x", asked="p_str", other="x", system="G_STR", orelse=False, form="{}",
         guard="return", guard_cond="p_str == 'skip'", plain=True, branch_local=False, walrus=False, p_str="a", p_int=0,
         p_dict={}, p_list=[])
def test_the_ask_prefetch_plans_under_an_if_is_the_one_the_test_reaches(
    cond: str, asked: str, other: str, system: str, orelse: bool, form: str, guard: str,
    guard_cond: str, plain: bool, branch_local: bool, walrus: bool, p_str: str, p_int: int,
    p_dict: dict[str, str], p_list: list[str],
) -> None:
    """A test whose first ask is under ``if`` / ``else``, or after an ``if`` that ends the
    test (``return``, ``raise``, ``pytest.skip``), or both: what prefetch plans for an item is
    the ask that item reaches, with that ask's keyword arguments (one read from a name the
    ``else`` sets before its ask, or not; a walrus in the condition, ``if (w := ...):``, read
    by the ``if``'s ask); with no ``else`` and a false
    condition, or an ``if`` that ends the test taken, nothing (the test asks nothing); a
    condition it cannot tell, or a branch taken whose ask it cannot read, plans nothing by
    this way (``UNTOLD``: the asks read in source order are then only a probe's)."""

    from pytest_modelrollout.asked import (
        MISSING,
        NOT_ASKED,
        UNTOLD,
        _branching_of,
        _Reader,
        _truth,
        evaluate,
        reached_in,
    )

    else_system = "local" if branch_local else system
    if walrus:  # the condition's value, named, then read by the if's ask (and after the if)
        cond, asked = f"(w := {cond})", f"[{asked}, w]"
    source = (
        "def test_x(rollout, p_str, p_int, p_dict, p_list, p_obj):\n"
        + (f"    if {guard_cond}:\n        {guard}\n" if guard else "")
        + ("    rollout.reach()\n"
           f"    {form.format(f'rollout.ask({asked}, system={system})')}\n" if plain and guard else
           f"    if {cond}:\n"
           "        rollout.reach()\n"
           f"        {form.format(f'rollout.ask({asked})')}\n"
           + ("    else:\n"
              + (f"        local = {system}\n" if branch_local else "")  # set in the branch
              + "        rollout.reach()\n"
              f"        {form.format(f'rollout.ask({other}, system={else_system})')}\n"
              if orelse else ""))
    )  # fmt: skip
    names: dict[str, Any] = {**_STDLIB, "G_STR": "Customer message", "G_TEMPLATE": "{}", "G_CLASS": _Row,
                             "G_FORMAT": "Customer (%s): %s", "G_DICT": {"k": "from k", 3: "3"},
                             "pytest": _Outcomes}
    params = {"p_str": p_str, "p_int": p_int, "p_dict": p_dict, "p_list": p_list,
              "p_obj": _Row(p_str)}  # fmt: skip
    fdef, code = _parsed(source)
    reached = reached_in(_branching_of(fdef), params, names)
    guard_test = _Reader(fdef).read(fdef.body[0].test, 2) if guard else None
    guard_taken = MISSING if guard_test is None else _truth(evaluate(guard_test, params, names))
    guard_known = guard_taken is not MISSING
    exec(code, names)
    rollout = _Asker()
    try:
        names["test_x"](rollout, **params)
    except Exception:
        if guard_taken is True:  # ended by the if before its ask (a raise, a skip)
            assert reached is NOT_ASKED
        # building what it asks failed: nothing may be planned in full for it (its prompt or
        # a keyword argument is not known: the item is probed at most, like any such test)
        assert reached in (None, NOT_ASKED, UNTOLD) or not rollout.reached or (
            evaluate(reached[0], params, names) is MISSING or reached[1] is None
            or any(evaluate(v, params, names) is MISSING for _, v in reached[1]))
        return
    if guard and not rollout.reached and not guard_known:
        return  # ended by an if whose condition is not known: what follows it was planned
    if guard:
        event("an if that ends the test: " + ("taken" if not rollout.reached else "not taken")
              + (", planned nothing" if reached is NOT_ASKED else ""))
    if reached is NOT_ASKED:
        assert rollout.asked == []
    elif reached is not None and reached is not UNTOLD:
        planned = evaluate(reached[0], params, names)
        if planned is not MISSING:
            assert rollout.asked == [planned]
            keywords = reached[1]
            if keywords is not None:
                values = {k: evaluate(v, params, names) for k, v in keywords}
                if MISSING not in values.values():
                    assert rollout.kwargs == [values]



# mostly strings that do not raise, so that most examples get to the ask (_expr_sources
# makes any form, and most of its sums and items raise somewhere in a function's body)
# modules the generated code calls into (textwrap.dedent, json.dumps, ...)
_STDLIB: dict[str, Any] = {"textwrap": textwrap, "json": json, "inspect": inspect, "copy": copy,
                           "os": os}
_TEXT_LEAVES = ["p_str", "G_STR", "'lit'", "local", "p_obj.text", "p_slots.text",
                "p_computed.text", "p_dict.get('k', 'none')", "G_DICT.get(p_str, G_STR)", "p_int",
                "p_tuple.text", "p_obj.TEXT", "p_list"]  # fmt: skip
_text_sources = st.recursive(
    st.sampled_from(_TEXT_LEAVES),
    lambda inner: st.one_of(
        st.builds(lambda e: f'f"<{{{e}}}>"', inner),
        st.builds(lambda a, b: f"({a} + {b})", inner, inner),
        st.builds(lambda a, b, c: f"({a} if {b} else {c})", inner, inner, inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner,
                  st.sampled_from(["==", "!=", "in", "<", ">=", "and", "or"]), inner),
        st.builds(lambda a, m: f"{a}.{m}", inner, st.sampled_from(
            ["strip()", "upper()", "startswith('a')", "split()", "get('k')"])),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(["len", "str"]), inner),
        st.builds(lambda a, sl: f"{a}[{sl}]", inner, st.sampled_from([":2", "1:", "0"])),
        _expr_sources,
    ),
    max_leaves=4,
)
_HELPER_STATEMENTS = st.one_of(
    st.builds(lambda e: f"local = {e}", _text_sources),
    st.builds(lambda e: f"local += {e}", _text_sources),
    st.builds(lambda e: f"return {e}", _text_sources),
    st.just("pass"),
)


@SETTINGS
@given(first=_HELPER_STATEMENTS, cond=_text_sources, then=_HELPER_STATEMENTS,
       orelse=st.one_of(st.none(), _HELPER_STATEMENTS), ret=_text_sources,
       arg=st.sampled_from(["p_str", "p_obj.text", "G_STR", "p_dict.get('k', 'none')", "'lit'",
                            "p_str.strip()", "p_str[:2]", "p_int"]),
       keyword=st.one_of(st.none(), st.sampled_from(["p_str", "'Dear '", "p_int", "p_list"])),
       call=st.sampled_from(["{}", "f'<{{{}}}>'", "{} + '!'"]),
       p_str=_texts, p_int=st.integers(-5, 5), p_float=st.floats(allow_nan=False),
       p_bool=st.booleans(),
       p_dict=st.dictionaries(st.sampled_from(["k", "j"]), _texts, max_size=2),
       p_list=st.lists(_texts, max_size=4))  # fmt: skip
def test_what_prefetch_reads_from_a_function_the_test_calls_is_what_it_returns(
    first: str, cond: str, then: str, orelse: str | None, ret: str, arg: str,
    keyword: str | None, call: str, p_str: str, p_int: int, p_float: float, p_bool: bool,
    p_dict: dict[str, str], p_list: list[str],
) -> None:  # fmt: skip
    """A prompt built by a function of the test's module (``rollout.ask(build(case))``): what
    prefetch works out from that function's source (its assignments, ``+=``, ``if`` / ``else``
    and ``return``s) is what the call returns when the test runs; forms it cannot know are
    left unplanned."""
    import ast
    import linecache

    from pytest_modelrollout.asked import MISSING, evaluate, read_asks

    helper_call = (f"G_HELP({arg}, p_int, p_float, p_bool, p_dict, p_list, p_obj, p_tuple, "
                   "p_slots, p_computed"
                   + ("" if keyword is None else f", local={keyword}") + ")")  # fmt: skip
    source = (
        "def G_HELP(p_str, p_int, p_float, p_bool, p_dict, p_list, p_obj, p_tuple, p_slots,"
        " p_computed, *, local='kw'):\n"
        "    'A helper of the suite.'\n"
        f"    {first}\n"
        f"    if {cond}:\n"
        f"        {then}\n"
        + ("" if orelse is None else f"    else:\n        {orelse}\n")
        + f"    return {ret}\n"
        "\n"
        "def test_x(rollout, p_str, p_int, p_float, p_bool, p_dict, p_list, p_obj, p_tuple,"
        " p_slots, p_computed):\n"
        "    rollout.reach()\n"
        f"    rollout.ask({call.format(helper_call)})\n"
    )  # fmt: skip
    filename = f"<helper {next(_HELPERS)}>"  # inspect.getsource reads it from linecache
    try:
        tree = ast.parse(source)
        code = compile(source, filename, "exec")
    except SyntaxError:
        assume(False)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        names: dict[str, Any] = {**_STDLIB, "G_STR": "Customer message", "G_TEMPLATE": "{}",
                                 "G_CLASS": _Row, "G_FORMAT": "Customer (%s): %s",
                                 "G_DICT": {"k": "from k", "lit": "from lit", 3: "from 3"}}
        params = {"p_str": p_str, "p_int": p_int, "p_float": p_float, "p_bool": p_bool,
                  "p_dict": p_dict, "p_list": p_list, "p_obj": _Row(p_str),
                  "p_tuple": _Tuple(p_str), "p_slots": _Slots(p_str),
                  "p_computed": _Computed(p_str)}  # fmt: skip
        exec(code, names)
        fdef = tree.body[1]
        assert isinstance(fdef, ast.FunctionDef)
        reads = read_asks(fdef)[0]
        planned = evaluate(reads[0][0], params, names) if reads else MISSING
        _asks_what_was_planned(names["test_x"], params, planned)
    finally:
        del linecache.cache[filename]


# statements of a function of the suite that builds a list (parts) and a string (text): adds
# in loops, under ifs, with continue and break; handed on, aliased, or changed another way
_BUILDS = [
    "for t in p_list:\n        parts.append(t)",
    "for t in p_list:\n        if not t:\n            continue\n        parts.append(t + '!')\n"
    "        parts.append(p_str)",
    "for i, t in enumerate(p_list):\n        if i > 1:\n            break\n"
    "        parts.extend([t, str(i)])",
    "for t in p_list:\n        text += t\n        if t == p_str:\n            return [t]",
    "for k, v in p_dict.items():\n        parts.append(k + '=' + v)",
    "for t in p_list:\n        for u in (t, p_str):\n            parts.append(u)",
    "parts.append(str(len(parts)))",
    "parts.extend(p_list)",
    "parts.extend(p_dict)",
    "if p_str:\n        parts.append(p_str)\n    else:\n        parts = parts + ['none']",
    "other = parts\n    other.append('other')",
    "kept = [parts]\n    parts.append('after')\n    text = text + str(len(kept[0]))",
    "G_TOUCH(parts)",
    "parts.sort()",
    "parts[0] = 'first'",
    "parts = [t for t in parts if t]",
    "text = ' '.join(parts)",
    "while False:\n        pass",
    "for t in p_list:\n        parts.append(t)\n    else:\n        parts.append('done')",
]
_BUILD_STARTS = ["[G_STR]", "list(G_LIST)", "G_LIST", "G_LIST[:]", "copy.deepcopy(G_LIST)",
                 "G_LIST + [p_str]", "[]"]
_BUILD_RETURNS = ["parts", "' '.join(parts)", "text + '|' + '|'.join(parts)",
                  "[{'role': 'user', 'content': t} for t in parts]"]


@SETTINGS
@given(start=st.sampled_from(_BUILD_STARTS), body=st.lists(st.sampled_from(_BUILDS), max_size=3),
       ret=st.sampled_from(_BUILD_RETURNS), p_str=_texts,
       p_list=st.lists(_texts, max_size=3),
       p_dict=st.dictionaries(st.sampled_from(["k", "j"]), _texts, max_size=2))
def test_what_a_function_that_builds_a_list_in_a_loop_returns_is_planned(
    start: str, body: list[str], ret: str, p_str: str, p_list: list[str], p_dict: dict[str, str],
) -> None:
    """A prompt built by a function of the suite that makes a list of its own and adds to it
    (``messages = [...]``, a copy of the module's, then ``append`` / ``extend``, in ``for``
    loops with ``continue`` and ``break``, under ``if``s), and a string with ``+=``: what is
    planned is what the function returns when the test runs, each time it runs, or nothing.
    One that adds to the module's own list, hands its list on or changes it another way is
    not read (each test after would ask something else)."""
    source = ("def build(p_str, p_list, p_dict):\n"
              f"    parts = {start}\n    text = p_str\n"
              + "".join(f"    {stmt}\n" for stmt in body)
              + f"    return {ret}\n\n"
              "def test_x(rollout, p_str, p_list, p_dict):\n"
              "    rollout.reach()\n"
              "    rollout.ask(build(p_str, p_list, p_dict))\n")  # fmt: skip
    names = {**_STDLIB, "G_STR": "Customer message", "G_LIST": ["base"], "G_TOUCH": _touch}
    params = {"p_str": p_str, "p_list": p_list, "p_dict": p_dict}
    _first_ask_is_planned_as_asked(source, names, params, TypeError, AttributeError, IndexError)


_HELPERS = itertools.count()


# -- a `while` loop's condition when the test gets to it ------------------------------------
_literals = st.one_of(st.integers(-3, 3), st.sampled_from(["", "a", "b"]), st.booleans(),
                      st.none())  # fmt: skip
_operands = st.one_of(st.sampled_from(["tries", "LIMIT", "case"]), _literals.map(repr))
_conditions = st.recursive(
    st.one_of(
        _operands,
        st.tuples(_operands, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), _operands)
        .map(" ".join),
        st.tuples(_operands, st.sampled_from(["<", "=="]), _operands,
                  st.sampled_from(["<", "!="]), _operands).map(" ".join),  # chained
    ),
    lambda inner: st.one_of(
        inner.map(lambda c: f"not ({c})"),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
            lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
    ),
    max_leaves=6,
)


@SETTINGS
@example(start=0, condition="tries < 3", rebound=True, limit=None, case=None)
@example(start=3, condition="tries < 3", rebound=True, limit=None, case=None)
@example(start=None, condition="not tries", rebound=False, limit=None, case=None)
@example(start=0, condition="tries < LIMIT", rebound=True, limit=3, case=None)
@example(start=0, condition="(tries < LIMIT) and (case)", rebound=True, limit=3, case="")
@given(start=_literals, condition=_conditions, rebound=st.booleans(), limit=_literals,
       case=_literals)
def test_a_while_loop_is_read_as_entered_only_when_its_condition_holds(
    start: Any, condition: str, rebound: bool, limit: Any, case: Any
) -> None:
    """A ``while`` after ``tries = <literal>``, its condition made of literals, ``tries``, a
    name of the module (``LIMIT``) and the test's parameter ``case`` (compared, chained,
    ``not``, ``and``, ``or``; ``tries`` rebound in the loop or not): its first ask is read as
    made for an item exactly when Python, running it, enters the loop, and as not made exactly
    when Python does not (but for a negative number or a chained comparison, which are not
    read: then neither); a condition that would raise (``"a" < 1``) is read as neither."""
    import ast

    from pytest_modelrollout import asked
    from pytest_modelrollout.asked import MISSING, evaluate

    source = (f"def test(rollout, case):\n    tries = {start!r}\n    while {condition}:\n"
              f"        rollout.ask(case)\n" + ("        tries += 1\n" if rebound else "")
              + "        break\n")  # fmt: skip
    fdef = ast.parse(source).body[0]
    assert isinstance(fdef, ast.FunctionDef)
    loop = fdef.body[1]
    assert isinstance(loop, ast.While)
    try:
        enters: bool | None = bool(eval(condition, {"LIMIT": limit},
                                        {"tries": start, "case": case}))
    except TypeError:
        enters = None
    event(f"enters: {enters}")
    read = asked._entry_condition(fdef, loop)
    if read == asked._ALWAYS:
        decided: Any = True
        event("read: for every item")
    elif read is None:
        decided = MISSING  # not read: nothing is sent
    else:
        decided = asked._truth(evaluate(read, {"case": case}, {"LIMIT": limit}))
        event("read: for each item")
    if decided is not MISSING:  # never read as entered when it is not, nor the other way
        assert decided is enters
    # what is not read: a negative number (a unary minus), a chained comparison (`0 < tries <
    # 3`)
    chained = any(isinstance(n, ast.Compare) and len(n.ops) > 1 for n in ast.walk(loop.test))
    if "-" not in source and not chained and enters is not None:
        assert decided is enters


@SETTINGS
@example(start=0, condition="tries < LIMIT", in_helper=True, limit=3, case="a")
@example(start=0, condition="(tries < LIMIT) and (case)", in_helper=True, limit=3, case="")
@example(start=0, condition="tries < 3", in_helper=False, limit=None, case="a")
@given(start=_literals, condition=_conditions, in_helper=st.booleans(), limit=_literals,
       case=_literals)
def test_a_while_loops_first_ask_is_planned_as_the_test_makes_it(
    start: Any, condition: str, in_helper: bool, limit: Any, case: Any
) -> None:
    """A ``while`` retry loop (``tries = <literal>``, ``while <condition>:``, the ask,
    ``tries += 1``, ``if ...: break``) in the test or in a helper of its module the test calls
    (``retry(rollout, case)``), its condition made of literals, ``tries``, a name of the module
    (``LIMIT``) and ``case``: for each item, the first request planned is the test's first
    ask, and one planned to ask nothing asks nothing (but a negative number or a chained
    comparison, which are not read, and a condition that raises, every other form is planned
    one way or the other)."""
    import ast

    from pytest_modelrollout.asked import MISSING, asks_nothing, evaluate, source_asks

    loop = (f"    tries = {start!r}\n    while {condition}:\n"
            "        reply = rollout.ask(case)\n        tries += 1\n"
            "        if reply is None:\n            break\n")  # fmt: skip
    source = (f"def retry(rollout, case):\n{loop}\n\ndef test_x(rollout, case):\n"
              "    retry(rollout, case)\n" if in_helper else f"def test_x(rollout, case):\n{loop}")
    names: dict[str, Any] = {"LIMIT": limit}
    with _source_of(source, names) as func:
        found = source_asks(func)[0]
        planned = evaluate(found[0][0], {"case": case}, func.__globals__) if found else MISSING
        nothing = asks_nothing(func, {"case": case}, func.__globals__)
        rollout = _Asker()
        try:
            func(rollout, case)
            raised = False
        except TypeError:  # "a" < 1
            raised = True
    event(f"in a helper: {in_helper}; asked: {bool(rollout.asked)}; planned: "
          + ("nothing" if nothing else "unknown" if planned is MISSING else "a request"))
    if planned is not MISSING:
        assert rollout.asked[:1] == [planned]
    if nothing:
        assert rollout.asked == []
    tree = ast.parse(source)
    chained = any(isinstance(n, ast.Compare) and len(n.ops) > 1 for n in ast.walk(tree)
                  if isinstance(n, ast.Compare) and n.lineno <= 3 + 4 * in_helper)
    if "-" not in source and not chained and not raised:
        assert (planned is not MISSING) if rollout.asked else nothing
