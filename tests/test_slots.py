"""The run's limits under pytest-xdist: the controller's slot broker and the workers' clients.

Each test starts a real :class:`SlotBroker` (its own thread, a TCP server on loopback) and talks
to it with :class:`SlotClient`\\ s, one per simulated worker, over real connections. The
end-to-end case (two xdist workers, one with every test, against the simulator) is in
test_prefetch.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from pytest_modelrollout.providers.base import ChatRequest, ModelSpec
from pytest_modelrollout.providers.client import ModelRegistry, endpoint_key
from pytest_modelrollout.providers.slots import SlotBroker, SlotClient


@pytest.fixture
def broker() -> Iterator[SlotBroker]:
    b = SlotBroker()
    b.start()
    yield b
    b.close()


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 20))


@contextlib.asynccontextmanager
async def workers(broker: SlotBroker, n: int = 2) -> AsyncIterator[list[SlotClient]]:
    """``n`` workers' clients of ``broker``, each with its own connection, closed after."""
    clients = [SlotClient(broker.address) for _ in range(n)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


async def granted_soon(aw: Awaitable[bool], within: float = 0.3) -> bool | None:
    """What ``aw`` returned, or None if it was still waiting after ``within`` seconds."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        task.cancel()
        return None
    return task.result()


GATE = [["g", "model m", 2], ["g", "run", 3]]


def test_slots_are_shared_by_the_workers_and_given_back(broker: SlotBroker) -> None:
    async def main() -> None:
        async with workers(broker) as (a, b):
            assert await a.acquire(GATE) and await a.acquire(GATE)  # the model's limit is 2
            assert await granted_soon(b.acquire(GATE)) is None  # ... for both together
            waiting = asyncio.ensure_future(b.acquire(GATE))
            await asyncio.sleep(0.05)
            a.release(["model m", "run"])
            assert await asyncio.wait_for(waiting, 2) is True  # the slot a gave back
        assert broker.peak["model m"] == 2 and broker.peak["run"] == 2

    run(main)


def test_the_run_bound_holds_across_models(broker: SlotBroker) -> None:
    async def main() -> None:
        async with workers(broker) as (a, b):
            for client, model in ((a, "x"), (b, "y"), (a, "z")):
                assert await client.acquire([["g", f"model {model}", 8], ["g", "run", 3]])
            assert await granted_soon(b.acquire([["g", "model w", 8], ["g", "run", 3]])) is None

    run(main)


def test_a_worker_that_goes_away_gives_its_slots_back(broker: SlotBroker) -> None:
    async def main() -> None:
        async with workers(broker) as (a, b):
            assert await a.acquire(GATE) and await a.acquire(GATE)
            waiting = asyncio.ensure_future(b.acquire(GATE))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await a.aclose()  # a crashed worker's connection closes the same way
            assert await asyncio.wait_for(waiting, 2) is True

    run(main)


def test_a_request_given_up_while_waiting_takes_no_slot(broker: SlotBroker) -> None:
    """A call cancelled while it waits for a slot (a test's timeout) must not keep the slot
    it is granted later: the slot goes on to the next worker."""

    async def main() -> None:
        async with workers(broker, 3) as (a, b, c):
            assert await a.acquire(GATE) and await a.acquire(GATE)
            assert await granted_soon(b.acquire(GATE), 0.1) is None  # b gives up
            a.release(["model m", "run"])
            a.release(["model m", "run"])
            assert await granted_soon(c.acquire(GATE), 2) is True
            assert await granted_soon(c.acquire(GATE), 2) is True  # b's grant came back too

    run(main)


def test_a_429_halves_the_models_limit_for_every_worker(broker: SlotBroker) -> None:
    async def main() -> None:
        async with workers(broker) as (a, b):
            steps = [["g", "model m", 4]]
            assert await a.acquire(steps)
            a.penalize("model m", 30.0)
            assert await b.acquire(steps)  # 2 of the halved 4
            assert await granted_soon(b.acquire(steps)) is None

    run(main)


def test_a_rate_is_shared_by_the_workers(broker: SlotBroker) -> None:
    """600 rpm with one token banked: the workers together get one request per 0.1 s."""

    async def main() -> float:
        async with workers(broker) as (a, b):
            step = [["b", "rpm m", 600.0, 1.0, 1.0]]
            t0 = time.monotonic()
            for _ in range(3):
                assert await a.acquire(step) and await b.acquire(step)
            return time.monotonic() - t0

    assert run(main) >= 0.45  # 6 requests: the banked one, then 5 at 0.1 s each


def test_a_broker_that_cannot_be_reached_leaves_each_worker_its_share(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def main() -> None:
        client = SlotClient(f"127.0.0.1:{port}:token")
        assert await client.acquire(GATE) is False
        assert not client.usable and "cannot reach" in str(client.lost)
        assert await client.acquire(GATE) is False  # said once, not retried per call

    run(main)
    err = capsys.readouterr().err
    assert err.count("modelrollout: cannot reach the xdist controller's slot broker") == 1


def test_a_worker_that_loses_the_broker_goes_on_with_its_share(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """The controller's broker goes away mid-run: a call waiting for a slot is not left
    waiting; it and every later one keep to the worker's own share. The broker closes its
    connections quietly (CPython 3.11's asyncio logged each one's cancelled task as an error,
    with a traceback)."""
    b = SlotBroker()
    b.start()

    async def main() -> None:
        a = SlotClient(b.address)
        assert await a.acquire(GATE) and await a.acquire(GATE)
        waiting = asyncio.ensure_future(a.acquire(GATE))  # the model's 2 are taken
        await asyncio.sleep(0.05)
        await asyncio.to_thread(b.close)
        assert await asyncio.wait_for(waiting, 5) is False
        assert await a.acquire(GATE) is False and not a.usable
        await a.aclose()

    run(main)
    assert "slot broker closed the connection" in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_a_connection_without_the_token_is_refused(broker: SlotBroker) -> None:
    async def main() -> None:
        host, port, _ = broker.address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(json.dumps({"h": "wrong"}).encode() + b"\n")
        writer.write(json.dumps({"a": 1, "s": GATE}).encode() + b"\n")
        # closed, nothing granted; a reset when the request line reached the broker after it
        # had closed on the token (the peak below shows that no slot was granted either way)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        wrong = SlotClient(f"{host}:{port}:wrong")
        assert await wrong.acquire(GATE) is False
        await wrong.aclose()

    run(main)
    assert broker.peak["model m"] == 0


def test_a_request_the_broker_cannot_serve_does_not_leave_the_worker_waiting(
    broker: SlotBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with workers(broker, 1) as (a,):
            assert await a.acquire([["g", "model m", "not a number"]]) is False
            assert not a.usable

    run(main)
    assert "slot broker closed the connection" in capsys.readouterr().err


def test_the_broker_survives_a_line_that_is_not_ours(broker: SlotBroker) -> None:
    async def main() -> None:
        host, port, token = broker.address.split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(json.dumps({"h": token}).encode() + b"\n" + b"{not json\n")
        await writer.drain()
        writer.close()
        client = SlotClient(broker.address)
        assert await client.acquire(GATE) is True
        await client.aclose()

    run(main)


# -- the model clients of two workers, over real HTTP ----------------------------------------


@pytest.fixture
def sim_url() -> Iterator[str]:
    from pytest_modelrollout.sim import SimServer

    server = SimServer().start()
    yield server.base_url
    server.stop()


def _registries(sim_url: str, address: str | None) -> list[ModelRegistry]:
    spec = ModelSpec(ref="m", provider="sim", wire="openai", model="stable?latency_ms=200&jitter=0",
                     base_url=sim_url + "/v1", max_concurrency=8)
    return [
        ModelRegistry(lambda ref: spec, max_in_flight=4, share=(i, 2),
                      slots=SlotClient(address) if address else None)
        for i in range(2)
    ]


def _calls(registry: ModelRegistry, n: int) -> list[Awaitable[Any]]:
    return [
        registry.call("m", ChatRequest(messages=[{"role": "user", "content": f"question {i}"}]))
        for i in range(n)
    ]


def test_one_worker_alone_uses_the_whole_run_bound(sim_url: str, broker: SlotBroker) -> None:
    """Worker 0 has all 8 calls: with the broker 4 go out at once (the run's bound), not 2."""

    async def main() -> None:
        first, second = _registries(sim_url, broker.address)
        results = await asyncio.gather(*_calls(first, 8))
        assert all(r.ok for r in results)
        assert broker.peak["run"] == 4
        await first.aclose()
        await second.aclose()

    run(main)


def test_two_workers_together_keep_to_the_run_bound(sim_url: str, broker: SlotBroker) -> None:
    async def main() -> None:
        first, second = _registries(sim_url, broker.address)
        results = await asyncio.gather(*_calls(first, 8), *_calls(second, 8))
        assert all(r.ok for r in results)
        assert broker.peak["run"] == 4
        await first.aclose()
        await second.aclose()

    run(main)


def test_model_calls_go_on_when_the_broker_cannot_be_reached(sim_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> float:
        first, _ = _registries(sim_url, f"127.0.0.1:{port}:token")
        t0 = time.monotonic()
        results = await asyncio.gather(*_calls(first, 4))
        assert all(r.ok for r in results)
        await first.aclose()
        return time.monotonic() - t0

    assert run(main) >= 0.39  # at the worker's share: two at a time, 200 ms each


def test_without_the_broker_each_worker_keeps_to_its_share(sim_url: str) -> None:
    async def main() -> float:
        first, _ = _registries(sim_url, None)
        assert first.client("m").spec.max_concurrency == 4  # 8 over 2 workers
        assert first.max_in_flight == 2  # 4 over 2 workers
        t0 = time.monotonic()
        results = await asyncio.gather(*_calls(first, 4))
        assert all(r.ok for r in results)
        await first.aclose()
        return time.monotonic() - t0

    assert run(main) >= 0.39  # two at a time, 200 ms each


# -- claims: the controller's head start (headstart.py) --------------------------------------
def _result(**kw: Any) -> Any:
    from pytest_modelrollout.providers.base import CallResult, ProviderResponse, ToolCall

    response = ProviderResponse(
        text="订单 A-1 已发货。" + "x" * 100_000,  # a long reply: more than asyncio's 64 KiB line
        tool_calls=[ToolCall("lookup", {"id": "A-1"}, '{"id": "A-1"}', "call_1"),
                    ToolCall("broken", None, "{not json", None)],
        finish_reason="stop", input_tokens=12, output_tokens=3456, model_id="good-2",
        raw={"choices": [{"message": {"content": "..."}}], "usage": {"total_tokens": 3468}},
    )
    fields: dict[str, Any] = {
        "ref": "sim:good", "status": "ok", "response": response, "error": None,
        "latency_ms": 101.25, "attempts": 2, "fallback": False, "served_by": "sim:good",
        "cost_usd": 0.000123, "started_at": 1_795_000_000.123456,
    }
    fields.update(kw)
    return CallResult(**fields)


@pytest.mark.parametrize("kind", ["timeout", "rate_limit", "server", "connection", "auth",
                                  "client", "bad_response", "killed", "something_new"])
def test_a_failed_call_crosses_the_wire_as_it_was(kind: str) -> None:
    from pytest_modelrollout import _exceptions
    from pytest_modelrollout.providers.base import result_from_wire, result_to_wire

    classes = {c.kind: c for c in _exceptions.ProviderError.__subclasses__()}
    error = classes.get(kind, _exceptions.ProviderError)(
        "HTTP 429: slow down", status_code=429, retry_after=1.5
    )
    if kind not in classes:
        error.kind = kind
    sent = _result(status="timeout" if kind == "timeout" else "error", response=None,
                   error=error, cost_usd=None)
    got = result_from_wire(json.loads(json.dumps(result_to_wire(sent))))
    assert got.error is not None and type(got.error) is type(error)
    assert (got.error.kind, str(got.error), got.error.status_code, got.error.retry_after) == (
        kind, str(error), 429, 1.5)
    assert (got.status, got.ok, got.error_kind, got.latency_ms, got.cost_usd) == (
        sent.status, False, kind, 101.25, None)


def test_a_claim_takes_the_controllers_result(broker: SlotBroker) -> None:
    """A worker's claim gets the controller's result, exactly (a reply longer than a line
    asyncio reads by default included); a claim of what the controller did not send, or with
    no head start, gets nothing at once."""
    from pytest_modelrollout.providers.base import result_from_wire, result_to_wire

    sent = _result()
    asked: list[tuple[str, str, str, str, bool]] = []

    async def claims(test: str, role: str, ref: str, key: str, ahead: bool) -> Any:
        asked.append((test, role, ref, key, ahead))
        if key == "k9":
            raise RuntimeError("the controller's side failed")
        return result_to_wire(sent) if key == "k1" else None

    async def main() -> tuple[Any, ...]:
        async with workers(broker, 1) as (client,):
            got = await client.claim("t.py::test[c1]", "candidate", "sim:good", "k1", True)
            other = await asyncio.wait_for(
                client.claim("t.py::test[c2]", "candidate", "sim:good", "k2", False), 2)
            failed = await asyncio.wait_for(
                client.claim("t.py::test[c9]", "candidate", "sim:good", "k9", False), 2)
            broker.claims = None
            off = await asyncio.wait_for(
                client.claim("t.py::test[c3]", "stable", "sim:stable", "k3", False), 2)
            return got, other, failed, off

    broker.claims = claims
    got, other, failed, off = run(main)
    assert result_from_wire(got) == sent
    # answered (None) at once, not left waiting (wait_for would raise)
    assert other is None and failed is None and off is None
    assert asked == [("t.py::test[c1]", "candidate", "sim:good", "k1", True),
                     ("t.py::test[c2]", "candidate", "sim:good", "k2", False),
                     ("t.py::test[c9]", "candidate", "sim:good", "k9", False)]


def test_a_claim_on_a_lost_broker_is_answered_with_nothing(broker: SlotBroker) -> None:
    """The worker then sends the request itself."""
    waiting = asyncio.Event()

    async def claims(test: str, role: str, ref: str, key: str, ahead: bool) -> Any:
        waiting.set()
        await asyncio.sleep(60)  # the controller's call still in flight

    async def main() -> Any:
        async with workers(broker, 1) as (client,):
            task = asyncio.ensure_future(client.claim("t::a", "candidate", "m", "k", True))
            await asyncio.sleep(0.2)
            broker.close()
            return await asyncio.wait_for(task, 5)

    broker.claims = claims
    assert run(main) is None


@pytest.mark.parametrize("broker", ["none", "unreachable", "lost"])
def test_a_worker_without_the_broker_keeps_to_its_share_of_a_remembered_limit(
    sim_url: str, broker: str
) -> None:
    """One of two xdist workers, with the limit its provider stated in an earlier run (240
    requests a minute) and no broker to keep the run to it (it could not start, cannot be
    reached, or was lost after the worker's first request told it the limit): the worker keeps
    to its share, 0.95 x 240 / 2 a minute, from its first request (from the loss). (Before,
    the worker without a broker kept to all of it, and the one that could not reach the broker
    to none of it: the first burst went over; the one that lost it kept to none of it.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = ModelSpec(ref="m", provider="sim", wire="openai", model="stable?latency_ms=0&jitter=0",
                     base_url=sim_url + "/v1", max_concurrency=8)
    b = SlotBroker() if broker == "lost" else None
    address = b.start() if b is not None else f"127.0.0.1:{port}:token"
    registry = ModelRegistry(
        lambda ref: spec, env={}, share=(0, 2),
        slots=SlotClient(address) if broker != "none" else None,
        remembered={endpoint_key(spec): {"rpm": 240.0}},
    )

    async def main() -> tuple[float, float | None]:
        if b is not None:  # the first request through the broker, which is then lost
            first = ChatRequest(messages=[{"role": "user", "content": "first"}])
            assert (await registry.call("m", first)).ok
            b.close()
            slots = registry.client("m")._slots
            assert slots is not None
            for _ in range(100):
                await asyncio.sleep(0.02)
                if not slots.usable:
                    break
        t0 = time.monotonic()
        results = await asyncio.gather(*_calls(registry, 3))
        elapsed = time.monotonic() - t0
        assert all(r.ok for r in results)
        per_s = registry.client("m").pace.per_s
        await registry.aclose()
        return elapsed, per_s

    elapsed, per_s = run(main)
    assert per_s == pytest.approx(0.95 * 4 / 2)  # the simulator states no limit this time
    assert elapsed >= 2 / per_s - 0.05  # the first at once, then one every 0.53 s


def test_the_broker_closes_quietly_with_connections_just_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Closed as workers connect (a run that ends as it starts): no connection's handler is
    logged as an error (a handler cancelled before its first step ended as cancelled, which
    CPython 3.11's asyncio logs with a traceback)."""
    with warnings.catch_warnings():
        # CPython 3.11's asyncio leaves a socket it accepted as its server closed to the
        # garbage collector (its transport cannot attach to a closed server): collected here,
        # quietly, rather than by whichever thread collects next
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(20):
            b = SlotBroker()
            host, port, _token = b.start().split(":")
            sockets = [socket.create_connection((host, int(port))) for _ in range(4)]
            b.close()
            for s in sockets:
                s.close()
            del b
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
