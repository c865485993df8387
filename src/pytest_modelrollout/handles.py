"""What the fixtures hand to tests: ``rollout`` (a pair of models) and ``stable``/``candidate``.

The handles build the canonical request, ask the session to make the call(s), turn results into
:class:`Reply` objects and hand one :class:`CallRecord` per call to the session. They never
reach into the session's state beyond its narrow ``call_many`` / ``add_call`` / ``add_check``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._exceptions import CassetteError, KilledError
from ._records import Role
from .providers.base import CallResult, ChatRequest
from .replies import CheckContext, Pair, Reply
from .session import call_record, reply_fields

# in a first ask's arguments as prefetch learns them from a test: it asked its case's prompt
# string, not the case (see prefetch.guessed_case_prompt)
CASE_PROMPT = "case_prompt"
# and: it asked the planned prompt string (or its case's) with text before and after it, the
# same for each test (Customer: {question}), as (before, after)
WRAPPED = "wrapped"

if TYPE_CHECKING:
    from .session import RolloutSession


def response_format_for(value: Any) -> dict[str, Any] | None:
    """Accept an OpenAI response_format dict, a JSON Schema dict or a pydantic model class."""
    if value is None:
        return None
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        schema = value.model_json_schema()
        return {
            "type": "json_schema",
            "json_schema": {"name": value.__name__, "schema": schema},
        }
    if isinstance(value, dict):
        if value.get("type") in ("json_object", "json_schema", "text"):
            return value
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    if value == "json":
        return {"type": "json_object"}
    raise TypeError(
        "response_format must be a pydantic model, a JSON Schema dict, an OpenAI response_format "
        f"dict or 'json', not {type(value).__name__}"
    )


@dataclass
class TestContext:
    """Per-test state shared by the rollout/stable/candidate fixtures of one test."""

    __test__ = False  # not a pytest test class

    session: RolloutSession
    test_id: str
    workflow: str
    stable_ref: str
    candidate_ref: str
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    test_dir: Path | None = None  # cassettes live beside the test file
    # the prompt string / message list prefetch plans the test's first ask with, if any
    planned_prompt: Any = None
    # when its case is planned as a guess, the case's prompt string (the test may ask that)
    guessed_case_prompt: str | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"stable": 0, "candidate": 0})
    replies: list[tuple[Role, Reply]] = field(default_factory=list)

    def ref(self, role: Role) -> str:
        return self.stable_ref if role == "stable" else self.candidate_ref

    def build_request(
        self,
        prompt: Any,
        *,
        system: str | None,
        tools: Sequence[dict[str, Any]] | None,
        response_format: Any,
        params: dict[str, Any],
    ) -> tuple[ChatRequest, Any]:
        case = None
        if hasattr(prompt, "request_messages") and hasattr(prompt, "id"):
            case = prompt
            messages = list(case.request_messages())
            if system is None:
                system = getattr(case, "system", None)
        elif isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
            messages = [dict(m) for m in prompt]
        else:
            raise TypeError(
                "ask() takes a prompt string, a list of chat messages or a case from cases(), "
                f"not {type(prompt).__name__}"
            )
        if not messages:
            raise ValueError("ask() needs at least one message")
        sys_msgs = [m for m in messages if m.get("role") == "system"]
        if sys_msgs and system is None:
            if all(isinstance(m.get("content"), str) for m in sys_msgs):
                system = "\n\n".join(str(m.get("content", "")) for m in sys_msgs)
                messages = [m for m in messages if m.get("role") != "system"]
            else:
                # a system prompt in parts (a prompt-cache breakpoint on one of them, as a
                # team sends it in production) goes as it is, each wire translating it; it
                # replaces the workflow's default system prompt as a text one does
                system = ""
        else:
            messages = [m for m in messages if m.get("role") != "system"]
        merged = {**self.params, **params}
        req = ChatRequest(
            messages=messages,
            system=system if system is not None else self.system,
            tools=[dict(t) for t in tools] if tools is not None else self.tools,
            params=merged,
            response_format=response_format_for(response_format),
        )
        # normalise through JSON so keys, tuples and numbers hash identically everywhere
        req = ChatRequest(**json.loads(json.dumps(req.__dict__, default=str)))
        return req, case

    def make_reply(
        self,
        role: Role,
        pair_id: str,
        request: ChatRequest,
        outcome: tuple[CallResult, str] | BaseException,
        case: Any,
    ) -> Reply:
        ref = self.ref(role)
        if isinstance(outcome, CassetteError):
            raise outcome
        if isinstance(outcome, BaseException):
            raise outcome
        result, source = outcome
        rec = call_record(
            result,
            source=source,
            pair_id=pair_id,
            test_id=self.test_id,
            workflow=self.workflow,
            role=role,
            model=ref,
            case_id=getattr(case, "id", None),
        )
        self.session.add_call(rec)
        reply = Reply(
            model=ref,
            request=request,
            source=source,
            context=CheckContext(
                workflow=self.workflow,
                role=role,
                test_id=self.test_id,
                pair_id=pair_id,
                call_id=rec.call_id,
                record=self.session.add_check,
                strict=self.session.strict,
            ),
            **reply_fields(result),
        )
        self.replies.append((role, reply))
        return reply

    def _wrapped(self, prompt: Any) -> tuple[bool, tuple[str, str]] | None:
        """When ``prompt`` is a string with the planned prompt string (or the guessed case's
        prompt) in it once, with text around it: whether it is the case's prompt, and the text
        before and after it. None otherwise."""
        inner = self.guessed_case_prompt or self.planned_prompt
        if type(prompt) is not str or type(inner) is not str or not inner:
            return None
        if prompt == inner or prompt.count(inner) != 1:
            return None
        before, after = prompt.split(inner)
        return self.guessed_case_prompt is not None, (before, after)

    def next_pair_id(self, roles: Sequence[Role]) -> str:
        index = max(self.counters[r] for r in roles)
        for r in roles:
            self.counters[r] = index + 1
        return f"{self.test_id}#{index}"

    def ask(self, roles: Sequence[Role], prompt: Any, kwargs: dict[str, Any]) -> list[Reply]:
        system = kwargs.pop("system", None)
        tools = kwargs.pop("tools", None)
        response_format = kwargs.pop("response_format", None)
        request, case = self.build_request(
            prompt, system=system, tools=tools, response_format=response_format, params=kwargs
        )
        first_ask = None
        case_prompt = (
            case is None and self.guessed_case_prompt is not None
            and prompt == self.guessed_case_prompt
        )
        planned = case is not None or case_prompt or (
            self.planned_prompt is not None and prompt == self.planned_prompt
        )
        first = not any(self.counters.values())  # the test's first ask
        wrapped = None if planned or case is not None or not first else self._wrapped(prompt)
        if (planned or wrapped) and first:
            # what this test function's first ask passes besides the case: prefetch learns it
            first_ask = {"system": system, "tools": tools, "response_format": response_format,
                         "params": dict(kwargs)}
            if case_prompt or (wrapped and wrapped[0]):
                first_ask[CASE_PROMPT] = True  # its case's prompt string, not the case
            if wrapped:
                first_ask[WRAPPED] = wrapped[1]
        pair_id = self.next_pair_id(roles)
        shadow = getattr(case, "stable_reply", None) if case is not None else None
        calls: list[tuple[str, ChatRequest, str]] = []
        live_roles: list[Role] = []
        for role in roles:
            if role == "stable" and shadow is not None:
                continue
            calls.append((self.ref(role), request, role))
            live_roles.append(role)
        results = self.session.call_many(
            calls, test_id=self.test_id, where=self.test_dir, first_ask=first_ask
        )
        outcomes = dict(zip(live_roles, results, strict=True))
        replies = []
        for role in roles:
            if role == "stable" and shadow is not None:
                outcome: tuple[CallResult, str] | BaseException = (
                    shadow_result(shadow, self.stable_ref),
                    "shadow",
                )
            else:
                outcome = outcomes[role]
            replies.append(self.make_reply(role, pair_id, request, outcome, case))
        return replies


def shadow_result(shadow: Any, ref: str) -> CallResult:
    """A CallResult from a recorded production reply (shadow traffic)."""
    status: Literal["ok", "error", "timeout"] = (
        shadow.status if shadow.status in ("ok", "timeout") else "error"
    )
    return CallResult(
        ref=ref,
        status=status,
        response=shadow.to_provider_response() if status == "ok" else None,
        error=shadow.to_error(),
        latency_ms=shadow.latency_ms or 0.0,
        attempts=1,
        fallback=False,
        served_by=shadow.model or ref,
        cost_usd=shadow.cost_usd,
        started_at=0.0,
    )


class ModelHandle:
    """The ``stable`` / ``candidate`` fixture: one model of the test's workflow."""

    def __init__(self, ctx: TestContext, role: Role) -> None:
        self._ctx = ctx
        self.role: Role = role

    @property
    def model(self) -> str:
        return self._ctx.ref(self.role)

    @property
    def workflow(self) -> str:
        return self._ctx.workflow

    @property
    def killed(self) -> bool:
        return self._ctx.session.is_killed(self.model)

    def ask(
        self,
        prompt_or_messages: Any,
        *,
        system: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        response_format: Any = None,
        **params: Any,
    ) -> Reply:
        kwargs = {"system": system, "tools": tools, "response_format": response_format, **params}
        return self._ctx.ask([self.role], prompt_or_messages, kwargs)[0]

    def __repr__(self) -> str:
        return f"<{self.role} model {self.model!r} workflow {self.workflow!r}>"


class Rollout:
    """The ``rollout`` fixture: ask both models the same thing, concurrently."""

    def __init__(self, ctx: TestContext) -> None:
        self._ctx = ctx
        self.stable = ModelHandle(ctx, "stable")
        self.candidate = ModelHandle(ctx, "candidate")

    @property
    def workflow(self) -> str:
        return self._ctx.workflow

    def ask(
        self,
        prompt_or_messages: Any,
        *,
        system: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        response_format: Any = None,
        **params: Any,
    ) -> Pair:
        kwargs = {"system": system, "tools": tools, "response_format": response_format, **params}
        stable, candidate = self._ctx.ask(["stable", "candidate"], prompt_or_messages, kwargs)
        return Pair(stable=stable, candidate=candidate)

    def __repr__(self) -> str:
        return (
            f"<rollout {self._ctx.stable_ref!r} -> {self._ctx.candidate_ref!r} "
            f"workflow {self.workflow!r}>"
        )


__all__ = ["KilledError", "ModelHandle", "Rollout", "TestContext"]
