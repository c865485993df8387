"""Limits on calls: a token bucket for rates (``rpm``, ``tpm``), an adaptive concurrency
gate (``max_concurrency``, halved for a while after a 429) and a pace learned from what a
provider says of its quota: the limit its replies state, its 429s (:class:`LearnedPace`).
Plain asyncio, no HTTP stack: the model clients use them, and so does the xdist controller's
slot broker (:mod:`.slots`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import time
from collections.abc import Mapping

BACKOFF_SCALE_ENV = "MODELROLLOUT_BACKOFF_SCALE"


def backoff_scale(env: Mapping[str, str] | None = None) -> float:
    """``MODELROLLOUT_BACKOFF_SCALE``: multiplies every wait after a 429 or an error (tests)."""
    env = os.environ if env is None else env
    raw = env.get(BACKOFF_SCALE_ENV, "")
    try:
        value = float(raw) if raw.strip() else 1.0
    except ValueError:
        return 1.0
    return value if math.isfinite(value) and value >= 0 else 1.0


class TokenBucket:
    """An async token bucket: ``rate`` tokens per second, up to ``capacity`` banked. A taker
    of more than ``capacity`` waits for a full bucket and leaves it owing the rest."""

    def __init__(self, per_minute: float, capacity: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, self.rate)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._slow_until = 0.0
        self._lock = asyncio.Lock()
        self._given: asyncio.Event | None = None  # set when tokens come back to a waiter

    def slow_down(self, until: float) -> None:
        self._slow_until = max(self._slow_until, until)

    def refund(self, amount: float) -> None:
        """Give back tokens taken for a request that did not go out."""
        self._tokens = min(self.capacity, self._tokens + max(0.0, amount))
        self._wake()

    def charge(self, amount: float) -> None:
        """Take ``amount`` more (a negative amount gives some back) once what a request cost
        is known; the bucket may owe up to a minute's worth."""
        floor = -max(self.capacity, self.rate * 60.0)
        self._tokens = max(floor, min(self.capacity, self._tokens - amount))
        if amount < 0:
            self._wake()

    def _wake(self) -> None:
        # (on the event loop of the waiter: the clients' and the broker's calls run on theirs)
        if self._given is not None:
            self._given.set()

    def _effective_rate(self, now: float) -> float:
        return self.rate / 2.0 if now < self._slow_until else self.rate

    async def acquire(self, amount: float = 1.0) -> None:
        amount = max(amount, 0.0)
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                rate = self._effective_rate(now)
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * rate)
                self._last = now
                need = min(amount, self.capacity)
                if self._tokens >= need:
                    self._tokens -= amount
                    return
                # until the tokens are there, or some come back sooner (an answer that used
                # fewer than its request took)
                given = self._given = self._given or asyncio.Event()
                given.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(given.wait(), (need - self._tokens) / rate)


class AdaptiveGate:
    """At most ``limit`` holders; after :meth:`penalize` the limit is halved for a while."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.in_flight = 0
        self._reduced = self.limit
        self._reduced_until = 0.0
        self._cond = asyncio.Condition()
        self._waiting = 0  # callers inside acquire() that found no free slot

    def current_limit(self) -> int:
        return self._reduced if time.monotonic() < self._reduced_until else self.limit

    def penalize(self, cooldown_s: float) -> None:
        now = time.monotonic()
        self._reduced = max(1, self.current_limit() // 2)
        self._reduced_until = max(self._reduced_until, now + cooldown_s)

    async def acquire(self) -> None:
        # a free slot and nobody queued: take it (one event loop, so no await between the
        # check and the increment); otherwise queue behind the others
        if not self._waiting and self.in_flight < self.current_limit():
            self.in_flight += 1
            return
        self._waiting += 1
        try:
            async with self._cond:
                while self.in_flight >= self.current_limit():
                    now = time.monotonic()
                    timeout = self._reduced_until - now if now < self._reduced_until else None
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), timeout)
                self.in_flight += 1
        finally:
            self._waiting -= 1

    async def wake(self) -> None:
        """Wake as many waiters as there are free slots (a wake-up that went to a waiter
        cancelled before it ran is not lost)."""
        free = self.current_limit() - self.in_flight
        if self._waiting and free > 0:
            async with self._cond:
                self._cond.notify(free)

    async def release(self) -> None:
        self.in_flight -= 1
        if not self._waiting:
            return
        async with self._cond:
            # wake only as many waiters as there are free slots: notify_all() woke every
            # waiter on every release (quadratic with thousands of queued calls)
            self._cond.notify(max(1, self.current_limit() - self.in_flight))


class LearnedPace:
    """The pace of a model whose provider turns requests away (HTTP 429) for going over a
    quota the config does not state (no ``rpm``, or a key shared with other traffic): halving
    the concurrency does not help there, as short requests at concurrency 1 still go over a
    low requests-per-minute quota.

    A provider that states its limit in its replies' headers (``x-ratelimit-limit-requests``
    from OpenAI and the APIs that copy its headers, ``anthropic-ratelimit-requests-limit``:
    requests per minute; OpenAI and Anthropic send them with every answer) sets the pace at
    :attr:`STATED_SHARE` of it from its first answer that says so, before any 429; the pace
    never rises above it.

    It watches the replies of the last :attr:`WINDOW_S` seconds to requests sent since the pace
    last changed. Once 429s are more than
    :attr:`SHARE` of them (and at least :attr:`MIN_429`), the model is paced, one change a
    second at most:

    - at :attr:`STATED_SHARE` of the stated limit, when that is below the pace so far;
    - else the first time at :attr:`CUT` x the rate the provider admitted (the replies that
      were not 429s), and after that at :attr:`CUT` x the pace, or the rate sent if lower
      (:attr:`HARD_CUT` x when most replies are 429s). The rate it was cut from is remembered
      as too fast (falling by :attr:`CUT` at most from one cut to the next).

    After :attr:`CALM_S` seconds without such a share, while requests go out at about the pace
    (nothing else holds them back), the pace rises each second: by :attr:`RAISE` up to
    :attr:`NEAR` x the rate last found too fast, by :attr:`PROBE` beyond it. A 429 now and then
    (a provider's hiccup, a request just over the quota) changes nothing. ``scale``
    (``MODELROLLOUT_BACKOFF_SCALE``) divides the waits like every other back-off; 0: no pacing.
    """

    WINDOW_S = 2.0
    SHARE = 0.1
    MIN_429 = 3
    CUT = 0.8
    HARD_CUT = 0.5
    RAISE = 1.3
    NEAR = 0.9
    PROBE = 1.05
    CALM_S = 1.0
    BINDING = 0.8  # the pace rises only while requests go out at about that pace
    STATED_SHARE = 0.95  # of a stated limit: room for the provider to recover from a burst
    MIN_PER_S = 1.0 / 60.0

    def __init__(self, scale: float = 1.0, workers: int = 1) -> None:
        self.scale = scale
        # the processes that keep to a stated limit each on a pace of their own (the xdist
        # workers without the controller's broker): each takes its share of it
        self.workers = max(1, workers)
        self.per_s: float | None = None  # the pace, requests per second (None: not paced)
        self.stated_per_s: float | None = None  # the limit the provider stated
        self.too_fast: float | None = None  # the rate the pace was last cut from
        self.limited = 0  # 429s seen
        self.cuts = 0
        self._replies: collections.deque[tuple[float, bool]] = collections.deque()
        self._n429 = 0  # 429s among _replies
        self._first = -1.0
        self._changed = 0.0
        self._crowded = 0.0  # the last time the 429s were over SHARE
        self._bucket: TokenBucket | None = None
        self._remembered = False  # the pace is a limit stated in an earlier run

    @property
    def paced(self) -> bool:
        return self._bucket is not None

    def remember(self, stated_rpm: float, now: float) -> None:
        """The limit the provider stated in an earlier run: kept from the first request, until
        a reply of this run states one (higher or lower)."""
        if stated_rpm > 0:
            self.stated_per_s = stated_rpm / 60.0
            self._set(self._under_stated(self.stated_per_s), now)
            self._remembered = True

    def reply(self, now: float, limited: bool, stated_rpm: float | None = None,
              age: float = 0.0) -> None:
        """A reply came to a request sent ``age`` seconds ago: ``limited`` if it was a 429
        (``stated_rpm``: the limit it states)."""
        if limited:
            self.limited += 1
        if now - age < self._changed:
            # sent before the pace last changed: no evidence for or against it (the retries of
            # a burst's 429s would cut the pace just set)
            return
        if self._first < 0:
            self._first = now
        replies = self._replies
        replies.append((now, limited))
        while replies[0][0] < now - self.WINDOW_S:
            if replies.popleft()[1]:
                self._n429 -= 1
        if stated_rpm is not None and stated_rpm > 0:
            self.stated_per_s = stated_rpm / 60.0
            below = self._under_stated(self.stated_per_s)
            if not limited and (self.per_s is None or self.per_s > below or (
                    self._remembered and self.per_s != below)):
                # the provider says its limit with its answers (OpenAI's and Anthropic's do):
                # keep under it before the first 429 (and the one it states now rather than
                # an earlier run's)
                self._set(below, now)
            self._remembered = False
        if limited:
            self._n429 += 1
            if self._n429 >= self.MIN_429 and self._n429 > self.SHARE * len(replies):
                self._crowded = now
                if now - self._changed >= 1.0:
                    self._cut(now)
        elif (
            self.per_s is not None
            and now - self._crowded >= self.CALM_S
            and now - self._changed >= 1.0
            and self._rate(now, admitted=True) >= self.BINDING * self.per_s
        ):
            self._raise(now, self.per_s)

    def _cut(self, now: float) -> None:
        stated = self.stated_per_s
        if stated is not None and (self.per_s is None or self._under_stated(stated) < self.per_s):
            self.cuts += 1
            self._set(self._under_stated(stated), now)
            return
        if self.per_s is None:  # the first time: what the provider let through
            base = self._rate(now, admitted=True)
            if base <= 0:
                return  # nothing got through: retry-after and the halved concurrency only
            cut = self.CUT
        else:  # too fast at this pace, or at the rate sent if lower
            base = min(self.per_s, self._rate(now))
            cut = self.HARD_CUT if 2 * self._n429 > len(self._replies) else self.CUT
        self.cuts += 1
        # a cut soon after another may come of what the last burst still owes (a provider
        # that counts the requests it turned away): the rate found too fast falls by CUT at
        # most, so the pace rises back quickly to near it
        previous = self.too_fast
        self.too_fast = base if previous is None else max(base, self.CUT * previous)
        self._set(max(self.MIN_PER_S, cut * base), now)

    def _raise(self, now: float, pace: float) -> None:
        near = self.NEAR * self.too_fast if self.too_fast is not None else None
        raised = pace * (self.RAISE if near is None or pace < near else self.PROBE)
        if near is not None and pace < near:
            raised = min(raised, near)
        if self.stated_per_s is not None:
            raised = min(raised, max(pace, self._under_stated(self.stated_per_s)))
        if raised > pace:
            self._set(raised, now)

    def _under_stated(self, stated_per_s: float) -> float:
        """The pace that keeps this process's share under a stated limit."""
        return max(self.MIN_PER_S, self.STATED_SHARE * stated_per_s / self.workers)

    def _rate(self, now: float, admitted: bool = False) -> float:
        """Replies a second over the window (``admitted``: those that were not 429s)."""
        span = max(1.0, min(self.WINDOW_S, now - self._first))
        return (len(self._replies) - (self._n429 if admitted else 0)) / span

    def _set(self, per_s: float, now: float) -> None:
        self.per_s = per_s
        self._changed = now
        # what came before is no evidence against the new pace: the 429s of a burst sent
        # before the first cut would cut it again a second later
        self._replies.clear()
        self._n429 = 0
        self._first = now
        if self.scale <= 0:
            return
        if self._bucket is None:
            self._bucket = TokenBucket(per_s * 60.0 / self.scale, capacity=1.0)
        else:
            self._bucket.rate = per_s / self.scale

    async def acquire(self) -> None:
        """Wait for this request's turn under the pace (at once when not paced)."""
        if self._bucket is not None:
            await self._bucket.acquire(1.0)

    def describe(self, ref: str) -> str:
        """One line for the run's summary (empty when no 429 came)."""
        if not self.limited:
            return ""
        said = (f"modelrollout: {ref}: its provider turned {self.limited} "
                f"request{'s' if self.limited != 1 else ''} away with HTTP 429 (rate limit; "
                "retried as max_retries allows)")
        if self.per_s is None:
            return said
        said += (f"; the run kept to a pace from then on, {self.per_s * 60:.0f} requests a "
                 "minute at the end")
        if self.stated_per_s is not None:
            rpm = max(1, int(self.STATED_SHARE * self.stated_per_s * 60))
            return (f"{said} (its provider states {self.stated_per_s * 60:g} a minute): rpm = "
                    f"{rpm} in its model config keeps to it from the start")
        return (f"{said}: set rpm in its model config to the provider's limit for this key and "
                "the run keeps to it from the start")


__all__ = ["BACKOFF_SCALE_ENV", "AdaptiveGate", "LearnedPace", "TokenBucket", "backoff_scale"]
