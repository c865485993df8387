"""The built-in simulator: deterministic LLM personas over real HTTP on loopback.

``get_simulator().base_url`` serves ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages``
(Anthropic) and ``GET /v1/models``. The request's ``model`` is the persona, optionally with
options (``stable?latency_ms=100&jitter=0``, ``flaky?error_rate=0.1&rate_limit_rate=0.05``).
Same persona + same request + same attempt (header ``x-modelrollout-attempt``) -> same reply and
the same latency. This package does not import pytest.
"""

from __future__ import annotations

from .personas import LATENCY_SCALE_ENV, PERSONAS
from .server import ATTEMPT_HEADER, SimServer, get_simulator, main_serve, serve

__all__ = [
    "ATTEMPT_HEADER",
    "LATENCY_SCALE_ENV",
    "PERSONAS",
    "SimServer",
    "get_simulator",
    "main_serve",
    "serve",
]
