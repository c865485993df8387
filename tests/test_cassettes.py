from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pytest_modelrollout
from pytest_modelrollout._atomic import atomic_write_json, atomic_write_text
from pytest_modelrollout._exceptions import (
    CassetteError,
    ConfigError,
    ProviderError,
    RateLimitError,
    TimeoutError_,
)
from pytest_modelrollout.cassettes import (
    REDACTED,
    CassetteEntry,
    CassetteStore,
    error_from_kind,
    resolve_record_modes,
    sanitize_ref,
    scrub_secrets,
    secret_values,
)
from pytest_modelrollout.providers.base import ChatRequest, ProviderResponse, ToolCall

REF = "ollama:qwen2.5:7b"


def _request(prompt: str = "Where is my order 42?") -> ChatRequest:
    return ChatRequest(
        messages=[{"role": "user", "content": prompt}],
        system="You are a support bot.",
        tools=[{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}],
        params={"temperature": 0},
    )


def _ok_entry(text: str = "你好 — order 42 ships tomorrow") -> CassetteEntry:
    return CassetteEntry.from_response(
        ProviderResponse(
            text=text,
            tool_calls=[
                ToolCall(
                    name="lookup_order",
                    arguments={"order_id": "42"},
                    raw_arguments='{"order_id": "42"}',
                    id="call_1",
                )
            ],
            finish_reason="stop",
            input_tokens=57,
            output_tokens=17,
            model_id="qwen2.5:7b",
            raw={"headers_must_not_be_written": True},
        ),
        latency_ms=812.5,
        cost_usd=0.00011,
    )


# ------------------------------------------------------------------------------------------
# round trip and layout


def test_round_trip(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path / "model_cassettes", "new")
    req = _request()
    assert store.get(REF, req) is None
    path = store.put(REF, req, _ok_entry())
    assert path == tmp_path / "model_cassettes" / "ollama_qwen2.5_7b" / f"{req.key(REF)}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["version"] == 1
    assert doc["model"] == REF
    assert doc["request"] == json.loads(json.dumps(req.canonical()))
    assert doc["status"] == "ok"
    assert doc["response"] == {
        "text": "你好 — order 42 ships tomorrow",
        "tool_calls": [
            {
                "name": "lookup_order",
                "arguments": {"order_id": "42"},
                "raw_arguments": '{"order_id": "42"}',
                "id": "call_1",
            }
        ],
        "finish_reason": "stop",
        "input_tokens": 57,
        "output_tokens": 17,
        "model_id": "qwen2.5:7b",
    }
    assert doc["latency_ms"] == 812.5 and doc["cost_usd"] == 0.00011
    assert doc["recorded_at"].endswith("Z")
    text = path.read_text(encoding="utf-8")
    assert "你好" in text  # readable, not \\u-escaped
    assert "headers" not in text.lower()

    got = store.get(REF, req)
    assert got is not None and got.ok
    assert got.response is not None
    assert got.response.text == "你好 — order 42 ships tomorrow"
    assert got.response.tool_calls[0].arguments == {"order_id": "42"}
    assert (got.response.input_tokens, got.response.output_tokens) == (57, 17)
    assert got.latency_ms == 812.5 and got.cost_usd == 0.00011
    assert got.model == REF and got.path == path
    assert got.to_error() is None
    # the key covers the model reference and the request
    assert store.get("sim:good", req) is None
    assert store.get(REF, _request("another prompt")) is None
    assert store.get(REF, ChatRequest(messages=req.messages, system=req.system)) is None


def test_error_entry_round_trip(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, "all")
    req = _request()
    store.put(
        REF,
        req,
        CassetteEntry.from_error(TimeoutError_("read timeout after 30s"), latency_ms=30000),
    )
    got = store.get(REF, req)
    assert got is not None and not got.ok
    assert got.status == "timeout" and got.error_kind == "timeout"
    assert got.response is None
    err = got.to_error()
    assert isinstance(err, TimeoutError_)
    assert str(err) == "timeout: read timeout after 30s"


@dataclass
class _FakeCallResult:
    ref: str
    status: str
    response: ProviderResponse | None
    error: ProviderError | None
    latency_ms: float
    fallback: bool
    served_by: str
    cost_usd: float | None


def test_from_call_result(tmp_path: Path) -> None:
    ok = CassetteEntry.from_call_result(
        _FakeCallResult("a", "ok", ProviderResponse(text="hi"), None, 12.0, True, "b", 0.1)
    )
    assert ok.ok and ok.fallback and ok.served_by == "b" and ok.response is not None
    failed = CassetteEntry.from_call_result(
        _FakeCallResult("a", "error", None, RateLimitError("HTTP 429"), 5.0, False, "a", None)
    )
    assert failed.status == "error" and failed.error_kind == "rate_limit"
    assert failed.error == "rate_limit: HTTP 429"
    store = CassetteStore(tmp_path, "new")
    store.put("a", _request(), failed)
    again = store.get("a", _request())
    assert again is not None
    assert isinstance(again.to_error(), RateLimitError)


def test_error_from_kind() -> None:
    assert isinstance(error_from_kind("timeout", "x"), TimeoutError_)
    assert isinstance(error_from_kind(None, "rate_limit: HTTP 429"), RateLimitError)
    odd = error_from_kind("weird", "boom")
    assert type(odd) is ProviderError and odd.kind == "weird"
    assert str(error_from_kind("server", "server: HTTP 503")) == "server: HTTP 503"


def test_sanitize_ref() -> None:
    assert sanitize_ref("ollama:qwen2.5:7b") == "ollama_qwen2.5_7b"
    assert sanitize_ref("openrouter:openai/gpt-4o") == "openrouter_openai_gpt-4o"
    assert sanitize_ref("..") == "_.."
    assert sanitize_ref("模型") == "_"


# ------------------------------------------------------------------------------------------
# modes


def test_bad_mode() -> None:
    with pytest.raises(
        ConfigError, match=r"invalid record mode 'sometimes' \(valid: off, replay, new, all\)"
    ):
        CassetteStore("x", "sometimes")


def test_lookup_by_mode(tmp_path: Path) -> None:
    req = _request()
    CassetteStore(tmp_path, "all").put(REF, req, _ok_entry())
    assert CassetteStore(tmp_path, "off").lookup(REF, req) is None
    assert CassetteStore(tmp_path, "all").lookup(REF, req) is None  # live, overwrite
    assert CassetteStore(tmp_path, "new").lookup(REF, req) is not None
    assert CassetteStore(tmp_path, "replay").lookup(REF, req) is not None
    assert CassetteStore(tmp_path, "new").lookup(REF, _request("other")) is None
    flags = {
        m: (s.replays, s.records, s.live_allowed)
        for m in ("off", "replay", "new", "all")
        for s in [CassetteStore(tmp_path, m)]
    }
    assert flags == {
        "off": (False, False, True),
        "replay": (True, False, False),
        "new": (True, True, True),
        "all": (False, True, True),
    }


def test_replay_miss_message(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, "replay")
    prompt = "Please extract the refund amount from this very long customer message, thanks!"
    req = _request(prompt)
    with pytest.raises(CassetteError) as info:
        store.lookup("sim:good", req)
    assert str(info.value) == (
        f"no cassette for sim:good request {req.key('sim:good')} "
        f"(prompt: '{prompt[:60]}'); record it with --rollout-record=new"
    )


def test_resolve_record_modes() -> None:
    assert resolve_record_modes(None, None) == {"stable": "off", "candidate": "off"}
    assert resolve_record_modes("new", None) == {"stable": "new", "candidate": "new"}
    assert resolve_record_modes({"stable": "replay"}, None) == {
        "stable": "replay",
        "candidate": "off",
    }
    assert resolve_record_modes({"stable": "new", "candidate": "off"}, "all") == {
        "stable": "all",
        "candidate": "all",
    }
    assert resolve_record_modes("NEW", None)["stable"] == "new"
    with pytest.raises(ConfigError, match=r"^--rollout-record: invalid record mode 'x'"):
        resolve_record_modes("new", "x")
    with pytest.raises(ConfigError, match=r"^record\.candidate: invalid record mode 'bad'"):
        resolve_record_modes({"stable": "new", "candidate": "bad"}, None)
    with pytest.raises(ConfigError, match=r"^record: unknown role 'canary'"):
        resolve_record_modes({"canary": "new"}, None)
    with pytest.raises(ConfigError, match=r"^record: invalid record mode"):
        resolve_record_modes("yes", None)
    with pytest.raises(ConfigError, match=r"^record: expected a mode"):
        resolve_record_modes(3, None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# corrupt cassettes


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ('{"version": 1, "status": "ok", "resp', "invalid JSON at line 1"),
        ("[1, 2]", "not a JSON object"),
        ('{"version": 7, "status": "ok", "response": {"text": ""}}', "unsupported version 7"),
        ('{"version": 1, "status": "ok"}', "'response' is missing"),
        ('{"version": 1, "status": "fine", "response": null}', "invalid status 'fine'"),
        ('{"version": 1, "response": {"text": 3}}', "'response.text' is not a string"),
        (
            '{"version": 1, "response": {"text": "", "input_tokens": "many"}}',
            "'input_tokens' is not a int",
        ),
    ],
)
def test_corrupt_cassette(tmp_path: Path, content: str, detail: str) -> None:
    store = CassetteStore(tmp_path, "replay")
    req = _request()
    path = store.path_for(REF, req)
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CassetteError) as info:
        store.lookup(REF, req)
    msg = str(info.value)
    assert msg.startswith(f"corrupt cassette {path}: ")
    assert detail in msg


def test_not_utf8_cassette(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, "new")
    path = store.path_for(REF, _request())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(CassetteError, match=r"corrupt cassette .*not UTF-8"):
        store.get(REF, _request())


# ------------------------------------------------------------------------------------------
# secrets

CANARY = "sk-canary-4f8a1c2e9b7d6a5f3e2d1c0b"


def test_secret_scrub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARY_API_KEY", CANARY)
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to be treated as a secret
    monkeypatch.setenv("NOT_A_SECRET_NAME", "visible-value-123")
    store = CassetteStore(tmp_path, "new")
    req = ChatRequest(
        messages=[{"role": "user", "content": f"my key is {CANARY}, abc"}],
        params={"note": CANARY, CANARY: "as a key"},
    )
    entry = _ok_entry(text=f"echo: {CANARY} visible-value-123")
    assert entry.response is not None
    entry.response.tool_calls = [ToolCall(name="f", arguments={"k": CANARY}, raw_arguments=CANARY)]
    entry.error = None
    path = store.put(REF, req, entry)
    text = path.read_text(encoding="utf-8")
    assert CANARY not in text
    assert "sk-canary" not in text
    assert text.count(REDACTED) >= 5
    assert "visible-value-123" in text
    assert "abc" in text
    got = store.get(REF, req)  # the key is computed from the real request: still found
    assert got is not None and got.response is not None
    assert got.response.text == f"echo: {REDACTED} visible-value-123"


def test_secret_values_and_scrub() -> None:
    env = {"OPENAI_API_KEY": "sk-12345678", "GH_TOKEN": " tok-12345678 ", "HOME": "/root/home1"}
    vals = secret_values(env)
    assert "sk-12345678" in vals and "tok-12345678" in vals
    assert "/root/home1" not in vals
    assert scrub_secrets({"a": ["x sk-12345678 y"]}, vals) == {"a": [f"x {REDACTED} y"]}
    assert scrub_secrets("unchanged", []) == "unchanged"


def test_a_variable_deleted_while_the_secrets_are_read_is_skipped() -> None:
    """Cassettes are written on the event loop's thread while pytest sets and deletes
    PYTEST_CURRENT_TEST in ``os.environ`` on the main thread: a name listed and then gone
    (what ``os.environ`` gives another thread then) is skipped, not a KeyError that fails the
    test whose reply was being recorded (seen under ``-n 4 --rollout-record=new``)."""
    from collections.abc import Iterator, Mapping

    class Environ(Mapping[str, str]):
        def __init__(self) -> None:
            self.data = {"OPENAI_API_KEY": "sk-12345678", "PYTEST_CURRENT_TEST": "t (call)"}

        def __getitem__(self, name: str) -> str:
            return self.data[name]

        def __len__(self) -> int:
            return len(self.data)

        def __iter__(self) -> Iterator[str]:
            names = list(self.data)
            del self.data["PYTEST_CURRENT_TEST"]  # the main thread, between listing and reading
            return iter(names)

    assert secret_values(Environ()) == ["sk-12345678"]


# ------------------------------------------------------------------------------------------
# atomic writes and concurrency


def test_atomic_helpers(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"a": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}
    if os.name == "posix":
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é"}  # untouched
    atomic_write_text(target, "x")
    assert target.read_text(encoding="utf-8") == "x"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # no temp files left


def test_failed_write_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _reader(
    store: CassetteStore, req: ChatRequest, stop: threading.Event, errors: list[str]
) -> None:
    reads = 0
    deadline = time.monotonic() + 60
    while (not stop.is_set() or reads == 0) and time.monotonic() < deadline:
        try:
            entry = store.get(REF, req)
        except Exception as exc:  # CassetteError wraps any JSONDecodeError
            errors.append(repr(exc))
            return
        if entry is not None:
            reads += 1
            assert entry.response is not None
            text = entry.response.text
            if not (text.startswith("writer-") and text.endswith("END")):
                errors.append(f"unexpected content {text[:40]!r}")
                return


def test_concurrent_threads_same_key(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, "new")
    req = _request()
    errors: list[str] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        try:
            for i in range(60):
                # sizes vary so that a torn read would show as invalid JSON
                store.put(
                    REF, req, _ok_entry(text=f"writer-{n}-{i}-" + "x" * (i * 97 % 5000) + "END")
                )
        except Exception as exc:
            errors.append(repr(exc))

    readers = [threading.Thread(target=_reader, args=(store, req, stop, errors)) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert store.get(REF, req) is not None
    assert [p.suffix for p in store.path_for(REF, req).parent.iterdir()] == [".json"]


_WRITER_SCRIPT = """
import sys
from pathlib import Path
from pytest_modelrollout.cassettes import CassetteEntry, CassetteStore
from pytest_modelrollout.providers.base import ChatRequest, ProviderResponse

root, n = Path(sys.argv[1]), int(sys.argv[2])
store = CassetteStore(root, "new")
req = ChatRequest(
    messages=[{"role": "user", "content": "Where is my order 42?"}],
    system="You are a support bot.",
    tools=[{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}],
    params={"temperature": 0},
)
for i in range(50):
    text = f"writer-p{n}-{i}-" + "y" * (i * 131 % 7000) + "END"
    store.put("ollama:qwen2.5:7b", req, CassetteEntry.from_response(
        ProviderResponse(text=text), latency_ms=float(i)))
"""


def test_concurrent_processes_same_key(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, "new")
    req = _request()
    src = str(Path(pytest_modelrollout.__path__[0]).parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    errors: list[str] = []
    stop = threading.Event()
    readers = [threading.Thread(target=_reader, args=(store, req, stop, errors)) for _ in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_SCRIPT, str(tmp_path), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    for t in readers:
        t.start()
    outputs = [p.communicate(timeout=120) for p in procs]
    stop.set()
    for t in readers:
        t.join()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    assert errors == []
    entry = store.get(REF, req)
    assert entry is not None and entry.response is not None
    assert entry.response.text.startswith("writer-p")
    assert [p.suffix for p in store.path_for(REF, req).parent.iterdir()] == [".json"]


def test_refuses_secret_that_survives_scrubbing(tmp_path: Path) -> None:
    class Sneaky:
        def __str__(self) -> str:  # serialised with default=str after scrubbing
            return CANARY

    store = CassetteStore(tmp_path, "new", env={"CANARY_API_KEY": CANARY})
    req = ChatRequest(messages=[{"role": "user", "content": "q"}], params={"x": Sneaky()})
    with pytest.raises(CassetteError, match=r"refusing to write cassette .*secret environment"):
        store.put(REF, req, _ok_entry())
    assert not store.path_for(REF, req).exists()


def test_with_mode(tmp_path: Path) -> None:
    store = CassetteStore(tmp_path, "new")
    other = store.with_mode("replay")
    assert other.root == store.root and other.mode == "replay" and store.mode == "new"
