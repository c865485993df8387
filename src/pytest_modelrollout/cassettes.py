"""Record / replay store for model replies ("cassettes").

One readable JSON file per request::

    <root>/<model-ref-sanitized>/<ChatRequest.key(ref)>.json

    {
      "version": 1,
      "model": "sim:good",
      "request": {...ChatRequest.canonical()...},
      "response": {"text": ..., "tool_calls": [...], "finish_reason": ...,
                   "input_tokens": ..., "output_tokens": ..., "model_id": ...},
      "status": "ok" | "error" | "timeout",
      "error_kind": null, "error": null,
      "latency_ms": 812.5, "cost_usd": 0.00011,
      "fallback": false, "served_by": "sim:good",
      "recorded_at": "2026-11-25T10:00:00Z"
    }

The key is the canonical request *including the model reference* (not the test name), so two
tests asking the same model the same thing share one cassette. Files hold no headers; before
writing, every string equal to or containing the value of a secret-looking environment variable
(name ending in ``_KEY`` / ``_API_KEY`` / ``_TOKEN``, value of 8+ characters) is replaced with
``[REDACTED]``.

Record modes (``--rollout-record`` / config ``record``), per role:

* ``off``    -- live calls only; cassettes are neither read nor written (the default)
* ``replay`` -- cassettes only; a miss is a :class:`CassetteError`
* ``new``    -- replay what exists, call live and record the misses
* ``all``    -- call live and (over)write every cassette

Typical use by the caller (one store per role, or per test directory and role)::

    entry = store.lookup(ref, request)          # None: call live; raises on a replay miss
    if entry is None:
        result = await client.call(request)
        if store.records:
            store.put(ref, request, CassetteEntry.from_call_result(result))

This module does not import pytest.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from ._atomic import atomic_write_text
from ._exceptions import (
    AuthError,
    BadResponseError,
    CassetteError,
    ClientError,
    ConfigError,
    ConnectionError_,
    KilledError,
    ProviderError,
    RateLimitError,
    ServerError,
    TimeoutError_,
)
from ._records import ROLES, Role, Status
from .providers.base import ChatRequest, ProviderResponse, ToolCall

__all__ = [
    "CASSETTE_VERSION",
    "DEFAULT_DIRNAME",
    "RECORD_MODES",
    "REDACTED",
    "CassetteEntry",
    "CassetteStore",
    "RecordMode",
    "error_from_kind",
    "resolve_record_modes",
    "sanitize_ref",
    "scrub_secrets",
    "secret_values",
    "validate_record_mode",
]

RecordMode = Literal["off", "replay", "new", "all"]
RECORD_MODES: tuple[RecordMode, ...] = ("off", "replay", "new", "all")
CASSETTE_VERSION = 1
DEFAULT_DIRNAME = "model_cassettes"  # created beside the test file unless configured
REDACTED = "[REDACTED]"

_STATUSES: frozenset[str] = frozenset(("ok", "error", "timeout"))
_SECRET_SUFFIXES = ("_KEY", "_API_KEY", "_TOKEN")
_MIN_SECRET_LEN = 8
_REF_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_KIND_TO_ERROR: dict[str, type[ProviderError]] = {
    cls.kind: cls
    for cls in (
        TimeoutError_,
        RateLimitError,
        ServerError,
        ConnectionError_,
        AuthError,
        ClientError,
        BadResponseError,
        KilledError,
    )
}


def error_from_kind(kind: str | None, message: str) -> ProviderError:
    """Rebuild a classified :class:`ProviderError` from a recorded kind and message.

    ``str()`` of the result equals the recorded ``str(error)`` (the kind prefix is not doubled).
    Without a kind, a ``"kind: ..."`` prefix of the message is used. An unknown kind gives a
    plain ``ProviderError`` carrying that kind.
    """
    if not kind:  # infer from the "kind: message" form of str(ProviderError)
        prefix = message.split(":", 1)[0]
        kind = prefix if prefix in _KIND_TO_ERROR and prefix != message else None
    cls = _KIND_TO_ERROR.get(kind or "")
    if cls is not None:
        return cls(message)
    err = ProviderError(message)
    if kind:
        err.kind = kind
    return err


# --------------------------------------------------------------------------------------------
# record modes


def validate_record_mode(value: object, what: str = "--rollout-record") -> RecordMode:
    """Return ``value`` as a record mode, or raise a one-line :class:`ConfigError`."""
    if isinstance(value, str) and value.strip().lower() in RECORD_MODES:
        return cast(RecordMode, value.strip().lower())
    valid = ", ".join(RECORD_MODES)
    raise ConfigError(f"{what}: invalid record mode {value!r} (valid: {valid})")


def resolve_record_modes(
    config_value: str | Mapping[str, Any] | None,
    cli_value: str | None = None,
) -> dict[Role, RecordMode]:
    """The record mode of each role.

    ``config_value`` is the config key ``record``: a mode for both roles, or a table
    ``{stable = "new", candidate = "off"}`` (a missing role is ``off``). ``cli_value``
    (``--rollout-record``) overrides both roles. Invalid values raise :class:`ConfigError`.
    """
    if cli_value is not None:
        mode = validate_record_mode(cli_value, "--rollout-record")
        return {role: mode for role in ROLES}
    if config_value is None:
        return {role: "off" for role in ROLES}
    if isinstance(config_value, str):
        mode = validate_record_mode(config_value, "record")
        return {role: mode for role in ROLES}
    if isinstance(config_value, Mapping):
        unknown = sorted(str(k) for k in config_value if k not in ROLES)
        if unknown:
            raise ConfigError(f"record: unknown role {unknown[0]!r} (valid: {', '.join(ROLES)})")
        out: dict[Role, RecordMode] = {}
        for role in ROLES:
            raw = config_value.get(role, "off")
            out[role] = validate_record_mode(raw, f"record.{role}")
        return out
    raise ConfigError(
        f"record: expected a mode or a table {{stable = ..., candidate = ...}}, "
        f"got {type(config_value).__name__}"
    )


# --------------------------------------------------------------------------------------------
# secrets


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first.

    A variable is secret-looking when its name ends in ``_KEY``, ``_API_KEY`` or ``_TOKEN``
    (case-insensitive) and its value has at least 8 characters.
    """
    source = os.environ if env is None else env
    found: set[str] = set()
    # the names first, then each value: a cassette is written on the event loop's thread while
    # pytest sets and deletes PYTEST_CURRENT_TEST on the main one (items() would raise KeyError)
    for name in list(source):
        if not name.upper().endswith(_SECRET_SUFFIXES):
            continue
        value = source.get(name)
        if value is None:
            continue
        for v in (value, value.strip()):
            if len(v) >= _MIN_SECRET_LEN:
                found.add(v)
    return sorted(found, key=lambda s: (-len(s), s))


def scrub_secrets(obj: Any, secrets: list[str]) -> Any:
    """A copy of ``obj`` (JSON-like) where every occurrence of a secret is ``[REDACTED]``.

    Dict keys are scrubbed too. ``secrets`` should be longest first (:func:`secret_values`).
    """
    if not secrets:
        return obj
    return _scrub(obj, secrets)


def _scrub(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, str):
        for s in secrets:
            if s in obj:
                obj = obj.replace(s, REDACTED)
        return obj
    if isinstance(obj, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, secrets) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# entries


class _CallResultLike(Protocol):
    """What :meth:`CassetteEntry.from_call_result` needs (``providers.client.CallResult``)."""

    @property
    def status(self) -> str: ...
    @property
    def response(self) -> ProviderResponse | None: ...
    @property
    def error(self) -> ProviderError | None: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def fallback(self) -> bool: ...
    @property
    def served_by(self) -> str: ...
    @property
    def cost_usd(self) -> float | None: ...


@dataclass
class CassetteEntry:
    """One recorded reply (or recorded failure) of one model to one request."""

    status: Status = "ok"
    response: ProviderResponse | None = None  # None unless status == "ok"
    error_kind: str | None = None
    error: str | None = None  # short, classified, secret-free (str(ProviderError))
    latency_ms: float | None = None
    cost_usd: float | None = None
    fallback: bool = False
    served_by: str | None = None
    recorded_at: str | None = None  # ISO-8601 UTC; set by put() when missing
    model: str | None = None  # the model reference; set by get()/put()
    path: Path | None = field(default=None, compare=False, repr=False)  # set by get()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_response(
        cls,
        response: ProviderResponse,
        *,
        latency_ms: float | None,
        cost_usd: float | None = None,
        fallback: bool = False,
        served_by: str | None = None,
    ) -> CassetteEntry:
        return cls(
            status="ok",
            response=response,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
            fallback=fallback,
            served_by=served_by,
        )

    @classmethod
    def from_error(
        cls,
        error: ProviderError,
        *,
        latency_ms: float | None,
        served_by: str | None = None,
    ) -> CassetteEntry:
        return cls(
            status="timeout" if error.kind == "timeout" else "error",
            error_kind=error.kind,
            error=str(error),
            latency_ms=latency_ms,
            served_by=served_by,
        )

    @classmethod
    def from_call_result(cls, result: _CallResultLike) -> CassetteEntry:
        """Build an entry from a ``providers.client.CallResult`` (duck-typed)."""
        status = result.status if result.status in _STATUSES else "error"
        err = result.error
        return cls(
            status=cast(Status, status),
            response=result.response if status == "ok" else None,
            error_kind=err.kind if err is not None else None,
            error=str(err) if err is not None else None,
            latency_ms=result.latency_ms,
            cost_usd=result.cost_usd,
            fallback=result.fallback,
            served_by=result.served_by,
        )

    def to_error(self) -> ProviderError | None:
        """The recorded failure as a classified :class:`ProviderError` (None when ok)."""
        if self.status == "ok":
            return None
        kind = self.error_kind or ("timeout" if self.status == "timeout" else None)
        return error_from_kind(kind, self.error or self.status)

    def to_dict(self, ref: str, request: ChatRequest) -> dict[str, Any]:
        """The cassette document (before secret scrubbing)."""
        resp = self.response
        response: dict[str, Any] | None = None
        if resp is not None:
            response = {
                "text": resp.text,
                "tool_calls": [t.to_dict() for t in resp.tool_calls],
                "finish_reason": resp.finish_reason,
                "input_tokens": resp.input_tokens,
                "output_tokens": resp.output_tokens,
                "model_id": resp.model_id,
            }
        return {
            "version": CASSETTE_VERSION,
            "model": ref,
            "request": request.canonical(),
            "response": response,
            "status": self.status,
            "error_kind": self.error_kind,
            "error": self.error,
            "latency_ms": self.latency_ms,
            "cost_usd": self.cost_usd,
            "fallback": self.fallback,
            "served_by": self.served_by,
            "recorded_at": self.recorded_at or _utc_now(),
        }

    @classmethod
    def from_dict(cls, doc: Any, *, path: Path | None = None) -> CassetteEntry:
        """Parse a cassette document; raises ``ValueError`` describing what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        version = doc.get("version")
        if version != CASSETTE_VERSION:
            raise ValueError(f"unsupported version {version!r} (expected {CASSETTE_VERSION})")
        status = doc.get("status", "ok")
        if status not in _STATUSES:
            raise ValueError(f"invalid status {status!r}")
        raw = doc.get("response")
        response: ProviderResponse | None = None
        if raw is not None:
            if not isinstance(raw, dict):
                raise ValueError("'response' is not an object")
            text = raw.get("text") or ""
            if not isinstance(text, str):
                raise ValueError("'response.text' is not a string")
            calls = raw.get("tool_calls") or []
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise ValueError("'response.tool_calls' is not a list of objects")
            response = ProviderResponse(
                text=text,
                tool_calls=[ToolCall.from_dict(c) for c in calls],
                finish_reason=_opt(raw, "finish_reason", str),
                input_tokens=_opt(raw, "input_tokens", int),
                output_tokens=_opt(raw, "output_tokens", int),
                model_id=_opt(raw, "model_id", str),
            )
        elif status == "ok":
            raise ValueError("status is 'ok' but 'response' is missing")
        latency = _opt(doc, "latency_ms", float)
        cost = _opt(doc, "cost_usd", float)
        return cls(
            status=cast(Status, status),
            response=response,
            error_kind=_opt(doc, "error_kind", str),
            error=_opt(doc, "error", str),
            latency_ms=latency,
            cost_usd=cost,
            fallback=bool(doc.get("fallback", False)),
            served_by=_opt(doc, "served_by", str),
            recorded_at=_opt(doc, "recorded_at", str),
            model=_opt(doc, "model", str),
            path=path,
        )


def _opt(d: dict[str, Any], key: str, typ: type[Any]) -> Any:
    v = d.get(key)
    if v is None:
        return None
    if typ is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    elif typ is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif isinstance(v, typ):
        return v
    raise ValueError(f"{key!r} is not a {typ.__name__}")


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sanitize_ref(ref: str) -> str:
    """A model reference as a directory name (``ollama:qwen2.5:7b`` -> ``ollama_qwen2.5_7b``)."""
    name = _REF_UNSAFE.sub("_", ref).strip("_")
    if not name or set(name) == {"."}:
        name = "_" + name
    return name[:120]


# --------------------------------------------------------------------------------------------
# the store


class CassetteStore:
    """Cassettes of one record mode under one root directory.

    Thread-safe and safe across processes (pytest-xdist workers): writes are atomic renames,
    reads see either a complete old file or a complete new one.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        mode: str = "off",
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.mode: RecordMode = validate_record_mode(mode)
        self._env = env  # None: os.environ, read at each put

    def __repr__(self) -> str:
        return f"CassetteStore({str(self.root)!r}, mode={self.mode!r})"

    def with_mode(self, mode: str) -> CassetteStore:
        """The same cassettes under another record mode (e.g. the other role's)."""
        return CassetteStore(self.root, mode, env=self._env)

    @property
    def replays(self) -> bool:
        """Existing cassettes are used instead of live calls (``replay``, ``new``)."""
        return self.mode in ("replay", "new")

    @property
    def records(self) -> bool:
        """Live replies are written (``new``: misses only, ``all``: every call)."""
        return self.mode in ("new", "all")

    @property
    def live_allowed(self) -> bool:
        """A live call may be made (every mode but ``replay``)."""
        return self.mode != "replay"

    def path_for(self, ref: str, request: ChatRequest) -> Path:
        return self.root / sanitize_ref(ref) / f"{request.key(ref)}.json"

    def get(self, ref: str, request: ChatRequest) -> CassetteEntry | None:
        """The recorded entry, or None when there is none (whatever the mode).

        A cassette that cannot be parsed raises :class:`CassetteError` naming the file.
        """
        path = self.path_for(ref, request)
        text = _read_text(path)
        if text is None:
            return None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CassetteError(
                f"corrupt cassette {path}: invalid JSON at line {exc.lineno}: {exc.msg}"
            ) from None
        try:
            entry = CassetteEntry.from_dict(doc, path=path)
        except ValueError as exc:
            raise CassetteError(f"corrupt cassette {path}: {exc}") from None
        if entry.model is None:
            entry.model = ref
        return entry

    def lookup(self, ref: str, request: ChatRequest) -> CassetteEntry | None:
        """Mode-aware read: the entry to replay, or None to call the model live.

        ``off`` / ``all``: always None (cassettes are not read). ``new``: the entry or None.
        ``replay``: the entry, or :class:`CassetteError` on a miss.
        """
        if not self.replays:
            return None
        entry = self.get(ref, request)
        if entry is None and self.mode == "replay":
            raise self.miss_error(ref, request)
        return entry

    def miss_error(self, ref: str, request: ChatRequest) -> CassetteError:
        prompt = " ".join(request.prompt_text().split())[:60]
        return CassetteError(
            f"no cassette for {ref} request {request.key(ref)} (prompt: '{prompt}'); "
            f"record it with --rollout-record=new"
        )

    def put(self, ref: str, request: ChatRequest, entry: CassetteEntry) -> Path:
        """Write the cassette atomically (whatever the mode) and return its path.

        Secrets found in the environment are redacted first; if one would still appear in the
        file, nothing is written and :class:`CassetteError` is raised.
        """
        path = self.path_for(ref, request)
        doc = entry.to_dict(ref, request)
        secrets = secret_values(self._env)
        doc = scrub_secrets(doc, secrets)
        try:
            text = json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
        except (TypeError, ValueError) as exc:
            raise CassetteError(f"cannot write cassette {path}: {exc}") from None
        for s in secrets:
            if s in text or json.dumps(s, ensure_ascii=False)[1:-1] in text:
                raise CassetteError(
                    f"refusing to write cassette {path}: it would contain the value of a "
                    f"secret environment variable"
                )
        atomic_write_text(path, text)
        return path


def _read_text(path: Path) -> str | None:
    attempts = 20 if sys.platform.startswith("win") else 1
    for i in range(attempts):
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except PermissionError:
            # Windows: the file is being replaced by a concurrent writer.
            if i == attempts - 1:
                raise
            time.sleep(0.01)
        except UnicodeDecodeError as exc:
            raise CassetteError(f"corrupt cassette {path}: not UTF-8 ({exc.reason})") from None
    return None
