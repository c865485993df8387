"""Provider presets: provider name -> wire format, default base URL, key variable, prices.

A model reference ``PROVIDER:MODEL_ID`` (or a configured model's ``provider``) picks one of
these. Everything here can be overridden per model in ``[tool.modelrollout.models.NAME]``.

* ``api_key_env`` is the *name* of the environment variable holding the key (read at call time
  only), or None for keyless local servers.
* ``optional_api_key_env``: a keyless server that may be started with a key (vLLM's
  ``--api-key``): the variable is sent when set and not required otherwise.
* Real providers have no default prices (cost stays null unless configured); the simulator
  has prices per persona so demo reports show costs.
* ``sim`` / ``sim-anthropic`` resolve their base URL at call time (``dynamic_base_url``): env
  ``MODELROLLOUT_SIM_URL`` or the in-process simulator, started on first use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Wire = Literal["openai", "anthropic"]

SIM_URL_ENV = "MODELROLLOUT_SIM_URL"
SIM_LAUNCHER = "pytest_modelrollout.sim.process"  # starts the simulator in a child process

# USD per million tokens (input, output) for the simulator's personas.
SIM_PRICES: dict[str, tuple[float, float]] = {
    "stable": (0.15, 0.60),
    "good": (0.10, 0.40),
    "verbose": (0.15, 0.60),
    "slow": (0.10, 0.40),
    "flaky": (0.10, 0.40),
    "sloppy-json": (0.08, 0.30),
    "wrong-language": (0.10, 0.40),
    "bad-tools": (0.10, 0.40),
    "expensive": (1.50, 6.00),
}
SIM_DEFAULT_PRICE: tuple[float, float] = (0.15, 0.60)


@dataclass(frozen=True, eq=False)
class Preset:
    name: str
    wire: Wire
    base_url: str | None  # None when resolved at call time (dynamic_base_url)
    api_key_env: str | None
    optional_api_key_env: str | None = None
    dynamic_base_url: bool = False
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    default_price: tuple[float, float] | None = None
    description: str = ""

    def default_prices(self, model_id: str) -> tuple[float, float] | None:
        """Default (input, output) USD per Mtok for a model id, or None (cost unpriced)."""
        persona = model_id.split("?", 1)[0]
        if persona in self.prices:
            return self.prices[persona]
        return self.default_price

    def prepare(self) -> None:
        """Import now, on the calling thread, what :meth:`resolve_base_url` imports (the
        simulator's launcher), rather than on the thread that resolves it: a module of the
        plugin imported under pytest is rewritten (an AST parse), which CPython 3.11 cannot do
        on two threads at once (gh-106905), and the main thread is collecting then."""
        if self.dynamic_base_url:
            importlib.import_module(SIM_LAUNCHER)

    def resolve_base_url(self, env: Mapping[str, str] | None = None) -> str:
        """The base URL to call. For the simulator this may start it (in this process)."""
        if not self.dynamic_base_url:
            return (self.base_url or "").rstrip("/")
        return sim_base_url(self.wire, env)


def sim_base_url(wire: Wire, env: Mapping[str, str] | None = None) -> str:
    """Base URL of the simulator for a wire format: ``.../v1`` (openai) or the root (anthropic)."""
    env = os.environ if env is None else env
    root = (env.get(SIM_URL_ENV) or "").strip()
    if not root:
        # lazy: the simulator is started on first use only, in a child process so that its
        # latencies are not distorted by the test process holding the GIL
        sim = importlib.import_module(SIM_LAUNCHER)
        root = str(sim.simulator_url())
    root = root.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + "/v1" if wire == "openai" else root


_ALL: tuple[Preset, ...] = (
    Preset(
        name="openai",
        wire="openai",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        description="OpenAI Chat Completions (or any OpenAI-compatible endpoint with base_url)",
    ),
    Preset(
        name="anthropic",
        wire="anthropic",
        base_url="https://api.anthropic.com",
        api_key_env="ANTHROPIC_API_KEY",
        description="Anthropic Messages API",
    ),
    Preset(
        name="deepseek",
        wire="openai",
        base_url="https://api.deepseek.com",
        api_key_env="DEEPSEEK_API_KEY",
        description="DeepSeek (OpenAI-compatible)",
    ),
    Preset(
        name="qwen",
        wire="openai",
        base_url="https://dashscope.aliyuncs.com/compatible-mode/v1",
        api_key_env="DASHSCOPE_API_KEY",
        description="Alibaba Qwen, DashScope compatible mode",
    ),
    Preset(
        name="moonshot",
        wire="openai",
        base_url="https://api.moonshot.cn/v1",
        api_key_env="MOONSHOT_API_KEY",
        description="Moonshot Kimi (global endpoint: https://api.moonshot.ai/v1)",
    ),
    Preset(
        name="zhipu",
        wire="openai",
        base_url="https://open.bigmodel.cn/api/paas/v4",
        api_key_env="ZHIPUAI_API_KEY",
        description="Zhipu GLM (BigModel open platform)",
    ),
    Preset(
        name="minimax",
        wire="openai",
        base_url="https://api.minimaxi.com/v1",
        api_key_env="MINIMAX_API_KEY",
        description="MiniMax (global endpoint: https://api.minimax.io/v1)",
    ),
    Preset(
        name="doubao",
        wire="openai",
        base_url="https://ark.cn-beijing.volces.com/api/v3",
        api_key_env="ARK_API_KEY",
        description="ByteDance Doubao on Volcano Engine Ark (model = model id or endpoint id)",
    ),
    Preset(
        name="gemini",
        wire="openai",
        base_url="https://generativelanguage.googleapis.com/v1beta/openai",
        api_key_env="GEMINI_API_KEY",
        description="Google Gemini, OpenAI-compatible endpoint",
    ),
    Preset(
        name="openrouter",
        wire="openai",
        base_url="https://openrouter.ai/api/v1",
        api_key_env="OPENROUTER_API_KEY",
        description="OpenRouter",
    ),
    Preset(
        name="ollama",
        wire="openai",
        base_url="http://localhost:11434/v1",
        api_key_env=None,
        description="Ollama's OpenAI-compatible endpoint (no key)",
    ),
    Preset(
        name="vllm",
        wire="openai",
        base_url="http://localhost:8000/v1",
        api_key_env=None,
        description="vLLM OpenAI-compatible server (key sent when VLLM_API_KEY is set)",
        optional_api_key_env="VLLM_API_KEY",
    ),
    Preset(
        name="llamacpp",
        wire="openai",
        base_url="http://localhost:8080/v1",
        api_key_env=None,
        description="llama.cpp server (llama-server) OpenAI-compatible endpoint (no key)",
    ),
    Preset(
        name="sim",
        wire="openai",
        base_url=None,
        api_key_env=None,
        description="built-in simulator, OpenAI wire format",
        dynamic_base_url=True,
        prices=SIM_PRICES,
        default_price=SIM_DEFAULT_PRICE,
    ),
    Preset(
        name="sim-anthropic",
        wire="anthropic",
        base_url=None,
        api_key_env=None,
        description="built-in simulator, Anthropic wire format",
        dynamic_base_url=True,
        prices=SIM_PRICES,
        default_price=SIM_DEFAULT_PRICE,
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}

__all__ = ["PRESETS", "SIM_PRICES", "SIM_URL_ENV", "Preset", "Wire", "sim_base_url"]
