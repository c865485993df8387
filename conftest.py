"""Root conftest: settings shared by the project's own tests.

The simulator's latencies are real waits; the project's tests scale them down and make
retry back-off fast so the whole suite stays quick. Tests that measure latency or back-off
set these variables themselves.
"""

from __future__ import annotations

import os

os.environ.setdefault("MODELROLLOUT_BACKOFF_SCALE", "0.01")
# Simulated waits at a fifth of their size; tests about latency set their own scale or use
# explicit `?latency_ms=` persona options, which are never scaled.
os.environ.setdefault("MODELROLLOUT_SIM_LATENCY_SCALE", "0.2")
