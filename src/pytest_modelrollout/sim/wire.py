"""Wire formats of the simulator: parse OpenAI / Anthropic requests, build replies and errors.

Both wire formats are normalised into one :class:`SimRequest`, so the same request sent over
either wire gets the same reply (the seed is the canonical request, not the bytes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from .text import digest

Wire = Literal["openai", "anthropic"]


class BadRequest(Exception):
    """The request body is not a valid request (answered with HTTP 400)."""


@dataclass
class SimToolCall:
    name: str
    arguments: dict[str, Any] | None  # None when raw_arguments is not valid JSON
    raw_arguments: str  # the JSON string sent on the OpenAI wire
    id: str = ""


@dataclass
class Draft:
    """A reply before it is put on the wire."""

    text: str
    tool_calls: list[SimToolCall] = field(default_factory=list)
    finish: Literal["stop", "length", "tool_calls"] = "stop"
    mode: str = "text"  # text | json | tool | rag | tool_result | greeting


@dataclass
class SimRequest:
    wire: Wire
    model: str  # as sent, including options after "?"
    system: str
    messages: list[dict[str, Any]]  # {"role", "text", "tool_calls"?: [...], "tool_result"?: bool}
    tools: list[dict[str, Any]]  # {"name", "description", "parameters"}
    tool_choice: str | None  # None/"auto" | "none" | "required" | a tool name
    response_format: dict[str, Any] | None
    max_tokens: int | None
    # the request up to its last prompt-cache breakpoint (Anthropic wire), None without one
    cache_prefix: str | None = None

    def canonical(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "messages": self.messages,
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "response_format": self.response_format,
        }

    def key(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, ensure_ascii=False, default=str)
        return digest(blob).hex()

    @property
    def prompt(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "user" and not m.get("tool_result"):
                return str(m["text"])
        return ""

    @property
    def user_text(self) -> str:
        """All user text, the last message first (facts are taken from it in that order)."""
        users = [str(m["text"]) for m in self.messages if m["role"] == "user"
                 and not m.get("tool_result")]
        return "\n".join(reversed(users))

    @property
    def last_is_tool_result(self) -> bool:
        return bool(self.messages) and bool(self.messages[-1].get("tool_result"))

    def prompt_tokens(self) -> int:
        from .text import count_tokens

        n = count_tokens(self.system) + (4 if self.system else 0)
        for m in self.messages:
            n += count_tokens(str(m["text"])) + 4
            for tc in m.get("tool_calls", []):
                n += count_tokens(json.dumps(tc, ensure_ascii=False))
        if self.tools:
            n += count_tokens(json.dumps(self.tools, ensure_ascii=False))
        if self.response_format:
            n += count_tokens(json.dumps(self.response_format, ensure_ascii=False))
        return n + 3


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict):
                if p.get("type") in ("text", "input_text", "output_text"):
                    parts.append(str(p.get("text", "")))
                elif p.get("type") == "tool_result":
                    parts.append(_text_of(p.get("content")))
        return "".join(parts)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def _schema_of(tool_params: Any) -> dict[str, Any]:
    return tool_params if isinstance(tool_params, dict) else {"type": "object", "properties": {}}


def _max_tokens(body: dict[str, Any]) -> int | None:
    for k in ("max_completion_tokens", "max_tokens"):
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def parse_openai(body: Any) -> SimRequest:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("'messages' must be a non-empty array")
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by the simulator")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in raw_messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message must be an object with a 'role'")
        role = m["role"]
        text = _text_of(m.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "tool":
            messages.append({"role": "user", "text": text, "tool_result": True})
        elif role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "text": text}
            calls = m.get("tool_calls")
            if isinstance(calls, list) and calls:
                entry["tool_calls"] = [
                    {
                        "name": str((c.get("function") or {}).get("name", "")),
                        "arguments": str((c.get("function") or {}).get("arguments", "")),
                    }
                    for c in calls
                    if isinstance(c, dict)
                ]
            messages.append(entry)
        else:
            messages.append({"role": "user", "text": text})
    tools: list[dict[str, Any]] = []
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            fn = t.get("function") if isinstance(t.get("function"), dict) else t
            if isinstance(fn, dict) and fn.get("name"):
                tools.append({
                    "name": str(fn["name"]),
                    "description": str(fn.get("description") or ""),
                    "parameters": _schema_of(fn.get("parameters")),
                })
    choice_raw = body.get("tool_choice")
    choice: str | None = None
    if isinstance(choice_raw, str):
        choice = choice_raw
    elif isinstance(choice_raw, dict):
        fn = choice_raw.get("function")
        if isinstance(fn, dict) and fn.get("name"):
            choice = str(fn["name"])
    rf = body.get("response_format")
    return SimRequest(
        wire="openai",
        model=model,
        system="\n".join(system),
        messages=messages,
        tools=tools,
        tool_choice=None if choice == "auto" else choice,
        response_format=rf if isinstance(rf, dict) and rf.get("type") != "text" else None,
        max_tokens=_max_tokens(body),
    )


def parse_anthropic(body: Any) -> SimRequest:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("messages: at least one message is required")
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by the simulator")
    system = _text_of(body.get("system"))
    messages: list[dict[str, Any]] = []
    for m in raw_messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest("messages: roles must be 'user' or 'assistant'")
        content = m.get("content")
        if m["role"] == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "text": _text_of(content)}
            if isinstance(content, list):
                calls = [
                    {"name": str(b.get("name", "")),
                     "arguments": json.dumps(b.get("input"), ensure_ascii=False)}
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "tool_use"
                ]
                if calls:
                    entry["tool_calls"] = calls
            messages.append(entry)
            continue
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            messages.append({"role": "user", "text": _text_of(content), "tool_result": True})
        else:
            messages.append({"role": "user", "text": _text_of(content)})
    tools: list[dict[str, Any]] = []
    for t in body.get("tools") or []:
        if isinstance(t, dict) and t.get("name"):
            tools.append({
                "name": str(t["name"]),
                "description": str(t.get("description") or ""),
                "parameters": _schema_of(t.get("input_schema")),
            })
    choice_raw = body.get("tool_choice")
    choice: str | None = None
    if isinstance(choice_raw, dict):
        kind = choice_raw.get("type")
        if kind == "any":
            choice = "required"
        elif kind == "none":
            choice = "none"
        elif kind == "tool" and choice_raw.get("name"):
            choice = str(choice_raw["name"])
    rf: Any = body.get("response_format")
    of = body.get("output_format")
    if rf is None and isinstance(of, dict):
        # Anthropic structured outputs: {"type": "json_schema", "schema": {...}}
        rf = {"type": "json_schema", "json_schema": {"schema": of.get("schema", {})}}
    return SimRequest(
        wire="anthropic",
        model=model,
        system=system,
        messages=messages,
        tools=tools,
        tool_choice=choice,
        response_format=rf if isinstance(rf, dict) and rf.get("type") != "text" else None,
        max_tokens=_max_tokens(body),
        cache_prefix=_cache_prefix(body),
    )


def _cache_prefix(body: dict[str, Any]) -> str | None:
    """An Anthropic request up to its last prompt-cache breakpoint (a tool or block with
    ``cache_control``), in the order Anthropic caches it (tools, system, messages); None
    without a breakpoint. (The request-level ``cache_control`` is not modelled.)"""
    parts: list[str] = []
    end = None

    def add(item: Any, text: str) -> None:
        nonlocal end
        parts.append(text)
        if isinstance(item, dict) and item.get("cache_control") is not None:
            end = len(parts)

    for tool in body.get("tools") or []:
        add(tool, json.dumps(tool, sort_keys=True, ensure_ascii=False, default=str))
    system = body.get("system")
    for block in system if isinstance(system, list) else [system] if system else []:
        add(block, _text_of([block]))
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        for block in content if isinstance(content, list) else [content]:
            add(block, _text_of([block]))
    return None if end is None else "\n".join(parts[:end])


# ---------------------------------------------------------------------------------------------
# Replies


def openai_reply(req: SimRequest, draft: Draft, usage: tuple[int, int] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": draft.text or None}
    if draft.tool_calls:
        message["tool_calls"] = [
            {"id": tc.id, "type": "function",
             "function": {"name": tc.name, "arguments": tc.raw_arguments}}
            for tc in draft.tool_calls
        ]
    if message["content"] is None and not draft.tool_calls:
        message["content"] = ""
    body: dict[str, Any] = {
        "id": "chatcmpl-" + req.key()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": draft.finish}],
        "system_fingerprint": "fp_modelrollout_sim",
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                         "total_tokens": usage[0] + usage[1]}
    return body


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def anthropic_reply(req: SimRequest, draft: Draft, usage: tuple[int, int] | None,
                    cache: tuple[int, int] | None = None) -> dict[str, Any]:
    """``cache``: the prompt's tokens written to and read from the prompt cache, for a request
    that marks a breakpoint (reported apart from ``input_tokens``, as Anthropic does)."""
    content: list[dict[str, Any]] = []
    if draft.text:
        content.append({"type": "text", "text": draft.text})
    for tc in draft.tool_calls:
        content.append({"type": "tool_use", "id": tc.id, "name": tc.name,
                        "input": tc.arguments if tc.arguments is not None else tc.raw_arguments})
    body: dict[str, Any] = {
        "id": "msg_" + req.key()[:24],
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": _ANTHROPIC_STOP[draft.finish],
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
        if cache is not None:
            written, read = cache
            body["usage"] = {"input_tokens": usage[0] - written - read,
                             "cache_creation_input_tokens": written,
                             "cache_read_input_tokens": read, "output_tokens": usage[1]}
    return body


# ---------------------------------------------------------------------------------------------
# Errors

_OPENAI_ERR: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable",
          "The engine is currently overloaded, please try again later."),
    504: ("server_error", "gateway_timeout", "Gateway timeout."),
    529: ("overloaded_error", "overloaded", "Overloaded"),
}

_ANTHROPIC_ERR: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


def error_body(wire: Wire, status: int, message: str | None = None) -> dict[str, Any]:
    """An error body in the provider's real shape."""
    if wire == "anthropic":
        etype = _ANTHROPIC_ERR.get(status, "api_error")
        default = {"overloaded_error": "Overloaded", "rate_limit_error": "Rate limited",
                   "not_found_error": "model not found", "authentication_error": "invalid x-api-key",
                   }.get(etype, "Internal server error")
        return {"type": "error", "error": {"type": etype, "message": message or default}}
    etype, code, default_msg = _OPENAI_ERR.get(status, ("server_error", None, "Error."))
    return {"error": {"message": message or default_msg, "type": etype, "param": None,
                      "code": code}}
