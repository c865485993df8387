"""Tokens-a-minute limits: the config's ``tpm`` and the limits a provider states.

A provider counts a request's tokens with its own tokenizer; the plugin estimates them before
the send (a token per CJK character, a quarter of one per other character), corrects the
estimate by the usage the answers report and settles each request's difference with the
limits when its answer comes. What a user depends on: with ``tpm`` set to the provider's quota
(or the quota stated in the answers' headers), a suite of Chinese and English prompts gets no
429, under xdist too, and the run still goes at about the quota's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_pace import call_all, run_quota_suite

from pytest_modelrollout.config import parse_config, resolve_model
from pytest_modelrollout.providers import openai
from pytest_modelrollout.providers.base import ChatRequest
from pytest_modelrollout.providers.client import ModelRegistry
from pytest_modelrollout.providers.limits import TokenBucket
from pytest_modelrollout.providers.slots import SlotBroker, SlotClient
from pytest_modelrollout.providers.tokens import TokenLimits, TokenMeter, raw_estimate
from pytest_modelrollout.sim import SimServer
from pytest_modelrollout.sim.server import Quotas

ZH = "我们的退货政策规定，商品在签收后三十天内可以申请退款，但需要保持包装完好并附上购买凭证。"
EN = ("Our return policy says that items can be refunded within thirty days of delivery, as "
      "long as the packaging is intact and the receipt is included. ")


def _req(text: str, **params: Any) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], params=params)


# ------------------------------------------------------------------------------ the estimate

def test_a_chinese_character_is_about_a_token_not_a_quarter_of_one() -> None:
    zh, en = raw_estimate(_req(ZH * 4)), raw_estimate(_req(EN * 4))
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in ZH * 4)
    assert han <= zh <= han + 60  # the Han characters, the punctuation and the JSON around them
    assert len(EN * 4) / 4 <= en <= len(EN * 4) / 4 + 30


def test_the_meter_learns_from_the_usage_the_answers_report() -> None:
    meter = TokenMeter()
    first = meter.reserve(_req(ZH), None)
    # before any answer the reply is reserved as long as the prompt
    assert first.amounts["otpm"] == first.amounts["itpm"] == pytest.approx(first.raw)
    owed = meter.settle(first, input_tokens=int(first.raw * 2), output_tokens=40)
    # the answer reported more input than estimated and a shorter reply: settled at once
    assert owed["itpm"] == pytest.approx(first.raw)
    assert owed["otpm"] == pytest.approx(40 - first.raw)
    assert owed["tpm"] == pytest.approx(first.raw * 2 + 40 - 2 * first.raw)
    nxt = meter.reserve(_req(ZH), None)
    assert meter.ratio == pytest.approx(2.0)
    assert nxt.amounts["itpm"] == pytest.approx(2 * nxt.raw)  # corrected by what it learned
    assert nxt.amounts["otpm"] == pytest.approx(40)  # the longest recent reply
    meter.settle(nxt, input_tokens=int(nxt.amounts["itpm"]), output_tokens=70)
    assert meter.reserve(_req(ZH), None).amounts["otpm"] == 70
    # never corrected below the estimate: an estimate too low sends bursts over the limit
    low = TokenMeter()
    low.settle(low.reserve(_req(EN), None), input_tokens=1, output_tokens=1)
    assert low.ratio == 1.0
    # max_tokens is the reply's reservation, and OpenAI's limit counts it in full
    capped = meter.reserve(_req(ZH, max_tokens=300), None)
    assert capped.amounts["otpm"] == 300
    owed = meter.settle(capped, input_tokens=int(capped.amounts["itpm"]), output_tokens=50)
    assert owed["tpm"] == pytest.approx(int(capped.amounts["itpm"]) - capped.amounts["itpm"])
    assert owed["otpm"] == pytest.approx(50 - 300)
    assert meter.settle(capped, None, 50) == {}  # no usage reported: nothing to settle
    # the Anthropic API: an answer's 1024 max_tokens (sent unless set) held until it comes,
    # then counted as it came
    anthropic = TokenMeter(default_max=1024, counts_max_tokens=False)
    held = anthropic.reserve(_req(ZH), None)
    assert held.amounts["otpm"] == 1024
    owed = anthropic.settle(held, input_tokens=int(held.amounts["itpm"]), output_tokens=50)
    assert owed["otpm"] == pytest.approx(50 - 1024)
    assert owed["tpm"] == pytest.approx(50 - 1024 + owed["itpm"])


def test_reads_from_the_prompt_cache_are_not_charged_to_the_input_limit() -> None:
    """Anthropic does not count a prompt's reads from its cache against the input tokens a
    minute: they are settled back, and the next reservations hold only the share the limits
    counted so far (charged in full, a cached 3,000-token prompt held 15 times its due)."""
    meter = TokenMeter(default_max=1024, counts_max_tokens=False)
    first = meter.reserve(_req(EN * 20), None)
    total = int(first.raw)
    owed = meter.settle(first, input_tokens=total, output_tokens=30,
                        limited_input=total // 10)
    assert owed["itpm"] == pytest.approx(total // 10 - first.amounts["itpm"])
    assert owed["tpm"] == pytest.approx(total // 10 + 30 - first.amounts["tpm"])
    assert meter.ratio == pytest.approx(1.0, abs=0.01)  # the estimate was right: all of it
    assert meter.limited_share == pytest.approx(0.1, abs=0.01)
    nxt = meter.reserve(_req(EN * 20), None)
    assert nxt.amounts["itpm"] == pytest.approx(first.raw * 0.1, rel=0.05)
    # an answer that reports no split (OpenAI: cached tokens count) is charged in full
    plain = TokenMeter()
    res = plain.reserve(_req(EN), None)
    assert plain.settle(res, int(res.raw), 10, None)["itpm"] == pytest.approx(
        int(res.raw) - res.amounts["itpm"])
    assert plain.limited_share == 1.0


def test_stated_limits_are_read_from_both_providers_headers() -> None:
    assert openai.parse_stated_limits({"X-RateLimit-Limit-Tokens": "30000",
                                       "x-ratelimit-limit-requests": "500"}) == (
        500.0, {"tpm": 30000.0})
    assert openai.parse_stated_limits({"anthropic-ratelimit-requests-limit": "50",
                                       "anthropic-ratelimit-input-tokens-limit": "40000",
                                       "anthropic-ratelimit-output-tokens-limit": "8000",
                                       "anthropic-ratelimit-tokens-limit": "8000"}) == (
        50.0, {"itpm": 40000.0, "otpm": 8000.0})
    assert openai.parse_stated_limits({"x-ratelimit-limit-tokens": "lots"}) == (None, None)
    limits = TokenLimits(configured_tpm=100_000)
    assert limits.state({"tpm": 60_000}) and limits.rates == {"tpm": pytest.approx(57_000)}
    assert not limits.state({"tpm": 60_000})  # said again: nothing changes
    assert limits.state({"tpm": 1_000_000}) and limits.rates["tpm"] == 100_000  # the config's
    limits.state({"itpm": 40_000, "otpm": 8_000})
    assert limits.rates["otpm"] == pytest.approx(7_600)
    # a limit learned from the answers starts with its bank spent: the requests before it
    # (sent while the limit was unknown) took it at the provider
    assert limits.buckets["otpm"]._tokens <= 0
    # an Anthropic model's buckets bank a minute's worth (an answer's max_tokens is held until
    # it comes): one learned from the answers starts a second's worth short
    anthropic = TokenLimits(None, bank_s=60.0)
    anthropic.state({"otpm": 8_000})
    bucket = anthropic.buckets["otpm"]
    assert bucket.capacity == pytest.approx(7_600)
    assert bucket._tokens == pytest.approx(7_600 - 7_600 / 60)


def test_a_request_larger_than_the_bank_waits_for_a_full_bucket_and_owes_the_rest() -> None:
    async def main() -> tuple[float, float]:
        bucket = TokenBucket(600, capacity=10)  # 10 a second, 10 banked
        t0 = time.monotonic()
        await bucket.acquire(30)  # at once (full), then owes 20
        first = time.monotonic() - t0
        await bucket.acquire(5)  # 20 owed + 5: 2.5 s at 10 a second
        return first, time.monotonic() - t0

    first, second = asyncio.run(main())
    assert first < 0.1
    assert second >= 2.4


def test_the_simulators_tokens_quotas() -> None:
    q = Quotas()
    # 600 tokens a minute: 10 a second, 10 banked; a request over the bank goes when it is full
    assert q.admit("m", 0, 0, 0.1, 0.0, {"tpm": (600, 25)}) is None
    assert q.admit("m", 0, 0, 0.1, 0.0, {"tpm": (600, 5)}) == ("tpm", pytest.approx(2.0))
    assert q.admit("m", 0, 0, 0.1, 2.0, {"tpm": (600, 5)}) is None  # the 429 cost nothing
    # input and output apart, as Anthropic's, banking a minute's worth: the output quota turns
    # the second away, and the input one is not charged for it
    assert q.admit("a", 0, 0, 0.1, 0.0, {"itpm": (600, 500), "otpm": (60, 50)}) is None
    assert q.admit("a", 0, 0, 0.1, 0.0, {"itpm": (600, 90), "otpm": (60, 20)})[0] == "otpm"
    assert q.admit("a", 0, 0, 0.1, 0.0, {"itpm": (600, 100), "otpm": (0, 20)}) is None
    assert q.admit("a", 0, 0, 0.1, 0.0, {"itpm": (600, 1)})[0] == "itpm"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    server = SimServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_the_simulator_states_its_tokens_limits_as_providers_do(sim: SimServer, wire: str) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        if wire == "openai":
            model = "stable?latency_ms=0&tpm_limit=600"
            ask = [client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": ZH}]}) for _ in range(2)]
            assert ask[0].status_code == 200
            assert ask[0].headers["x-ratelimit-limit-tokens"] == "600"
            limited = ask[1]
            assert limited.status_code == 429
            assert "tokens per min (TPM): Limit 600" in limited.json()["error"]["message"]
            assert limited.headers["x-ratelimit-remaining-tokens"] == "0"
        else:
            model = "stable?latency_ms=0.0&itpm_limit=60000&otpm_limit=60"
            ask = [client.post("/v1/messages", json={
                "model": model, "max_tokens": 500,
                "messages": [{"role": "user", "content": EN}]}) for _ in range(2)]
            assert ask[0].status_code == 200
            assert ask[0].headers["anthropic-ratelimit-input-tokens-limit"] == "60000"
            assert ask[0].headers["anthropic-ratelimit-output-tokens-limit"] == "60"
            limited = ask[1]
            assert limited.status_code == 429
            assert "60 output tokens per minute" in limited.json()["error"]["message"]
        err = openai.classify_http_error(429, dict(limited.headers), limited.content)
        assert err.kind == "rate_limit" and getattr(err, "stated_tokens", None)


POLICY = ("退货政策：商品在签收后三十天内可以申请退款，需保持包装完好并附上购买凭证。" * 60
          + "Refunds go to the original payment method within five working days. " * 40)


def _cached_ask(question: str) -> dict[str, Any]:
    return {"model": "stable?latency_ms=0.0", "max_tokens": 200, "system": [
        {"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": question}]}


def test_the_simulator_caches_a_prompt_at_its_breakpoint_as_anthropic_does(
    sim: SimServer,
) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        first, second = (client.post("/v1/messages", json=_cached_ask(q)).json()["usage"]
                         for q in ("Can B-2041 be refunded?", "订单 A-1001 可以退款吗？"))
        assert first["cache_creation_input_tokens"] >= 1024
        assert first["cache_read_input_tokens"] == 0
        assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
        assert second["cache_creation_input_tokens"] == 0
        assert 0 < second["input_tokens"] < 40  # only the question after the breakpoint
        short = _cached_ask("hi")
        short["system"][0]["text"] = "Be brief."  # under 1024 tokens: nothing is cached
        for _ in range(2):
            usage = client.post("/v1/messages", json=short).json()["usage"]
            assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
        plain = client.post("/v1/messages", json={**_cached_ask("x"), "system": POLICY})
        assert "cache_read_input_tokens" not in plain.json()["usage"]  # no breakpoint marked


CACHED_SUITE = """
import pytest

POLICY = {policy!r}
SYSTEM = {{"role": "system", "content": [
    {{"type": "text", "text": "You answer questions about refunds."}},
    {{"type": "text", "text": POLICY, "cache_control": {{"type": "ephemeral"}}}}]}}

@pytest.mark.workflow("refunds", system="a default the test's own system prompt replaces")
@pytest.mark.parametrize("q", ["Can B-2041 be refunded?", "订单 A-1001 可以退款吗？", "And A-7?"])
def test_refund(rollout, q):
    pair = rollout.ask([SYSTEM, {{"role": "user", "content": q}}])
    assert pair.stable.ok and pair.candidate.ok
"""


def test_a_system_prompt_in_parts_reaches_both_wires_as_it_is(
    pytester: pytest.Pytester, sim: SimServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rollout.ask([system message with content parts, user])``: each model gets the parts
    (its text, and the cache breakpoint a team marks in production), not their Python repr as
    one string (as before), and the workflow's default system prompt is replaced as by a text
    one. On the Anthropic wire the prompt is then cached from the second call on."""
    bodies: list[tuple[str, dict[str, Any]]] = []
    cached: list[int] = []  # the Anthropic answers' cache reads
    handle = sim.simulator.handle

    def seen(wire: Any, raw: bytes, headers: dict[str, str]) -> Any:
        bodies.append((wire, json.loads(raw)))
        response = handle(wire, raw, headers)
        if wire == "anthropic":
            cached.append(json.loads(response.body)["usage"]["cache_read_input_tokens"])
        return response

    monkeypatch.setattr(sim.simulator, "handle", seen)
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", sim.base_url)
    pytester.makepyprojecttoml(
        '[tool.modelrollout]\nstable = "sim:stable"\ncandidate = "cand"\n\n'
        '[tool.modelrollout.models.cand]\nprovider = "sim-anthropic"\n'
        'model = "good?latency_ms=0.0"\n')
    pytester.makepyfile(test_refund=CACHED_SUITE.format(policy=POLICY))
    pytester.runpytest("-p", "no:cacheprovider", "--rollout-no-gate").assert_outcomes(passed=3)
    policy = {"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral"}}
    intro = {"type": "text", "text": "You answer questions about refunds."}
    anthropic = [b for w, b in bodies if w == "anthropic"]
    openai_ = [b for w, b in bodies if w == "openai"]
    assert len(anthropic) == len(openai_) == 3
    for body in anthropic:
        assert body["system"] == [intro, policy]
    for body in openai_:
        assert body["messages"][0] == {"role": "system", "content": [intro, policy]}
        assert all(m["role"] != "system" for m in body["messages"][1:])
    # the first call writes the cache (those sent with it too); the next run reads it
    assert min(cached) == 0 and len(cached) == 3
    pytester.runpytest("-p", "no:cacheprovider", "--rollout-no-gate").assert_outcomes(passed=3)
    assert len(set(cached[3:])) == 1 and cached[3] >= 1024


# ------------------------------------------------------------------------- a client, end to end

def _prompts(n: int) -> list[str]:
    return [f"{ZH * 3}请问订单 B-{2000 + i} 可以退款吗？" if i % 2 else
            f"{EN * 3}Can order A-{1000 + i} be refunded?" for i in range(n)]


@pytest.mark.parametrize("how", ["tpm", "stated", "stated-anthropic"])
def test_a_client_keeps_under_a_tokens_quota(
    sim: SimServer, how: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 calls of Chinese and English prompts (about 250 tokens each, prompt and answer) at
    concurrency 8 against a quota of 60,000 tokens a minute (1,000 a second, a second's worth
    banked, as OpenAI's): with ``tpm`` at
    95 % of it in the config no request is turned away (counted as characters / 4, without
    the answers, as before, the Chinese prompts went over it); with the quota stated in the
    answers' headers only the first 8, sent before any answer said it, may be; and the calls
    take about as long as the quota allows. On the Anthropic wire the quota is in input and
    output tokens apart (60,000 and 30,000 a minute), and an answer holds its 1024 max_tokens
    until it comes, as Anthropic counts it."""
    monkeypatch.delenv("MODELROLLOUT_BACKOFF_SCALE", raising=False)
    headers = 0 if how == "tpm" else 1
    model = f"stable?latency_ms=50&jitter=0&tpm_limit=60000&limit_headers={headers}"
    provider = "sim"
    if how == "stated-anthropic":
        provider = "sim-anthropic"  # (its own quota: the model string differs)
        model = "stable?latency_ms=50.0&jitter=0.0&itpm_limit=60000&otpm_limit=30000"
    models: dict[str, Any] = {"q": {"provider": provider, "model": model, "max_concurrency": 8}}
    if how == "tpm":
        models["q"]["tpm"] = 57_000
    cfg = parse_config({"models": models})
    registry = ModelRegistry(lambda ref: resolve_model(cfg, ref), set(),
                             {"MODELROLLOUT_SIM_URL": sim.base_url})

    results, wall = call_all(registry, "q", [_req(p) for p in _prompts(40)])
    assert [r.status for r in results] == ["ok"] * 40
    if how == "tpm":
        assert [r.attempts for r in results] == [1] * 40, "a request went over the quota"
    else:
        assert all(r.attempts == 1 for r in results[8:]), "over the quota after the first 8"
    used = sum((r.response.input_tokens or 0) + (r.response.output_tokens or 0)
               for r in results)
    least = (used - 1000) / 1000  # a second's worth banked, then 1,000 a second
    if how == "stated-anthropic":
        # Anthropic's buckets bank a minute's worth: the 40 calls fit, and the 1024 tokens
        # each answer holds until it comes (of a minute's 30,000) do not make them wait for
        # each other (banked a second's worth, they went one at a time: 74 s)
        assert wall < 5.0
        return
    assert wall >= least * 0.9
    assert wall <= least * 1.6 + 1.5, (wall, least)


def test_a_cached_system_prompt_does_not_hold_back_an_anthropic_model(sim: SimServer) -> None:
    """40 questions under a 2,600-token system prompt cached at its breakpoint, against
    Anthropic input tokens of 60,000 a minute (stated in the answers): the cache's reads do
    not count, so the 40 fit in the minute and none is turned away. Charged as the prompt's
    whole input they were over 100,000: more than a minute's worth, and the last ones waited for it."""
    model = "stable?latency_ms=50.0&jitter=0.0&itpm_limit=60000&otpm_limit=60000"
    cfg = parse_config({"models": {"q": {"provider": "sim-anthropic", "model": model,
                                         "max_concurrency": 4}}})
    registry = ModelRegistry(lambda ref: resolve_model(cfg, ref), set(),
                             {"MODELROLLOUT_SIM_URL": sim.base_url})
    policy = {"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral"}}
    requests = [ChatRequest(messages=[{"role": "system", "content": [policy]},
                                      {"role": "user", "content": p[-30:]}],
                            params={"max_tokens": 100}) for p in _prompts(40)]
    results, wall = call_all(registry, "q", requests)
    assert [r.status for r in results] == ["ok"] * 40
    assert all(r.attempts == 1 for r in results), "turned away by the input limit"
    prompts = sum(r.response.input_tokens for r in results)
    counted = sum(r.response.limited_input_tokens for r in results)
    assert prompts > 60_000 > 4 * counted  # the whole prompts are over the minute's limit
    assert wall < 8.0, wall  # (charged in full: 25 s or more)


def test_the_broker_keeps_a_stated_limit_for_the_workers_that_have_not_seen_it() -> None:
    """One worker learned a limit (its step carries the rate), the other not yet (rate 0):
    both take from the same bucket, the second is told the rate with its grant; a reply's usage
    settles the difference; a claim (whose message names its test with ``t``) is not taken for
    a usage message."""
    broker = SlotBroker()
    broker.start()

    async def main() -> tuple[float, dict[str, float], str | None]:
        a, b = SlotClient(broker.address), SlotClient(broker.address)
        try:
            t0 = time.monotonic()
            assert await a.acquire([["l", "model m"], ["b", "tpm m", 600, -10, 10]])
            assert await b.acquire([["l", "model m"], ["b", "tpm m", 0, 0, 5]])
            waited = time.monotonic() - t0
            a.charge([["tpm m", -5.0]])  # the first took 5 more than its answer used
            assert await b.claim("t::x", "candidate", "m", "k", False) is None
            return waited, dict(b.rates), b.lost
        finally:
            await a.aclose()
            await b.aclose()

    try:
        waited, rates, lost = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        broker.close()
    # learned from the answers: started empty (capacity < 0), so 1 s for the first 10 at 10
    # a second, then 0.5 s for the second's 5
    assert waited >= 1.4
    assert rates == {"tpm m": 600.0}
    assert lost is None


# --------------------------------------------------------------------------- a suite, end to end



@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_a_suite_of_chinese_and_english_prompts_keeps_under_tpm(
    pytester: pytest.Pytester, sim: SimServer, monkeypatch: pytest.MonkeyPatch,
    xdist: list[str], request: pytest.FixtureRequest,
) -> None:
    """The candidate's provider allows 60,000 tokens a minute and does not say so; the
    config's ``tpm`` is 54,000 (90 %: room for a loaded machine's delays, which the provider's
    clock sees as requests closer together): every call is answered at its first attempt,
    with and without xdist (the workers share the limit at the controller), and the verdict is
    READY."""
    result, report = run_quota_suite(
        pytester, sim, monkeypatch, xdist, request, _prompts(24),
        'candidate = "cand"\n\n[tool.modelrollout.models.cand]\nprovider = "sim"\n'
        'model = "good?latency_ms=100&jitter=0&tpm_limit=60000&limit_headers=0"\n'
        "tpm = 54000\n", "-v")
    # with -v the run says what it kept the model to (under xdist, as the broker kept it)
    result.stdout.fnmatch_lines(["modelrollout: cand kept to tokens a minute: 54000 (prompt and "
                                 "answer)"])
    calls = [c for c in report["records"]["calls"] if c["role"] == "candidate"]
    assert len(calls) == 24 and all(c["status"] == "ok" for c in calls)
    assert [c["attempts"] for c in calls] == [1] * 24, "a request went over the quota"
    assert "HTTP 429" not in result.stdout.str()
    assert report["verdict"] != "BLOCKED", result.stdout.str()[-3000:]


def test_a_call_cancelled_while_it_waits_for_tokens_gives_its_slot_back(sim: SimServer) -> None:
    """A request takes its model's slot, then waits for its tokens: cancelled there (a test
    that ended, a run interrupted), the slot is free again for the calls behind it."""
    cfg = parse_config({"models": {"q": {
        "provider": "sim", "model": "stable?latency_ms=0", "max_concurrency": 1, "tpm": 60}}})
    registry = ModelRegistry(lambda ref: resolve_model(cfg, ref), set(),
                             {"MODELROLLOUT_SIM_URL": sim.base_url})

    async def main() -> int:
        client = registry.client("q")
        try:
            assert (await client.call(_req("hello"))).ok  # the bucket owes its tokens now
            waiting = asyncio.ensure_future(client.call(_req("hello again")))
            await asyncio.sleep(0.3)
            assert not waiting.done() and client.gate.in_flight == 1
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            return client.gate.in_flight
        finally:
            await registry.aclose()

    assert asyncio.run(asyncio.wait_for(main(), 20)) == 0
