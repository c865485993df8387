"""pytest-modelrollout: regression-test a candidate LLM against the stable one before a rollout.

Write ordinary pytest tests with the ``rollout`` / ``stable`` / ``candidate`` fixtures and the
``@pytest.mark.workflow(name)`` marker; the plugin aggregates every call into rollout metrics,
applies rollback triggers and prints a per-workflow readiness verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .structure import StructureSnapshotExtension


def __getattr__(name: str) -> Any:
    # imported on first use: it loads syrupy's JSON extension (~50 ms of every start-up that
    # a suite without structure snapshots never needs)
    if name == "StructureSnapshotExtension":
        from .structure import StructureSnapshotExtension

        return StructureSnapshotExtension
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
