"""pytest-modelrollout: regression-test a candidate LLM against the stable one before a rollout.

Write ordinary pytest tests with the ``rollout`` / ``stable`` / ``candidate`` fixtures and the
``@pytest.mark.workflow(name)`` marker; the plugin aggregates every call into rollout metrics,
applies rollback triggers and prints a per-workflow readiness verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from ._lazy import lazy_names
from ._version import __version__

if TYPE_CHECKING:
    from .checks import RegressionError
    from .datasets import Case, cases
    from .replies import Pair, Reply, ToolCall
    from .structure import StructureSnapshotExtension

# imported on first use: pytest imports this package in every run where the plugin is
# installed, and these load pydantic and the checks (~150 ms), syrupy's JSON extension
# (~50 ms), which a run that does not use them never needs
_LAZY = {
    "RegressionError": "checks",
    "Case": "datasets",
    "cases": "datasets",
    "Pair": "replies",
    "Reply": "replies",
    "ToolCall": "replies",
    "StructureSnapshotExtension": "structure",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
