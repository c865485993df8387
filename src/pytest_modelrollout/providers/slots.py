"""The run's limits shared by the workers of ``pytest -n N`` (the controller's slot broker).

Every pytest-xdist worker is a process of its own with its own clients. Split evenly, each
worker could keep 1/N of every limit (``--rollout-concurrency``, a model's
``max_concurrency``, ``rpm``, ``tpm``), but then a worker that has most of the tests (one big
file under ``--dist loadfile`` or ``loadscope``, the end of any run, the first worker up while
the others still start) calls at 1/N of what the team is allowed: ``-n 4 --dist loadfile`` on a
one-file suite ran 3.4 times slower than ``-n 0``. So the xdist controller holds the limits
(:class:`SlotBroker`, a small server on loopback) and each worker asks it before every send
(:class:`SlotClient`): the workers together keep to each limit, and one worker alone may use
all of it.

The broker keeps one :class:`~.limits.AdaptiveGate` per concurrency limit and one
:class:`~.limits.TokenBucket` per rate, the same objects a run without xdist uses; a 429 seen by
any worker halves the model's concurrency and slows its rates for all of them.

Protocol: JSON lines over one TCP connection per worker, on 127.0.0.1; the first line carries
the token the worker got from the controller (``workerinput``).

=====================================================  =====================================
worker -> broker                                        meaning
=====================================================  =====================================
``{"h": token}``                                        first line
``{"a": id, "s": [step, ...]}``                         take the steps in order, then answer
``["g", key, limit]``                                   a step: one slot of a concurrency limit
``["b", key, per_minute, capacity, amount]``            a step: ``amount`` of a rate's tokens
                                                        (at ``per_minute`` from then on; 0:
                                                        the broker's, if it has one; capacity
                                                        < 0: a new bucket starts a second's
                                                        worth short)
``["l", key]``                                          a step: a turn under the model's pace
``{"o": [key, limited, stated_rpm, age]}``              a reply came (a 429 if ``limited``) to a
                                                        request sent ``age`` seconds before
``{"m": [key, rpm]}``                                   the model's provider stated ``rpm`` in
                                                        an earlier run (its pace until a reply
                                                        states one)
``{"r": [key, ...]}``                                   give the slots back
``{"u": [[key, amount], ...]}``                         a reply's usage: take ``amount`` more of
                                                        a rate's tokens (negative: give back)
``{"p": key, "c": seconds}``                            halve that limit for ``seconds`` (429)
``{"w": key, "c": seconds}``                            halve that rate for ``seconds`` (429)
``{"q": id, "t": test, "k": [role, ref, key]}``         claim a request of test ``test``
=====================================================  =====================================

The pace a model's provider imposes, by the limit its replies state or by its 429s
(:class:`~.limits.LearnedPace`), is learned here too, from every worker's replies (``o``, sent
with the release of the slots of the attempt the reply answered), and kept as the step ``l``:
learned in each worker from its own replies, each would see its part of the quota and pace the
run at the whole of it times the workers.

The broker answers ``{"a": id}`` once every step of request ``id`` is taken (with
``"k": {key: per_minute}``, the model's tokens-a-minute rates the steps did not take: a limit
its provider stated to another worker, kept from then on), and a claim with
``{"q": id, "r": result}``: the result of the controller's own call for that request
(:mod:`..headstart`; ``result`` as :func:`.base.result_to_wire` gives it), or ``null`` at once
when the controller did not send it (the worker sends it itself). A claim also says whether
the worker sent that request ahead of its test (``"p": true``), for the counts. A connection that
closes (a worker that ends or crashes) gives back the slots it held; its requests still waiting
are dropped. A worker that cannot reach the broker, or loses it, falls back to its 1/N share
of every limit (:meth:`SlotClient.acquire` returns False) and says so once on stderr.

This module does not import pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .limits import AdaptiveGate, LearnedPace, TokenBucket, backoff_scale
from .tokens import TOKEN_KINDS, spent_before

CONNECT_TIMEOUT_S = 5.0
Step = list[Any]  # ["g", key, limit] | ["b", key, per_minute, capacity, amount] | ["l", key]
RUN_KEY = "run"  # the bound on calls in flight across all models
# a model's keys: its max_concurrency, rpm, tpm, and the input / output tokens a minute its
# provider may state (:mod:`.tokens`)
LIMIT_KINDS = ("model", "rpm", "tpm", "itpm", "otpm")
READ_LIMIT = 1 << 26  # a claim's answer carries a reply's body: longer lines than asyncio's 64 KiB
# test id, role, model reference, request key, sent ahead -> the controller's result or None
Claims = Callable[[str, str, str, str, bool], Awaitable[dict[str, Any] | None]]


def limit_key(kind: str, ref: str) -> str:
    """The broker's key of one of a model's limits (``kind`` in :data:`LIMIT_KINDS`)."""
    return f"{kind} {ref}"


class SlotBroker:
    """The controller's side: the run's limits, served on 127.0.0.1 from a thread of its own."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modelrollout-slots", daemon=True
        )
        self._server: asyncio.AbstractServer | None = None
        self._gates: dict[str, AdaptiveGate] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.paces: dict[str, LearnedPace] = {}  # a model's key -> its pace (from its replies)
        self._scale = backoff_scale()
        self.peak: Counter[str] = Counter()  # the most slots of each limit held at once
        self.address = ""
        self.claims: Claims | None = None  # the controller's head start, when it has one
        self._connections: set[asyncio.Task[None]] = set()  # a task serving each worker

    def start(self) -> str:
        """Start serving; the address to give the workers (``host:port:token``)."""
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = started.result(timeout=30)
        self.address = f"127.0.0.1:{port}:{self.token}"
        return self.address

    def token_rates(self) -> dict[str, dict[str, float]]:
        """Each model's tokens-a-minute limits the workers kept to (ref -> kind -> per
        minute)."""
        rates: dict[str, dict[str, float]] = {}
        for key, bucket in list(self._buckets.items()):
            kind, _, ref = key.partition(" ")
            if kind in TOKEN_KINDS:
                rates.setdefault(ref, {})[kind] = bucket.rate * 60.0
        return rates

    def usage(self) -> list[tuple[str, int, int]]:
        """``(key, most held at once, limit)`` of each concurrency limit the workers used."""
        return [(key, self.peak[key], gate.limit) for key, gate in list(self._gates.items())]

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- serving ----------------------------------------------------------------------------
    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A worker connected: serve it on a task of the broker's own. (A coroutine given to
        ``start_server`` runs on a task whose end asyncio checks in a callback that, on
        CPython 3.11, raises for a task cancelled as the broker closes, and logs that with a
        traceback: an AST parse on this thread, at a moment pytest may be parsing on another,
        which CPython 3.11 cannot do, gh-106905. :meth:`close` gathers these tasks.)"""
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)  # (held: the loop keeps only a weak reference)
        task.add_done_callback(self._connections.discard)
        # (its connection closed, however it ended: a task cancelled before its first step,
        # as the broker closes, never reaches the close in its ``finally``)
        task.add_done_callback(lambda _: writer.close())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: Counter[str] = Counter()
        waiting: set[asyncio.Task[None]] = set()
        try:
            hello = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_S)
            if _message(hello).get("h") != self.token:
                return
            while line := await reader.readline():
                msg = _message(line)
                if "a" in msg:
                    task = asyncio.create_task(self._grant(msg, held, writer))
                    waiting.add(task)
                    task.add_done_callback(waiting.discard)
                elif "r" in msg:
                    for key in _keys(msg["r"]):
                        if held[key] > 0:
                            held[key] -= 1
                            await self._gates[key].release()
                    if "o" in msg:
                        self._reply(msg["o"])
                elif "o" in msg:
                    self._reply(msg["o"])
                elif "u" in msg:
                    self._charge(msg["u"])
                elif "m" in msg:
                    self._remembered(msg["m"])
                elif "p" in msg and str(msg["p"]) in self._gates:
                    pace = self.paces.get(str(msg["p"]))
                    if pace is None or not pace.paced:  # a paced model keeps its concurrency
                        self._gates[str(msg["p"])].penalize(_seconds(msg.get("c")))
                elif "w" in msg and str(msg["w"]) in self._buckets:
                    self._buckets[str(msg["w"])].slow_down(time.monotonic() + _seconds(msg.get("c")))
                elif "q" in msg:
                    task = asyncio.create_task(self._claim(msg, writer))
                    waiting.add(task)
                    task.add_done_callback(waiting.discard)
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # a worker that went away, or a line that is not ours: drop the connection
        finally:
            for task in list(waiting):
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            for key, count in held.items():
                for _ in range(count):
                    await self._gates[key].release()
            for gate in self._gates.values():
                await gate.wake()  # a waiter woken for a request just dropped passes it on
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _charge(self, value: Any) -> None:
        """A reply's usage: ``[[rate key, tokens more (or fewer)], ...]``."""
        if not isinstance(value, list):
            raise ValueError("not a list of charges")
        for item in value:
            bucket = self._buckets.get(str(item[0])) if isinstance(item, list) and item else None
            if bucket is not None and len(item) > 1:
                amount = float(item[1])
                if amount == amount and abs(amount) < 1e12:  # not NaN, not absurd
                    bucket.charge(amount)

    def _reply(self, value: Any) -> None:
        """A worker's reply came: ``[model key, limited, stated rpm or None, age]``."""
        try:
            key, limited, stated = str(value[0]), bool(value[1]), value[2]
            stated_rpm = float(stated) if stated is not None else None
            age = float(value[3]) if len(value) > 3 else 0.0
        except (TypeError, ValueError, IndexError):
            return
        pace = self.paces.get(key)
        if pace is None:  # from the first reply: the rate admitted before the first 429 counts
            pace = self.paces[key] = LearnedPace(self._scale)
        pace.reply(time.monotonic(), limited, stated_rpm, age)

    def _remembered(self, value: Any) -> None:
        """A worker's model has a limit stated in an earlier run: ``[model key, rpm]``."""
        try:
            key, rpm = str(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            return
        pace = self.paces.get(key)
        if pace is None:
            pace = self.paces[key] = LearnedPace(self._scale)
        if pace.stated_per_s is None and rpm > 0:  # the first worker's; none stated yet
            pace.remember(rpm, time.monotonic())

    async def _grant(
        self, msg: dict[str, Any], held: Counter[str], writer: asyncio.StreamWriter
    ) -> None:
        taken: list[str] = []
        try:
            steps = _steps(msg.get("s"))
            while True:
                unpaced = await self._take(steps, taken)
                if not any(self.paces[key].paced for key in unpaced if key in self.paces):
                    break
                # the model got a pace while this waited for a slot (its first 429s): give
                # the slots and the rates' tokens back and keep to the pace like the requests
                # after it
                for key in taken:
                    await self._gates[key].release()
                taken = []
                for step in steps:
                    bucket = self._buckets.get(step[1]) if step[0] == "b" else None
                    if bucket is not None:  # (a rate step neither knew is not in the broker)
                        bucket.refund(float(step[4]))
            held.update(taken)
            taken = []
            grant: dict[str, Any] = {"a": msg["a"]}
            rates = self._rates(steps)
            if rates:
                grant["k"] = rates
            writer.write(json.dumps(grant).encode() + b"\n")
        except (ValueError, TypeError, IndexError, KeyError, OSError):
            # a request it cannot serve: close the connection rather than leave the worker
            # waiting for a grant that never comes (it falls back to its share)
            writer.close()
        finally:
            for key in taken:  # dropped half-way: give back what was taken
                await self._gates[key].release()

    def _rates(self, steps: list[Step]) -> dict[str, float]:
        """The tokens-a-minute rates the broker keeps for the model of ``steps`` that the steps
        carry no rate for (limits its provider stated to other workers): the worker keeps to
        them from its next request."""
        rates: dict[str, float] = {}
        if not self._buckets:
            return rates
        for step in steps:
            if step[0] == "l" and step[1].startswith("model "):
                ref = step[1][len("model "):]
                known = {str(s[1]) for s in steps if s[0] == "b" and float(s[2]) > 0}
                for kind in TOKEN_KINDS:
                    key = limit_key(kind, ref)
                    bucket = self._buckets.get(key)
                    if bucket is not None and key not in known:
                        rates[key] = bucket.rate * 60.0
        return rates

    async def _take(self, steps: list[Step], taken: list[str]) -> list[str]:
        """Take the steps in order (the gates taken in ``taken``); the keys of the paces
        passed that had no pace then."""
        unpaced: list[str] = []
        for step in steps:
            kind, key = step[0], step[1]
            if kind == "l":
                pace = self.paces.get(key)
                if pace is None or not pace.paced:
                    unpaced.append(key)
                else:
                    await pace.acquire()
            elif kind == "g":
                gate = self._gates.get(key)
                if gate is None:
                    gate = self._gates[key] = AdaptiveGate(int(step[2]))
                await gate.acquire()
                taken.append(key)
                self.peak[key] = max(self.peak[key], gate.in_flight)
            else:
                bucket = self._buckets.get(key)
                per_minute, capacity = float(step[2]), float(step[3])
                if bucket is None:
                    if per_minute <= 0:  # a limit the worker does not know, nor the broker
                        continue
                    bucket = self._buckets[key] = TokenBucket(per_minute, capacity=abs(capacity))
                    if capacity < 0:  # learned from the answers: the requests before spent some
                        bucket.charge(spent_before(bucket))
                elif 0 < per_minute / 60.0 < bucket.rate:
                    # a lower limit its provider stated since (the workers that have not seen
                    # it yet still send the config's)
                    bucket.rate, bucket.capacity = per_minute / 60.0, abs(capacity)
                await bucket.acquire(float(step[4]))
        return unpaced

    async def _claim(self, msg: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        result: dict[str, Any] | None = None
        claims = self.claims
        if claims is not None:
            try:
                role, ref, key = (str(k) for k in msg["k"])
                result = await claims(str(msg["t"]), role, ref, key, bool(msg.get("p")))
            except Exception:  # a claim it cannot read or serve: the worker sends the request
                result = None
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(json.dumps({"q": msg["q"], "r": result}, ensure_ascii=False).encode()
                         + b"\n")


def _message(line: bytes) -> dict[str, Any]:
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("not a message")
    return msg


def _keys(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("not a list of keys")
    return [str(k) for k in value]


def _steps(value: Any) -> list[Step]:
    if not isinstance(value, list):
        raise ValueError("not a list of steps")
    steps: list[Step] = []
    for step in value:
        if not isinstance(step, list) or len(step) < 2 or step[0] not in ("g", "b", "l"):
            raise ValueError(f"bad step {step!r}")
        if step[0] == "g" and len(step) < 3:
            raise ValueError(f"bad step {step!r}")
        if step[0] == "b" and len(step) < 5:
            raise ValueError(f"bad step {step!r}")
        steps.append([step[0], str(step[1]), *step[2:]])
    return steps


def _seconds(value: Any) -> float:
    seconds = float(value or 0.0)
    return seconds if 0.0 <= seconds < 86_400.0 else 0.0


class SlotClient:
    """A worker's side: asks the controller's broker for slots, on the worker's event loop.

    ``address`` is :attr:`SlotBroker.address`. Connects on first use. :meth:`acquire` returns
    True once the broker granted every step, False if the broker cannot be reached or was lost
    (the caller then keeps to its own share of the limits); :attr:`lost` says why.
    """

    def __init__(self, address: str) -> None:
        host, _, rest = address.partition(":")
        port, _, token = rest.partition(":")
        self._host, self._port, self._token = host, int(port), token
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        # request id -> (the caller's future, the gates it asked for: given back if the grant
        # comes after the caller gave up)
        self._pending: dict[int, tuple[asyncio.Future[bool], list[str]]] = {}
        self._claims: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self._ids = itertools.count(1)
        self.lost: str | None = None
        # tokens-a-minute rates the broker keeps that this worker's steps did not take (a
        # limit a provider stated to another worker): key -> tokens a minute
        self.rates: dict[str, float] = {}

    @property
    def usable(self) -> bool:
        return self.lost is None

    async def _connect(self) -> bool:
        if self._writer is not None or self.lost is not None:
            return self.lost is None
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None or self.lost is not None:
                return self.lost is None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port, limit=READ_LIMIT),
                    CONNECT_TIMEOUT_S,
                )
            except (OSError, asyncio.TimeoutError) as exc:
                self._lose(f"cannot reach the xdist controller's slot broker ({exc})")
                return False
            writer.write(json.dumps({"h": self._token}).encode() + b"\n")
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
            return True

    async def _read(self, reader: asyncio.StreamReader) -> None:
        why = "the xdist controller's slot broker closed the connection"
        try:
            while line := await reader.readline():
                msg = _message(line)
                if "q" in msg:
                    claim = self._claims.pop(int(msg["q"]), None)
                    if claim is not None and not claim.done():
                        result = msg.get("r")
                        claim.set_result(result if isinstance(result, dict) else None)
                    continue
                rates = msg.get("k")
                if isinstance(rates, dict):
                    self.rates.update({str(k): float(v) for k, v in rates.items()})
                fut, keys = self._pending.pop(int(msg["a"]), (None, []))
                if fut is not None and not fut.done():
                    fut.set_result(True)
                elif fut is not None:  # the caller gave up waiting: give the slots back
                    self.release(keys)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"the xdist controller's slot broker failed ({exc})"
        except asyncio.CancelledError:
            why = "closed"
            raise
        finally:
            self._lose(why, quiet=why == "closed")

    def _lose(self, why: str, *, quiet: bool = False) -> None:
        if self.lost is None:
            self.lost = why
            if not quiet:
                print(f"modelrollout: {why}; this worker keeps to its share of the limits",
                      file=sys.stderr)
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_result(False)
        self._pending.clear()
        for claim in self._claims.values():
            if not claim.done():
                claim.set_result(None)
        self._claims.clear()
        if self._writer is not None:
            self._writer.close()

    def _send(self, msg: dict[str, Any]) -> None:
        if self._writer is None or self.lost is not None:
            return
        try:
            self._writer.write(json.dumps(msg, ensure_ascii=False).encode() + b"\n")
        except (OSError, RuntimeError) as exc:
            self._lose(f"the xdist controller's slot broker is gone ({exc})")

    async def acquire(self, steps: Sequence[Step]) -> bool:
        """Take ``steps`` (in order) from the run's limits; False: keep to the worker's share."""
        if not await self._connect():
            return False
        i = next(self._ids)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        keys = [str(s[1]) for s in steps if s[0] == "g"]
        self._pending[i] = (fut, keys)
        self._send({"a": i, "s": list(steps)})
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.release(keys)  # granted just as the caller gave up
            # still pending: the reader gives the slots back when the grant comes
            raise

    async def claim(
        self, test_id: str, role: str, ref: str, key: str, ahead: bool
    ) -> dict[str, Any] | None:
        """Before sending a request of ``test_id``: the controller's result for it, if the
        controller sent it (:mod:`..headstart`); None: send it (also when the broker is lost)."""
        if not await self._connect():
            return None
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._claims[i] = fut
        self._send({"q": i, "t": test_id, "k": [role, ref, key], "p": ahead})
        try:
            return await fut
        finally:
            self._claims.pop(i, None)

    def release(self, keys: Sequence[str], reply: list[Any] | None = None) -> None:
        """Give the slots back; ``reply``: ``[model key, limited, stated rpm]`` of the reply
        that ended the attempt, for the model's pace."""
        if keys or reply is not None:
            msg: dict[str, Any] = {"r": list(keys)}
            if reply is not None:
                msg["o"] = reply
            self._send(msg)

    async def remembered(self, key: str, rpm: float) -> None:
        """The requests a minute the provider stated for a model in an earlier run, for the
        model's pace from its first request (unless a reply of this run stated one); nothing
        when the broker is out of reach (the client keeps it for its own pace then)."""
        if await self._connect():
            self._send({"m": [key, rpm]})

    def charge(self, amounts: list[list[Any]]) -> None:
        """A reply's usage: ``[[rate key, tokens], ...]`` more (or, negative, fewer) than its
        request took."""
        if amounts:
            self._send({"u": amounts})

    def penalize(self, key: str, seconds: float) -> None:
        self._send({"p": key, "c": seconds})

    def slow_down(self, key: str, seconds: float) -> None:
        self._send({"w": key, "c": seconds})

    async def aclose(self) -> None:
        self._lose("closed", quiet=True)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


__all__ = ["LIMIT_KINDS", "RUN_KEY", "SlotBroker", "SlotClient", "limit_key"]
