"""Exceptions of pytest-modelrollout.

The tree::

    ModelRolloutError                 base of everything raised on purpose
    ├── ConfigError                   bad config / flag / model reference / missing key variable
    │                                 (the plugin turns it into a one-line pytest.UsageError)
    ├── DatasetError                  a malformed dataset file or row (names file and line)
    ├── CassetteError                 a cassette cannot be read / a replay miss
    └── ProviderError                 a model call failed; ``kind`` classifies it
        ├── TimeoutError_             kind "timeout"      (connect/read timeout)   retryable
        ├── RateLimitError            kind "rate_limit"   (HTTP 429)               retryable
        ├── ServerError               kind "server"       (5xx, 529 overloaded)    retryable
        ├── ConnectionError_          kind "connection"   (refused, reset)         retryable
        ├── AuthError                 kind "auth"         (401/403)
        ├── ClientError               kind "client"       (other 4xx; 404 model not found)
        ├── BadResponseError          kind "bad_response" (HTML page, invalid JSON, error body
        │                                                  with HTTP 200, missing choices, ...)
        └── KilledError               kind "killed"       (kill switch: never called)

Provider errors never escape ``ask``: they become a ``Reply`` with ``ok == False`` and
``error`` set to ``str(exc)``, which is short and never contains a secret.
"""

from __future__ import annotations


class ModelRolloutError(Exception):
    """Base class."""


class ConfigError(ModelRolloutError):
    """A bad configuration, flag or model reference. Message is one line."""


class DatasetError(ModelRolloutError):
    """A malformed dataset; message names the file and line."""


class CassetteError(ModelRolloutError):
    """A cassette problem, e.g. a miss in replay mode."""


class ProviderError(ModelRolloutError):
    """A model call failed. ``kind`` is the classification used in metrics."""

    kind: str = "client"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{self.kind}: {msg}" if not msg.startswith(self.kind) else msg


class TimeoutError_(ProviderError):
    kind = "timeout"
    retryable = True


class RateLimitError(ProviderError):
    kind = "rate_limit"
    retryable = True
    stated_rpm: float | None = None  # the requests-per-minute limit the 429's headers state
    # the tokens-a-minute limits they state, by kind (``tpm``, ``itpm``, ``otpm``)
    stated_tokens: dict[str, float] | None = None


class ServerError(ProviderError):
    kind = "server"
    retryable = True


class ConnectionError_(ProviderError):
    kind = "connection"
    retryable = True


class AuthError(ProviderError):
    kind = "auth"


class ClientError(ProviderError):
    kind = "client"


class BadResponseError(ProviderError):
    kind = "bad_response"


class KilledError(ProviderError):
    kind = "killed"


__all__ = [
    "AuthError",
    "BadResponseError",
    "CassetteError",
    "ClientError",
    "ConfigError",
    "ConnectionError_",
    "DatasetError",
    "KilledError",
    "ModelRolloutError",
    "ProviderError",
    "RateLimitError",
    "ServerError",
    "TimeoutError_",
]
