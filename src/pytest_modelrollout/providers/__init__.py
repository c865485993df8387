"""The model access layer: providers (wire formats), presets, and the model client.

This package does not import pytest. Its names are loaded on first use: importing
:mod:`.base` (the request, response and spec types every part of the plugin needs) does not
import the HTTP stack (httpcore, h11, ssl, asyncio: ~90 ms), which only a process that calls
models needs (not the xdist controller, whose start-up comes before its workers').
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

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
