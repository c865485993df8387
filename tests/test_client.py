"""ModelClient over real HTTP on loopback, against a tiny stdlib server started per test.

The server's behaviour is picked by the request's ``model`` field (like the simulator's fault
personas) and it records every request, so the tests can count calls, attempts, keys sent and
requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl

import pytest
from quiet_server import QuietHTTPServer

from pytest_modelrollout._exceptions import ConfigError
from pytest_modelrollout.providers.base import ChatRequest, ModelSpec
from pytest_modelrollout.providers.client import CallResult, ModelClient, ModelRegistry
from pytest_modelrollout.runner import Runner

KEY = "sk-test-primary-0123456789"
FB_KEY = "fb-secret-key-value-98765"
CANARY = "sk-canary-DO-NOT-LEAK-4242"
PLAIN_CANARY = "plain-canary-value-ZQXJ"


@dataclass
class Seen:
    path: str
    model: str
    attempt: str | None
    authorization: str | None
    api_key: str | None
    t: float


@dataclass
class Server:
    httpd: QuietHTTPServer
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, model: str | None = None) -> int:
        with self.lock:
            return sum(1 for s in self.seen if model is None or s.model.split("?")[0] == model)


def _openai_ok(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"hello from {model}"},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
    }  # fmt: skip


def _anthropic_ok(model: str) -> dict[str, Any]:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": f"hello from {model}"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def _make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            hdrs = {"content-type": "application/json", **(headers or {})}
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            req = json.loads(self.rfile.read(length) or b"{}")
            model = str(req.get("model", ""))
            persona, _, query = model.partition("?")
            opts = dict(parse_qsl(query))
            attempt = self.headers.get("x-modelrollout-attempt")
            with server.lock:
                server.seen.append(
                    Seen(self.path, model, attempt, self.headers.get("authorization"),
                         self.headers.get("x-api-key"), time.monotonic())
                )  # fmt: skip
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                time.sleep(float(opts.get("delay", 0)))
            finally:
                # done before the answer is written: a client may send its next request as
                # soon as the answer reaches it, before this thread would get to count it done
                with server.lock:
                    server.in_flight -= 1
            self._respond(persona, int(attempt or 0), opts)

        def _respond(self, persona: str, attempt: int, opts: dict[str, str]) -> None:
            anthropic = self.path.endswith("/messages")
            ok = _anthropic_ok(persona) if anthropic else _openai_ok(persona)
            echo = f"{self.headers.get('authorization')} {self.headers.get('x-api-key')}"
            if persona == "ok":
                self._send(200, ok)
            elif persona == "429-then-ok":
                if attempt == 0:
                    ra = {"retry-after": opts.get("ra", "0.3")}
                    self._send(429, {"error": {"message": "slow down"}}, ra)
                else:
                    self._send(200, ok)
            elif persona == "503-once":
                self._send(503, {"error": {"message": "unavailable"}}) if attempt == 0 else (
                    self._send(200, ok)
                )
            elif persona == "529-once":
                err = {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                }
                self._send(529, err) if attempt == 0 else self._send(200, ok)
            elif persona == "always-429":
                self._send(429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "10"})
            elif persona == "500":
                self._send(500, {"error": {"message": "internal error"}})
            elif persona == "400":
                self._send(400, {"error": {"message": "bad request"}})
            elif persona == "401":
                self._send(401, {"error": {"message": "invalid api key"}})
            elif persona == "echo-key-401":
                self._send(401, {"error": {"message": f"Incorrect API key provided: {echo}"}})
            elif persona == "echo-key-500":
                self._send(
                    500, f"upstream said: key was {echo}".encode(), {"content-type": "text/plain"}
                )
            elif persona == "echo-key-200":
                self._send(200, {"error": {"message": f"your key {echo} is wrong"}})
            elif persona == "html":
                self._send(
                    200, b"<html><body>proxy login</body></html>", {"content-type": "text/html"}
                )
            elif persona == "hang":
                time.sleep(2.0)
                self._send(200, ok)
            else:
                self._send(404, {"error": {"message": f"The model `{persona}` does not exist"}})

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _server()


@pytest.fixture
def server2() -> Iterator[Server]:
    yield from _server()


def _server() -> Iterator[Server]:
    httpd = QuietHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    srv = Server(httpd)
    httpd.RequestHandlerClass = _make_handler(srv)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    try:
        yield r
    finally:
        r.close()


ENV = {"TEST_KEY": KEY, "FB_KEY": FB_KEY, "MODELROLLOUT_BACKOFF_SCALE": "0.01"}


def spec(ref: str, srv: Server, persona: str, **kw: Any) -> ModelSpec:
    wire = kw.pop("wire", "openai")
    base = srv.url + ("/v1" if wire == "openai" else "")
    values: dict[str, Any] = {"api_key_env": "TEST_KEY", "max_retries": 2, "timeout_s": 5.0}
    values.update(kw)
    return ModelSpec(ref=ref, provider=wire, wire=wire, model=persona, base_url=base, **values)


def registry(
    runner: Runner,
    specs: list[ModelSpec],
    killed: set[str] | None = None,
    env: dict[str, str] | None = None,
    **kw: Any,
) -> ModelRegistry:
    table = {s.ref: s for s in specs}

    def resolve(ref: str) -> ModelSpec:
        if ref not in table:
            raise ConfigError(f"unknown model reference {ref!r}")
        return table[ref]

    reg = ModelRegistry(
        resolve, killed if killed is not None else set(), ENV if env is None else env, **kw
    )
    runner.register(reg)
    return reg


REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}], system="be brief")


def call(runner: Runner, reg: ModelRegistry, ref: str) -> CallResult:
    return runner.run(reg.call(ref, REQ), timeout=30)


# ------------------------------------------------------------------------------------- basics


def test_ok_call(runner: Runner, server: Server) -> None:
    s = spec("m", server, "ok", input_price_per_mtok=0.15, output_price_per_mtok=0.60)
    reg = registry(runner, [s])
    before = time.time()
    res = call(runner, reg, "m")
    assert res.ok and res.status == "ok" and res.error is None
    assert res.response is not None and res.response.text == "hello from ok"
    assert (res.response.input_tokens, res.response.output_tokens) == (1000, 500)
    assert res.cost_usd == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert res.attempts == 1 and not res.fallback and res.served_by == "m"
    assert res.latency_ms > 0 and before - 1 <= res.started_at <= time.time()
    seen = server.seen[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.authorization == f"Bearer {KEY}"
    assert seen.attempt == "0"


def test_unpriced_cost_is_none(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "ok")])
    assert call(runner, reg, "m").cost_usd is None


def test_keyless_sends_no_authorization(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "ok", api_key_env=None)])
    assert call(runner, reg, "m").ok
    assert server.seen[0].authorization is None


# ------------------------------------------------------------------------------------- retries


def test_retry_after_is_honoured(runner: Runner, server: Server) -> None:
    env = {**ENV, "MODELROLLOUT_BACKOFF_SCALE": "1"}
    reg = registry(runner, [spec("m", server, "429-then-ok?ra=0.3")], env=env)
    res = call(runner, reg, "m")
    assert res.ok and res.attempts == 2
    assert [s.attempt for s in server.seen] == ["0", "1"]
    gap = server.seen[1].t - server.seen[0].t
    assert gap >= 0.28, gap
    # a rate limit is the account's, not the model's: the latency is the answered attempt's
    assert res.latency_ms < 200


def test_retry_on_503_and_backoff_scale(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "503-once")])
    t0 = time.monotonic()
    res = call(runner, reg, "m")
    assert res.ok and res.attempts == 2 and server.count() == 2
    assert time.monotonic() - t0 < 2.0


def test_retries_exhausted(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "500", max_retries=2)])
    res = call(runner, reg, "m")
    assert res.status == "error" and res.error is not None
    assert res.error.kind == "server" and res.attempts == 3 and server.count() == 3
    assert [s.attempt for s in server.seen] == ["0", "1", "2"]


@pytest.mark.parametrize(("persona", "kind"), [("401", "auth"), ("400", "client")])
def test_no_retry_on_client_errors(runner: Runner, server: Server, persona: str, kind: str) -> None:
    reg = registry(runner, [spec("m", server, persona, max_retries=3)])
    res = call(runner, reg, "m")
    assert res.status == "error" and res.error is not None and res.error.kind == kind
    assert server.count() == 1 and res.attempts == 1


def test_model_not_found(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "no-such-model", max_retries=3)])
    res = call(runner, reg, "m")
    assert res.error is not None and res.error.kind == "client"
    assert "model not found" in str(res.error) and server.count() == 1


def test_html_is_bad_response(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "html")])
    res = call(runner, reg, "m")
    assert res.error is not None and res.error.kind == "bad_response" and server.count() == 1


def test_timeout(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "hang", timeout_s=0.3, max_retries=1)])
    t0 = time.monotonic()
    res = call(runner, reg, "m")
    assert res.status == "timeout" and res.error is not None and res.error.kind == "timeout"
    assert res.attempts == 2
    assert time.monotonic() - t0 < 1.8
    assert res.latency_ms >= 2 * 300 * 0.95  # a timeout's latency runs until the client gave up


def test_connection_refused(runner: Runner, server: Server) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    s = ModelSpec(ref="m", provider="openai", wire="openai", model="ok",
                  base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)  # fmt: skip
    reg = registry(runner, [s])
    res = call(runner, reg, "m")
    assert res.error is not None and res.error.kind == "connection" and res.attempts == 2


def test_rate_limit_halves_concurrency(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "always-429", max_retries=1, max_concurrency=8)])
    env = {**ENV, "MODELROLLOUT_BACKOFF_SCALE": "1"}
    reg.env = env
    res = call(runner, reg, "m")
    assert res.error is not None and res.error.kind == "rate_limit" and res.attempts == 2
    assert res.error.retry_after == pytest.approx(0.01)
    assert reg.client("m").gate.current_limit() <= 4


# ------------------------------------------------------------------------------------- fallback


def test_fallback_used_with_its_own_key_and_url(
    runner: Runner, server: Server, server2: Server
) -> None:
    primary = spec("p", server, "500", max_retries=1, fallback="fb")
    fb = spec("fb", server2, "ok", api_key_env="FB_KEY", input_price_per_mtok=1.0,
              output_price_per_mtok=2.0)  # fmt: skip
    reg = registry(runner, [primary, fb])
    res = call(runner, reg, "p")
    assert res.ok and res.fallback and res.served_by == "fb" and res.ref == "p"
    assert res.attempts == 3
    assert res.response is not None and res.response.text == "hello from ok"
    assert res.cost_usd == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert server.count() == 2 and server2.count() == 1
    assert {s.authorization for s in server.seen} == {f"Bearer {KEY}"}
    assert server2.seen[0].authorization == f"Bearer {FB_KEY}"


def test_fallback_failing_keeps_primary_error(
    runner: Runner, server: Server, server2: Server
) -> None:
    reg = registry(runner, [spec("p", server, "500", max_retries=0, fallback="fb"),
                            spec("fb", server2, "400")])  # fmt: skip
    res = call(runner, reg, "p")
    assert res.status == "error" and not res.fallback and res.error is not None
    assert res.error.kind == "server" and "fallback fb failed too" in str(res.error)


# ------------------------------------------------------------------------------------- kill switch


def test_killed_model_is_never_called(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("k", server, "ok")], killed={"k"})
    res = call(runner, reg, "k")
    assert res.status == "error" and res.error is not None and res.error.kind == "killed"
    assert res.attempts == 0 and server.count() == 0
    # also through the client directly
    res = runner.run(reg.client("k").call(REQ))
    assert res.error is not None and res.error.kind == "killed" and server.count() == 0


def test_killed_fallback_is_skipped(runner: Runner, server: Server, server2: Server) -> None:
    reg = registry(
        runner,
        [spec("p", server, "500", max_retries=0, fallback="fb"), spec("fb", server2, "ok")],
        killed={"fb"},
    )
    res = call(runner, reg, "p")
    assert res.status == "error" and not res.fallback and server2.count() == 0
    assert "killed" in str(res.error)


def test_killed_set_is_read_at_call_time(runner: Runner, server: Server) -> None:
    killed: set[str] = set()
    reg = registry(runner, [spec("m", server, "ok")], killed=killed)
    assert call(runner, reg, "m").ok
    killed.add("m")
    assert call(runner, reg, "m").error_kind == "killed"
    assert server.count() == 1


# ------------------------------------------------------------------------------------- secrets


def test_missing_key_variable_is_named(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "ok", api_key_env="MODELROLLOUT_TEST_NO_SUCH_KEY")])
    res = call(runner, reg, "m")
    assert res.status == "error" and res.error is not None and res.error.kind == "auth"
    assert "MODELROLLOUT_TEST_NO_SUCH_KEY" in str(res.error)
    assert server.count() == 0 and res.attempts == 0


@pytest.mark.parametrize("persona", ["echo-key-401", "echo-key-500", "echo-key-200"])
@pytest.mark.parametrize("key", [CANARY, PLAIN_CANARY])
def test_key_never_in_error_text(runner: Runner, server: Server, persona: str, key: str) -> None:
    env = {**ENV, "CANARY_KEY": key}
    reg = registry(runner, [spec("m", server, persona, api_key_env="CANARY_KEY", max_retries=0)],
                   env=env)  # fmt: skip
    res = call(runner, reg, "m")
    assert res.error is not None
    assert server.seen[0].authorization == f"Bearer {key}"  # it was sent and echoed back
    text = str(res.error)
    assert key not in text and key[-8:] not in text
    assert len(text) < 200 and "\n" not in text


def test_anthropic_key_never_in_error_text(runner: Runner, server: Server) -> None:
    env = {**ENV, "CANARY_KEY": PLAIN_CANARY}
    s = spec("a", server, "echo-key-401", wire="anthropic", api_key_env="CANARY_KEY", max_retries=0)
    reg = registry(runner, [s], env=env)
    res = call(runner, reg, "a")
    assert server.seen[0].api_key == PLAIN_CANARY
    assert res.error is not None and PLAIN_CANARY not in str(res.error)


# ------------------------------------------------------------------------------------- limits


def test_concurrency_bound(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "ok?delay=0.15", max_concurrency=2)])

    async def many() -> list[CallResult]:
        return await asyncio.gather(*(reg.call("m", REQ) for _ in range(6)))

    results = runner.run(many(), timeout=30)
    assert all(r.ok for r in results)
    assert server.max_in_flight == 2


def test_global_bound(runner: Runner, server: Server) -> None:
    reg = registry(
        runner,
        [spec("a", server, "ok?delay=0.1", max_concurrency=4),
         spec("b", server, "ok?delay=0.1", max_concurrency=4)],
        max_in_flight=3,
    )  # fmt: skip

    async def many() -> list[CallResult]:
        return await asyncio.gather(*(reg.call(r, REQ) for r in "abababab"))

    assert all(r.ok for r in runner.run(many(), timeout=30))
    # (it saw 4 once under a full CI run: the attempts and arrival times say whether a
    # request was sent again, or four went at once)
    t0 = server.seen[0].t
    assert server.max_in_flight == 3, [(s.attempt, round(s.t - t0, 3)) for s in server.seen]


def test_latency_excludes_queueing(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "ok?delay=0.3", max_concurrency=1)])

    async def two() -> list[CallResult]:
        return list(await asyncio.gather(reg.call("m", REQ), reg.call("m", REQ)))

    t0 = time.monotonic()
    results = runner.run(two(), timeout=30)
    assert time.monotonic() - t0 >= 0.55  # they did queue
    for r in results:
        assert r.ok and 250 <= r.latency_ms < 500, r.latency_ms
    # the recorded start is the send, not the ask: the queued call started after the first ended
    first, second = sorted(r.started_at for r in results)
    assert second - first >= 0.25, (first, second)


def test_rpm_limit(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("m", server, "ok", rpm=240)])  # 4/s, burst 4

    async def six() -> list[CallResult]:
        return await asyncio.gather(*(reg.call("m", REQ) for _ in range(6)))

    t0 = time.monotonic()
    assert all(r.ok for r in runner.run(six(), timeout=30))
    assert time.monotonic() - t0 >= 0.4


# ------------------------------------------------------------------------------------- wires


def test_anthropic_wire_and_529_retry(runner: Runner, server: Server) -> None:
    reg = registry(runner, [spec("a", server, "529-once", wire="anthropic")])
    res = call(runner, reg, "a")
    assert res.ok and res.attempts == 2
    assert res.response is not None and res.response.finish_reason == "stop"
    assert res.response.input_tokens == 10
    assert [s.path for s in server.seen] == ["/v1/messages", "/v1/messages"]
    assert server.seen[0].api_key == KEY and server.seen[0].authorization is None


def test_sim_preset_resolves_base_url_from_env(runner: Runner, server: Server) -> None:
    env = {**ENV, "MODELROLLOUT_SIM_URL": server.url}
    specs = [
        ModelSpec(ref="sim:ok", provider="sim", wire="openai", model="ok", base_url=""),
        ModelSpec(ref="sa", provider="sim-anthropic", wire="anthropic", model="ok", base_url=""),
    ]
    reg = registry(runner, specs, env=env)
    assert call(runner, reg, "sim:ok").ok
    assert call(runner, reg, "sa").ok
    assert [s.path for s in server.seen] == ["/v1/chat/completions", "/v1/messages"]


def test_client_without_registry(runner: Runner, server: Server) -> None:
    client = ModelClient(spec("m", server, "500", max_retries=0, fallback="x"), env=ENV)
    res = runner.run(client.call(REQ))
    assert res.error is not None and res.error.kind == "server"
    runner.run(client.aclose())


# ------------------------------------------------------------------------------------- runner


def test_runner_run_submit_timeout() -> None:
    for _ in range(3):  # create / close repeatedly
        with Runner() as r:

            async def value(x: int) -> int:
                await asyncio.sleep(0.01)
                return x

            assert r.run(value(3)) == 3
            assert r.submit(value(4)).result(5) == 4
            with pytest.raises(TimeoutError):
                r.run(asyncio.sleep(5), timeout=0.05)
        assert r.closed
        with pytest.raises(RuntimeError):
            r.run(value(1))
        r.close()  # idempotent


def test_runner_settle_returns_once_what_was_submitted_has_started() -> None:
    """Each coroutine submitted before has run up to its first real wait (a call: its request
    is out) when settle() returns, through the turns of the loop it takes on the way (a call
    takes its slot, its tokens and a connection first): a thread that then holds the GIL does
    not hold them back."""
    with Runner() as r:
        started: list[int] = []

        async def call(i: int) -> None:
            for _ in range(i % 4):  # a slot, the tokens, a connection of the pool
                time.sleep(0.001)  # each turn takes the loop a while
                await asyncio.sleep(0)
            started.append(i)
            await asyncio.sleep(0.5)

        futures = [r.submit(call(i)) for i in range(50)]
        assert r.settle(5)
        assert sorted(started) == list(range(50))
        assert not any(f.done() for f in futures)
        r.loop.call_soon_threadsafe(time.sleep, 0.3)  # a loop busy longer than the wait
        assert not r.settle(0.05)
    assert not r.settle(1)  # closed


def test_runner_close_closes_registry(server: Server) -> None:
    r = Runner()
    reg = registry(r, [spec("m", server, "ok")])
    assert call(r, reg, "m").ok
    client = reg.client("m")
    assert client._http is not None
    r.close()
    assert client._http is None


# ------------------------------------------------------------------------------------- simulator


def test_against_the_simulator_when_available(runner: Runner) -> None:
    import importlib

    from pytest_modelrollout.providers.presets import PRESETS

    sim = importlib.import_module("pytest_modelrollout.sim")
    if not hasattr(sim, "get_simulator"):
        pytest.skip("simulator not available yet")

    def resolve(ref: str) -> ModelSpec:
        provider, model = ref.split(":", 1)
        preset = PRESETS[provider]
        prices = preset.default_prices(model) or (None, None)
        return ModelSpec(ref=ref, provider=provider, wire=preset.wire, model=model, base_url="",
                         timeout_s=5, max_retries=2, input_price_per_mtok=prices[0],
                         output_price_per_mtok=prices[1])  # fmt: skip

    reg = ModelRegistry(resolve, set(), {"MODELROLLOUT_BACKOFF_SCALE": "0.01"})
    runner.register(reg)
    expected = {
        "sim:stable": ("ok", 1, None),
        "sim:fault-429": ("ok", 2, None),
        "sim:fault-503-once": ("ok", 2, None),
        "sim-anthropic:stable": ("ok", 1, None),
        "sim-anthropic:fault-529": ("error", 3, "server"),
        "sim:fault-html-200": ("error", 1, "bad_response"),
        "sim:fault-404": ("error", 1, "client"),
    }
    for ref, (status, attempts, kind) in expected.items():
        res = runner.run(reg.call(ref, REQ), timeout=30)
        assert (res.status, res.attempts, res.error_kind) == (status, attempts, kind), ref
        if res.ok:
            assert res.cost_usd is not None and res.cost_usd > 0


# -- xdist: each worker keeps to its share of the limits ------------------------------------
@pytest.mark.parametrize(
    ("value", "count", "shares"),
    [(8, 1, [8]), (8, 2, [4, 4]), (8, 3, [3, 3, 2]), (16, 5, [4, 3, 3, 3, 3]), (2, 4, [1, 1, 1, 1])],
)
def test_split_limit_adds_up(value: int, count: int, shares: list[int]) -> None:
    from pytest_modelrollout.providers.base import split_limit

    assert [split_limit(value, i, count) for i in range(count)] == shares


@pytest.mark.parametrize(
    ("env", "share"),
    [
        ({}, None),
        ({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"}, None),
        ({"PYTEST_XDIST_WORKER": "gw2", "PYTEST_XDIST_WORKER_COUNT": "4"}, (2, 4)),
        ({"PYTEST_XDIST_WORKER": "gwx", "PYTEST_XDIST_WORKER_COUNT": "4"}, None),
        ({"PYTEST_XDIST_WORKER": "gw7", "PYTEST_XDIST_WORKER_COUNT": "4"}, None),
    ],
)
def test_worker_share_from_the_xdist_environment(
    env: dict[str, str], share: tuple[int, int] | None
) -> None:
    from pytest_modelrollout.providers.base import worker_share

    assert worker_share(env) == share


def test_workers_split_concurrency_and_rate_limits() -> None:
    """Four workers with a model at 8 in flight, 600 rpm, 40k tpm: 2, 150 rpm, 10k tpm each."""
    spec = ModelSpec(ref="m", provider="sim", wire="openai", model="x", base_url="http://x",
                     max_concurrency=8, rpm=600, tpm=40_000)
    registry = ModelRegistry(lambda ref: spec, max_in_flight=10, share=(3, 4))
    client = registry.client("m")
    assert (client.spec.max_concurrency, client.spec.rpm, client.spec.tpm) == (2, 150, 10_000)
    assert registry._global is not None and registry._global._value == 2  # 10 = 3 + 3 + 2 + 2
    alone = ModelRegistry(lambda ref: spec, max_in_flight=10).client("m")
    assert (alone.spec.max_concurrency, alone.spec.rpm, alone.spec.tpm) == (8, 600, 40_000)
