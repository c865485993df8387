"""Anthropic Messages API: OpenAI-style requests translated, replies parsed, errors classified.

* ``POST {base_url}/v1/messages`` (a base URL already ending in ``/v1`` is accepted too),
  headers ``x-api-key`` and ``anthropic-version``.
* ``max_tokens`` is required by the API: ``params["max_tokens"]`` or 1024.
* OpenAI function tools become ``{name, description, input_schema}``; ``tool_choice`` is
  translated; assistant ``tool_calls`` and ``tool`` messages in the history become
  ``tool_use`` / ``tool_result`` blocks; consecutive messages of one role are merged.
* ``response_format`` (which Anthropic lacks) becomes an instruction appended to the system.
* ``stop_reason`` maps to OpenAI-like finish reasons (``end_turn`` -> ``stop``, ...).

Pure functions (:func:`build_body`, :func:`parse_response`) do the work; this module does not
import pytest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .._exceptions import (
    AuthError,
    BadResponseError,
    ClientError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from .base import ChatRequest, ProviderResponse, ToolCall, content_text
from .openai import (
    ATTEMPT_HEADER,
    JSONHTTPProvider,
    _decode_ok_body,
    _int_or_none,
    classify_http_error,
    merged_params,
    parse_stated_limits,
    safe_message,
)

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}

# OpenAI-only parameters that the Messages API rejects
_DROP_PARAMS = {
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "max_completion_tokens",
    "response_format",
    "parallel_tool_calls",
    "tool_choice",
    "stop",
    "stream_options",
    "reasoning_effort",
}

_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "overloaded_error": ServerError,
    "api_error": ServerError,
    "rate_limit_error": RateLimitError,
    "authentication_error": AuthError,
    "permission_error": AuthError,
    "not_found_error": ClientError,
    "invalid_request_error": ClientError,
    "request_too_large": ClientError,
    "billing_error": ClientError,
}


def messages_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/v1/messages"):
        return base
    if base.endswith("/v1"):
        return base + "/messages"
    return base + "/v1/messages"


# ---------------------------------------------------------------------------------------------
# request translation


def translate_tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools -> Anthropic tools (already-Anthropic tools pass through)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        fn = tool.get("function")
        if tool.get("type") == "function" and isinstance(fn, Mapping):
            item: dict[str, Any] = {
                "name": fn.get("name", ""),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
            if fn.get("description"):
                item["description"] = fn["description"]
            out.append(item)
        else:
            out.append(dict(tool))
    return out


def translate_tool_choice(choice: Any, parallel: Any = None) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif isinstance(choice, str):
        result = {
            "auto": {"type": "auto"},
            "none": {"type": "none"},
            "required": {"type": "any"},
            "any": {"type": "any"},
        }.get(choice, {"type": "auto"})
    elif isinstance(choice, Mapping):
        fn = choice.get("function")
        if choice.get("type") == "function" and isinstance(fn, Mapping):
            result = {"type": "tool", "name": fn.get("name", "")}
        else:
            result = dict(choice)
    else:
        result = None
    if parallel is False:
        result = dict(result or {"type": "auto"})
        if result.get("type") != "none":
            result["disable_parallel_tool_use"] = True
    return result


def _image_block(part: Mapping[str, Any]) -> dict[str, Any]:
    url_obj = part.get("image_url")
    url = url_obj.get("url", "") if isinstance(url_obj, Mapping) else str(url_obj or "")
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _text_block(part: Mapping[str, Any]) -> dict[str, Any]:
    """A text part as an Anthropic text block, with its prompt-cache breakpoint if it marks
    one (``"cache_control": {"type": "ephemeral"}``: the same key on both wires' parts)."""
    block: dict[str, Any] = {"type": "text", "text": str(part.get("text", ""))}
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        blocks: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, str):
                blocks.append({"type": "text", "text": part})
            elif isinstance(part, Mapping):
                if part.get("type") == "image_url":
                    blocks.append(_image_block(part))
                elif part.get("type") == "text":
                    blocks.append(_text_block(part))
                else:  # already an Anthropic block (tool_use, tool_result, image, ...)
                    blocks.append(dict(part))
        return blocks
    return [{"type": "text", "text": str(content)}]


def _tool_use_block(tc: Mapping[str, Any], index: int) -> dict[str, Any]:
    fn_obj = tc.get("function")
    fn: Mapping[str, Any] = fn_obj if isinstance(fn_obj, Mapping) else tc
    raw = fn.get("arguments")
    if isinstance(raw, Mapping):
        args: Any = dict(raw)
    else:
        try:
            args = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, TypeError):
            args = {"_raw": str(raw)}
        if not isinstance(args, dict):
            args = {"value": args}
    tc_id = tc.get("id") or f"toolu_{index}"
    return {"type": "tool_use", "id": str(tc_id), "name": str(fn.get("name", "")), "input": args}


def translate_messages(
    messages: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[str | list[dict[str, Any]]]]:
    """OpenAI-style history -> (Anthropic messages, the system prompts found in the history:
    a text, or text blocks when a part marks a prompt-cache breakpoint)."""
    out: list[dict[str, Any]] = []
    systems: list[str | list[dict[str, Any]]] = []
    n_tool = 0
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            content = m.get("content")
            if isinstance(content, list) and any(
                isinstance(p, Mapping) and p.get("cache_control") is not None for p in content
            ):
                systems.append([b for b in _content_blocks(content) if b.get("type") == "text"])
                continue
            text = content_text(content)
            if text:
                systems.append(text)
            continue
        if role == "tool":
            result = m.get("content")
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(m.get("tool_call_id", "")),
                "content": result if isinstance(result, list) else content_text(result),
            }
            new = {"role": "user", "content": [block]}
        elif role == "assistant":
            blocks = _content_blocks(m.get("content"))
            for tc in m.get("tool_calls") or []:
                if isinstance(tc, Mapping):
                    blocks.append(_tool_use_block(tc, n_tool))
                    n_tool += 1
            new = {"role": "assistant", "content": blocks}
        else:
            content = m.get("content")
            new = {
                "role": "user",
                "content": content if isinstance(content, str) else _content_blocks(content),
            }
        if out and out[-1]["role"] == new["role"]:
            prev = out[-1]
            prev["content"] = _as_blocks(prev["content"]) + _as_blocks(new["content"])
        else:
            out.append(new)
    return out, systems


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    return _content_blocks(content) if not isinstance(content, list) else list(content)


def _json_instruction(response_format: Mapping[str, Any]) -> str | None:
    kind = response_format.get("type")
    if kind == "json_object":
        return "Respond with a single valid JSON object and nothing else."
    if kind == "json_schema":
        js = response_format.get("json_schema")
        schema = js.get("schema") if isinstance(js, Mapping) else None
        text = "Respond with a single valid JSON object and nothing else"
        if schema is not None:
            text += ", matching this JSON Schema: " + json.dumps(schema, ensure_ascii=False)
        return text + "."
    return None


def build_body(model: str, request: ChatRequest, spec_params: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a Messages API request."""
    messages, history_systems = translate_messages(request.messages)
    systems: list[str | list[dict[str, Any]]] = [
        s for s in [request.system, *history_systems] if s]
    if request.response_format is not None:
        instruction = _json_instruction(request.response_format)
        if instruction:
            systems.append(instruction)
    raw_params = {**spec_params, **request.params}
    params = merged_params(spec_params, request.params)
    max_tokens = params.pop("max_tokens", None) or raw_params.get("max_completion_tokens")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": int(max_tokens) if max_tokens else DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if systems and all(isinstance(s, str) for s in systems):
        body["system"] = "\n\n".join(s for s in systems if isinstance(s, str))
    elif systems:  # as blocks, to keep a prompt-cache breakpoint where the prompt marks it
        body["system"] = [b for s in systems for b in (
            [{"type": "text", "text": s}] if isinstance(s, str) else s)]
    if request.tools:
        body["tools"] = translate_tools(request.tools)
    choice = translate_tool_choice(
        raw_params.get("tool_choice"), raw_params.get("parallel_tool_calls")
    )
    if choice is not None and (request.tools or choice.get("type") == "none"):
        body["tool_choice"] = choice
    stop = raw_params.get("stop")
    if stop and "stop_sequences" not in params:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for key, value in params.items():
        if key not in _DROP_PARAMS:
            body[key] = value
    return body


# ---------------------------------------------------------------------------------------------
# response parsing


def _classify_error_body(
    data: Mapping[str, Any], status: int, secrets: tuple[str | None, ...]
) -> ProviderError:
    err = data.get("error")
    etype = str(err.get("type", "")) if isinstance(err, Mapping) else ""
    msg = str(err.get("message", "")) if isinstance(err, Mapping) else str(err or "")
    cls = _ERROR_TYPES.get(etype, BadResponseError)
    text = safe_message(f"HTTP {status}: {etype or 'error'}: {msg}", secrets)
    return cls(text, status_code=status)


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str | None] = (),
    now: float | None = None,
) -> ProviderResponse:
    """Parse a Messages API reply or raise a classified ProviderError."""
    secrets = tuple(secrets)
    if not 200 <= status < 300:
        raise classify_http_error(status, headers, body, secrets=secrets, now=now)
    data = _decode_ok_body(status, headers, body, secrets)
    if data.get("type") == "error" or "error" in data:
        raise _classify_error_body(data, status, secrets)
    content = data.get("content")
    if not isinstance(content, list):
        raise BadResponseError(f"HTTP {status}: 'content' missing or invalid", status_code=status)
    texts: list[str] = []
    tool_calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text":
            texts.append(str(block.get("text", "")))
        elif btype == "tool_use":
            inp = block.get("input")
            tool_calls.append(
                ToolCall(
                    name=str(block.get("name", "")),
                    arguments=inp if isinstance(inp, dict) else None,
                    raw_arguments=json.dumps(inp, ensure_ascii=False),
                    id=str(block["id"]) if block.get("id") is not None else None,
                )
            )
    usage = data.get("usage")
    input_tokens = output_tokens = limited = None
    if isinstance(usage, dict):
        # input_tokens is what came after the last cache breakpoint; the prompt's tokens are
        # it plus those written to and read from the cache. Reads do not count against the
        # input tokens a minute (ITPM) of the models Anthropic serves now; writes do.
        input_tokens = _int_or_none(usage.get("input_tokens"))
        if input_tokens is not None:
            limited = input_tokens + (_int_or_none(usage.get("cache_creation_input_tokens")) or 0)
            input_tokens = limited + (_int_or_none(usage.get("cache_read_input_tokens")) or 0)
        output_tokens = _int_or_none(usage.get("output_tokens"))
    stop = data.get("stop_reason")
    stated_rpm, stated_tokens = parse_stated_limits(headers)
    return ProviderResponse(
        text="".join(texts),
        tool_calls=tool_calls,
        finish_reason=STOP_REASONS.get(str(stop), str(stop)) if stop is not None else None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        limited_input_tokens=limited,
        model_id=str(data["model"]) if isinstance(data.get("model"), str) else None,
        raw=data,
        stated_rpm=stated_rpm,
        stated_tokens=stated_tokens,
    )


class AnthropicProvider(JSONHTTPProvider):
    """The Anthropic Messages API (and Anthropic-compatible endpoints)."""

    build = staticmethod(build_body)
    parse_body = staticmethod(parse_response)

    def url(self, base_url: str | None = None) -> str:
        return messages_url(base_url or self.spec.base_url)

    def headers(self, api_key: str | None, attempt: int) -> dict[str, str]:
        h = dict(self.spec.headers)
        h.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if api_key:
            h["x-api-key"] = api_key
        h[ATTEMPT_HEADER] = str(attempt)
        return h


__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "STOP_REASONS",
    "AnthropicProvider",
    "build_body",
    "messages_url",
    "parse_response",
    "translate_messages",
    "translate_tool_choice",
    "translate_tools",
]
