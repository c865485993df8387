"""A one-line progress display for the ahead-of-time (prefetched) model calls.

Shown only on an interactive terminal: not when ``CI`` is set, not under ``-q``, not when
stdout is not a tty, never in xdist workers (``MODELROLLOUT_PROGRESS=1`` / ``0`` forces it on or
off). It never mixes with pytest's own output:

* before the first test starts (while the first test's results are on their way) the line is
  redrawn with ``\\r`` and then left as a header line that pytest's first output line follows;
* when a test has waited more than :data:`WAIT_SHOW_S` for its prefetched results, the same
  counts are drawn after pytest's progress dots on the current line, and erased (backspaces)
  when the results arrive: pytest's line is left exactly as it was;
* a summary line is written at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .prefetch import Prefetcher, PrefetchStats

PROGRESS_ENV = "MODELROLLOUT_PROGRESS"
REDRAW_S = 0.1
WAIT_SHOW_S = 1.0  # a test waiting this long for its results shows the counts while it waits
WAIT_REDRAW_S = 0.25
MIN_STATUS_WIDTH = 24  # less room than this left on pytest's line: show nothing


# wait_some(pending, timeout) -> the futures still pending
WaitSome = Callable[
    [Sequence["concurrent.futures.Future[Any]"], "float | None"],
    Sequence["concurrent.futures.Future[Any]"],
]


def _wait_some(
    pending: Sequence[concurrent.futures.Future[Any]], timeout: float | None
) -> Sequence[concurrent.futures.Future[Any]]:
    return list(concurrent.futures.wait(pending, timeout=timeout)[1])


def progress_wanted(config: pytest.Config) -> bool:
    if hasattr(config, "workerinput"):
        return False
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if os.environ.get("CI"):
        return False
    if int(config.getoption("verbose") or 0) < 0:
        return False
    tr = config.pluginmanager.getplugin("terminalreporter")
    return bool(tr is not None and getattr(tr, "isatty", False))


class Progress:
    """Counts live in :class:`PrefetchStats`; this only renders them."""

    def __init__(self, config: pytest.Config, total: int) -> None:
        self.config = config
        self.total = total
        self.tr: Any = config.pluginmanager.getplugin("terminalreporter")
        self.stats: PrefetchStats | None = None  # set by the prefetcher

    def line(self, stats: PrefetchStats) -> str:
        total = max(self.total, stats.submitted)
        parts = [f"modelrollout: prefetching {stats.done}/{total} calls ahead"]
        parts.append(f"{stats.errors} error{'s' if stats.errors != 1 else ''}")
        parts.append(f"{stats.rate():.0f} calls/s")
        return ", ".join(parts)

    @staticmethod
    def summary_line(
        stats: PrefetchStats, *, rate: float | None = None, workers: int = 0
    ) -> str:
        """The counts at the end of the run (``workers``: added up over that many xdist
        workers, ``rate`` theirs together)."""
        rate = stats.rate() if rate is None else rate
        who = f" ({workers} xdist workers)" if workers else ""
        return (
            f"modelrollout prefetch{who}: {stats.submitted} calls sent ahead of their tests, "
            f"{stats.used} used, {stats.unused} unused (not recorded), "
            f"{stats.errors} error{'s' if stats.errors != 1 else ''}, {rate:.0f} calls/s"
        )

    def show_until_first(self, prefetcher: Prefetcher, first_test: str) -> None:
        """Redraw the line until the first test's results are in (it would wait for them
        anyway), then leave it in place; pytest's next output starts on a new line."""
        if self.tr is None:
            return
        pending = prefetcher.pending(first_test)
        while pending:
            self.tr.rewrite(self.line(prefetcher.stats), erase=True)
            _, not_done = concurrent.futures.wait(pending, timeout=REDRAW_S)
            pending = list(not_done)
        self.tr.rewrite(self.line(prefetcher.stats), erase=True)

    # -- while a test waits --------------------------------------------------------------------
    def wait(
        self,
        futures: Sequence[concurrent.futures.Future[Any]],
        wait_some: WaitSome | None = None,
    ) -> None:
        """Wait for ``futures``; after :data:`WAIT_SHOW_S`, show the counts on pytest's current
        line until they are done, then erase them. Returns when all are done. ``wait_some(
        pending, timeout)`` waits and returns those still pending (``Prefetcher.wait``, which
        keeps the calls behind flowing)."""
        wait_some = wait_some or _wait_some
        pending = [f for f in futures if not f.done()]
        if not pending:
            return
        show_at = time.monotonic() + WAIT_SHOW_S
        shown = ""
        try:
            while pending:
                now = time.monotonic()
                timeout = WAIT_REDRAW_S if now >= show_at else show_at - now
                pending = list(wait_some(pending, timeout))
                if pending and time.monotonic() >= show_at and self.stats is not None:
                    shown = self._draw(shown, self._status(self.stats))
        finally:
            if shown:
                self._draw(shown, "")

    def _status(self, stats: PrefetchStats) -> str:
        total = max(self.total, stats.submitted)
        return (
            f" (waiting for replies; modelrollout: {stats.done}/{total} calls done, "
            f"{stats.errors} error{'s' if stats.errors != 1 else ''}, {stats.rate():.0f} calls/s)"
        )

    def _draw(self, previous: str, text: str) -> str:
        """Replace ``previous`` (drawn by this method) with ``text`` after pytest's output on
        the current line, outside pytest's capture, without changing what pytest knows of the
        line. Returns what is now drawn ("" when there is no room or no terminal)."""
        tw = getattr(self.tr, "_tw", None)
        out = getattr(tw, "_file", None)
        if tw is None or out is None:
            return ""
        room = int(tw.fullwidth) - int(tw.width_of_current_line) - 1
        if text and room < MIN_STATUS_WIDTH:
            text = ""
        text = text[: max(room, 0)]
        n = len(previous)
        # back over the previous status, blank it, back again, then the new one (ASCII only:
        # one column per character)
        data = ("\b" * n + " " * n + "\b" * n if n else "") + text
        if not data:
            return ""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        guard = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        try:
            with guard:
                out.write(data)
                out.flush()
        except (OSError, ValueError):
            return ""
        return text


__all__ = ["PROGRESS_ENV", "Progress", "progress_wanted"]
