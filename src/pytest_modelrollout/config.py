"""Configuration: ``[tool.modelrollout]`` / ``modelrollout.toml`` / ``--rollout-config``.

Validated with pydantic; every mistake becomes a one-line :class:`ConfigError` that names the
key (or the environment variable) and never contains a secret value. Model references resolve
to :class:`~.providers.base.ModelSpec`. This module does not import pytest.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._exceptions import ConfigError
from .providers.base import ModelSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

RECORD_MODES = ("off", "replay", "new", "all")
EXIT_MODES = ("tests", "verdict")
DEFAULT_TRAFFIC_PLAN = (0.01, 0.05, 0.25, 1.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    provider: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=20)
    max_concurrency: int = Field(default=8, ge=1, le=10_000)
    input_price_per_mtok: float | None = Field(default=None, ge=0)
    output_price_per_mtok: float | None = Field(default=None, ge=0)
    fallback: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)


RecordSetting = str | dict[str, str]


def _check_record(v: RecordSetting | None) -> RecordSetting | None:
    if v is None:
        return v
    if isinstance(v, str):
        if v not in RECORD_MODES:
            raise ValueError(f"must be one of {', '.join(RECORD_MODES)}, not {v!r}")
        return v
    for role, mode in v.items():
        if role not in ("stable", "candidate"):
            raise ValueError(f"unknown role {role!r} (use stable / candidate)")
        if mode not in RECORD_MODES:
            raise ValueError(f"{role}: must be one of {', '.join(RECORD_MODES)}, not {mode!r}")
    return v


class WorkflowConfig(_Strict):
    stable: str | None = None
    candidate: str | None = None
    gates: dict[str, Any] = Field(default_factory=dict)
    traffic_share: float | None = Field(default=None, ge=0, le=1)

    @field_validator("gates")
    @classmethod
    def _gates(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_gates(v, "workflow")


def _check_gates(v: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate a gates table now (at configure time) rather than at the end of the session."""
    from .gates import parse_gates_config

    parse_gates_config(v, source)  # GateError is a ValueError: pydantic names the key
    return v


class RolloutConfig(_Strict):
    stable: str | None = None
    candidate: str | None = None
    killed: list[str] = Field(default_factory=list)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    workflows: dict[str, WorkflowConfig] = Field(default_factory=dict)
    gates: dict[str, Any] = Field(default_factory=dict)
    record: RecordSetting = "off"
    cassette_dir: str = "model_cassettes"
    exit: Literal["tests", "verdict"] = "tests"
    decision: Literal["standard", "strict"] = "standard"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    concurrency: int = Field(default=16, ge=1, le=10_000)
    strict: bool = False
    prefetch: bool = True
    traffic_plan: list[float] = Field(default_factory=lambda: list(DEFAULT_TRAFFIC_PLAN))

    _record = field_validator("record")(_check_record)

    @field_validator("gates")
    @classmethod
    def _gates(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_gates(v, "config")

    @field_validator("traffic_plan")
    @classmethod
    def _plan(cls, v: list[float]) -> list[float]:
        if not v or any(not (0 < x <= 1) for x in v) or sorted(v) != v:
            raise ValueError("must be increasing fractions in (0, 1], e.g. [0.01, 0.05, 0.25, 1.0]")
        return v


_PLAIN_KEY = re.compile(r"[\w.\-?&=:/*+ ]+")


def _loc_part(part: object) -> str:
    """A key of the error location; odd ones (empty, control characters) quoted on one line."""
    text = str(part)
    return text if _PLAIN_KEY.fullmatch(text) else repr(text)


def _format_validation_error(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(_loc_part(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc}: {msg}{more}"


def parse_config(data: Mapping[str, Any], where: str = "config") -> RolloutConfig:
    try:
        return RolloutConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, where)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_config(rootdir: Path, explicit: str | None = None) -> tuple[RolloutConfig, str | None]:
    """Find and validate the config. Returns the config and where it came from (or None).

    Order: ``--rollout-config`` (a pyproject.toml there is read under ``[tool.modelrollout]``,
    any other file at top level), else ``modelrollout.toml`` in the rootdir, else
    ``[tool.modelrollout]`` in the rootdir's ``pyproject.toml``, else defaults.
    """
    if explicit:
        path = Path(explicit)
        if not path.is_absolute():
            path = (Path.cwd() / path).resolve()
        data = _read_toml(path)
        if path.name == "pyproject.toml":
            data = data.get("tool", {}).get("modelrollout", {})
        return parse_config(data, str(explicit)), str(path)
    own = rootdir / "modelrollout.toml"
    if own.is_file():
        return parse_config(_read_toml(own), "modelrollout.toml"), str(own)
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("modelrollout")
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError("pyproject.toml: [tool.modelrollout] must be a table")
            return parse_config(section, "pyproject.toml [tool.modelrollout]"), str(pyproject)
    return RolloutConfig(), None


def split_reference(ref: str) -> tuple[str, str] | None:
    """``PROVIDER:MODEL_ID`` split at the first colon, or None when there is no colon."""
    if ":" not in ref:
        return None
    provider, model = ref.split(":", 1)
    return provider, model


def _presets() -> Mapping[str, Any]:
    from .providers.presets import PRESETS

    return PRESETS


def resolve_model(cfg: RolloutConfig, ref: str) -> ModelSpec:
    """Turn a model reference into a ModelSpec, or raise a one-line ConfigError."""
    ref = ref.strip()
    if not ref:
        raise ConfigError("empty model reference")
    presets = _presets()
    if ref in cfg.models:
        mc = cfg.models[ref]
        where = f"models.{ref}"
        provider = mc.provider
        model_id = mc.model or ref
    else:
        parts = split_reference(ref)
        if parts is None or not parts[1]:
            known = ", ".join(sorted(cfg.models)) or "none configured"
            raise ConfigError(
                f"unknown model reference {ref!r}: not a name under [tool.modelrollout.models] "
                f"({known}) and not PROVIDER:MODEL_ID"
            )
        provider, model_id = parts
        mc = ModelConfig(provider=provider, model=model_id)
        where = f"model reference {ref!r}"
    if provider not in presets:
        raise ConfigError(
            f"{where}: unknown provider {provider!r} (known: {', '.join(sorted(presets))})"
        )
    preset = presets[provider]
    base_url = mc.base_url or preset.base_url
    if base_url is None and not getattr(preset, "dynamic_base_url", False):
        raise ConfigError(f"{where}: base_url is required for provider {provider!r}")
    in_price = mc.input_price_per_mtok
    out_price = mc.output_price_per_mtok
    if in_price is None and out_price is None:
        default_prices = preset.default_prices(model_id) if hasattr(preset, "default_prices") else None
        if default_prices is not None:
            in_price, out_price = default_prices
    if mc.fallback is not None and mc.fallback == ref:
        raise ConfigError(f"{where}: fallback must be another model, not itself")
    return ModelSpec(
        ref=ref,
        provider=provider,
        wire=preset.wire,
        model=model_id,
        base_url=(base_url or "").rstrip("/"),
        api_key_env=mc.api_key_env if mc.api_key_env is not None else preset.api_key_env,
        timeout_s=mc.timeout_s,
        max_retries=mc.max_retries,
        max_concurrency=mc.max_concurrency,
        input_price_per_mtok=in_price,
        output_price_per_mtok=out_price,
        fallback=mc.fallback,
        params=dict(mc.params),
        headers=dict(mc.headers),
        rpm=mc.rpm,
        tpm=mc.tpm,
    )


def killed_models(cfg: RolloutConfig, cli: list[str] | None, env: Mapping[str, str]) -> set[str]:
    killed = {k.strip() for k in cfg.killed if k.strip()}
    killed |= {k.strip() for k in (cli or []) if k.strip()}
    killed |= {k.strip() for k in env.get("MODELROLLOUT_KILLED", "").split(",") if k.strip()}
    return killed


def check_api_key(spec: ModelSpec, env: Mapping[str, str] | None = None) -> None:
    """Raise a ConfigError naming the variable when the model's key variable is unset."""
    env = os.environ if env is None else env
    var = spec.api_key_env
    if var and not env.get(var):
        raise ConfigError(
            f"model {spec.ref!r}: API key variable {var} is not set "
            f"(export {var}=... or set api_key_env in [tool.modelrollout.models])"
        )
