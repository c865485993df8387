"""The built-in simulator: deterministic LLM personas over real HTTP on loopback.

``get_simulator().base_url`` serves ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages``
(Anthropic) and ``GET /v1/models``. The request's ``model`` is the persona, optionally with
options (``stable?latency_ms=100&jitter=0``, ``flaky?error_rate=0.1&rate_limit_rate=0.05``).
Same persona + same request + same attempt (header ``x-modelrollout-attempt``) -> same reply and
the same latency. This package does not import pytest.

Its names are imported on first use: a run of the ``sim`` provider only starts the simulator in
a child process (:mod:`.process`), and the server's modules (its HTTP server, personas and
text generation: ~0.1 s) load in the child alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

LATENCY_SCALE_ENV = "MODELROLLOUT_SIM_LATENCY_SCALE"  # multiplies every persona's latency

if TYPE_CHECKING:
    from .personas import PERSONAS
    from .server import ATTEMPT_HEADER, SimServer, get_simulator, main_serve, serve

_LAZY = {
    "PERSONAS": "personas",
    "ATTEMPT_HEADER": "server",
    "SimServer": "server",
    "get_simulator": "server",
    "main_serve": "server",
    "serve": "server",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())


__all__ = [
    "ATTEMPT_HEADER",
    "LATENCY_SCALE_ENV",
    "PERSONAS",
    "SimServer",
    "get_simulator",
    "main_serve",
    "serve",
]
