"""A background asyncio event loop in a daemon thread, driven from synchronous code.

The plugin's fixtures are synchronous; all HTTP is async on one loop (one pooled client per
model). :class:`Runner` owns that loop::

    runner = Runner()
    result = runner.run(client.call(request), timeout=60)   # blocks this thread
    future = runner.submit(client.call(request))           # concurrent.futures.Future
    runner.close()                                          # closes registries, stops the loop

This module does not import pytest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


# a call takes several turns of the loop before its request is written (its model's slot,
# its tokens and rate, a connection of the pool): settle() waits this many turns behind them
SETTLE_TURNS = 32


async def _turns() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class _AsyncClosable(Protocol):
    async def aclose(self) -> None: ...


class Runner:
    """One event loop in a daemon thread. Safe to create and close repeatedly."""

    def __init__(self, name: str = "modelrollout-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._closables: list[_AsyncClosable] = []
        self._closed = False
        self._lock = threading.Lock()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self._thread.start()
        ready.wait()

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            # join the threads of asyncio.to_thread(): close() alone leaves them to finish
            # (and be collected) on their own, after the session
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def register(self, closable: _AsyncClosable) -> None:
        """Close ``closable`` (e.g. a ModelRegistry) on :meth:`close`, before the loop stops."""
        with self._lock:
            self._closables.append(closable)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the loop; return a concurrent Future for its result."""
        if self._closed:
            coro.close()
            raise RuntimeError("runner is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def settle(self, timeout: float) -> bool:
        """Wait until the loop has run what was submitted before until each coroutine has to
        wait for something other than the loop's next turn (a call: its request written, or
        queued behind a limit), for up to :data:`SETTLE_TURNS` turns of the loop; at most
        ``timeout`` seconds. False on timeout (or when closed, or called from the loop).

        For a thread about to keep the GIL for a while (a C extension loading a model holds it
        through the whole call): without this, the loop would get to the calls only after it.
        """
        if self._closed or self.in_loop_thread():
            return False
        # its first step is queued behind theirs (the loop runs callbacks in order), and each
        # of its turns behind their next steps: with one turn, settle() returned when a
        # call had taken its slot, before it wrote its request (the first 16 requests of a
        # suite went out over 30-85 ms, the language model's load among them; now 4-9 ms)
        future = asyncio.run_coroutine_threadsafe(_turns(), self._loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return False
        return True

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result (from a non-loop thread).

        On timeout the coroutine is cancelled and :class:`TimeoutError` is raised.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("Runner.run() called from the runner's own loop thread")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None
        except KeyboardInterrupt:
            future.cancel()
            raise

    async def _shutdown(self) -> None:
        with self._lock:
            closables = list(self._closables)
            self._closables.clear()
        for closable in closables:
            with contextlib.suppress(Exception):
                await closable.aclose()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def close(self, timeout: float = 10.0) -> None:
        """Close registered registries, cancel what is left, stop the loop, join the thread."""
        if self._closed:
            return
        if self.in_loop_thread():
            raise RuntimeError("Runner.close() called from the runner's own loop thread")
        self._closed = True
        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["Runner"]
