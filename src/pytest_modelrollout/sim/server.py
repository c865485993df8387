"""The simulator's HTTP server: OpenAI and Anthropic wire formats on loopback.

``get_simulator()`` starts one :class:`SimServer` per process (lazily, thread-safe) on
``127.0.0.1:0`` in a daemon thread; ``main_serve(port)`` serves in the foreground for the
``modelrollout sim`` command. Handlers run in daemon threads, speak HTTP/1.1 with keep-alive and
answer when the persona's latency has passed since the request arrived (interrupted when the
server stops).

The request header ``x-modelrollout-attempt`` (0, 1, 2, ...; missing = 0) is the retry attempt:
transient faults happen on attempt 0 only, so a retrying client recovers deterministically.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .brain import apply_max_tokens, compose
from .personas import (
    PERSONAS,
    BadOption,
    Settings,
    UnknownPersona,
    latency_seconds,
    parse_model,
)
from .text import count_tokens, digest, unit
from .wire import (
    BadRequest,
    Draft,
    SimRequest,
    SimToolCall,
    Wire,
    anthropic_reply,
    error_body,
    openai_reply,
    parse_anthropic,
    parse_openai,
)

ATTEMPT_HEADER = "x-modelrollout-attempt"
CACHE_MIN_TOKENS = 1024  # Anthropic caches no shorter prompt (Sonnet and Opus models)
HANG_SECONDS = 60.0
HUGE_BYTES = 5 * 1024 * 1024

_HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)


@dataclass
class Response:
    """What to send back. ``action`` is ``send``, ``reset`` (half body then RST) or ``hang``."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    action: str = "send"
    content_type: str = "application/json"


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _error(wire: Wire, status: int, message: str | None = None, **headers: str) -> Response:
    return Response(status, _json_bytes(error_body(wire, status, message)), dict(headers))


_huge_cache: list[str] = []
_huge_lock = threading.Lock()


def _huge_text() -> str:
    with _huge_lock:
        if not _huge_cache:
            unit_text = "This is a very long simulated answer. "
            _huge_cache.append((unit_text * (HUGE_BYTES // len(unit_text) + 1))[:HUGE_BYTES])
        return _huge_cache[0]


class Simulator:
    """Request handling, independent of the HTTP plumbing (easy to test)."""

    def __init__(self, stop_event: threading.Event | None = None) -> None:
        self.stop_event = stop_event or threading.Event()
        self.quotas = Quotas()
        # (model, prefix digest) of the prompts cached at a breakpoint (Anthropic wire); kept
        # for the simulator's life (Anthropic's keep 5 minutes from their last use)
        self._prompt_cache: set[tuple[str, bytes]] = set()
        self._cache_lock = threading.Lock()

    # -- entry points ------------------------------------------------------------------------
    def handle(self, wire: Wire, raw_body: bytes, headers: dict[str, str]) -> Response:
        try:
            body = json.loads(raw_body.decode("utf-8")) if raw_body else None
        except (UnicodeDecodeError, ValueError):
            return _error(wire, 400, "We could not parse the JSON body of your request.")
        try:
            req = parse_openai(body) if wire == "openai" else parse_anthropic(body)
        except BadRequest as exc:
            return _error(wire, 400, str(exc))
        try:
            settings = parse_model(req.model)
        except UnknownPersona as exc:
            return self._not_found(wire, str(exc) or req.model)
        except BadOption as exc:
            return _error(wire, 400, str(exc))
        attempt = _attempt(headers.get(ATTEMPT_HEADER))
        if settings.persona.fault is not None:
            return self._fault(settings.persona.fault, wire, req, settings, attempt, headers)
        failure = self._transport_failure(wire, req, settings, attempt)
        if failure is not None:
            return failure
        p = settings.persona
        if not (p.rpm_limit > 0 or p.concurrency_limit > 0 or p.tpm_limit > 0
                or p.itpm_limit > 0 or p.otpm_limit > 0):
            return self._answer(wire, req, settings, attempt)
        draft = self.draft(req, settings)
        cache = self._prompt_cached(req, remember=False)
        answer = self._answer(wire, req, settings, attempt, draft=draft, cache=cache)
        prompt, out = req.prompt_tokens(), _out_tokens(draft)
        tokens = {  # what each quota counts of this request, as the providers count it
            "tpm": (p.tpm_limit, prompt + max(out, req.max_tokens or 0)),
            # (reads from Anthropic's prompt cache do not count against its input tokens)
            "itpm": (p.itpm_limit, prompt - (cache[1] if cache else 0)),
            "otpm": (p.otpm_limit, out),
        }
        over = self.quotas.admit(req.model, p.rpm_limit, int(p.concurrency_limit),
                                 answer.delay_s, time.monotonic(), tokens)
        if over is not None:
            return _over_quota(wire, req.model, p, *over)
        if cache:
            self._prompt_cached(req, remember=True)
        if p.limit_headers:  # stated with every answer, as they do
            answer.headers.update(_limit_headers(wire, p))
        return answer

    # -- normal replies ----------------------------------------------------------------------
    def draft(self, req: SimRequest, settings: Settings) -> Draft:
        return apply_max_tokens(compose(req, settings), req.max_tokens)

    def _prompt_cached(self, req: SimRequest, *, remember: bool) -> tuple[int, int] | None:
        """A request's prompt tokens written to and read from the prompt cache: its prefix up
        to its breakpoint is read when an earlier answer wrote it, written otherwise (none
        below Anthropic's shortest cacheable prompt, 1024 tokens). ``remember``: it was
        answered, so the next requests read it."""
        if req.wire != "anthropic" or req.cache_prefix is None:
            return None
        n = min(count_tokens(req.cache_prefix), req.prompt_tokens() - 1)
        if n < CACHE_MIN_TOKENS:
            return (0, 0)
        key = (req.model, digest(req.cache_prefix))
        with self._cache_lock:
            seen = key in self._prompt_cache
            if remember:
                self._prompt_cache.add(key)
        return (0, n) if seen else (n, 0)

    def _answer(self, wire: Wire, req: SimRequest, settings: Settings, attempt: int,
                *, usage: bool = True, draft: Draft | None = None,
                cache: tuple[int, int] | None = None) -> Response:
        d = draft or self.draft(req, settings)
        out_tokens = _out_tokens(d)
        use = (req.prompt_tokens(), max(1, out_tokens)) if usage else None
        if usage and cache is None:
            cache = self._prompt_cached(req, remember=True)
        body = (openai_reply(req, d, use) if wire == "openai"
                else anthropic_reply(req, d, use, cache))
        delay = latency_seconds(settings, req.key(), attempt, out_tokens)
        return Response(200, _json_bytes(body), _id_headers(wire, req), delay_s=delay)

    def _transport_failure(self, wire: Wire, req: SimRequest, settings: Settings,
                           attempt: int) -> Response | None:
        p = settings.persona
        total = p.error_rate + p.transient_rate + p.rate_limit_rate
        if total <= 0:
            return None
        u = unit("errors", p.name, req.key())
        delay = 0.3 * latency_seconds(settings, req.key(), attempt, 0)
        resp: Response | None = None
        if u < p.error_rate:
            resp = _error(wire, 500)
        elif u < p.error_rate + p.transient_rate:
            if attempt == 0:
                resp = _error(wire, 503 if wire == "openai" else 529)
        elif u < total and attempt == 0:
            headers = {"retry-after": _fmt_seconds(p.retry_after)} if p.retry_after >= 0 else {}
            resp = _error(wire, 429, **headers)
        if resp is not None:
            resp.delay_s = delay
        return resp

    def _not_found(self, wire: Wire, model: str) -> Response:
        if wire == "openai":
            return _error(wire, 404, f"The model `{model}` does not exist or you do not have "
                                     "access to it.")
        return _error(wire, 404, f"model: {model}")

    # -- fault personas ----------------------------------------------------------------------
    def _fault(self, fault: str, wire: Wire, req: SimRequest, settings: Settings, attempt: int,
               headers: dict[str, str]) -> Response:
        if fault in ("fault-429", "fault-429-date", "fault-429-noretry", "fault-503-once"):
            if attempt > 0:
                return self._answer(wire, req, settings, attempt)
            if fault == "fault-503-once":
                return _error(wire, 503)
            if fault == "fault-429":
                return _error(wire, 429, **{"retry-after": "1"})
            if fault == "fault-429-date":
                when = math.ceil(time.time()) + 1
                return _error(wire, 429, **{"retry-after": email.utils.formatdate(when, usegmt=True)})
            return _error(wire, 429)
        if fault in ("fault-500", "fault-502", "fault-503", "fault-504", "fault-529"):
            return _error(wire, int(fault.rsplit("-", 1)[1]))
        if fault == "fault-html":
            return Response(502, _HTML_PAGE.encode(), content_type="text/html")
        if fault == "fault-html-200":
            page = "<!DOCTYPE html><html><head><title>Login</title></head><body>" \
                   "<p>Please sign in to continue.</p></body></html>"
            return Response(200, page.encode(), content_type="text/html; charset=utf-8")
        if fault == "fault-reset":
            ok = self._answer(wire, req, settings, attempt)
            return Response(200, ok.body, ok.headers, action="reset")
        if fault == "fault-hang":
            return Response(200, b"", action="hang", delay_s=HANG_SECONDS)
        if fault == "fault-notjson":
            return Response(200, b"not json")
        if fault == "fault-truncated":
            ok = self._answer(wire, req, settings, attempt)
            return Response(200, ok.body[: len(ok.body) // 2], ok.headers, delay_s=ok.delay_s)
        if fault == "fault-badutf8":
            d = Draft(text="BADUTF8MARK")
            ok = self._answer(wire, req, settings, attempt, draft=d)
            return Response(200, ok.body.replace(b"BADUTF8MARK", b"caf\xe9 \xff\xfe ok"),
                            ok.headers, delay_s=ok.delay_s)
        if fault in ("fault-empty-choices", "fault-choices-null"):
            ok = self._answer(wire, req, settings, attempt)
            obj = json.loads(ok.body)
            slot = "choices" if wire == "openai" else "content"
            if fault == "fault-empty-choices":
                obj[slot] = []
            else:
                obj[slot] = None
                obj["base_resp"] = {"status_code": 1002, "status_msg": "rate limit"}
            return Response(200, _json_bytes(obj), ok.headers, delay_s=ok.delay_s)
        if fault == "fault-error-200":
            return Response(200, _json_bytes(error_body(
                wire, 500, "The server had an error while processing your request.")))
        if fault == "fault-no-usage":
            return self._answer(wire, req, settings, attempt, usage=False)
        if fault == "fault-badargs":
            name = req.tools[0]["name"] if req.tools else "lookup"
            raw = '{"query": "unterminated'
            d = Draft(text="", tool_calls=[SimToolCall(name, None, raw, "call_" + req.key()[:20])],
                      finish="tool_calls", mode="tool")
            return self._answer(wire, req, settings, attempt, draft=d)
        if fault == "fault-huge":
            huge = self._answer(wire, req, settings, attempt, draft=Draft(text=_huge_text()))
            # the body size is the fault, not the per-token latency (~1M tokens: a minute)
            huge.delay_s = latency_seconds(settings, req.key(), attempt, 0)
            return huge
        if fault == "fault-auth":
            cred = headers.get("authorization") or headers.get("x-api-key") or ""
            if wire == "openai":
                msg = (f"Incorrect API key provided: {cred}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.")
            else:
                msg = f"invalid x-api-key: {cred}"
            return _error(wire, 401, msg)
        if fault == "fault-404":
            return self._not_found(wire, req.model)
        return _error(wire, 500, f"unknown fault {fault}")  # pragma: no cover

    # -- GET ---------------------------------------------------------------------------------
    @staticmethod
    def models() -> Response:
        now = int(time.time())
        data = [{"id": name, "object": "model", "created": now, "owned_by": "modelrollout-sim",
                 "description": desc} for name, desc in PERSONAS.items()]
        return Response(200, _json_bytes({"object": "list", "data": data}))


class Quotas:
    """A provider's limits per model string (``rpm_limit``, ``concurrency_limit``,
    ``tpm_limit``, ``itpm_limit``, ``otpm_limit``), shared by every connection: requests and
    tokens per minute as buckets refilled continuously with a second's worth banked (a
    minute's for the input and output tokens, as Anthropic's), and
    requests in flight (from arrival to reply). As at OpenAI, a request turned away counts
    against the requests a minute too (the bucket owes at most a second's worth), so a client
    that retries at once stays limited; its tokens do not count (it was not processed). A
    request of more tokens than a second's worth is let through when the bucket is full and
    leaves it owing the rest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (model, kind) -> [tokens, last refill]; model -> the reply times of those in flight
        self._buckets: dict[tuple[str, str], list[float]] = {}
        self._ends: dict[str, list[float]] = {}

    @staticmethod
    def capacity(kind: str, per_minute: float) -> float:
        """A second's worth (OpenAI enforces a minute's quota a second at a time), a minute's
        for Anthropic's input and output tokens (its buckets fill up to the minute's limit)."""
        return max(1.0, per_minute if kind in ("itpm", "otpm") else per_minute / 60.0)

    def _level(self, model: str, kind: str, per_minute: float, now: float) -> list[float]:
        rate = per_minute / 60.0
        capacity = self.capacity(kind, per_minute)
        bucket = self._buckets.setdefault((model, kind), [capacity, now])
        bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        return bucket

    def admit(self, model: str, rpm: float, concurrency: int, delay_s: float, now: float,
              tokens: dict[str, tuple[float, int]] | None = None) -> tuple[str, float] | None:
        """None: admitted (and counted); else which limit turned it away and the seconds until
        it admits a request again. ``tokens``: per kind of tokens quota, its limit a minute
        (0: none) and what this request counts against it."""
        with self._lock:
            wait = 0.0
            over = ""
            if concurrency > 0:
                ends = [e for e in self._ends.get(model, ()) if e > now]
                self._ends[model] = ends
                if len(ends) >= concurrency:
                    over, wait = "concurrency", min(ends) - now
            if rpm > 0:
                bucket = self._level(model, "rpm", rpm, now)
                capacity = self.capacity("rpm", rpm)
                limited = bucket[0] < 1.0
                bucket[0] = max(-capacity, bucket[0] - 1.0)  # every request counts
                if limited:
                    return "rpm", max(wait, (1.0 - bucket[0]) / (rpm / 60.0))
            taking: list[tuple[list[float], int]] = []
            for kind, (per_minute, amount) in (tokens or {}).items():
                if per_minute <= 0:
                    continue
                bucket = self._level(model, kind, per_minute, now)
                need = min(float(amount), self.capacity(kind, per_minute))
                if bucket[0] < need:
                    return kind, max(wait, (need - bucket[0]) / (per_minute / 60.0))
                taking.append((bucket, amount))
            if over:
                return over, wait
            for bucket, amount in taking:
                bucket[0] -= amount
            if concurrency > 0:
                self._ends[model].append(now + delay_s)
            return None


def _out_tokens(d: Draft) -> int:
    """The answer's tokens, as its usage reports them."""
    return max(1, count_tokens(d.text) + sum(
        count_tokens(tc.raw_arguments) + 8 for tc in d.tool_calls))


# the limits a reply states, per wire: (the persona's option, its header's name in the limit's
# family: x-ratelimit-{limit,remaining,reset}-requests, anthropic-ratelimit-requests-{...})
_STATED: dict[str, list[tuple[str, str, str]]] = {
    "openai": [("rpm_limit", "x-ratelimit-", "-requests"),
               ("tpm_limit", "x-ratelimit-", "-tokens")],
    "anthropic": [("rpm_limit", "anthropic-ratelimit-requests-", ""),
                  ("itpm_limit", "anthropic-ratelimit-input-tokens-", ""),
                  ("otpm_limit", "anthropic-ratelimit-output-tokens-", "")],
}


def _limit_headers(wire: Wire, p: Any, over: str = "", reset_ms: int | None = None,
                   ) -> dict[str, str]:
    """The headers that state the persona's limits that the wire's provider states (on a
    429, ``over`` is the limit it went over and ``reset_ms`` when it admits again)."""
    headers: dict[str, str] = {}
    for option, head, tail in _STATED[wire]:
        limit = getattr(p, option)
        if limit <= 0:
            continue
        headers[f"{head}limit{tail}"] = _fmt_seconds(limit)
        if reset_ms is not None and option.startswith(over):
            headers[f"{head}remaining{tail}"] = "0"
            if wire == "openai":  # (Anthropic's reset is a time of day: not sent)
                headers[f"{head}reset{tail}"] = f"{reset_ms}ms"
    return headers


_QUOTA_NAMES = {"tpm": ("tokens per min (TPM)", "tokens per minute"),
                "itpm": ("input tokens per min", "input tokens per minute"),
                "otpm": ("output tokens per min", "output tokens per minute")}


def _over_quota(wire: Wire, model: str, p: Any, limit: str, wait_s: float) -> Response:
    """A provider's 429 for a request over the model's quota, with its retry-after headers."""
    ms = max(1, math.ceil(wait_s * 1000))
    if limit == "concurrency":
        n = _fmt_seconds(p.concurrency_limit)
        message = (f"Too many concurrent requests for {model}: your limit is {n} requests at a "
                   f"time. Please try again in {ms}ms.")
        headers: dict[str, str] = {}
    else:
        n = _fmt_seconds(getattr(p, f"{limit}_limit"))
        openai_name, anthropic_name = _QUOTA_NAMES.get(
            limit, ("requests per min (RPM)", "requests per minute"))
        if wire == "openai":
            message = (f"Rate limit reached for {model} in organization org-sim on {openai_name}: "
                       f"Limit {n}, Used {n}, Requested 1. Please try again in {ms}ms. Visit "
                       "https://platform.openai.com/account/rate-limits to learn more.")
        else:
            message = (f"This request would exceed the rate limit for your organization of {n} "
                       f"{anthropic_name} for {model}. Please try again later.")
        headers = _limit_headers(wire, p, limit, ms) if p.limit_headers else {}
    if wire == "openai":
        headers["retry-after-ms"] = str(ms)
    headers["retry-after"] = str(math.ceil(ms / 1000))  # whole seconds, as providers send it
    resp = _error(wire, 429, message, **headers)
    resp.delay_s = min(0.02, wait_s)
    return resp


def _attempt(raw: str | None) -> int:
    try:
        return max(0, int((raw or "0").strip()))
    except ValueError:
        return 0


def _fmt_seconds(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _id_headers(wire: Wire, req: SimRequest) -> dict[str, str]:
    rid = "req_" + req.key()[:16]
    return {"x-request-id": rid} if wire == "openai" else {"request-id": rid}


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelrollout-sim"
    sys_version = ""
    timeout = 300  # idle keep-alive connections

    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/chat/completions"):
            return "openai"
        if path.endswith("/messages"):
            return "anthropic"
        if path.endswith("/models"):
            return "models"
        if path in ("", "/health", "/healthz"):
            return "health"
        return "unknown"

    def do_GET(self) -> None:
        route = self._route()
        if route == "models":
            self._send(Simulator.models())
        elif route == "health":
            self._send(Response(200, _json_bytes({"status": "ok", "personas": len(PERSONAS)})))
        else:
            self._send(_error("openai", 404, f"Unknown path {self.path}"))

    def do_POST(self) -> None:
        # the persona's latency is the time from the request's arrival to the reply, like a
        # provider's: the simulator's own work is inside it, not added on top
        self._received = time.monotonic()
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        route = self._route()
        if route not in ("openai", "anthropic"):
            self._send(_error("openai", 404, f"Unknown path {self.path}"))
            return
        wire: Wire = "openai" if route == "openai" else "anthropic"
        try:
            resp = self.server.sim.handle(wire, raw, self._headers())
        except Exception as exc:  # a simulator bug: answer 500 rather than hang the client
            resp = _error(wire, 500, f"simulator error: {type(exc).__name__}: {exc}")
        self._send(resp)

    def _send(self, resp: Response) -> None:
        stop = self.server.sim.stop_event
        if resp.action == "hang":
            stop.wait(resp.delay_s)
            self.close_connection = True
            return
        received = self.__dict__.pop("_received", None)
        delay = resp.delay_s
        if received is not None:
            delay -= time.monotonic() - received
        if delay > 0 and stop.wait(delay):
            self.close_connection = True
            return
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            if resp.action == "reset":
                self.end_headers()
                self.wfile.write(resp.body[: len(resp.body) // 2])
                self.wfile.flush()
                self._reset()
                return
            # headers and body in one write (BaseHTTPRequestHandler buffers the headers)
            buffer: list[bytes] = self.__dict__["_headers_buffer"]
            buffer.append(b"\r\n")
            buffer.append(resp.body)
            self.flush_headers()
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send a RST instead of a FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
            return
        super().handle_error(request, client_address)


class SimServer:
    """A running simulator. ``base_url`` is ``http://127.0.0.1:PORT`` (no ``/v1``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._stop = threading.Event()
        self.simulator = Simulator(self._stop)
        self._httpd = _HTTPServer((host, port), self.simulator)
        self.host = host
        self.port: int = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def start(self) -> SimServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"modelrollout-sim:{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (or KeyboardInterrupt)."""
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        finally:
            self._stop.set()
            self._httpd.server_close()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimServer({self.base_url!r}, running={self.running})"


_lock = threading.Lock()
_instance: SimServer | None = None


def get_simulator() -> SimServer:
    """The process-wide simulator, started on first use (thread-safe)."""
    global _instance
    with _lock:
        if _instance is None or not _instance.running:
            _instance = SimServer().start()
        return _instance


def serve(host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the simulator in the foreground (blocking) until interrupted."""
    server = SimServer(host, port)
    print(f"modelrollout simulator listening on {server.base_url}", flush=True)
    print(f"  OpenAI:    {server.base_url}/v1/chat/completions", flush=True)
    print(f"  Anthropic: {server.base_url}/v1/messages", flush=True)
    print(f"  personas:  {', '.join(p for p in PERSONAS if not p.startswith('fault-'))} "
          f"(+{sum(p.startswith('fault-') for p in PERSONAS)} fault-* personas)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def main_serve(port: int, host: str = "127.0.0.1") -> None:
    """Entry point of ``modelrollout sim --port N``."""
    serve(host, port)


__all__ = ["ATTEMPT_HEADER", "Response", "SimServer", "Simulator", "get_simulator", "main_serve",
           "serve"]
