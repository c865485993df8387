"""The provider interface: one canonical request in, one parsed response out.

A provider knows one wire format (OpenAI Chat Completions, Anthropic Messages). It builds the
HTTP request from a :class:`ChatRequest`, sends it with the model's shared HTTP client (see
:mod:`.transport`) and parses the body into a :class:`ProviderResponse`, or raises a classified
:class:`~pytest_modelrollout._exceptions.ProviderError`. Retries, back-off, concurrency limits,
fallback, cost and the kill switch live one level up, in :mod:`.client`.

This layer does not import pytest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .._exceptions import ProviderError
    from .transport import HTTPClient



@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | None  # None when the arguments were not valid JSON
    raw_arguments: str | None = None  # the arguments as sent on the wire, when a string
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arguments": self.arguments,
            "raw_arguments": self.raw_arguments,
            "id": self.id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolCall:
        return cls(
            name=str(d.get("name", "")),
            arguments=d.get("arguments"),
            raw_arguments=d.get("raw_arguments"),
            id=d.get("id"),
        )


@dataclass
class ChatRequest:
    """A canonical, provider-neutral chat request.

    ``messages`` are OpenAI-style dicts (``role`` / ``content``, optionally ``tool_calls`` and
    ``tool_call_id``); ``system`` is kept separately and prepended (OpenAI) or sent as the
    ``system`` field (Anthropic). ``tools`` are OpenAI function tools. ``params`` are sent with
    the request (temperature, max_tokens, ...). ``response_format`` is an OpenAI-style
    response_format dict or None.
    """

    messages: list[dict[str, Any]]
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None

    def canonical(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "system": self.system,
            "tools": self.tools,
            "params": dict(sorted(self.params.items())),
            "response_format": self.response_format,
        }

    def key(self, model_ref: str) -> str:
        """Stable hash of model reference + request (cassette key, prefetch key)."""
        blob = json.dumps(
            {"model": model_ref, **self.canonical()},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def prompt_text(self) -> str:
        """The last user message's text (used by language checks and messages)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return ""


def content_text(content: Any) -> str:
    """Text of an OpenAI-style message content (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text":
                parts.append(str(p.get("text", "")))
            elif isinstance(p, str):
                parts.append(p)
        return "".join(parts)
    return str(content)


@dataclass
class ProviderResponse:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    # the part of input_tokens the provider's rate limits count, when it is not all of it
    # (Anthropic: reads from the prompt cache do not count against its input tokens a minute)
    limited_input_tokens: int | None = None
    model_id: str | None = None  # model id the provider reports
    raw: dict[str, Any] | None = None  # parsed body (never includes request headers)
    stated_rpm: float | None = None  # the requests-per-minute limit the reply's headers state
    # the tokens-a-minute limits they state: ``tpm`` (prompt and answer), ``itpm`` (input),
    # ``otpm`` (output)
    stated_tokens: dict[str, float] | None = None


@dataclass
class ModelSpec:
    """A resolved model: everything needed to call it. Built by config from a reference."""

    ref: str  # the model reference as the user wrote it ("gpt-4o-mini", "sim:good")
    provider: str  # provider name ("openai", "anthropic", "deepseek", "sim", ...)
    wire: str  # wire format: "openai" or "anthropic"
    model: str  # provider's model id
    base_url: str
    api_key_env: str | None = None  # variable name; the value is read at call time only
    timeout_s: float = 60.0
    max_retries: int = 2
    max_concurrency: int = 8
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None
    fallback: str | None = None  # model reference
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # extra non-secret headers
    rpm: float | None = None
    tpm: float | None = None

    def cost(self, input_tokens: int | None, output_tokens: int | None) -> float | None:
        if self.input_price_per_mtok is None and self.output_price_per_mtok is None:
            return None
        if input_tokens is None and output_tokens is None:
            return None
        cost = (input_tokens or 0) * (self.input_price_per_mtok or 0.0)
        cost += (output_tokens or 0) * (self.output_price_per_mtok or 0.0)
        return cost / 1_000_000


class Provider(ABC):
    """One wire format. Stateless apart from the spec; the client is passed in."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    async def send(
        self,
        client: HTTPClient,
        request: ChatRequest,
        *,
        api_key: str | None,
        attempt: int = 0,
    ) -> ProviderResponse:
        """Send one attempt; return the parsed response or raise a ProviderError."""


# -- one call's outcome, and a worker's share of the limits (no HTTP stack needed) --------
CallStatus = Literal["ok", "error", "timeout"]


@dataclass
class CallResult:
    ref: str  # reference asked
    status: CallStatus
    response: ProviderResponse | None
    error: ProviderError | None  # str(error) is short and secret-free
    latency_ms: float  # first send to final answer (incl. retries/fallback), less connecting,
    # queueing for the limits before a retry and the time lost to 429s (client.py)
    attempts: int
    fallback: bool  # the fallback model answered
    served_by: str  # reference that produced the response
    cost_usd: float | None
    started_at: float  # epoch seconds of the first send (of the call, if none was sent)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error_kind(self) -> str | None:
        return self.error.kind if self.error is not None else None


def result_to_wire(result: CallResult) -> dict[str, Any]:
    """A call's result as JSON-able data (:func:`result_from_wire` rebuilds it exactly): how
    the xdist controller hands a call it made to the worker whose test asks for it."""
    response = result.response
    error = result.error
    return {
        "ref": result.ref,
        "status": result.status,
        "response": None if response is None else {
            "text": response.text,
            "tool_calls": [call.to_dict() for call in response.tool_calls],
            "finish_reason": response.finish_reason,
            "input_tokens": response.input_tokens,
            "output_tokens": response.output_tokens,
            "model_id": response.model_id,
            "raw": response.raw,
        },
        "error": None if error is None else {
            "kind": error.kind,
            "message": str(error.args[0]) if error.args else "",
            "status_code": error.status_code,
            "retry_after": error.retry_after,
        },
        "latency_ms": result.latency_ms,
        "attempts": result.attempts,
        "fallback": result.fallback,
        "served_by": result.served_by,
        "cost_usd": result.cost_usd,
        "started_at": result.started_at,
    }  # fmt: skip


def result_from_wire(data: Mapping[str, Any]) -> CallResult:
    """The :class:`CallResult` that :func:`result_to_wire` gave; ValueError if malformed."""
    try:
        r = data.get("response")
        response = None if r is None else ProviderResponse(
            text=str(r["text"]),
            tool_calls=[ToolCall.from_dict(dict(c)) for c in r.get("tool_calls") or ()],
            finish_reason=r.get("finish_reason"),
            input_tokens=r.get("input_tokens"),
            output_tokens=r.get("output_tokens"),
            model_id=r.get("model_id"),
            raw=r.get("raw"),
        )
        e = data.get("error")
        error = None if e is None else _provider_error(
            str(e["kind"]), str(e.get("message") or ""), e.get("status_code"), e.get("retry_after")
        )
        status = str(data["status"])
        if status not in ("ok", "error", "timeout"):
            raise ValueError(f"unknown status {status!r}")
        return CallResult(
            ref=str(data["ref"]),
            status=status,  # type: ignore[arg-type]
            response=response,
            error=error,
            latency_ms=float(data["latency_ms"]),
            attempts=int(data["attempts"]),
            fallback=bool(data["fallback"]),
            served_by=str(data["served_by"]),
            cost_usd=None if data.get("cost_usd") is None else float(data["cost_usd"]),
            started_at=float(data["started_at"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a call result ({exc!r})") from None


def _provider_error(
    kind: str, message: str, status_code: Any, retry_after: Any
) -> ProviderError:
    from .. import _exceptions

    # the subclasses first: the base class's own kind is "client", ClientError's too
    classes: list[type[ProviderError]] = [
        *_exceptions.ProviderError.__subclasses__(), _exceptions.ProviderError
    ]
    cls = next((c for c in classes if c.kind == kind), _exceptions.ProviderError)
    error = cls(
        message,
        status_code=None if status_code is None else int(status_code),
        retry_after=None if retry_after is None else float(retry_after),
    )
    if error.kind != kind:
        error.kind = kind  # a kind this version does not know: kept as it was
    return error


def split_limit(value: int, index: int, count: int) -> int:
    """Worker ``index``'s share of an integer limit split over ``count`` workers (at least 1).

    ``split_limit(8, i, 3)`` is 3, 3, 2 for i = 0, 1, 2: the shares add up to the limit.
    """
    if count <= 1:
        return value
    base, extra = divmod(value, count)
    return max(1, base + (1 if index < extra else 0))


def worker_share(env: Mapping[str, str]) -> tuple[int, int] | None:
    """``(index, count)`` on a pytest-xdist worker (``gw2`` of 4 -> ``(2, 4)``), else None."""
    name, count = env.get("PYTEST_XDIST_WORKER", ""), env.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not name.startswith("gw") or not count.isdigit() or not name[2:].isdigit():
        return None
    n, i = int(count), int(name[2:])
    return (i, n) if n > 1 and 0 <= i < n else None


def share_spec(spec: ModelSpec, share: tuple[int, int] | None) -> ModelSpec:
    """The spec a worker uses: its share of ``max_concurrency``, ``rpm`` and ``tpm``.

    The limits in the config are the team's limits with the provider, for the whole run; under
    ``pytest -n N`` each worker gets 1/N of them, so N workers together stay within them.
    """
    if share is None:
        return spec
    index, count = share
    return dataclasses.replace(
        spec,
        max_concurrency=split_limit(spec.max_concurrency, index, count),
        rpm=spec.rpm / count if spec.rpm else spec.rpm,
        tpm=spec.tpm / count if spec.tpm else spec.tpm,
    )
