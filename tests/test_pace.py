"""A provider's quota and the pace the plugin learns from its 429s.

The simulator keeps a quota per model string (``rpm_limit``, ``concurrency_limit``) as a
provider keeps one per key and model, and answers 429 over it with the provider's headers.
Without ``rpm`` in the config, a run that sends faster than the quota gets 429s: halving the
concurrency does not help a requests-per-minute quota (short requests at concurrency 1 still go
over it), so the clients learn a pace from the 429s (:class:`LearnedPace`), across the xdist
workers at the controller's broker. What a user depends on: every call gets its answer within
its retries, the rate limit is not the model's latency, and the verdict is the models'.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_prefetch import SUITE

from pytest_modelrollout.config import parse_config, resolve_model
from pytest_modelrollout.providers import openai
from pytest_modelrollout.providers.base import ChatRequest
from pytest_modelrollout.providers.client import ModelRegistry
from pytest_modelrollout.providers.limits import LearnedPace
from pytest_modelrollout.providers.slots import SlotBroker, SlotClient, _steps
from pytest_modelrollout.sim.process import start_child, stop_child
from pytest_modelrollout.sim.server import Quotas

# ------------------------------------------------------------------------------- the pace alone


def feed(pace: LearnedPace, start: float, seconds: float, per_s: float, limited_share: float,
         stated: float | None = None) -> float:
    """Replies at ``per_s`` for ``seconds`` from ``start``, ``limited_share`` of them 429s
    (spread evenly)."""
    n = int(seconds * per_s)
    for i in range(n):
        limited = int((i + 1) * limited_share) > int(i * limited_share)
        pace.reply(start + i / per_s, limited, stated if limited else None)
    return start + n / per_s


def test_a_429_now_and_then_sets_no_pace() -> None:
    pace = LearnedPace()
    feed(pace, 0.0, 10.0, 50.0, 1 / 20)  # 5 %: a provider's hiccups
    assert not pace.paced and pace.per_s is None and pace.limited == 25


def test_over_a_quota_the_pace_is_what_the_provider_admitted() -> None:
    """80 requests a second, 7 in 8 turned away: paced at 0.8 x the 10 a second admitted."""
    pace = LearnedPace()
    feed(pace, 0.0, 1.5, 80.0, 7 / 8)
    assert pace.paced and pace.cuts == 1
    assert pace.per_s == pytest.approx(0.8 * 10, rel=0.15)


def test_a_limit_stated_with_the_answers_paces_before_any_429() -> None:
    pace = LearnedPace()
    pace.reply(100.0, False, 600.0)
    assert pace.paced and pace.per_s == pytest.approx(0.95 * 10) and pace.cuts == 0
    pace.reply(100.1, False, 300.0)  # a lower limit stated later: down to it
    assert pace.per_s == pytest.approx(0.95 * 5)
    assert not pace.describe("m")  # no 429: nothing to say


def test_a_limit_remembered_from_an_earlier_run_paces_until_one_is_stated() -> None:
    pace = LearnedPace()
    pace.remember(600.0, 100.0)
    assert pace.paced and pace.per_s == pytest.approx(0.95 * 10)
    pace.reply(100.5, False, 1200.0)  # the key moved up a tier: its new limit, higher
    assert pace.per_s == pytest.approx(0.95 * 20)
    pace.reply(101.0, False, 2400.0)  # stated in this run: never passed, as before
    assert pace.per_s == pytest.approx(0.95 * 20)


def test_the_next_registry_keeps_to_the_limits_the_last_one_was_told(sim: SimAt) -> None:
    """A client that starts with the limits its provider stated in an earlier run keeps to
    them from its first request; one that does not sends its first burst over them. The
    limits are kept per provider, base URL (without a user or password) and model."""
    from pytest_modelrollout.providers.base import ModelSpec
    from pytest_modelrollout.providers.client import endpoint_key

    assert endpoint_key(ModelSpec("r", "openai", "openai", "gpt-4o",
                                  "https://me:s3cret@gw.example.com/v1")) == (
        "openai https://gw.example.com/v1 gpt-4o")
    model = "stable?latency_ms=50&jitter=0&rpm_limit=240&limit_headers=1"
    cfg = parse_config({"models": {"q": {"provider": "sim", "model": model,
                                         "max_concurrency": 16}}})
    remembered = None
    turned_away = []
    for _ in range(2):
        registry = ModelRegistry(lambda ref: resolve_model(cfg, ref), set(),
                                 {"MODELROLLOUT_SIM_URL": sim.base_url}, remembered=remembered)
        results, _ = call_all(registry, "q", [ChatRequest(
            messages=[{"role": "user", "content": f"Where is order A-{i}?"}]) for i in range(12)])
        assert [r.status for r in results] == ["ok"] * 12
        turned_away.append(sum(r.attempts - 1 for r in results))
        remembered = registry.stated_limits()
        assert list(remembered.values()) == [{"rpm": 240.0}]
        time.sleep(1.0)  # the quota's bank (a second's worth) fills again
    assert turned_away[0] > 0 and turned_away[1] == 0, turned_away


def test_a_stated_limit_is_taken_as_it_is_and_never_passed() -> None:
    pace = LearnedPace()
    t = feed(pace, 0.0, 1.5, 80.0, 1 / 2, stated=600.0)
    assert pace.per_s == pytest.approx(0.95 * 10)
    feed(pace, t, 30.0, 9.5, 0.0)  # calm at the pace: it stays under the stated limit
    assert pace.per_s == pytest.approx(0.95 * 10)


def test_a_stated_limit_too_high_to_hold_back_still_gives_way_to_429s() -> None:
    """Groq states requests a day in x-ratelimit-limit-requests: read as a minute's, the pace
    from it holds nothing back, and the 429s of the real per-minute limit cut it."""
    pace = LearnedPace()
    pace.reply(0.0, False, 1000.0)
    assert pace.per_s == pytest.approx(0.95 * 1000 / 60)
    feed(pace, 1.0, 1.5, 15.0, 3 / 4, stated=1000.0)
    assert pace.cuts >= 1 and pace.per_s is not None and pace.per_s < 0.95 * 1000 / 60 / 2


def test_the_pace_rises_after_calm_while_it_holds_requests_back() -> None:
    pace = LearnedPace()
    t = feed(pace, 0.0, 1.5, 80.0, 7 / 8)
    cut = pace.per_s
    assert cut is not None
    t = feed(pace, t, 5.0, cut / 2, 0.0)  # something else holds the requests back: no rise
    assert pace.per_s == cut
    feed(pace, t, 6.0, cut, 0.0)
    assert pace.per_s is not None and pace.per_s > cut and pace.too_fast is not None
    # by 30 % up to 0.9 x the rate found too fast, then by 5 % a second (at most 6 rises)
    assert pace.per_s <= 0.9 * pace.too_fast * 1.05 ** 5 + 1e-9


def test_429s_to_requests_sent_before_the_pace_changed_do_not_cut_it() -> None:
    """A burst's retries land after the first cut: counted, but no evidence against it."""
    pace = LearnedPace()
    t = feed(pace, 0.0, 1.5, 80.0, 7 / 8)
    set_at, cut = pace._changed, pace.per_s
    for i in range(40):  # 2 s of 429s, each to a request sent before the cut
        now = t + 0.05 * i
        pace.reply(now, True, age=now - set_at + 0.01)
    assert pace.per_s == cut and pace.cuts == 1 and pace.limited > 40
    assert pace.too_fast is not None
    found = pace.too_fast
    feed(pace, t + 2.0, 2.0, 4.0, 1 / 2)  # then slowly, half turned away: a second cut
    assert pace.cuts == 2 and pace.too_fast == pytest.approx(0.8 * found)


def test_the_summary_line_says_what_to_set() -> None:
    stated = LearnedPace()
    feed(stated, 0.0, 1.5, 80.0, 1 / 2, stated=600.0)
    line = stated.describe("sim:good")
    assert line.startswith("modelrollout: sim:good: its provider turned 60 requests away")
    assert "its provider states 600 a minute): rpm = 570 in its model config" in line
    learned = LearnedPace()
    feed(learned, 0.0, 1.5, 80.0, 7 / 8)
    assert "set rpm in its model config to the provider's limit" in learned.describe("m")
    few = LearnedPace()
    few.reply(0.0, True)
    assert few.describe("m").endswith("(rate limit; retried as max_retries allows)")


def test_when_most_replies_are_429s_the_pace_is_halved() -> None:
    pace = LearnedPace()
    t = feed(pace, 0.0, 1.5, 80.0, 7 / 8)
    before = pace.per_s
    assert before is not None
    feed(pace, t + 1.0, 1.2, before, 3 / 4)
    assert pace.cuts == 2
    assert pace.per_s is not None and 0 < pace.per_s <= 0.5 * before


def test_no_pacing_when_waits_are_scaled_to_nothing() -> None:
    pace = LearnedPace(scale=0.0)
    feed(pace, 0.0, 1.5, 80.0, 7 / 8)
    assert pace.per_s is not None and not pace.paced  # learned, but no wait


def test_the_pace_spaces_requests() -> None:
    pace = LearnedPace()
    feed(pace, time.monotonic() - 1.5, 1.5, 80.0, 7 / 8)
    per_s = pace.per_s
    assert per_s is not None

    async def five() -> float:
        t0 = time.monotonic()
        for _ in range(5):
            await pace.acquire()
        return time.monotonic() - t0

    assert asyncio.run(five()) >= 3.5 / per_s  # one banked, then one per 1/pace


def test_a_requests_tokens_come_back_when_it_requeues_for_the_pace() -> None:
    """A request that took its rpm token, then found the model paced, gives the token back
    (before, a configured rpm of 570 with a limit the answers state ran 23.3 s instead of 21)."""
    from pytest_modelrollout.providers.limits import TokenBucket

    async def main() -> float:
        bucket = TokenBucket(60.0, capacity=1.0)  # one a second, one banked
        await bucket.acquire(1.0)
        bucket.refund(1.0)
        bucket.refund(5.0)  # never over its capacity
        t0 = time.monotonic()
        await bucket.acquire(1.0)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 0.1


# ------------------------------------------------------------------------ the simulator's quota


def test_quota_rpm_and_concurrency() -> None:
    q = Quotas()
    # 120 rpm: 2 a second, 2 banked; a request turned away counts too
    assert [q.admit("m", 120, 0, 0.1, 0.0) for _ in range(2)] == [None, None]
    assert q.admit("m", 120, 0, 0.1, 0.0) == ("rpm", pytest.approx(1.0))
    assert q.admit("m", 120, 0, 0.1, 0.0) == ("rpm", pytest.approx(1.5))
    assert q.admit("m", 120, 0, 0.1, 2.0) is None
    assert q.admit("other", 120, 0, 0.1, 0.0) is None  # kept per model string
    # 2 in flight: a third waits until the first reply has gone
    assert q.admit("c", 0, 2, 1.0, 0.0) is None and q.admit("c", 0, 2, 1.0, 0.5) is None
    assert q.admit("c", 0, 2, 1.0, 0.6) == ("concurrency", pytest.approx(0.4))
    assert q.admit("c", 0, 2, 1.0, 1.01) is None


@dataclass(frozen=True)
class SimAt:
    base_url: str


@pytest.fixture(scope="module")
def sim() -> Iterator[SimAt]:
    """A simulator of this module's own, in a process of its own: its quotas count a request
    when it arrives. (In a thread of this process, a request waited for the GIL behind the
    in-process run's controller, and requests paced apart were counted together: a busy CI
    machine saw 429s that no provider would have sent.)"""
    proc, url = start_child()
    yield SimAt(url)
    stop_child(proc)


def _ask(client: httpx.Client, wire: str, model: str) -> httpx.Response:
    if wire == "openai":
        return client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}]})
    return client.post("/v1/messages", json={
        "model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_the_simulator_answers_429_over_the_quota_as_providers_do(
    sim: SimAt, wire: str
) -> None:
    model = f"stable?latency_ms=0&rpm_limit=120&jitter={'0' if wire == 'openai' else '0.0'}"
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        codes = [_ask(client, wire, model) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        stated = ("x-ratelimit-limit-requests" if wire == "openai"
                  else "anthropic-ratelimit-requests-limit")
        assert codes[0].headers[stated] == "120"  # with every answer, as they do
        limited = codes[2]
        assert int(limited.headers["retry-after"]) >= 1  # whole seconds
        if wire == "openai":
            assert limited.headers["x-ratelimit-limit-requests"] == "120"
            assert 900 <= int(limited.headers["retry-after-ms"]) <= 1000
            error = limited.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and "(RPM): Limit 120" in error["message"]
        else:
            assert limited.headers["anthropic-ratelimit-requests-limit"] == "120"
            assert limited.json()["error"]["type"] == "rate_limit_error"
        err = openai.classify_http_error(429, dict(limited.headers), limited.content)
        assert err.kind == "rate_limit" and getattr(err, "stated_rpm", None) == 120.0
        quiet = _ask(client, wire, model.replace("stable?", "stable?limit_headers=0&"))
        assert quiet.status_code == 200
        assert stated not in quiet.headers
        quiet = [_ask(client, wire, model.replace("stable?", "stable?limit_headers=0&"))
                 for _ in range(2)][-1]
        assert quiet.status_code == 429 and "retry-after" in quiet.headers
        assert openai.parse_stated_limits(dict(quiet.headers))[0] is None


def test_stated_rpm_headers() -> None:
    assert openai.parse_stated_limits({"X-RateLimit-Limit-Requests": "500"})[0] == 500.0
    assert openai.parse_stated_limits({"anthropic-ratelimit-requests-limit": "50"})[0] == 50.0
    assert openai.parse_stated_limits({"x-ratelimit-limit-requests": "many"})[0] is None
    assert openai.parse_stated_limits({"x-ratelimit-limit-requests": "0"})[0] is None


# ------------------------------------------------------------------------------- a model client


@pytest.mark.parametrize(("provider", "headers"), [("sim", 1), ("sim-anthropic", 1), ("sim", 0)],
                         ids=["stated", "stated-anthropic", "unstated"])
def test_a_client_keeps_to_a_quota_it_was_not_told(
    sim: SimAt, provider: str, headers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 calls at concurrency 8 against a 600 rpm quota (10 a second): before the pace,
    most of them failed after their retries; now each gets its answer. Where the provider
    states its limit with its answers, the first answers set the pace and no 429 comes (the
    first 8 requests fit in the provider's bank); where it does not, the 429s stay few and a
    call that got one has the latency of the attempt that was answered."""
    monkeypatch.delenv("MODELROLLOUT_BACKOFF_SCALE", raising=False)
    # the simulator keeps a quota per model string: each case its own (latency_ms=20 / 20.0)
    latency = "20" if provider == "sim" else "20.0"
    model = (f"{provider}:stable?latency_ms={latency}&jitter=0&rpm_limit=600"
             f"&limit_headers={headers}")
    cfg = parse_config({})
    registry = ModelRegistry(lambda ref: resolve_model(cfg, ref), set(),
                             {"MODELROLLOUT_SIM_URL": sim.base_url})

    results, wall = call_all(registry, model, [
        ChatRequest(messages=[{"role": "user", "content": f"order {i}"}]) for i in range(60)])
    assert [r.status for r in results] == ["ok"] * 60
    retried = [r for r in results if r.attempts > 1]
    if headers:
        assert len(retried) <= 2
    else:
        assert retried, "the quota turned some requests away"
        assert len(retried) <= 30  # the first ones, sent at once before the first 429 came
        assert max(r.latency_ms for r in retried) < 100  # not the 429 or the wait it asked for
    assert wall >= 4.0  # 10 banked, then 50 at no more than 10 a second


# ------------------------------------------------------------------------- the broker's pace


def test_the_broker_learns_the_pace_from_every_workers_replies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELROLLOUT_BACKOFF_SCALE", raising=False)
    broker = SlotBroker()
    broker.start()

    async def main() -> float:
        a, b = SlotClient(broker.address), SlotClient(broker.address)
        try:
            steps = [["l", "model m"], ["g", "model m", 8]]
            assert await a.acquire(steps) and await b.acquire(steps)
            # each worker sees half of the 429s, together over the share: 9.5 a second
            for i in range(8):
                (a if i % 2 else b).release([], ["model m", True, 600])
            a.release(["model m"], ["model m", False, None])
            b.release(["model m"], None)
            for _ in range(20):
                if "model m" in broker.paces and broker.paces["model m"].paced:
                    break
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            for _ in range(4):
                assert await a.acquire(steps)
                a.release(["model m"])
            return time.monotonic() - t0
        finally:
            await a.aclose()
            await b.aclose()

    try:
        waited = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        broker.close()
    assert broker.paces["model m"].per_s == pytest.approx(9.5)
    assert waited >= 3 / 9.5 - 0.02  # one banked, then one per 1/9.5 s
    assert _steps([["l", "model m"]]) == [["l", "model m"]]
    with pytest.raises(ValueError):
        _steps([["g", "model m"]])


# --------------------------------------------------------------------------- a suite, end to end

@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_a_suite_against_a_quota_gets_the_models_verdict(
    pytester: pytest.Pytester, sim: SimAt, monkeypatch: pytest.MonkeyPatch,
    xdist: list[str], request: pytest.FixtureRequest,
) -> None:
    """The candidate's provider allows 600 requests a minute and says so only with 429s
    (``limit_headers=0``), the config does not say so either:
    every test passes, its error rate is 0 and its p95 latency is the model's (the 429s and
    their waits are not in it), so no gate blocks it, as none blocks the same two models
    without a quota (before the pace: most candidate calls failed, BLOCKED)."""
    prompts = [f"Where is my order A-{1000 + i}?" for i in range(20)]
    prompts += [f"你好，我的订单 B-{2000 + i} 到哪了？" for i in range(20, 40)]
    result, report = run_quota_suite(
        pytester, sim, monkeypatch, xdist, request, prompts,
        'candidate = "sim:good?latency_ms=100&jitter=0&rpm_limit=600&limit_headers=0"\n')
    result.stdout.fnmatch_lines([
        "modelrollout: sim:good?*: its provider turned * away with HTTP 429 (rate limit; *"
        "the run kept to a pace from then on, * requests a minute at the end: set rpm in its "
        "model config to the provider's limit for this key*"
    ])
    wf = report["workflows"]["support"]
    assert wf["candidate"]["error_rate"] == 0.0 and wf["candidate"]["requests"] == 40
    calls = [c for c in report["records"]["calls"] if c["role"] == "candidate"]
    assert any(c["attempts"] > 1 for c in calls), "the quota turned some requests away"
    # a call that got a 429 waited 100 ms and more for its retry, plus the retry's 100 ms
    assert wf["candidate"]["latency_p95_ms"] < 180
    # no gate breached: READY, or INCONCLUSIVE where a loaded machine's noise reaches a gate
    assert report["verdict"] != "BLOCKED", result.stdout.str()[-3000:]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_a_limit_stated_in_one_run_paces_the_next_from_its_first_request(
    pytester: pytest.Pytester, sim: SimAt, monkeypatch: pytest.MonkeyPatch,
    xdist: list[str], request: pytest.FixtureRequest,
) -> None:
    """The candidate's provider allows 300 requests a minute (a second's worth banked) and
    says so with every answer. The first run's first burst (16 at once) goes before any answer
    has said it, and some are turned away; the limit is kept in pytest's cache, and the next
    run keeps to it from its first request: no 429 (each run went over it before)."""
    prompts = [f"Where is my order A-{1000 + i}?" for i in range(10)]
    prompts += [f"你好，我的订单 B-{2000 + i} 到哪了？" for i in range(10, 20)]
    rpm = 300 if not xdist else 301  # (the simulator keeps a quota per model string)
    candidate = ('candidate = "cand"\n\n[tool.modelrollout.models.cand]\nprovider = "sim"\n'
                 f'model = "good?latency_ms=100&jitter=0&rpm_limit={rpm}&limit_headers=1"\n'
                 "max_concurrency = 16\n")

    def turned_away(report: dict[str, Any]) -> int:
        return sum(c["attempts"] - 1 for c in report["records"]["calls"]
                   if c["role"] == "candidate")

    _, first = run_quota_suite(pytester, sim, monkeypatch, xdist, request, prompts, candidate,
                               cache=True)
    assert turned_away(first) > 0, "the first burst went over the quota"
    kept = json.loads(pytester.path.joinpath(
        ".pytest_cache", "v", "modelrollout", "stated-limits").read_text(encoding="utf-8"))
    assert [e["rpm"] for e in kept.values()] == [rpm]
    time.sleep(1.0)  # (a second between the runs: the quota's bank fills again)
    ran, second = run_quota_suite(pytester, sim, monkeypatch, xdist, request, prompts,
                                  candidate, "-v", cache=True)
    # (-v: on a failure, the run's lines on its head start and prefetch say what it did)
    said = [line for line in ran.outlines + ran.errlines
            if "modelrollout" in line or "head start" in line]  # (a broker lost: stderr)
    assert turned_away(second) == 0, said
    # without the cache (-p no:cacheprovider) nothing is kept: the first burst goes over again
    time.sleep(1.0)
    _, third = run_quota_suite(pytester, sim, monkeypatch, xdist, request, prompts, candidate)
    assert turned_away(third) > 0


def run_quota_suite(
    pytester: pytest.Pytester, sim: SimAt, monkeypatch: pytest.MonkeyPatch,
    xdist: list[str], request: pytest.FixtureRequest, prompts: list[str], candidate: str,
    *args: str, cache: bool = False,
) -> tuple[pytest.RunResult, dict[str, Any]]:
    """The prefetch tests' suite over ``prompts`` (one case each), the stable model at a fixed
    100 ms, the candidate as ``candidate`` (config lines after the stable's) against a quota:
    run with ``xdist`` (and ``args``); every test passes. The run's result and its JSON
    report."""
    if xdist:
        request.getfixturevalue("one_heavy_run_at_a_time")
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", sim.base_url)
    monkeypatch.delenv("MODELROLLOUT_BACKOFF_SCALE", raising=False)
    monkeypatch.delenv("MODELROLLOUT_KILLED", raising=False)
    pytester.makepyprojecttoml(
        '[tool.modelrollout]\nstable = "sim:stable?latency_ms=100&jitter=0"\n' + candidate)
    lines = [json.dumps({"id": f"c{i:02d}", "prompt": p}, ensure_ascii=False)
             for i, p in enumerate(prompts)]
    pytester.path.joinpath("cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pytester.makepyfile(test_suite=SUITE)  # the prefetch tests' suite
    result = pytester.runpytest(*([] if cache else ["-p", "no:cacheprovider"]),
                                "--rollout-report=r.json", *xdist, *args)
    result.assert_outcomes(passed=len(prompts))
    return result, json.loads(Path(pytester.path, "r.json").read_text(encoding="utf-8"))


def call_all(registry: ModelRegistry, ref: str, requests: list[ChatRequest],
             ) -> tuple[list[Any], float]:
    """Every request to ``ref`` at once (as many in flight as its limits allow); the results
    in order and the seconds they took, the registry closed."""

    async def main() -> list[Any]:
        client = registry.client(ref)
        try:
            return list(await asyncio.gather(*(client.call(r) for r in requests)))
        finally:
            await registry.aclose()

    t0 = time.monotonic()
    results = asyncio.run(main())
    return results, time.monotonic() - t0
