"""Reply, Pair and ToolCall: what a test gets back from ``ask``.

A :class:`Reply` carries the model's answer and the call's measurements. A provider failure
does not raise out of ``ask``: the reply has ``ok == False`` and ``error`` set, and every check
on it fails. Checks (``expect_*``) are implemented in :mod:`.checks`; each records one
:class:`~._records.CheckRecord` per reply through the reply's :class:`CheckContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import checks as _checks
from ._records import CheckRecord, Role
from .providers.base import ChatRequest, ToolCall

if TYPE_CHECKING:
    from .checks import Schema

__all__ = ["CheckContext", "Pair", "Reply", "ToolCall"]


@dataclass
class CheckContext:
    """Where a reply reports its check outcomes, and the identity of its call."""

    workflow: str
    role: Role
    test_id: str
    pair_id: str
    call_id: str
    record: Callable[[CheckRecord], None]
    strict: bool = False  # --rollout-strict: shared failures fail instead of xfail


def _noop(_: CheckRecord) -> None:
    return None


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    model: str = ""  # the model reference that was asked
    finish_reason: str | None = None
    fallback: bool = False
    error: str | None = None
    served_by: str | None = None
    attempts: int = 1
    source: str = "live"  # live | replay | shadow
    request: ChatRequest | None = field(default=None, repr=False)
    context: CheckContext | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def prompt(self) -> str:
        return self.request.prompt_text() if self.request is not None else ""

    def _record(self, check: str, passed: bool, detail: str | None, value: float | None) -> None:
        ctx = self.context
        if ctx is None:
            return
        ctx.record(
            CheckRecord(
                call_id=ctx.call_id,
                pair_id=ctx.pair_id,
                test_id=ctx.test_id,
                workflow=ctx.workflow,
                role=ctx.role,
                model=self.model,
                check=check,
                passed=passed,
                detail=detail,
                value=value,
            )
        )

    def summary(self, limit: int = 300) -> str:
        """One short description for failure messages."""
        if not self.ok:
            return f"[{self.model}] ERROR {self.error}"
        body = self.text
        if self.tool_calls:
            calls = ", ".join(f"{t.name}({t.raw_arguments or t.arguments})" for t in self.tool_calls)
            body = f"{body} tool_calls=[{calls}]" if body else f"tool_calls=[{calls}]"
        if len(body) > limit:
            body = body[: limit - 20] + f"... [{len(body)} chars]"
        return f"[{self.model}] {body!r}"

    # ------------------------------------------------------------------ checks
    # Each records one outcome (see pytest_modelrollout.checks for names and semantics) and
    # raises AssertionError when it fails. All return the reply, so checks chain.

    def expect_json(self, schema: Schema | None = None) -> Reply:
        """The reply is strict JSON (no fence, no prose, no trailing comma) matching ``schema``
        (a JSON Schema dict or a pydantic model). Also records ``json_lenient``."""
        __tracebackhide__ = True
        _checks.run_single(self, _checks.json_check(schema))
        return self

    def expect_tool_call(self, name: str | None = None, schema: Schema | None = None) -> Reply:
        """A tool call (to ``name``) to a declared tool, its arguments valid JSON matching
        ``schema`` (default: the tool's declared ``parameters`` in the request)."""
        __tracebackhide__ = True
        _checks.run_single(self, _checks.tool_call_check(name, schema))
        return self

    def expect_length(
        self,
        max_chars: int | None = None,
        max_words: int | None = None,
        min_chars: int | None = None,
    ) -> Reply:
        """Characters and/or words (each Han/kana character is a word) within bounds."""
        __tracebackhide__ = True
        _checks.run_single(self, _checks.length_check(max_chars, max_words, min_chars))
        return self

    def expect_language(self, lang: str) -> Reply:
        """``"en"``, ``"zh"``, ``"mixed"``, ``"same_as_prompt"`` or an ISO 639-1 code."""
        __tracebackhide__ = True
        _checks.run_single(self, _checks.language_check(lang))
        return self

    def expect_latency(self, max_ms: float) -> Reply:
        __tracebackhide__ = True
        _checks.run_single(self, _checks.latency_check(max_ms))
        return self

    def expect(self, predicate: Callable[[Reply], object], name: str | None = None) -> Reply:
        """Custom named check: ``predicate(reply)`` returns a bool (or None) or raises
        ``AssertionError`` with a message."""
        __tracebackhide__ = True
        _checks.run_single(self, _checks.custom_check(predicate, name))
        return self

    def structure(self) -> dict[str, Any]:
        """Deterministic structural summary for snapshot baselines (see :mod:`.structure`)."""
        from .structure import structure

        return structure(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [t.to_dict() for t in self.tool_calls],
            "latency_ms": self.latency_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "fallback": self.fallback,
            "error": self.error,
        }


@dataclass
class Pair:
    stable: Reply
    candidate: Reply

    def __iter__(self) -> Any:
        return iter((self.stable, self.candidate))

    # ------------------------------------------------------------------ checks
    # Each runs on both replies and is recorded for both. Candidate passes -> passes; candidate
    # fails where the stable passes -> RegressionError; both fail -> pytest.xfail (or
    # AssertionError with --rollout-strict). All return the pair, so checks chain.

    def expect_json(self, schema: Schema | None = None) -> Pair:
        __tracebackhide__ = True
        _checks.run_pair(self, _checks.json_check(schema))
        return self

    def expect_tool_call(self, name: str | None = None, schema: Schema | None = None) -> Pair:
        __tracebackhide__ = True
        _checks.run_pair(self, _checks.tool_call_check(name, schema))
        return self

    def expect_length(
        self,
        max_chars: int | None = None,
        max_words: int | None = None,
        min_chars: int | None = None,
    ) -> Pair:
        __tracebackhide__ = True
        _checks.run_pair(self, _checks.length_check(max_chars, max_words, min_chars))
        return self

    def expect_language(self, lang: str) -> Pair:
        __tracebackhide__ = True
        _checks.run_pair(self, _checks.language_check(lang))
        return self

    def expect_latency(self, max_ms: float) -> Pair:
        __tracebackhide__ = True
        _checks.run_pair(self, _checks.latency_check(max_ms))
        return self

    def expect(self, predicate: Callable[[Reply], object], name: str | None = None) -> Pair:
        __tracebackhide__ = True
        _checks.run_pair(self, _checks.custom_check(predicate, name))
        return self

    def expect_length_ratio(self, max: float) -> Pair:
        """``len(candidate.text) / len(stable.text) <= max``.

        Recorded as ``length_ratio`` for both replies: the candidate's record carries the ratio
        (``value``); the stable's is the baseline and passes trivially (value 1.0) whenever the
        stable answered, so both models have a rate over the same pairs and every failure is a
        candidate regression. The stable's pass rate on this check is its answer rate, not a
        quality figure. Without a stable reply there is no baseline: both fail (a shared
        failure, never a regression). See :func:`.checks.length_ratio_outcomes`.
        """
        _checks.run_length_ratio(self, max)
        return self
