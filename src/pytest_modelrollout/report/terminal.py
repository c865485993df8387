"""The terminal summary: what ``pytest`` prints under "rollout readiness" and
``modelrollout show`` prints.

Tables are made with tabulate. Chinese (and other wide) text is aligned by display width:
tabulate does that itself when ``wcwidth`` is installed; otherwise a small East-Asian-width
measure from the standard library stands in while our tables are formatted.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tabulate as _tabulate_mod
from tabulate import tabulate

from pytest_modelrollout.report import (
    CHECK_HEADERS,
    METRIC_HEADERS,
    check_rows,
    crashed_workers,
    metric_rows,
    reason_messages,
    replay_counts,
    tolerance_sentence,
    workflows_of,
)

__all__ = ["display_width", "render_terminal"]

TABLE_FORMAT = "simple"
INDENT = "  "


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal (wide East Asian characters take two)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


class _WidthShim:
    """The one function tabulate uses from ``wcwidth``."""

    @staticmethod
    def wcswidth(text: str) -> int:
        return display_width(text)

    @staticmethod
    def wcwidth(ch: str) -> int:
        return display_width(ch)


@contextlib.contextmanager
def _wide_chars() -> Iterator[None]:
    mod: Any = _tabulate_mod
    if getattr(mod, "wcwidth", None) is not None or not hasattr(mod, "WIDE_CHARS_MODE"):
        yield  # real wcwidth installed (or an unknown tabulate): nothing to do
        return
    saved_mode = mod.WIDE_CHARS_MODE
    mod.wcwidth, mod.WIDE_CHARS_MODE = _WidthShim, True
    try:
        yield
    finally:
        mod.wcwidth, mod.WIDE_CHARS_MODE = None, saved_mode


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    aligns = ["left"] + ["right"] * (len(headers) - 1)
    with _wide_chars():
        text = tabulate(
            [list(r) for r in rows],
            headers=list(headers),
            tablefmt=TABLE_FORMAT,
            colalign=aligns,
            disable_numparse=True,
        )
    return [INDENT + line.rstrip() for line in text.splitlines()]


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def render_terminal(summary: Mapping[str, Any], *, verbose: bool = False) -> list[str]:
    """Lines of the terminal summary. The last line is ``rollout verdict: <VERDICT>``."""
    lines: list[str] = []
    verdict = _one_line(summary.get("verdict") or "INCONCLUSIVE")

    if summary.get("complete") is False:
        lines.append(
            "incomplete session: the run was interrupted; the verdict covers only the calls made"
        )
    crashed = crashed_workers(summary)
    if crashed:
        lines.append(f"crashed xdist workers: {', '.join(_one_line(w) for w in crashed)}")
    if verbose:
        meta = [
            f"stable {_one_line(summary.get('stable', '—'))}",
            f"candidate {_one_line(summary.get('candidate', '—'))}",
        ]
        if summary.get("decision"):
            meta.append(f"decision {_one_line(summary['decision'])}")
        if summary.get("confidence") is not None:
            meta.append(f"confidence {_one_line(summary['confidence'])}")
        if summary.get("duration_s") is not None:
            meta.append(f"{_one_line(summary['duration_s'])} s")
        if summary.get("plugin_version"):
            meta.append(f"pytest-modelrollout {_one_line(summary['plugin_version'])}")
        lines.append(" | ".join(meta[:2]))
        if meta[2:]:
            lines.append(" | ".join(meta[2:]))
        gates = summary.get("gates")
        if isinstance(gates, (list, tuple)) and gates:
            exprs = []
            for g in gates:
                if isinstance(g, Mapping):
                    src = g.get("source")
                    exprs.append(f"{_one_line(g.get('expr', '?'))}" + (f" ({src})" if src else ""))
            lines.append("gates: " + ", ".join(exprs))

    for g in summary.get("unused_gates") or ():
        if isinstance(g, Mapping):
            run = ", ".join(_one_line(c) for c in g.get("checks_run") or ()) or "none"
            lines.append(
                f"gate {_one_line(g.get('expr', '?'))} ({_one_line(g.get('source', '?'))}) was "
                f"not applied: no test ran a check named {_one_line(g.get('check', '?'))!r} "
                f"(checks run: {run})"
            )

    workflows = workflows_of(summary)
    if not workflows:
        lines.append("no workflow calls were recorded")
    for name, wf in workflows:
        if lines:
            lines.append("")
        wf_verdict = _one_line(wf.get("verdict") or "INCONCLUSIVE")
        stable = _one_line(wf.get("stable_model") or summary.get("stable") or "—")
        candidate = _one_line(wf.get("candidate_model") or summary.get("candidate") or "—")
        lines.append(f"workflow {_one_line(name)}: {wf_verdict}  ({stable} → {candidate})")
        lines.extend(_table(METRIC_HEADERS, metric_rows(wf)))
        checks = check_rows(wf)
        if checks:
            lines.append("")
            lines.extend(_table(CHECK_HEADERS, [tuple(_one_line(c) for c in r) for r in checks]))
        notes = [f"{INDENT}{note}" for note in replay_counts(wf)]
        notes += [f"{INDENT}- {msg}" for msg in reason_messages(wf)]
        tol = tolerance_sentence(wf)
        if tol and wf_verdict == "READY":
            notes.append(f"{INDENT}{_one_line(tol)}")
        if notes:
            lines.append("")
            lines.extend(notes)

    if lines:
        lines.append("")
    lines.append(f"rollout verdict: {verdict}")
    return lines
