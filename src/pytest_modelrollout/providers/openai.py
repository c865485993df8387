"""OpenAI-compatible Chat Completions: build the request, parse the reply, classify errors.

Also home of the wire helpers the Anthropic provider shares: secret scrubbing, retry-after
parsing, body decoding with a size limit, HTTP status classification and the send loop that
maps httpx exceptions to :class:`~pytest_modelrollout._exceptions.ProviderError` kinds.

Parsing is a pure function of ``(status, headers, body bytes)`` so every provider's recorded
replies can be tested without a network. This module does not import pytest.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._exceptions import (
    AuthError,
    BadResponseError,
    ClientError,
    ConnectionError_,
    ProviderError,
    RateLimitError,
    ServerError,
    TimeoutError_,
)
from .._version import __version__
from .base import ChatRequest, Provider, ProviderResponse, ToolCall, content_text
from .transport import AsyncioTransport, trace_setup

if TYPE_CHECKING:
    import httpx

    from .transport import HTTPClient

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_MESSAGE_CHARS = 160
ATTEMPT_HEADER = "x-modelrollout-attempt"
USER_AGENT = f"pytest-modelrollout/{__version__}"

# ---------------------------------------------------------------------------------------------
# secrets and messages

_SECRET_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{3,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{10,}"),
    re.compile(r"(?i)(x-api-key|api[_-]?key|authorization)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+"),
)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove secret values (exact occurrences) and key-looking tokens from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[0].sub("Bearer ***", text)
    text = _SECRET_PATTERNS[1].sub("sk-***", text)
    text = _SECRET_PATTERNS[2].sub("AIza***", text)
    text = _SECRET_PATTERNS[3].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return text


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Collapse whitespace and truncate to ``limit`` characters."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def safe_message(text: str, secrets: Iterable[str | None] = ()) -> str:
    # scrub before and after shortening: truncation must not leave half a key behind
    return scrub(one_line(scrub(text, secrets), limit=MAX_MESSAGE_CHARS + 40), secrets)[
        :MAX_MESSAGE_CHARS
    ]


# ---------------------------------------------------------------------------------------------
# retry-after


# the requests-per-minute limit a provider states with its replies (OpenAI and the APIs that
# copy its headers; Anthropic)
STATED_RPM_HEADERS = ("x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit")
# and its tokens-a-minute limits: OpenAI's counts the prompt and the answer (``tpm``);
# Anthropic's, input and output tokens apart (``itpm``, ``otpm``; its
# ``anthropic-ratelimit-tokens-limit`` is whichever of them is nearest, not a third limit)
STATED_TOKEN_HEADERS = (
    ("x-ratelimit-limit-tokens", "tpm"),
    ("anthropic-ratelimit-input-tokens-limit", "itpm"),
    ("anthropic-ratelimit-output-tokens-limit", "otpm"),
)


def _limit(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def parse_stated_limits(
    headers: Mapping[str, str],
) -> tuple[float | None, dict[str, float] | None]:
    """The requests-a-minute limit and the tokens-a-minute limits (by kind) the headers
    state, if they state them."""
    h = {k.lower(): v for k, v in headers.items()}
    rpm = None
    for name in STATED_RPM_HEADERS:
        rpm = _limit(h.get(name))
        if rpm is not None:
            break
    tokens: dict[str, float] | None = None
    for name, kind in STATED_TOKEN_HEADERS:
        value = _limit(h.get(name))
        if value is not None:
            tokens = tokens or {}
            tokens[kind] = value
    return rpm, tokens


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or HTTP-date)."""
    h = {k.lower(): v for k, v in headers.items()}
    ms = h.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    ra = h.get("retry-after")
    if ra is None:
        return None
    ra = ra.strip()
    try:
        value = float(ra)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:  # pragma: no cover - older Pythons
        return None
    now = time.time() if now is None else now
    return max(0.0, dt.timestamp() - now)


# ---------------------------------------------------------------------------------------------
# bodies


def _looks_html(headers: Mapping[str, str], body: bytes) -> bool:
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "").lower()
    head = body[:256].lstrip().lower()
    return "text/html" in ctype or head.startswith((b"<!doctype", b"<html", b"<"))


def decode_json(headers: Mapping[str, str], body: bytes) -> tuple[Any, str | None]:
    """Decode a JSON body. Returns (value, None) or (None, short reason it is not JSON)."""
    if len(body) > MAX_BODY_BYTES:
        return None, f"response body too large ({len(body)} bytes)"
    if not body.strip():
        return None, "empty response body"
    if _looks_html(headers, body):
        return None, "HTML page instead of JSON"
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, "response body is not valid UTF-8"
    try:
        return json.loads(text), None
    except (json.JSONDecodeError, RecursionError):
        return None, "response body is not valid JSON"


def error_text(data: Any) -> tuple[str | None, str | None]:
    """(message, code/type) of a provider error body, in any of the usual shapes."""
    if isinstance(data, list) and data and isinstance(data[0], dict):  # Gemini wraps in a list
        data = data[0]
    if not isinstance(data, dict):
        return None, None
    err = data.get("error")
    if isinstance(err, dict):
        msg = err.get("message") or err.get("msg") or err.get("detail")
        code = err.get("code") or err.get("type") or err.get("status")
        return (str(msg) if msg is not None else None), (str(code) if code is not None else None)
    if isinstance(err, str) and err:
        return err, None
    base = data.get("base_resp")
    if isinstance(base, dict) and base.get("status_code") not in (None, 0, "0"):
        return str(base.get("status_msg") or ""), str(base.get("status_code"))
    msg = data.get("message") or data.get("detail") or data.get("msg")
    if isinstance(msg, (str, int, float)) and msg != "":
        code = data.get("code") or data.get("type")
        return str(msg), (str(code) if code is not None else None)
    if isinstance(msg, list) and msg:  # FastAPI-style validation detail
        return json.dumps(msg, ensure_ascii=False, default=str), None
    return None, None


_MODEL_NOT_FOUND = re.compile(
    r"model[^.]{0,120}?(not[ _]found|does not exist|not exist|doesn't exist|unknown|not supported)"
    r"|(unknown|invalid|no such)[ _]model|model[ _]not[ _]found|模型不存在|NotFound",
    re.IGNORECASE,
)


def classify_http_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str | None] = (),
    now: float | None = None,
) -> ProviderError:
    """The ProviderError for a non-2xx response (status + body + headers)."""
    secrets = tuple(secrets)
    data, problem = decode_json(headers, body)
    msg, code = error_text(data) if problem is None else (None, None)
    detail = msg or (problem if problem and problem != "empty response body" else None) or ""
    if not detail and problem is not None and body.strip() and not _looks_html(headers, body):
        detail = body[:200].decode("utf-8", "replace")
    retry_after = parse_retry_after(headers, now)

    def text(prefix: str = "") -> str:
        base = f"HTTP {status}"
        parts = [p for p in (prefix, detail) if p]
        return safe_message(f"{base}: {': '.join(parts)}" if parts else base, secrets)

    if status == 429:
        limited = RateLimitError(text(), status_code=status, retry_after=retry_after)
        limited.stated_rpm, limited.stated_tokens = parse_stated_limits(headers)
        err: ProviderError = limited
        if code and "insufficient_quota" in code:
            err.retryable = False  # no amount of waiting helps an empty account
        return err
    if status == 408:
        return TimeoutError_(text("request timeout"), status_code=status, retry_after=retry_after)
    if status >= 500:
        label = "overloaded" if status == 529 or (code or "").startswith("overloaded") else ""
        return ServerError(text(label), status_code=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(text(), status_code=status)
    if status == 404:
        hay = f"{msg or ''} {code or ''}"
        if _MODEL_NOT_FOUND.search(hay) or "model_not_found" in hay:
            return ClientError(text("model not found"), status_code=status)
        return ClientError(text("not found"), status_code=status)
    if 400 <= status < 500:
        return ClientError(text(), status_code=status)
    return BadResponseError(text("unexpected status"), status_code=status)


# MiniMax base_resp codes (https://platform.minimax.io/docs/api-reference/errorcode)
_MINIMAX_RATE_LIMIT = {"1002"}
_MINIMAX_AUTH = {"1004"}


def _error_in_body(data: dict[str, Any], status: int, secrets: tuple[str | None, ...]) -> None:
    """Raise for error payloads that arrive with a 2xx status."""
    base = data.get("base_resp")
    if isinstance(base, dict):
        code = base.get("status_code")
        if code not in (None, 0, "0"):
            smsg = str(base.get("status_msg") or "")
            scode = str(code)
            text = safe_message(f"HTTP {status}: provider error {scode}: {smsg}", secrets)
            if scode in _MINIMAX_RATE_LIMIT:
                raise RateLimitError(text, status_code=status)
            if scode in _MINIMAX_AUTH:
                raise AuthError(text, status_code=status)
            raise BadResponseError(text, status_code=status)
    err = data.get("error")
    if err:
        msg, code = error_text(data)
        label = f"error {code}" if code else "error"
        cls = _body_error_class(err)
        raise cls(
            safe_message(f"HTTP {status} with {label} in body: {msg or ''}", secrets),
            status_code=status,
        )


def _body_error_class(err: Any) -> type[ProviderError]:
    """The kind of an error object that came with a 2xx status (by its code / type).

    Proxies and some OpenAI-compatible servers answer 200 with ``{"error": {...}}``: a
    ``server_error`` / ``overloaded`` / 5xx code is transient (retrying can help), a rate limit
    is a rate limit, a key problem is auth; anything else is a bad response.
    """
    if not isinstance(err, dict):
        return BadResponseError
    words = " ".join(
        str(err.get(k) or "").lower() for k in ("code", "type", "status")
    )
    if "rate_limit" in words or "429" in words or "resource_exhausted" in words:
        return RateLimitError
    if "invalid_api_key" in words or "authentication" in words or "401" in words:
        return AuthError
    if any(w in words for w in ("server_error", "overloaded", "unavailable", "internal", "500",
                                "502", "503", "504", "529", "bad_gateway", "gateway_timeout")):
        return ServerError
    return BadResponseError


def _decode_ok_body(
    status: int, headers: Mapping[str, str], body: bytes, secrets: tuple[str | None, ...]
) -> dict[str, Any]:
    data, problem = decode_json(headers, body)
    if problem is not None:
        raise BadResponseError(f"HTTP {status}: {problem}", status_code=status)
    if isinstance(data, list) and data and isinstance(data[0], dict) and "error" in data[0]:
        data = data[0]
    if not isinstance(data, dict):
        raise BadResponseError(f"HTTP {status}: JSON body is not an object", status_code=status)
    return data


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return int(v)
    return None


def parse_tool_call(tc: Any) -> ToolCall | None:
    """One OpenAI tool call (``{"id", "type": "function", "function": {name, arguments}}``)."""
    if not isinstance(tc, dict):
        return None
    fn_obj = tc.get("function")
    fn: dict[str, Any] = fn_obj if isinstance(fn_obj, dict) else tc
    name = fn.get("name")
    if not isinstance(name, str):
        return None
    raw = fn.get("arguments")
    tc_id = tc.get("id") if isinstance(tc.get("id"), str) else None
    if isinstance(raw, dict):  # some servers send an object rather than a JSON string
        return ToolCall(name=name, arguments=raw, raw_arguments=json.dumps(raw), id=tc_id)
    if raw is None or raw == "":
        return ToolCall(name=name, arguments={}, raw_arguments=raw, id=tc_id)
    raw_s = str(raw)
    try:
        parsed = json.loads(raw_s)
    except (json.JSONDecodeError, RecursionError):
        parsed = None
    return ToolCall(
        name=name,
        arguments=parsed if isinstance(parsed, dict) else None,
        raw_arguments=raw_s,
        id=tc_id,
    )


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str | None] = (),
    now: float | None = None,
) -> ProviderResponse:
    """Parse an OpenAI-compatible Chat Completions reply or raise a classified ProviderError."""
    secrets = tuple(secrets)
    if not 200 <= status < 300:
        raise classify_http_error(status, headers, body, secrets=secrets, now=now)
    data = _decode_ok_body(status, headers, body, secrets)
    _error_in_body(data, status, secrets)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        what = "missing" if choices is None else "empty or invalid"
        raise BadResponseError(f"HTTP {status}: 'choices' {what}", status_code=status)
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
        if isinstance(choice.get("text"), str):  # legacy completions shape
            message = {"content": choice["text"]}
        else:
            raise BadResponseError(f"HTTP {status}: choice without a message", status_code=status)
    text = content_text(message.get("content"))
    tool_calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls")
    if isinstance(raw_calls, list):
        for tc in raw_calls:
            parsed = parse_tool_call(tc)
            if parsed is not None:
                tool_calls.append(parsed)
    fc = message.get("function_call")  # legacy functions API
    if not tool_calls and isinstance(fc, dict):
        parsed = parse_tool_call({"function": fc})
        if parsed is not None:
            tool_calls.append(parsed)
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = choice.get("usage")  # Moonshot puts it inside the choice
    input_tokens = output_tokens = None
    if isinstance(usage, dict):
        input_tokens = _int_or_none(usage.get("prompt_tokens", usage.get("input_tokens")))
        output_tokens = _int_or_none(usage.get("completion_tokens", usage.get("output_tokens")))
    finish = choice.get("finish_reason")
    stated_rpm, stated_tokens = parse_stated_limits(headers)
    return ProviderResponse(
        text=text,
        tool_calls=tool_calls,
        finish_reason=str(finish) if finish is not None else None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model_id=str(data["model"]) if isinstance(data.get("model"), str) else None,
        raw=data,
        stated_rpm=stated_rpm,
        stated_tokens=stated_tokens,
    )


# ---------------------------------------------------------------------------------------------
# sending


def merged_params(
    spec_params: Mapping[str, Any], request_params: Mapping[str, Any]
) -> dict[str, Any]:
    params = {**spec_params, **request_params}
    params.pop("stream", None)  # replies are parsed whole
    params.pop("model", None)
    params.pop("messages", None)
    return params


def build_body(model: str, request: ChatRequest, spec_params: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a Chat Completions request."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(request.messages)
    body: dict[str, Any] = {"model": model, "messages": messages}
    if request.tools:
        body["tools"] = request.tools
    if request.response_format is not None:
        body["response_format"] = request.response_format
    body.update(merged_params(spec_params, request.params))
    return body


@contextlib.asynccontextmanager
async def _httpx_stream(
    client: httpx.AsyncClient, url: str | httpx.URL, content: bytes, headers: Mapping[str, str]
) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
    async with client.stream(
        "POST", url, content=content, headers=headers, extensions={"trace": trace_setup}
    ) as resp:
        yield resp.status_code, dict(resp.headers.items()), resp.aiter_bytes()


async def post_json(
    client: HTTPClient,
    url: str | httpx.URL,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    *,
    secrets: Iterable[str | None] = (),
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[int, dict[str, str], bytes]:
    """POST JSON; return (status, headers, body). httpx failures become ProviderErrors."""
    secrets = tuple(secrets)
    payload = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")
    all_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}
    opened = (
        client.stream_post(str(url), payload, all_headers)
        if isinstance(client, AsyncioTransport)
        else _httpx_stream(client, url, payload, all_headers)
    )
    try:
        async with opened as (status, resp_headers, body_chunks):
            declared = resp_headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise BadResponseError(
                    f"HTTP {status}: response body too large ({declared} bytes)",
                    status_code=status,
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in body_chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BadResponseError(
                        f"HTTP {status}: response body larger than {max_bytes} bytes",
                        status_code=status,
                    )
                chunks.append(chunk)
            return status, resp_headers, b"".join(chunks)
    except ProviderError:
        raise
    except Exception as exc:
        mapped = _transport_error(exc, url, secrets)
        if mapped is None:
            raise
        raise mapped from None


def _transport_error(
    exc: Exception, url: str | httpx.URL, secrets: tuple[str | None, ...]
) -> ProviderError | None:
    """The ProviderError for an httpx failure (None: not httpx's, let it propagate). httpx is
    imported here, on the first failure, not at start-up."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__
        return TimeoutError_(safe_message(f"{kind} after waiting for {_host(url)}", secrets))
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)):
        detail = str(exc) or type(exc).__name__
        return ConnectionError_(safe_message(f"{_host(url)}: {detail}", secrets))
    if isinstance(exc, httpx.DecodingError):
        return BadResponseError(safe_message(f"cannot decode response: {exc}", secrets))
    if isinstance(exc, (httpx.HTTPError, httpx.InvalidURL)):
        detail = str(exc) or type(exc).__name__
        return ClientError(safe_message(f"{_host(url)}: {detail}", secrets))
    return None


def _host(url: str | httpx.URL) -> str:
    try:
        u = urlsplit(str(url))
        return f"{u.hostname}:{u.port}" if u.port else str(u.hostname)
    except Exception:
        return "server"


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


class JSONHTTPProvider(Provider):
    """A provider that POSTs one JSON body and parses one JSON reply.

    Subclasses give the URL, the headers, and the wire format's pure ``build`` / ``parse_body``
    functions; sending (with secret scrubbing and the body-size limit) is shared.
    """

    _url_parsed: httpx.URL | None = None
    _url_str: str | None = None

    @staticmethod
    def build(
        model: str, request: ChatRequest, spec_params: Mapping[str, Any]
    ) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def parse_body(
        status: int, headers: Mapping[str, str], body: bytes, *, secrets: Iterable[str | None]
    ) -> ProviderResponse:
        raise NotImplementedError

    def url(self, base_url: str | None = None) -> str:
        raise NotImplementedError

    def _target_url(self, client: HTTPClient) -> str | httpx.URL:
        """``url()``, built once; for httpx's client also parsed once (it would parse the
        string on every request, ~30 µs)."""
        if self._url_str is None:
            self._url_str = self.url()
        if isinstance(client, AsyncioTransport):
            return self._url_str
        if self._url_parsed is None:
            import httpx

            self._url_parsed = httpx.URL(self._url_str)
        return self._url_parsed

    def headers(self, api_key: str | None, attempt: int) -> dict[str, str]:
        raise NotImplementedError

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        return self.build(self.spec.model, request, self.spec.params)

    def parse(
        self, status: int, headers: Mapping[str, str], body: bytes, api_key: str | None = None
    ) -> ProviderResponse:
        return self.parse_body(status, headers, body, secrets=(api_key,))

    async def send(
        self,
        client: HTTPClient,
        request: ChatRequest,
        *,
        api_key: str | None,
        attempt: int = 0,
    ) -> ProviderResponse:
        status, headers, body = await post_json(
            client,
            self._target_url(client),
            self.headers(api_key, attempt),
            self.build_body(request),
            secrets=(api_key,),
        )
        return self.parse(status, headers, body, api_key)


class OpenAIProvider(JSONHTTPProvider):
    """Any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint."""

    build = staticmethod(build_body)
    parse_body = staticmethod(parse_response)

    def url(self, base_url: str | None = None) -> str:
        return join_url(base_url or self.spec.base_url, "chat/completions")

    def headers(self, api_key: str | None, attempt: int) -> dict[str, str]:
        h = dict(self.spec.headers)
        if api_key:
            h["authorization"] = f"Bearer {api_key}"
        h[ATTEMPT_HEADER] = str(attempt)
        return h


__all__ = [
    "ATTEMPT_HEADER",
    "MAX_BODY_BYTES",
    "JSONHTTPProvider",
    "OpenAIProvider",
    "build_body",
    "classify_http_error",
    "decode_json",
    "error_text",
    "parse_response",
    "parse_retry_after",
    "parse_stated_limits",
    "parse_tool_call",
    "post_json",
    "scrub",
]
