"""Load: thousands of calls at concurrency 64 through the registry against a flaky simulator.

Every call must be accounted for exactly once (successes + fallbacks + errors + timeouts ==
requests, no duplicate, none lost), the retry counts must add up to the requests the clients
sent, no concurrency slot may leak, and memory must stay bounded.

The number of calls defaults to 1,000 so the suite stays fast on a small CI machine; set
``MODELROLLOUT_LOAD_CALLS=5000`` for the full run whose figures are in docs/reliability.md.
The figures of each run are printed (``-s``) and written to ``$MODELROLLOUT_LOAD_FIGURES`` when
that is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_modelrollout.config import parse_config, resolve_model
from pytest_modelrollout.providers.base import ChatRequest, ModelSpec
from pytest_modelrollout.providers.client import CallResult, ModelRegistry
from pytest_modelrollout.runner import Runner

CALLS = int(os.environ.get("MODELROLLOUT_LOAD_CALLS", "1000"))
CONCURRENCY = 64
FLAKY = "flaky?error_rate=0.1&rate_limit_rate=0.05&latency_ms=0"
RSS_BOUND_MB = 96.0  # growth allowed while running CALLS calls (results are not kept)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # pragma: no cover


class _PeakRss:
    """Samples the process RSS in a thread; ``peak`` is the highest value seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    try:
        yield r
    finally:
        r.close()


def _registry(runner: Runner) -> ModelRegistry:
    cfg = parse_config(
        {
            "models": {
                # half the traffic has no fallback: permanent errors stay errors
                "flaky": {"provider": "sim", "model": FLAKY, "max_concurrency": CONCURRENCY},
                # the other half falls back to a healthy model: permanent errors -> fallbacks
                "flaky-fb": {"provider": "sim", "model": FLAKY, "max_concurrency": CONCURRENCY,
                             "fallback": "healthy"},
                "healthy": {"provider": "sim", "model": "good?latency_ms=0",
                            "max_concurrency": CONCURRENCY},
            }
        }
    )  # fmt: skip

    def resolve(ref: str) -> ModelSpec:
        return resolve_model(cfg, ref)

    reg = ModelRegistry(
        resolve, set(), {"MODELROLLOUT_BACKOFF_SCALE": "0"}, max_in_flight=CONCURRENCY
    )
    runner.register(reg)
    return reg


def _request(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"Where is my order A-{i:05d}?"}])


def _bucket(res: CallResult) -> str:
    if res.status == "ok":
        return "fallback" if res.fallback else "success"
    return res.status  # error / timeout


def test_load_every_call_accounted_for(runner: Runner) -> None:
    reg = _registry(runner)
    # warm up: start the simulator, open the pools, import everything
    warm = runner.run(reg.call("flaky", _request(-1)), timeout=60)
    assert warm.ok

    seen: Counter[int] = Counter()
    buckets: Counter[str] = Counter()
    by_ref: Counter[tuple[str, str, str | None, int]] = Counter()
    attempts_total = 0
    escaped: list[BaseException] = []

    async def one(i: int) -> None:
        nonlocal attempts_total
        ref = "flaky" if i % 2 == 0 else "flaky-fb"
        try:
            res = await reg.call(ref, _request(i))
        except BaseException as exc:  # pragma: no cover - must not happen
            escaped.append(exc)
            return
        seen[i] += 1
        buckets[_bucket(res)] += 1
        by_ref[(ref, res.status, res.error_kind, res.attempts)] += 1
        attempts_total += res.attempts  # the response itself is dropped here

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(CALLS)))

    sent_before = sum(c.requests_sent for c in reg.clients())
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    with _PeakRss() as peak:
        runner.run(main(), timeout=600)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss_after = _rss_mb()
    sent = sum(c.requests_sent for c in reg.clients()) - sent_before

    figures = {
        "calls": CALLS,
        "concurrency": CONCURRENCY,
        "seconds": round(elapsed, 2),
        "calls_per_s": round(CALLS / elapsed, 1),
        "http_requests": sent,
        "http_requests_per_s": round(sent / elapsed, 1),
        "cpu_s": round(cpu, 2),
        "rss_before_mb": round(rss_before, 1),
        "rss_peak_mb": round(peak.peak, 1),
        "rss_after_mb": round(rss_after, 1),
        "buckets": dict(sorted(buckets.items())),
        "outcomes": {f"{r} {s} {k} x{a}": n for (r, s, k, a), n in sorted(by_ref.items(),
                                                                         key=str)},
    }  # fmt: skip
    print("\nload figures:", json.dumps(figures, indent=1))
    out = os.environ.get("MODELROLLOUT_LOAD_FIGURES")
    if out:
        Path(out).write_text(json.dumps(figures, indent=1) + "\n")

    # nothing escaped, every call exactly once
    assert escaped == []
    assert len(seen) == CALLS and set(seen) == set(range(CALLS))
    assert all(n == 1 for n in seen.values())
    assert sum(buckets.values()) == CALLS
    assert buckets["success"] + buckets["fallback"] + buckets["error"] + buckets["timeout"] == CALLS
    # every attempt the results report was a request a client sent (incl. fallback calls)
    assert attempts_total == sent
    # shape of the outcome: ~10% permanent 500s (error without fallback, fallback with),
    # ~5% 429 + ~8% 503 on the first attempt that a retry fixes, nothing times out
    assert buckets["timeout"] == 0
    assert 0.05 * CALLS / 2 < buckets["error"] < 0.15 * CALLS / 2
    assert 0.05 * CALLS / 2 < buckets["fallback"] < 0.15 * CALLS / 2
    for (ref, status, kind, attempts), _n in by_ref.items():
        if status == "ok" and ref == "flaky":
            assert attempts in (1, 2)  # first try, or one retry after a 429/503
        elif status == "ok":
            assert attempts in (1, 2, 4)  # 4: three on the primary's 500s, one on the fallback
        else:
            assert (ref, status, kind, attempts) == ("flaky", "error", "server", 3)
    # no leaked concurrency slot
    for client in reg.clients():
        assert client.gate.in_flight == 0
    # bounded memory (responses are dropped as they come, so growth must be small)
    assert peak.peak - rss_before < RSS_BOUND_MB, figures
