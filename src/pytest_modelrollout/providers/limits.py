"""Limits on calls: a token bucket for rates (``rpm``, ``tpm``) and an adaptive concurrency
gate (``max_concurrency``, halved for a while after a 429). Plain asyncio, no HTTP stack: the
model clients use them, and so does the xdist controller's slot broker (:mod:`.slots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class TokenBucket:
    """An async token bucket: ``rate`` tokens per second, up to ``capacity`` banked."""

    def __init__(self, per_minute: float, capacity: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, self.rate)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._slow_until = 0.0
        self._lock = asyncio.Lock()

    def slow_down(self, until: float) -> None:
        self._slow_until = max(self._slow_until, until)

    def _effective_rate(self, now: float) -> float:
        return self.rate / 2.0 if now < self._slow_until else self.rate

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(max(amount, 0.0), self.capacity)
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                rate = self._effective_rate(now)
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * rate)
                self._last = now
                if self._tokens >= amount:
                    self._tokens -= amount
                    return
                await asyncio.sleep((amount - self._tokens) / rate)


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


__all__ = ["AdaptiveGate", "TokenBucket"]
