"""Personas of the simulator: latency profile, flaw rates, fault behaviour.

A model id is ``PERSONA`` optionally followed by options: ``stable?latency_ms=100&jitter=0``.
Every numeric field of :class:`Persona` can be overridden that way (``flaky?error_rate=0.1``,
``sloppy-json?fence_rate=0.5``, ``slow?slow_rate=0.3``). Flaw decisions are per canonical
request (``unit("flaw", persona, request)``), so the same prompt always gets the same flaw;
error decisions are per request and attempt, as documented on each field.

Latencies are real sleeps. Env ``MODELROLLOUT_SIM_LATENCY_SCALE`` (float, default 1.0) scales
all persona latencies (0: no waiting); an explicit ``latency_ms`` option is taken literally (it
is meant for benchmarks) and only scaled by a ``latency_scale`` option.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl

from . import LATENCY_SCALE_ENV
from .text import rng


class UnknownPersona(Exception):
    pass


class BadOption(Exception):
    pass


@dataclass(frozen=True)
class Persona:
    name: str
    description: str
    # latency: lognormal(median latency_ms, sigma jitter) + per output token; a slow tail
    latency_ms: float = 120.0
    jitter: float = 0.35
    per_token_ms: float = 0.15
    slow_rate: float = 0.0  # share of requests (per prompt) that take slow_min_ms..slow_max_ms
    slow_min_ms: float = 480.0
    slow_max_ms: float = 1200.0
    latency_scale: float = 1.0  # multiplies everything (option); env scale multiplies too
    # length of free-text replies relative to stable (good: a bit shorter, verbose: 2.5-3x)
    length_factor: float = 1.0
    # transport errors (decided per request; transient ones only on attempt 0)
    error_rate: float = 0.0  # permanent HTTP 500 on every attempt
    transient_rate: float = 0.0  # HTTP 503 on attempt 0, fine on retry
    rate_limit_rate: float = 0.0  # HTTP 429 on attempt 0, fine on retry
    retry_after: float = -1.0  # seconds sent as retry-after on rate limits (<0: no header)
    # a provider's quota on this model (0: none), kept per model string as a provider keeps
    # it per key and model: requests per minute (a bucket refilled continuously, a second's
    # worth banked) and requests in flight at once; over it, HTTP 429 with retry-after
    rpm_limit: float = 0.0
    concurrency_limit: float = 0.0
    # tokens a minute, counted as the providers count them: prompt plus the larger of the
    # answer and max_tokens (OpenAI's TPM, a second's worth banked); the prompt (Anthropic's
    # input tokens a minute, a minute's worth banked); the answer (its output tokens a minute)
    tpm_limit: float = 0.0
    itpm_limit: float = 0.0
    otpm_limit: float = 0.0
    limit_headers: float = 1.0  # 0: neither the answers nor the 429s state the limits
    # JSON flaws (mutually exclusive buckets, per prompt)
    fence_rate: float = 0.0  # ```json fences
    prose_rate: float = 0.0  # prose before/after the JSON
    broken_json_rate: float = 0.0  # trailing comma or truncated
    # language flaw: answer in the other language
    wrong_language_rate: float = 0.0
    # tool flaws: missing required field / wrong type / bad enum; a share of those not JSON
    bad_tool_rate: float = 0.0
    bad_args_json_share: float = 0.0
    # fault personas (see server.py); None for the normal ones
    fault: str | None = None


_NUMERIC = {
    f.name for f in dataclasses.fields(Persona) if f.name not in ("name", "description", "fault")
}


def _p(name: str, description: str, **kw: float | str | None) -> Persona:
    return Persona(name, description, **kw)  # type: ignore[arg-type]


_BASE: list[Persona] = [
    _p("stable", "baseline: ~120 ms median latency, modest tail, good answers"),
    _p("good", "a good candidate: same quality, slightly faster, slightly shorter",
       latency_ms=100.0, jitter=0.3, length_factor=0.85),
    _p("expensive", "same answers as stable (priced higher by the sim preset)"),
    _p("verbose", "replies 2.5-3x longer than stable", length_factor=2.75, per_token_ms=0.24),
    _p("slow", "most calls like stable, ~15% very slow (480-1200 ms): p95 3-5x stable's",
       slow_rate=0.15),
    _p("flaky", "~15% transient 503/429 on the first attempt, ~5% permanent 500s",
       error_rate=0.05, transient_rate=0.08, rate_limit_rate=0.07),
    _p("sloppy-json", "JSON in ```json fences ~35%, prose around it ~15%, broken ~15%",
       fence_rate=0.35, prose_rate=0.15, broken_json_rate=0.15),
    _p("wrong-language", "answers English to Chinese prompts and Chinese to English ~80%",
       wrong_language_rate=0.8),
    _p("bad-tools", "tool calls with missing/mistyped/bad-enum arguments ~50%, some not JSON",
       bad_tool_rate=0.5, bad_args_json_share=0.2),
]

_FAULTS: dict[str, str] = {
    "fault-429": "429 with retry-after: 1 on attempt 0, then OK",
    "fault-429-date": "429 with retry-after as an HTTP-date ~1 s ahead on attempt 0, then OK",
    "fault-429-noretry": "429 without retry-after on attempt 0, then OK",
    "fault-500": "HTTP 500 on every attempt",
    "fault-502": "HTTP 502 on every attempt",
    "fault-503": "HTTP 503 on every attempt",
    "fault-504": "HTTP 504 on every attempt",
    "fault-503-once": "HTTP 503 on attempt 0 only",
    "fault-529": "Anthropic-style 529 overloaded_error on every attempt",
    "fault-html": "HTTP 502 with an HTML page body",
    "fault-html-200": "HTTP 200 with a text/html body",
    "fault-reset": "headers and half the body, then the connection is reset",
    "fault-hang": "never answers (up to 60 s, ends when the server stops): a read timeout",
    "fault-notjson": "HTTP 200 with body 'not json'",
    "fault-truncated": "HTTP 200 with truncated JSON",
    "fault-badutf8": "HTTP 200 with invalid UTF-8 bytes in the JSON",
    "fault-empty-choices": "HTTP 200 with choices: [] (Anthropic: content: [])",
    "fault-choices-null": "HTTP 200 with choices: null and a MiniMax-style base_resp error",
    "fault-error-200": "HTTP 200 with an error object as the body",
    "fault-no-usage": "a valid reply without usage",
    "fault-badargs": "a tool call whose arguments are not JSON",
    "fault-huge": "a valid reply whose content is 5 MB",
    "fault-auth": "401 whose message echoes the credential it received (leak test)",
    "fault-404": "404 model not found",
}

PERSONA_OBJECTS: dict[str, Persona] = {p.name: p for p in _BASE}
for _name, _desc in _FAULTS.items():
    PERSONA_OBJECTS[_name] = _p(_name, _desc, fault=_name)

PERSONAS: dict[str, str] = {name: p.description for name, p in PERSONA_OBJECTS.items()}


@dataclass(frozen=True)
class Settings:
    """A persona with its options applied."""

    persona: Persona
    explicit_latency: bool  # latency_ms given as an option: taken literally

    @property
    def name(self) -> str:
        return self.persona.name


def parse_model(model: str) -> Settings:
    """``"stable?latency_ms=100&jitter=0"`` -> Settings. Raises UnknownPersona / BadOption."""
    name, _, query = model.strip().partition("?")
    name = name.strip().lower()
    for prefix in ("sim:", "sim-anthropic:", "sim/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    base = PERSONA_OBJECTS.get(name)
    if base is None:
        raise UnknownPersona(name)
    overrides: dict[str, float] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k not in _NUMERIC:
            raise BadOption(f"unknown simulator option {k!r}")
        try:
            fv = float(v)
        except ValueError:
            raise BadOption(f"simulator option {k!r} must be a number, got {v!r}") from None
        if (not math.isfinite(fv) or fv < 0) and not (k == "retry_after" and fv < 0):
            raise BadOption(f"simulator option {k!r} must be a finite number >= 0")
        overrides[k] = fv
    persona = dataclasses.replace(base, **overrides) if overrides else base  # type: ignore[arg-type]
    return Settings(persona=persona, explicit_latency="latency_ms" in overrides)


def env_latency_scale() -> float:
    raw = os.environ.get(LATENCY_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        v = float(raw)
    except ValueError:
        return 1.0
    return v if math.isfinite(v) and v >= 0 else 1.0


def latency_seconds(settings: Settings, request_key: str, attempt: int, output_tokens: int) -> float:
    """Deterministic latency for this persona, request and attempt, in seconds."""
    p = settings.persona
    # The noise depends on the request and attempt only, not on the persona: every persona
    # sees the same "network weather" for the same request, so personas differ only in their
    # median latency and their flaw, and an equally fast persona never trips a latency gate by
    # the luck of its own random draws.
    r = rng("latency", request_key, str(attempt))
    noise = math.exp(p.jitter * max(-3.0, min(3.0, r.gauss(0.0, 1.0)))) if p.jitter > 0 else 1.0
    if settings.explicit_latency:
        ms = p.latency_ms * noise
        scale = p.latency_scale
    else:
        ms = p.latency_ms * noise + p.per_token_ms * output_tokens
        tail = rng("slow", p.name, request_key)
        if p.slow_rate > 0 and tail.random() < p.slow_rate:
            ms = tail.uniform(p.slow_min_ms, p.slow_max_ms)
        scale = p.latency_scale * env_latency_scale()
    return max(0.0, ms * scale / 1000.0)


__all__ = [
    "LATENCY_SCALE_ENV",
    "PERSONAS",
    "PERSONA_OBJECTS",
    "BadOption",
    "Persona",
    "Settings",
    "UnknownPersona",
    "env_latency_scale",
    "latency_seconds",
    "parse_model",
]
