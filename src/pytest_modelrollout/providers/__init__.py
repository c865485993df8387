"""The model access layer: providers (wire formats), presets, and the model client.

This package does not import pytest.
"""

from __future__ import annotations

from .anthropic import AnthropicProvider
from .base import ChatRequest, ModelSpec, Provider, ProviderResponse, ToolCall, content_text
from .client import CallResult, ModelClient, ModelRegistry, make_provider
from .openai import OpenAIProvider
from .presets import PRESETS, Preset

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
