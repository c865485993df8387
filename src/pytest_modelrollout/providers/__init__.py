"""The model access layer: providers (wire formats), presets, and the model client.

This package does not import pytest. Its names are loaded on first use: importing
:mod:`.base` (the request, response and spec types every part of the plugin needs) does not
import the HTTP stack (httpcore, h11, ssl, asyncio: ~90 ms), which only a process that calls
models needs (not the xdist controller, whose start-up comes before its workers').
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from .base import (
    CallResult,
    ChatRequest,
    ModelSpec,
    Provider,
    ProviderResponse,
    ToolCall,
    content_text,
)

if TYPE_CHECKING:
    from .anthropic import AnthropicProvider
    from .client import ModelClient, ModelRegistry, make_provider
    from .openai import OpenAIProvider
    from .presets import PRESETS, Preset

_LAZY = {
    "AnthropicProvider": "anthropic",
    "ModelClient": "client",
    "ModelRegistry": "client",
    "make_provider": "client",
    "OpenAIProvider": "openai",
    "PRESETS": "presets",
    "Preset": "presets",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())

__all__ = [
    "PRESETS",
    "AnthropicProvider",
    "CallResult",
    "ChatRequest",
    "ModelClient",
    "ModelRegistry",
    "ModelSpec",
    "OpenAIProvider",
    "Preset",
    "Provider",
    "ProviderResponse",
    "ToolCall",
    "content_text",
    "make_provider",
]
