"""pytest-modelrollout: regression-test a candidate LLM against the stable one before a rollout.

Write ordinary pytest tests with the ``rollout`` / ``stable`` / ``candidate`` fixtures and the
``@pytest.mark.workflow(name)`` marker; the plugin aggregates every call into rollout metrics,
applies rollback triggers and prints a per-workflow readiness verdict.
"""

from __future__ import annotations

from ._exceptions import (
    AuthError,
    BadResponseError,
    CassetteError,
    ClientError,
    ConfigError,
    DatasetError,
    KilledError,
    ModelRolloutError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from ._version import __version__
from .checks import RegressionError
from .datasets import Case, cases
from .replies import Pair, Reply, ToolCall
from .structure import StructureSnapshotExtension

__all__ = [
    "AuthError",
    "BadResponseError",
    "Case",
    "CassetteError",
    "ClientError",
    "ConfigError",
    "DatasetError",
    "KilledError",
    "ModelRolloutError",
    "Pair",
    "ProviderError",
    "RateLimitError",
    "RegressionError",
    "Reply",
    "ServerError",
    "StructureSnapshotExtension",
    "ToolCall",
    "__version__",
    "cases",
]
