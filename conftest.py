"""Root conftest: settings shared by the project's own tests.

The simulator's latencies are real waits; the project's tests scale them down and make
retry back-off fast so the whole suite stays quick. Tests that measure latency or back-off
set these variables themselves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

os.environ.setdefault("MODELROLLOUT_BACKOFF_SCALE", "0.01")
# Simulated waits at a fifth of their size; tests about latency set their own scale or use
# explicit `?latency_ms=` persona options, which are never scaled.
os.environ.setdefault("MODELROLLOUT_SIM_LATENCY_SCALE", "0.2")


def _warm_up_lazy_imports() -> None:
    """Import, once and for good, what httpx/httpcore import lazily on first use.

    pytester's in-process runs restore ``sys.modules`` afterwards: a module first imported
    inside one of them (httpcore's async backends, for instance) is dropped and later imported
    again as a *new* module, with new exception classes that httpx no longer recognises. Doing a
    real request (and a refused one) here puts those modules in place before any pytester run.
    """
    import asyncio

    import httpx

    from pytest_modelrollout.sim import get_simulator
    from pytest_modelrollout.sim.process import simulator_url

    simulator_url()  # the child-process simulator the `sim` provider uses
    base = get_simulator().base_url

    async def go() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.post(
                f"{base}/v1/chat/completions",
                json={"model": "stable", "messages": [{"role": "user", "content": "hi"}]},
            )
            with contextlib.suppress(httpx.HTTPError):
                await client.get("http://127.0.0.1:9/")

    asyncio.run(go())
    with httpx.Client(timeout=5) as sync_client:
        sync_client.get(f"{base}/v1/models")

    # pytest's hook for exceptions raised in ``__del__`` (an unclosed socket's ResourceWarning)
    # imports tracemalloc on its first use, in whatever thread the garbage collector ran in: an
    # import under way in another thread (a simulator's handler) when a pytester run restores
    # sys.modules loses its module, and the hook fails whichever test is running ("Failed to
    # process unraisable exception", KeyError: 'pickle')
    import tracemalloc  # noqa: F401


_warm_up_lazy_imports()


def _lock_path(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    # the parent of this worker's temporary directory is shared by all xdist workers
    return tmp_path_factory.getbasetemp().parent / f"{name}.lock"


@contextlib.contextmanager
def _locked(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, shared: bool = False
) -> Iterator[None]:
    """Hold the lock file ``name``, shared by the xdist workers of this run."""
    if fcntl is None:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(_lock_path(tmp_path_factory, name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _machine_shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Every test holds the machine lock shared while it runs, but those of a module that has
    the machine to itself (`the_machine_to_itself`), and any test this worker runs while it
    holds it: a test of that module that does not request it runs while the module's fixture
    is still set up (taking the lock shared then would wait for this very process)."""
    if "the_machine_to_itself" in request.fixturenames or _HELD_HERE:
        yield
        return
    # past the gate first: a module waiting for the machine holds it, so the tests of the other
    # worker stop taking turns ahead of it
    with _locked(tmp_path_factory, "machine-gate", shared=True):
        pass
    with _locked(tmp_path_factory, "machine", shared=True):
        yield


@pytest.fixture(scope="module")
def the_machine_to_itself(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For the example suites, whose default runs must be READY, p95 latency gate included: no
    other test of this suite runs meanwhile (every other test holds the machine lock shared,
    this takes it exclusively, waiting for the other xdist worker's running test, which then
    waits in turn). Next to the other worker's CPU-bound tests or a heavy run, the simulator and
    the run's event loop share one of a 2-core CI machine's cores, and the p95 gate sees
    scheduling stalls as latency (INCONCLUSIVE where READY is documented)."""
    with _locked(tmp_path_factory, "machine-gate"), _locked(tmp_path_factory, "machine"):
        _HELD_HERE.append(True)
        try:
            yield
        finally:
            _HELD_HERE.pop()


_HELD_HERE: list[bool] = []  # this process holds the machine exclusively (the_machine_to_itself)


@pytest.fixture
def one_heavy_run_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that start pytest sessions of their own in subprocesses (with xdist, with real
    simulated latencies) take turns across xdist workers: two at once put five or more busy
    processes on a 2-core machine. They run next to other tests, never next to the example
    suites (they hold the machine lock shared, as every test does)."""
    with _locked(tmp_path_factory, "heavy-runs"):
        yield


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for a pytest started in a subprocess as a user would start it: without
    this suite's simulator scaling, xdist worker identity or GitHub summary file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "MODELROLLOUT_")) and k != "GITHUB_STEP_SUMMARY"
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env
