"""A one-line progress display for the ahead-of-time (prefetched) model calls.

Shown only on an interactive terminal: not when ``CI`` is set, not under ``-q``, not when
stdout is not a tty, never in xdist workers (``MODELROLLOUT_PROGRESS=1`` / ``0`` forces it on or
off). It never interleaves with pytest's own output: the line is redrawn with ``\\r`` only before
the first test starts (while the first test's results are on their way), and is then left as a
header line that pytest's first output line follows; a summary line is written at the end.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .prefetch import Prefetcher, PrefetchStats

PROGRESS_ENV = "MODELROLLOUT_PROGRESS"
REDRAW_S = 0.1


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

    def line(self, stats: PrefetchStats) -> str:
        total = max(self.total, stats.submitted)
        parts = [f"modelrollout: prefetching {stats.done}/{total} calls ahead"]
        parts.append(f"{stats.errors} error{'s' if stats.errors != 1 else ''}")
        parts.append(f"{stats.rate():.0f} calls/s")
        return ", ".join(parts)

    @staticmethod
    def summary_line(stats: PrefetchStats) -> str:
        return (
            f"modelrollout prefetch: {stats.submitted} calls sent ahead of their tests, "
            f"{stats.used} used, {stats.unused} unused (not recorded), "
            f"{stats.errors} error{'s' if stats.errors != 1 else ''}, {stats.rate():.0f} calls/s"
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


__all__ = ["PROGRESS_ENV", "Progress", "progress_wanted"]
