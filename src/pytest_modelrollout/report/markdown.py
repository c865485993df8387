"""The Markdown summary (GitHub-flavoured), also appended to ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_modelrollout.report import (
    CHECK_HEADERS,
    METRIC_HEADERS,
    _write_atomic,
    check_rows,
    crashed_workers,
    metric_rows,
    reason_messages,
    replay_counts,
    tolerance_sentence,
    workflows_of,
)

__all__ = ["EMOJI", "append_step_summary", "md_escape", "render_markdown", "write_markdown"]

EMOJI = {"READY": "✅", "BLOCKED": "⛔", "INCONCLUSIVE": "⚠️", "KILLED": "🛑"}

_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}#|~!])")


def md_escape(text: Any) -> str:
    """User text made inert in Markdown and HTML (one line; no markup, no tags, no tables)."""
    s = " ".join(str(text).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def _code(text: Any) -> str:
    """Inline code with a fence longer than any backtick run inside (content stays literal)."""
    s = " ".join(str(text).split()).replace("|", "¦")  # a pipe would split a table cell
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |"]
    out.append("| " + " | ".join([":--"] + ["--:"] * (len(headers) - 1)) + " |")
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return out


def render_markdown(summary: Mapping[str, Any]) -> str:
    verdict = str(summary.get("verdict") or "INCONCLUSIVE")
    emoji = EMOJI.get(verdict, "❔")
    lines = [f"## {emoji} Rollout verdict: {md_escape(verdict)}", ""]
    meta = [f"{_code(summary.get('stable', '—'))} → {_code(summary.get('candidate', '—'))}"]
    n = len(workflows_of(summary))
    meta.append(f"{n} workflow{'s' if n != 1 else ''}")
    if summary.get("duration_s") is not None:
        meta.append(f"{md_escape(summary['duration_s'])} s")
    if summary.get("plugin_version"):
        meta.append(f"pytest-modelrollout {md_escape(summary['plugin_version'])}")
    lines += [" · ".join(meta), ""]
    if summary.get("complete") is False:
        lines += [
            "> ⚠️ **Incomplete session**: the run was interrupted; the verdict covers only "
            "the calls made.",
            "",
        ]
    crashed = crashed_workers(summary)
    if crashed:
        lines += [f"> ⚠️ Crashed xdist workers: {', '.join(md_escape(w) for w in crashed)}", ""]
    for g in summary.get("unused_gates") or ():
        if isinstance(g, Mapping):
            run = ", ".join(md_escape(c) for c in g.get("checks_run") or ()) or "none"
            lines += [
                f"> ⚠️ Gate {md_escape(g.get('expr', '?'))} ({md_escape(g.get('source', '?'))})"
                f" was not applied: no test ran a check named {md_escape(g.get('check', '?'))}"
                f" (checks run: {run})",
                "",
            ]

    for name, wf in workflows_of(summary):
        wf_verdict = str(wf.get("verdict") or "INCONCLUSIVE")
        stable = wf.get("stable_model") or summary.get("stable") or "—"
        candidate = wf.get("candidate_model") or summary.get("candidate") or "—"
        lines.append(
            f"### {EMOJI.get(wf_verdict, '❔')} {md_escape(name)}: {md_escape(wf_verdict)} "
            f"({_code(stable)} → {_code(candidate)})"
        )
        lines.append("")
        reasons = reason_messages(wf)
        if reasons:
            lines += [f"- {md_escape(r)}" for r in reasons]
            lines.append("")
        tol = tolerance_sentence(wf)
        if tol and wf_verdict == "READY":
            lines += [f"_{md_escape(tol)}_", ""]
        lines += _table(METRIC_HEADERS, metric_rows(wf))
        lines.append("")
        checks = check_rows(wf)
        if checks:
            rows = [(md_escape(r[0]), *r[1:]) for r in checks]
            lines += _table(CHECK_HEADERS, rows)
            lines.append("")
        notes = replay_counts(wf)
        if notes:
            lines += [f"_{md_escape('; '.join(notes))}_", ""]
    if not workflows_of(summary):
        lines += ["_No workflow calls were recorded._", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_markdown(path: str | os.PathLike[str], summary: Mapping[str, Any]) -> None:
    _write_atomic(path, render_markdown(summary))


def append_step_summary(
    summary: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> str | None:
    """Append the Markdown summary to ``$GITHUB_STEP_SUMMARY`` when it is set.

    Returns the file appended to, or None when the variable is not set. An ``OSError`` (the
    file cannot be opened) propagates: the caller turns it into a warning line.
    """
    target = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY", "").strip()
    if not target:
        return None
    text = render_markdown(summary)
    with open(target, "a", encoding="utf-8") as fh:  # OSError propagates to the caller
        fh.write(text + "\n")
    return target
