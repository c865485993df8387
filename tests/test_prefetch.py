"""Prefetch (ahead-of-time calls): same records and verdict as a sequential run, no request sent
twice, unused results never recorded, deselected and killed items never called.

The simulator runs in this process (a :class:`SimServer` whose ``handle`` is wrapped to count
requests) and the pytester runs, in-process or as ``-n 2`` workers, reach it through
``MODELROLLOUT_SIM_URL``.
"""

from __future__ import annotations

import ast
import collections
import functools
import gc
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from pytest_modelrollout.headstart import OFF_CASSETTES
from pytest_modelrollout.prefetch import LIVE_MISMATCH, Prefetcher, _skipped_statically
from pytest_modelrollout.sim import SimServer

STABLE = "sim:stable?latency_ms=20&jitter=0"
CANDIDATE = "sim:good?latency_ms=20&jitter=0"
N_CASES = 12

CONFIG = f"""
[tool.modelrollout]
stable = "{STABLE}"
candidate = "{CANDIDATE}"
"""

SUITE = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support", system="You are a concise support agent.", params={"temperature": 0})
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_support(rollout, case):
    pair = rollout.ask(case)
    pair.expect_language("same_as_prompt")
    pair.expect_length(max_chars=2000)
"""

XDIST = pytest.mark.parametrize(
    "xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"], indirect=True
)


@pytest.fixture
def xdist(request: pytest.FixtureRequest) -> list[str]:
    """The xdist arguments of a run; a run with workers takes its turn with the other heavy
    runs (the example suites' READY, p95 gate included, must not see its load as latency)."""
    args: list[str] = request.param
    if args:
        request.getfixturevalue("one_heavy_run_at_a_time")
    return args


class CountingSim:
    """The simulator, counting requests by (model, messages, attempt)."""

    def __init__(self) -> None:
        self.server = SimServer().start()
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, messages) per request
        self.models: list[str] = []  # the model of each of those
        self.slow: dict[str, float] = {}  # text in the messages -> reply delay in seconds
        # with hold_in_handler, a reply's delay is spent in the handler, counted in flight
        # from the moment the request is handled until its reply goes out
        self.hold_in_handler = False
        self.in_flight = self.peak_in_flight = 0
        self._lock = threading.Lock()
        inner = self.server.simulator.handle

        def handle(wire: Any, raw: bytes, headers: dict[str, str]) -> Any:
            try:
                body = json.loads(raw)
                key = (
                    str(body.get("model")),
                    json.dumps(body.get("messages"), sort_keys=True),
                    headers.get("x-modelrollout-attempt", "0"),
                )
            except ValueError:
                key = ("?", "?", "?")
            with self._lock:
                self.seen[key] += 1
                self.arrivals.append((time.monotonic(), key[1]))
                self.models.append(key[0])
                delay = next((d for text, d in self.slow.items() if text in key[1]), None)
            resp = inner(wire, raw, headers)
            if delay is not None:
                resp.delay_s = delay
            if self.hold_in_handler:
                with self._lock:
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                time.sleep(resp.delay_s)
                resp.delay_s = 0.0
                with self._lock:
                    self.in_flight -= 1
            return resp

        self.server.simulator.handle = handle  # type: ignore[method-assign]
        self.accepted: list[float] = []  # monotonic time of each connection accepted
        httpd = self.server._httpd
        accept = httpd.process_request

        def process_request(request: Any, client_address: Any) -> None:
            with self._lock:
                self.accepted.append(time.monotonic())
            accept(request, client_address)

        httpd.process_request = process_request  # type: ignore[method-assign]

    def first_attempts(self, model: str | None = None) -> Counter[tuple[str, str, str]]:
        with self._lock:
            return Counter(
                {
                    k: v
                    for k, v in self.seen.items()
                    if k[2] == "0" and (model is None or k[0] == model)
                }
            )

    def total(self, model: str | None = None) -> int:
        return sum(self.first_attempts(model).values())

    def reset(self) -> None:
        self.settle_accepts()
        with self._lock:
            self.accepted.clear()
            self.seen.clear()
            self.arrivals.clear()
            self.models.clear()
            self.slow.clear()
            self.hold_in_handler = False
            self.peak_in_flight = 0

    def settle_accepts(self, quiet_s: float = 0.15, limit_s: float = 5.0) -> None:
        """Let the server accept what a run left in its listener's backlog (connections opened
        ahead and closed unused, with no request on them: the server thread, in the process
        that ran the tests, may get to them only after the run), so that they are counted in
        that run and not in the next."""
        deadline = time.monotonic() + limit_s
        last = -1
        while time.monotonic() < deadline:
            with self._lock:
                count = len(self.accepted)
            if count == last:
                return
            last = count
            time.sleep(quiet_s)


@pytest.fixture(scope="module")
def sim() -> Iterator[CountingSim]:
    s = CountingSim()
    yield s
    s.server.stop()


@pytest.fixture
def project(
    pytester: pytest.Pytester, sim: CountingSim, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    sim.reset()
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", sim.server.base_url)
    monkeypatch.setenv("MODELROLLOUT_BACKOFF_SCALE", "0.01")
    monkeypatch.delenv("MODELROLLOUT_KILLED", raising=False)
    pytester.makepyprojecttoml(CONFIG)
    lines = [
        json.dumps({"id": f"c{i:02d}", "prompt": f"Where is my order A-{1000 + i}? It is late."})
        for i in range(N_CASES // 2)
    ] + [
        json.dumps({"id": f"c{i:02d}", "prompt": f"你好，我的订单 B-{2000 + i} 什么时候到？"})
        for i in range(N_CASES // 2, N_CASES)
    ]
    pytester.path.joinpath("cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pytester


def _report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _essentials(report: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on prefetch or xdist (latencies aside)."""
    out: dict[str, Any] = {"verdict": report["verdict"]}
    for name, wf in report["workflows"].items():
        out[name] = {
            "verdict": wf["verdict"],
            "checks": wf["checks"],
            **{
                role: {
                    k: wf[role][k]
                    for k in (
                        "requests",
                        "success_rate",
                        "error_rate",
                        "input_tokens",
                        "output_tokens",
                        "validation_pass_rate",
                        "check_pass_rates",
                    )
                }
                for role in ("stable", "candidate")
            },
        }
    return out


def _write_cases(project: pytest.Pytester, rows: list[dict[str, Any]]) -> None:
    """The project's ``cases.jsonl``: one JSON line per row."""
    project.path.joinpath("cases.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest("-p", "no:cacheprovider", "--rollout-allow-inconclusive", *args)


@XDIST
def test_same_results_with_and_without_prefetch(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    project.makepyfile(test_suite=SUITE)
    _run(project, *xdist, "--rollout-no-prefetch", "--rollout-report=off.json").assert_outcomes(
        passed=N_CASES
    )
    off_counts = sim.first_attempts()
    sim.reset()
    _run(project, *xdist, "--rollout-report=on.json").assert_outcomes(passed=N_CASES)
    on_counts = sim.first_attempts()
    assert _essentials(_report(project.path / "on.json")) == _essentials(
        _report(project.path / "off.json")
    )
    # every request exactly once, with and without prefetch
    assert len(on_counts) == 2 * N_CASES
    assert set(on_counts.values()) == {1}
    assert on_counts == off_counts


@pytest.mark.parametrize("concurrency", [[], ["--rollout-concurrency=1"]], ids=["16", "1"])
def test_prefetch_is_used_and_reported(
    project: pytest.Pytester, sim: CountingSim, concurrency: list[str]
) -> None:
    """With concurrency 1 the window (4 calls) is smaller than the suite: it must slide."""
    project.makepyfile(test_suite=SUITE)
    result = _run(project, "-v", *concurrency)
    result.assert_outcomes(passed=N_CASES)
    result.stdout.fnmatch_lines(
        [f"modelrollout prefetch: {2 * N_CASES} calls sent ahead*{2 * N_CASES} used, 0 unused*"]
    )
    assert sim.total() == 2 * N_CASES


PROMPTS = [f"Where is my order A-{1000 + i}? It is late." for i in range(N_CASES // 2)] + [
    f"你好，我的订单 B-{2000 + i} 什么时候到？" for i in range(N_CASES // 2)
]


@pytest.mark.parametrize(
    ("signature", "ask"),
    [
        ('"prompt", PROMPTS', "rollout.ask(prompt)"),  # prompt strings in the test file
        ('"messages", [[{"role": "user", "content": p}] for p in PROMPTS]',
         "rollout.ask(messages)"),  # chat message lists
        ('"row", cases("cases.jsonl")', "rollout.ask(row)"),  # a case under another name
        ('"example", [{"prompt": p, "expect": "order"} for p in PROMPTS]',
         'rollout.ask(example["prompt"])'),  # an item of a dict parameter
        ('"case", cases("cases.jsonl")', "rollout.ask(case.prompt)"),  # a case's field
        ('"text", PROMPTS', 'rollout.ask(f"Customer message: {text}")'),  # an f-string
        # built in a local name, from the module's constants
        ('"text", PROMPTS', 'prompt = PREFIX + text\n    pair = rollout.ask(prompt)'),
        ('"case", cases("cases.jsonl")',
         'prompt = TEMPLATE.format(lang="en", text=case.prompt)\n    pair = rollout.ask(prompt)'),
        ('"text", PROMPTS', 'messages = [{"role": "user", "content": PREFIX + text}]\n'
         '    pair = rollout.ask(messages)'),
        ('"row", [Row(p) for p in PROMPTS]', "rollout.ask(row.prompt)"),  # a NamedTuple's field
    ],
    ids=["strings", "messages", "case-named-row", "dict-item", "case-field", "f-string",
         "local-sum", "local-template", "local-messages", "namedtuple-field"],
)  # fmt: skip
@XDIST
def test_prompts_the_tests_are_parametrized_with_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, signature: str, ask: str, xdist: list[str]
) -> None:
    """Known at collection as much as a case from cases(): a prompt string or message list
    the test passes to ask() (a parameter, or an item or field read from one, or built from
    them in the test), or a case under any parameter name. Same requests and results as without prefetch, each sent once, all of
    them ahead of their tests."""
    body = f"""
from typing import NamedTuple

import pytest
from pytest_modelrollout import cases

PROMPTS = {PROMPTS!r}
PREFIX = "Customer message: "
TEMPLATE = "Customer message ({{lang}}): {{text}}"

class Row(NamedTuple):
    prompt: str

@pytest.mark.workflow("support", system="You are a concise support agent.")
@pytest.mark.parametrize({signature})
def test_asks(rollout, {signature.split('"')[1]}):
    {ask if "pair = " in ask else "pair = " + ask}
    pair.expect_language("same_as_prompt")
"""
    project.makepyfile(test_suite=body)
    off_counts, on = _without_and_with_prefetch(project, sim, xdist)
    assert set(off_counts.values()) == {1} and len(off_counts) == 2 * N_CASES
    on.stdout.fnmatch_lines(
        [f"modelrollout prefetch*: {2 * N_CASES} calls sent ahead*{2 * N_CASES} used, 0 unused*"]
    )


def _without_and_with_prefetch(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> tuple[Counter[tuple[str, str, str]], pytest.RunResult]:
    """The suite run sequentially, then with prefetch (``-v``): every test passes both times,
    each request is sent as often, and the results are the same. Returns the requests the
    sequential run sent, and the prefetched run."""
    off = _run(project, *xdist, "--rollout-no-prefetch", "--rollout-report=off.json")
    off.assert_outcomes(passed=N_CASES)
    off_counts = sim.first_attempts()
    sim.reset()
    on = _run(project, *xdist, "-v", "--rollout-report=on.json")
    on.assert_outcomes(passed=N_CASES)
    assert sim.first_attempts() == off_counts
    assert _essentials(_report(project.path / "on.json")) == _essentials(
        _report(project.path / "off.json")
    )
    return off_counts, on


BOTH = 'rollout.ask(case.prompt, system="Answer in Chinese.")'
# a test that asks twice: the first ask, then ``second``
TWICE = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support", system="Be brief.")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_twice(rollout, case):
    first = rollout.ask(case)
    assert first.stable.ok and first.candidate.ok
    {second}
"""


@pytest.mark.parametrize(
    ("second", "ahead", "workers"),
    [(BOTH, 2, []), (BOTH, 2, ["-n", "2"]),  # another ask, both models
     ('rollout.candidate.ask(case.prompt + " Be brief.")', 1, []),  # the candidate only
     # reads a reply: ahead, once that reply is in
     ("rollout.ask(first.candidate.text)", 2, []),
     ("rollout.ask(case)", 2, [])],  # the same ask again: ahead, after the first reply
    ids=["both", "both-xdist-2", "candidate", "reads-a-reply", "repeat"],
)  # fmt: skip
def test_later_asks_the_test_always_makes_are_sent_ahead_too(
    project: pytest.Pytester,
    sim: CountingSim,
    second: str,
    ahead: int,
    workers: list[str],
    request: pytest.FixtureRequest,
) -> None:
    """A test that asks twice: the second ask goes ahead with the first when it is read in full
    and nothing before it may end the test (an assert still can); the same ask again goes ahead
    too, sent once the first has its reply (as the test asks it), and so does one that reads
    the first reply (before, it was asked live, after it). Same requests and results as without
    prefetch, each sent as often."""
    # a reply as the prompt makes the candidate's p95 latency close to its gate, where this
    # machine's scheduling noise decides the verdict: the latency gate is left out here
    project.makepyprojecttoml(
        CONFIG + "\n[tool.modelrollout.gates]\nmax_p95_latency_increase = 10.0\n"
    )
    project.makepyfile(test_suite=TWICE.format(second=second))
    if workers:
        request.getfixturevalue("one_heavy_run_at_a_time")
    _, on = _without_and_with_prefetch(project, sim, workers)
    sent = (2 + ahead) * N_CASES
    on.stdout.fnmatch_lines([f"modelrollout prefetch*: {sent} calls sent ahead*{sent} used, 0 unused*"])


@XDIST
def test_the_same_ask_again_is_sent_ahead_once_the_first_has_its_reply(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A repeatability test asks the same request again to compare the replies (``for _ in
    range(REPEATS - 1): rollout.ask(case)``). Each repeat is sent ahead of its test, but only
    once the one before it has its reply, as the test asks it: the provider sees the requests
    in the same order as in a sequential run (a prompt cache answers the repeat), and every
    test finds its repeats answered. Before, the repeats were asked by the test, one model
    latency each, one test at a time (the example suites' triage tests: 128 of 535 requests,
    half of their wall time). Under xdist the controller does not send repeats; a worker sends
    them after the first reply too."""
    project.makepyprojecttoml(
        CONFIG.replace("latency_ms=20", "latency_ms=150") + "\nconcurrency = 16\n")
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        REPEATS = 3

        @pytest.mark.workflow("support", system="Route the ticket.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_repeatable(rollout, case):
            first = rollout.ask(case)
            for _ in range(REPEATS - 1):
                again = rollout.ask(case)
                assert again.candidate.text == first.candidate.text
        """
    )
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=N_CASES)
    seen = sim.first_attempts()
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {3}  # each request, three times
    if not xdist:
        assert "run live:" not in result.stdout.str()
        calls = 6 * N_CASES
        result.stdout.fnmatch_lines(
            [f"modelrollout prefetch: {calls} calls sent ahead of their tests, {calls} used, "
             "0 unused*"])
    # a request's sends (both models, three times each) come in three rounds, each a model
    # latency (150 ms) after the one before: a repeat never leaves before the reply before it
    sends: dict[str, list[float]] = collections.defaultdict(list)
    for at, messages in sim.arrivals:
        sends[messages].append(at)
    assert len(sends) == N_CASES
    for times in sends.values():
        times.sort()
        assert len(times) == 6, times
        assert times[2] - times[0] >= 0.14 and times[4] - times[2] >= 0.14, times


CONVERSATIONS = """
import pytest
from pytest_modelrollout import cases

SYSTEM = "You are a concise support agent."

@pytest.mark.workflow("support")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_conversation(rollout, case):
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in case.meta["turns"]:
        messages.append({"role": "user", "content": turn})
        pair = rollout.ask(messages)
        pair.expect_language("same_as_prompt")
        messages.append({"role": "assistant", "content": pair.candidate.text})

@pytest.mark.workflow("support")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_candidate_conversation(candidate, case):
    messages = []
    for i, turn in enumerate(case.meta["turns"]):
        messages += [{"role": "user", "content": turn.strip()}]
        reply = candidate.ask(messages, temperature=0)
        assert reply.ok
        if i == 0:
            reply.expect_language("same_as_prompt")
        said = reply.text
        messages.append({"role": "assistant", "content": said})

@pytest.mark.workflow("support")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_followed_up(rollout, case):
    first = rollout.ask(case.prompt, system="Answer in one sentence.")
    first.expect_language("same_as_prompt")
    again = rollout.ask([{"role": "user", "content": case.prompt},
                         {"role": "assistant", "content": first.stable.text},
                         {"role": "user", "content": "Shorter, please."}])
    again.expect_language("same_as_prompt")

@pytest.mark.workflow("support", system="Be brief.")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_own_conversations(rollout, case):
    stable_messages = []
    for turn in case.meta["turns"]:
        stable_messages.append({"role": "user", "content": turn})
        reply = rollout.stable.ask(stable_messages)
        stable_messages.append({"role": "assistant", "content": reply.text})
    candidate_messages = []
    for turn in case.meta["turns"]:
        candidate_messages.append({"role": "user", "content": turn})
        answer = rollout.candidate.ask(candidate_messages)
        answer.expect_language("same_as_prompt")
        candidate_messages.append({"role": "assistant", "content": answer.text})
"""


@XDIST
def test_a_conversations_later_turns_are_sent_ahead_once_the_replies_they_hold_are_in(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A chatbot's multi-turn test: each turn appends the user's message, asks, and appends
    the reply it got (``pair.candidate.text``, ``reply.text``), so what a later turn asks is
    only known once the turn before has its reply; each model continuing its own
    conversation, a loop per model (both ``for turn in ...``); and a follow-up that holds the
    first reply (``first.stable.text``). Each later turn is sent ahead of its test as soon as the
    replies it holds are in, so the tests' conversations run side by side; before, only the
    first turn was, and every later one took a model latency in its test, one test at a time.
    Every request is sent once, after the reply before it, nothing is wasted (a case with two
    turns has no third sent), and the report is the one a run without prefetch writes."""
    # (the latency gate left out: this machine's load, not the models, would decide it)
    project.makepyprojecttoml(
        CONFIG.replace("latency_ms=20", "latency_ms=60") + "\nconcurrency = 16\n"
        "\n[tool.modelrollout.gates]\nmax_p95_latency_increase = 10.0\n")
    rows = []
    for i in range(N_CASES):
        turns = ([f"Where is my order A-{1000 + i}?", "It was due last week.",
                  "Can you refund it?"] if i % 2 else
                 [f"我的订单 B-{2000 + i} 在哪里？", "已经晚了一周。", "可以退款吗？"])
        rows.append({"id": f"c{i:02d}", "prompt": turns[0],
                     "meta": {"turns": turns[: 2 + (i % 3 > 0)]}})
    _write_cases(project, rows)
    project.makepyfile(test_suite=CONVERSATIONS)
    turns = sum(len(row["meta"]["turns"]) for row in rows)
    # the pair's two models, the candidate's conversation, the follow-up's two asks, each
    # model's own conversation
    calls = 3 * turns + 4 * N_CASES + 2 * turns
    result = _run(project, "-v", *xdist, "--rollout-report=on.json")
    result.assert_outcomes(passed=4 * N_CASES)
    assert "run live:" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [f"modelrollout prefetch*: {calls} calls sent ahead of their tests, {calls} used, "
         "0 unused*"])
    seen = sim.first_attempts()
    assert len(seen) == calls and set(seen.values()) == {1}
    # a later ask leaves once the reply it holds is in: a model latency (60 ms) after the ask
    # that reply answers (the turn before; the follow-up's first ask) was sent
    sent: dict[str, list[float]] = collections.defaultdict(list)
    for at, messages in sim.arrivals:
        sent[messages].append(at)
    later = 0
    for (at, messages), model in zip(sim.arrivals, sim.models, strict=True):
        history = json.loads(messages)
        if any(m["role"] == "assistant" for m in history):
            last = max(i for i, m in enumerate(history) if m["role"] == "assistant")
            earlier = history[:last]
            if history[-1]["content"] == "Shorter, please.":
                earlier = [{"role": "system", "content": "Answer in one sentence."}, history[0]]
            assert at - min(sent[json.dumps(earlier, sort_keys=True)]) >= 0.05, (model, history)
            later += 1
    assert later == calls - 7 * N_CASES  # (every ask but the first of each conversation)
    sim.reset()
    _run(project, *xdist, "--rollout-no-prefetch", "--rollout-report=off.json").assert_outcomes(
        passed=4 * N_CASES)
    assert sim.first_attempts() == seen
    assert _essentials(_report(project.path / "on.json")) == _essentials(
        _report(project.path / "off.json"))


def test_a_conversations_later_turn_its_test_ends_before_is_not_sent(
    project: pytest.Pytester, sim: CountingSim, caplog: pytest.LogCaptureFixture
) -> None:
    """A test that fails before its conversation while its first turn is still out: the
    first turn's calls were sent for nothing (counted unused), but its second turn, waiting
    for their replies, is never sent, and is not counted as sent."""
    _write_cases(project, [
        {"id": "c00", "prompt": "Hello", "meta": {"ok": True, "turns": ["Hello", "Thanks"]}},
        {"id": "c01", "prompt": "Slow hello",
         "meta": {"ok": False, "turns": ["Slow hello", "Never asked"]}},
    ])
    sim.slow["Slow hello"] = 1.0
    project.makepyfile(test_suite="""
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_conversation(rollout, case):
            assert case.meta["ok"]
            messages = []
            for turn in case.meta["turns"]:
                messages.append({"role": "user", "content": turn})
                pair = rollout.ask(messages)
                messages.append({"role": "assistant", "content": pair.candidate.text})
        """)
    result = _run(project, "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["modelrollout prefetch: 6 calls sent ahead of their tests, 4 used, 2 unused*"])
    assert not [key for key in sim.first_attempts() if "Never asked" in key[1]]
    # (dropped as it found it would not be sent: asyncio does not log it as never retrieved)
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_later_asks_a_failing_assert_skips_stop_being_sent_ahead(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """An assert that fails before the second ask: that call is wasted, for two tests, then
    only the first asks of the function are sent ahead. (Each test takes 0.2 s before its
    assert, so that its second ask has left when it fails: one that had not would be dropped
    unsent, and nothing would be wasted.)"""
    project.makepyfile(
        test_suite="""
        import time

        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_twice(rollout, case):
            first = rollout.ask(case)
            time.sleep(0.2)
            assert first.candidate.text == "never"
            rollout.ask(case.prompt, system="Answer in Chinese.")
        """
    )
    _run(project, "--rollout-concurrency=1", "--rollout-allow-inconclusive").assert_outcomes(
        failed=N_CASES
    )
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    wasted = sum(seen.values()) - 2 * N_CASES
    assert 0 < wasted <= 2 * 4, wasted  # two tests' later asks, and those already in flight


@pytest.mark.parametrize(
    ("fixture", "ahead"),
    [("return request.param", True),  # the usual parametrized fixture
     ('"""A customer message."""\n    return "Customer message: " + request.param', True),
     ("yield request.param", True),
     ("return rephrase(request.param)", True),  # a function of the module, read from its source
     # statements before what it gives, and a teardown after its yield
     ('text = request.param.strip()\n    if text.endswith("?"):\n        text += " Thanks."\n'
      '    yield text\n    print("torn down")', True),
     ("return reworded(request.param)", False)],  # not known: run live, nothing wasted
    ids=["identity", "built", "yield", "helper", "teardown", "unread"],
)  # fmt: skip
@XDIST
def test_prompts_a_parametrized_fixture_gives_the_tests_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, fixture: str, ahead: bool, xdist: list[str]
) -> None:
    """``@pytest.fixture(params=PROMPTS)``: the test gets what the fixture returns, read from
    its source when that is all it does; before, the parameter itself was sent ahead, and every
    call was wasted and sent again by the test."""
    project.makepyfile(
        test_suite=f"""
import pytest

def rephrase(text):
    return "Customer message: " + text

def reworded(text):
    words = text.swapcase().split()  # (str.swapcase: not read)
    return "Customer message: " + " ".join(words)

@pytest.fixture(params={PROMPTS!r})
def prompt(request):
    {fixture}

@pytest.mark.workflow("support", system="You are a concise support agent.")
def test_asks(rollout, prompt):
    pair = rollout.ask(prompt)
    assert pair.stable.ok and pair.candidate.ok
"""
    )
    result = _run(project, *xdist, "-v")
    result.assert_outcomes(passed=N_CASES)
    seen = sim.first_attempts()
    assert sum(seen.values()) == 2 * N_CASES and set(seen.values()) == {1}
    sent = 2 * N_CASES if ahead else 0
    result.stdout.fnmatch_lines(
        [f"modelrollout prefetch*: {sent} calls sent ahead*{sent} used, 0 unused*"]
    )


def test_prompts_written_in_the_tests_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """Hand-written tests, one prompt each: they run concurrently, not one after the other."""
    tests = "\n".join(
        f"""
@pytest.mark.workflow("support", system="You are a concise support agent.")
def test_{i}(rollout):
    pair = rollout.ask({prompt!r}{{more}})
    assert pair.stable.ok and pair.candidate.ok
"""
        for i, prompt in enumerate(PROMPTS)
    )
    project.makepyfile(test_suite="import pytest\n" + tests.format(more=""))
    result = _run(project, "-v")
    result.assert_outcomes(passed=N_CASES)
    result.stdout.fnmatch_lines(
        [f"modelrollout prefetch: {2 * N_CASES} calls sent ahead*{2 * N_CASES} used, 0 unused*"]
    )
    assert set(sim.first_attempts().values()) == {1}
    # asked with other arguments than the marker's: not probed, a probe would only be wasted
    sim.reset()
    single = """
@pytest.mark.workflow("support", system="You are a concise support agent.")
@pytest.mark.parametrize("prompt", ["Where is my order A-1?"])
def test_single(rollout, prompt):
    pair = rollout.ask(prompt, system="x")
    assert pair.stable.ok and pair.candidate.ok
"""  # parametrized, but with one test: no probe either
    project.makepyfile(
        test_suite="import pytest\n" + tests.format(more=", system='x'") + single
    )
    _run(project).assert_outcomes(passed=N_CASES + 1)
    seen = sim.first_attempts()
    assert sum(seen.values()) == 2 * (N_CASES + 1) and set(seen.values()) == {1}


@pytest.mark.parametrize(
    ("parameter", "prompt"),
    [(f'"prompt", {PROMPTS!r}', "prompt"),
     ('"case", cases("cases.jsonl")', "case.prompt")],  # the contract's own example
    ids=["string", "case-field"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("system", "read"),
    [('"You are a concise support agent."', True), ("SYSTEM", True),
     ("support_prompt()", True),  # a function of the module, read from its source
     ("chosen_prompt()", False)],  # it calls another library: learned from the first test
    ids=["literal", "constant", "call", "library-call"],
)  # fmt: skip
def test_a_prompt_asked_with_other_arguments_is_sent_ahead_with_them(
    project: pytest.Pytester,
    sim: CountingSim,
    parameter: str,
    prompt: str,
    system: str,
    read: bool,
) -> None:
    """``rollout.ask(case.prompt, system=...)``: arguments read from the source go with every
    test's request, no probe (a function of the module is read from its source); arguments
    that cannot be read (a function calling another library) are learned after one
    probe per model with the marker's arguments (before, for the case's field, every test's
    probe was wasted)."""
    project.makepyfile(
        test_suite=f"""
        import os
        import random

        import pytest
        from pytest_modelrollout import cases

        SYSTEM = "You are a concise support agent."

        def support_prompt():
            return SYSTEM

        def chosen_prompt():
            return random.choice([SYSTEM])  # (another library's: not read)

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize({parameter})
        def test_asks(rollout, {parameter.split('"')[1]}):
            pair = rollout.ask({prompt}, system={system}, temperature=0)
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    result = _run(project, "-v")
    result.assert_outcomes(passed=N_CASES)
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    wasted = sum(seen.values()) - 2 * N_CASES
    if read:
        assert wasted == 0
        result.stdout.fnmatch_lines([f"*calls sent ahead*{2 * N_CASES} used, 0 unused*"])
    else:
        assert wasted <= 2  # the probe with the marker's system
        # the rest went ahead with the learned system prompt
        result.stdout.fnmatch_lines([f"*calls sent ahead*{2 * (N_CASES - 1)} used*"])


def test_keywords_given_as_a_mapping_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """``rollout.ask(case.prompt, system="Be brief.", **GENERATION)``, a dict of the module
    with the sampling parameters: read as the ask's keywords, every call goes ahead with them
    and is used (a request sent without them would not be the test's). Before, a ``**mapping``
    was not read: the first test's calls were probes, and the others went ahead with what
    they learned."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        GENERATION = {"temperature": 0, "max_tokens": 300}

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_generation(rollout, case):
            pair = rollout.ask(case.prompt, system="Be brief.", **GENERATION)
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    result = _run(project, "-v")
    result.assert_outcomes(passed=N_CASES)
    _every_call_went_ahead(result, sim, 2 * N_CASES)


def test_the_progress_total_counts_the_calls_that_may_be_sent_ahead(
    project: pytest.Pytester,
) -> None:
    from pytest_modelrollout.prefetch import prefetchable

    source = """
        import pytest

        @pytest.mark.workflow("support")
        def test_plain(rollout):
            rollout.ask("Hello")

        @pytest.mark.workflow("support")
        def test_other_arguments(rollout):
            rollout.ask("Hello", system="x")  # read from the source

        @pytest.mark.workflow("support")
        def test_twice(rollout):
            rollout.ask("Hello")
            rollout.candidate.ask("Hi")  # a later ask, the candidate only
            rollout.ask("Hello")  # a repeat: asked after the first reply

        @pytest.mark.workflow("support")
        def test_unknown_arguments(rollout):
            rollout.ask("Hello", system=str(rollout))  # on its own: never probed

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("p", ["a", "b"])
        def test_probed(candidate, p):
            candidate.ask(p, system="x")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("n", [1, 2])
        def test_not_a_prompt(rollout, n):
            rollout.ask(n)

        @pytest.fixture
        def prompt(request):
            return request.param + " (rephrased by a fixture)"

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("prompt", ["a", "b"], indirect=True)
        def test_indirect(rollout, prompt):
            rollout.ask(prompt)  # the fixture's value, read from its source

        def rephrase(text):
            while not text.endswith("?"):  # a loop: not read
                text += "?"
            return text

        @pytest.fixture
        def question(request):
            return rephrase(request.param)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", ["a", "b"], indirect=True)
        def test_unread(rollout, question):
            rollout.ask(question)  # what the fixture makes of it is not known

        def test_no_workflow():
            pass
        """
    # syrupy's session hooks do not run on pytester's bare collection
    module = project.getmodulecol(source, configargs=("-p", "no:syrupy"))
    items = project.genitems([module])
    assert {item.name: prefetchable(item) for item in items} == {
        "test_plain": 2, "test_other_arguments": 2, "test_twice": 3, "test_unknown_arguments": 0,
        "test_probed[a]": 1, "test_probed[b]": 1,
        "test_not_a_prompt[1]": 0, "test_not_a_prompt[2]": 0, "test_indirect[a]": 2,
        "test_indirect[b]": 2, "test_unread[a]": 0, "test_unread[b]": 0, "test_no_workflow": 0,
    }  # fmt: skip


@XDIST
def test_the_verbose_summary_says_which_test_functions_run_live_and_why(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """Under xdist too: the workers' counts and lists, added up by the controller."""
    project.makepyfile(
        test_suite=f"""
        import os
        import random
        import pytest
        from pytest_modelrollout import cases

        def urgent(prompt):
            while not prompt.endswith("!"):  # a while loop: not read
                prompt += "!"
            return prompt

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_ahead(rollout, case):
            rollout.ask(case)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("prompt", {PROMPTS!r})
        def test_computed(rollout, prompt):
            rollout.ask(urgent(prompt))

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_rephrased(rollout, case):  # (its probes learn the "!" it adds: sent ahead)
            rollout.ask(urgent(case.prompt))

        def cut(prompt):
            while len(prompt) > 10:  # a while loop: not read
                prompt = prompt[1:]
            return prompt

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_cut(rollout, case):
            rollout.ask(cut(case.prompt))

        def brief():
            return random.choice(["Be brief."])  # another library's: not read

        @pytest.mark.workflow("support")
        def test_alone(rollout):
            rollout.ask("Hello", system=brief())

        @pytest.mark.workflow("support")
        def test_built_here(rollout):
            prompt = "Hello ".center(20)
            rollout.ask(prompt)

        def ask_twice(rollout, text):
            return rollout.ask(text), rollout.ask(text)

        @pytest.mark.workflow("support")
        def test_in_a_helper(rollout):  # (one test: not probed)
            ask_twice(rollout, "a")

        @pytest.fixture
        def greeting():
            return random.choice(["Hello"])  # another library's: not read

        @pytest.mark.workflow("support")
        def test_from_a_fixture(rollout, greeting):
            rollout.ask(greeting)

        @pytest.mark.workflow("support")
        def test_styled(rollout, greeting):
            rollout.ask("Hi", system=greeting)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_by_machine(rollout, case):
            if os.cpu_count() > 512:  # not read
                rollout.ask(case.prompt + " (big machine)")
            else:
                rollout.ask(case.prompt.swapcase())
        """
    )
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=5 * N_CASES + 5)
    workers = " (2 xdist workers)" if xdist else ""
    lines = project.path.joinpath("test_suite.py").read_text(encoding="utf-8").splitlines()
    unknown = "its first ask's request is not known before the test runs"
    # what to change, with the line in the test file
    built = lines.index('    prompt = "Hello ".center(20)') + 1
    computed = lines.index("    rollout.ask(urgent(prompt))") + 1
    alone = lines.index('    rollout.ask("Hello", system=brief())') + 1
    loop = lines.index('    while not prompt.endswith("!"):  # a while loop: not read') + 1
    cut = lines.index("    rollout.ask(cut(case.prompt))") + 1
    cut_loop = lines.index("    while len(prompt) > 10:  # a while loop: not read") + 1
    result.stdout.fnmatch_lines([
        f"modelrollout prefetch{workers}: * calls sent ahead of their tests*",
        "  run live: test_suite.py::test_alone (its first ask passes arguments not known before "
        f"the test runs, and no other test learns them: `brief()` at line {alone} cannot be read "
        "without running it)",
        f"  run live: test_suite.py::test_built_here ({unknown}: `'Hello '.center(20)` at line {built} "
        "cannot be read without running it)",
        "  run live: test_suite.py::test_by_machine (its tests took none of what was sent ahead "
        "for them: the condition of the `if` its first ask is under is not read)",
        f"  run live: test_suite.py::test_computed ({unknown}: `urgent(prompt)` at line "
        f"{computed} cannot be read without running it (in `urgent`, `while not "
        f"prompt.endswith('!'):` at line {loop} is not read))",
        "  run live: test_suite.py::test_cut (its tests took none of what was sent ahead for "
        f"them: `cut(case.prompt)` at line {cut} cannot be read without running it (in `cut`, "
        f"`while len(prompt) > 10:` at line {cut_loop} is not read))",
        f"  run live: test_suite.py::test_from_a_fixture ({unknown}: `greeting` is what a fixture "
        "returns, not known without running it)",
        f"  run live: test_suite.py::test_in_a_helper ({unknown}: no `.ask(...)` in its source, "
        "nor in a helper it calls first (read when the helper asks first or under an `if` it "
        "reads, a model the test passes it))",

        "  run live: test_suite.py::test_styled (its first ask passes arguments not known before "
        "the test runs, and no other test learns them: `greeting` is what a fixture returns, not "
        "known without running it)",
    ])  # fmt: skip
    assert "run live: test_suite.py::test_ahead" not in result.stdout.str()
    assert "run live: test_suite.py::test_rephrased" not in result.stdout.str()


def test_a_prompt_the_test_changes_before_asking_is_not_sent_ahead_for_long(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """``prompt = prompt + ...`` under a condition before ``ask(prompt)``: what was planned (the
    parameter) is never asked; two probes per model are wasted, not a window of calls."""
    project.makepyfile(
        test_suite=f"""
        import pytest

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("prompt", {PROMPTS!r})
        def test_asks(rollout, prompt):
            if prompt:
                prompt = prompt + " Please hurry."
            pair = rollout.ask(prompt)
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    _run(project).assert_outcomes(passed=N_CASES)
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    assert sum(seen.values()) - 2 * N_CASES <= 4


def test_a_test_waiting_for_a_slow_reply_does_not_stall_the_calls_behind_it(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """Head-of-line blocking: while a test waits for a slow reply (a provider's timeout, a
    very long answer), the requests of the tests after it keep going out, up to 4 windows
    sent ahead in all, instead of stopping once one window of replies waits for its tests."""
    n = 40
    lines = [
        json.dumps({"id": f"c{i:02d}", "prompt": f"Where is my order A-{1000 + i}? It is late."})
        for i in range(n)
    ]
    project.path.joinpath("cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    project.makepyfile(test_suite=SUITE)
    delay = 2.0
    sim.slow["A-1003?"] = delay  # both models, the fourth test
    # concurrency 4: two slots stay free while the slow pair is out; a window of 16
    # requests, at most 64 sent ahead
    _run(project, "-v", "--rollout-concurrency=4").assert_outcomes(passed=n)
    assert sim.total() == 2 * n
    slow_at = min(t for t, msgs in sim.arrivals if "A-1003?" in msgs)
    # sent while the slow pair was out (the last 0.3 s left out: its reply may be a little
    # early against this clock, and the next test's requests follow it)
    during = sum(
        1 for t, msgs in sim.arrivals if slow_at < t < slow_at + delay - 0.3 and "A-1003?" not in msgs
    )
    # one window would have been 16 requests; 4 windows: 64 (+1: an item's two requests go
    # out together, the last one may cross the line)
    assert 16 < during <= 65, during


def test_config_prefetch_false(project: pytest.Pytester, sim: CountingSim) -> None:
    project.makepyprojecttoml(CONFIG + "prefetch = false\n")
    project.makepyfile(test_suite=SUITE)
    result = _run(project, "-v")
    result.assert_outcomes(passed=N_CASES)
    result.stdout.no_fnmatch_line("*modelrollout prefetch:*")
    assert sim.total() == 2 * N_CASES


@XDIST
def test_unused_prefetch_is_not_recorded(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    project.makepyfile(
        test_suite="""
        import os
        import random
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def one_sentence():
            return random.choice(["Answer in one sentence."])  # not read

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_other_request(rollout, case):
            # not the marker-default request: the prefetched one must go unused
            pair = rollout.ask(case, system=one_sentence())
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    _run(project, *xdist, "--rollout-report=r.json").assert_outcomes(passed=N_CASES)
    report = _report(project.path / "r.json")
    wf = report["workflows"]["support"]
    assert wf["stable"]["requests"] == N_CASES
    assert wf["candidate"]["requests"] == N_CASES
    calls = report["records"]["calls"]
    assert len(calls) == 2 * N_CASES
    assert all(c["call_id"].endswith(("#0:stable", "#0:candidate")) for c in calls)
    # every request the tests asked for was sent exactly once; of the marker-default plan only
    # the probe was sent (one item: one call per model; per worker under xdist), then the
    # function's own ask(case, system=...) was learned and prefetched
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    asked = [k for k in seen if "one sentence" in k[1]]
    assert len(asked) == 2 * N_CASES
    wasted = [k for k in seen if "Be brief" in k[1]]
    assert len(wasted) == 2 if not xdist else 2 <= len(wasted) <= 4
    assert f"{2 * N_CASES - 2} used" in "".join(
        _run(project, *xdist, "-v").outlines
    ) or xdist  # with xdist the workers' counts are not shown


@XDIST
def test_a_function_whose_arguments_vary_is_not_prefetched_after_two_probes(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """``ask(case, system=...)`` with a different system prompt per case: the default plan and
    the learned plan are both wrong, then nothing more is sent ahead; results are unchanged."""
    project.makepyfile(
        test_suite="""
        import os
        import random
        import pytest
        from pytest_modelrollout import cases

        def answer_for(case):
            template = random.choice(["You answer case {}."])  # not read
            return template.format(case.id)

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_varying(rollout, case):
            pair = rollout.ask(case, system=answer_for(case))
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    _run(project, *xdist, "--rollout-report=r.json").assert_outcomes(passed=N_CASES)
    wf = _report(project.path / "r.json")["workflows"]["support"]
    assert wf["stable"]["requests"] == wf["candidate"]["requests"] == N_CASES
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}  # nothing sent twice
    assert len([k for k in seen if "Be brief" in k[1]]) <= (2 if not xdist else 4)
    # the probe of the marker default, and one probe of the learned (wrong) plan, per worker;
    # the second probe is cancelled as soon as its test asks, so it may not reach the model
    wasted = sum(seen.values()) - 2 * N_CASES
    assert 2 <= wasted <= (4 if not xdist else 8), wasted


@XDIST
def test_a_function_whose_first_ask_is_not_its_case_stops_being_prefetched(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """Its first ask sends something built from the case, never the case's own request: the
    probes are wasted, two per model (per worker) at most, not one per test."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        def urgent(prompt):
            while not prompt.endswith("!"):  # a while loop: not read
                prompt += "!"
            return prompt

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_rephrased(rollout, case):
            pair = rollout.ask(urgent(case.prompt))
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    _run(project, *xdist, "--rollout-report=r.json").assert_outcomes(passed=N_CASES)
    wf = _report(project.path / "r.json")["workflows"]["support"]
    assert wf["stable"]["requests"] == wf["candidate"]["requests"] == N_CASES
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    wasted = sum(seen.values()) - 2 * N_CASES
    assert wasted <= (4 if not xdist else 8), wasted  # was 24: every test's probe


def _skipping_suite(project: pytest.Pytester, skip_if: str, n: int = 40) -> int:
    """A suite of ``n`` cases whose test skips (inside the test, before it asks) the cases
    for which ``skip_if`` holds; returns ``n``."""
    project.makepyfile(
        test_suite=f"""
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support", system="Be brief.")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_sometimes(rollout, case):
            if {skip_if}:
                pytest.skip("no expected answer for this case")
            pair = rollout.ask(case)
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?"}
        for i in range(n)
    ])  # fmt: skip
    return n


def test_a_function_whose_tests_often_do_not_ask_stops_being_prefetched(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """Read from the source, its first ask is ``ask(case)``, but every other test does not
    ask: once two tests (and one in ten) took nothing, no more is sent ahead for it."""
    n = _skipping_suite(project, "int(case.id[1:]) % 2")  # every other test
    # a window of 4 calls (2 tests) ahead: what is in flight when it stops is small
    _run(project, "--rollout-concurrency=1").assert_outcomes(passed=n // 2, skipped=n // 2)
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    wasted = sum(seen.values()) - n  # half the tests ask, 2 models each
    # two skipped tests' calls, and those of the tests in flight when it stopped (before: a
    # share of every skipped test's, 20-30 calls)
    assert wasted <= 8, wasted


@XDIST
def test_a_function_that_skips_a_case_in_ten_stays_prefetched(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test that skips one case in ten (``pytest.skip`` inside it, a case without what it
    checks) wastes the calls sent ahead for that case, and saves every other case a model
    latency: the function stays prefetched. Before, two skips among its first 14 tests (one in
    ten) turned it off, and its other 26 tests ran one at a time."""
    _skipping_suite(project, 'case.id.endswith("3")')  # c03, c13, c23, c33
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=36, skipped=4)
    out = result.stdout.str()
    assert "run live: test_suite.py::test_sometimes" not in out
    used = re.search(r"modelrollout prefetch.*?: (\d+) calls sent ahead of their tests, (\d+) used",
                     out)  # fmt: skip
    assert used is not None, out
    assert int(used.group(2)) == 2 * 36  # every call a test made was sent ahead
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}
    assert sum(seen.values()) - 2 * 36 <= 2 * 4  # the skipped cases' calls, no more


def test_a_function_stops_being_prefetched_when_its_tests_likely_leave_one_in_five() -> None:
    """The rule behind both: what tests leave is counted until it is likely (at 90 %) more
    than one test in five; every test leaving stops it at the second."""
    from pytest_modelrollout.prefetch import mostly_unused

    assert not mostly_unused(1, 1)  # one is not enough to tell
    assert mostly_unused(2, 2) and mostly_unused(2, 3)  # every (or nearly every) test leaves
    assert not mostly_unused(2, 4) and mostly_unused(3, 6)  # one in two: a test or two later
    assert not mostly_unused(2, 14)  # one in ten, early: the old count stopped it here
    assert not mostly_unused(4, 40) and not mostly_unused(8, 40)  # one in ten, one in five
    assert mostly_unused(20, 40)


@pytest.mark.parametrize(
    "ask",
    ['rollout.ask(case.prompt, system=SYSTEMS[case.meta["lang"]])',
     'rollout.ask([{"role": "system", "content": SYSTEMS[case.meta["lang"]]},\n'
     '                         {"role": "user", "content": case.prompt}])',
     'rollout.ask("Customer (%s): %s" % (case.id, case.prompt))',
     "rollout.ask(PREFIX % case.prompt)",
     "rollout.ask(case.prompt[:40])",  # the prompts are longer: truncated
     "rollout.ask(case.prompt[-30:].strip())",
     'rollout.ask(case.prompt, system="Be brief." if case.meta["lang"] == "en" else "简短回答。")',
     'rollout.ask(case.prompt, system=case.system or "Be brief.")'],
)  # fmt: skip
def test_prompts_looked_up_formatted_or_cut_to_length_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, ask: str
) -> None:
    """A module's dict read with a key from the case (``SYSTEMS[case.meta["lang"]]``),
    ``%``-formatting, a slice with int bounds, a conditional expression and ``or`` (of plain
    values: a comparison, a default) are read from the source like the rest: every
    test's first ask goes ahead, none is wasted. Before, a system prompt looked up so was probed
    and, changing from case to case, ran live; in a message list, the case's prompt was sent
    ahead alone; a prompt formatted with ``%`` or cut to length was probed with the case's
    prompt: each sent ahead and wasted until sending stopped."""
    project.makepyfile(
        test_suite=f"""
        import pytest
        from pytest_modelrollout import cases

        SYSTEMS = {{"en": "Answer in English.", "zh": "请用中文回答。"}}
        PREFIX = "Customer message: %s"

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_built(rollout, case):
            pair = {ask}
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "lang": "zh" if i % 2 else "en",
         "prompt": f"Where is order A-{i}? It was due last week. " * 2}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v")
    result.assert_outcomes(passed=N_CASES)
    _every_call_went_ahead(result, sim, 2 * N_CASES)


def _prefetch_counts(result: pytest.RunResult) -> tuple[str, tuple[int, int, int]]:
    """The run's prefetch line, and its calls sent ahead, used and unused."""
    line = next(x for x in result.outlines if "calls sent ahead of their tests" in x)
    sent, used, unused = (int(n) for n in re.findall(r"(\d+) (?:calls sent|used|unused)", line))
    return line, (sent, used, unused)


def _only_live(result: pytest.RunResult, ahead: tuple[str, ...], live: str) -> None:
    """None of the test functions ``ahead`` ran live, and ``-v`` printed ``live`` (an fnmatch
    pattern: the one that did, and why)."""
    out = result.stdout.str()
    for function in ahead:
        assert f"run live: test_suite.py::{function}" not in out, out[-3000:]
    result.stdout.fnmatch_lines([live])


def _every_call_went_ahead(result: pytest.RunResult, sim: CountingSim, calls: int) -> None:
    """The tests made ``calls`` calls, each sent ahead once and used; no function ran live."""
    assert "run live:" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [f"modelrollout prefetch*: {calls} calls sent ahead of their tests, {calls} used, 0 unused*"]
    )
    seen = sim.first_attempts()
    assert sum(seen.values()) == calls and set(seen.values()) == {1}


@XDIST
def test_prompts_built_by_the_suites_own_functions_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """``rollout.ask(build_prompt(case), system=prompts.system_for(case))``: a function of the
    suite (here in a module next to the tests) is read from its source (its assignments,
    ``+=``, ``if`` / ``else``, ``len``, ``dict.get``) and worked out on each case's fields
    without running it: every test's first ask goes ahead, none is wasted. Before, the
    function was probed with the case's own request, and the probes were wasted until it ran
    live."""
    project.makepyfile(
        prompts='''
        """The support suite's prompts."""
        SYSTEMS = {"en": "Answer in English.", "zh": "请用中文回答。"}
        DEFAULT = "Be brief."

        def build_prompt(case, channel="chat"):
            """The customer's message as the bot gets it."""
            text = case.prompt.strip()
            if len(text) > 60:
                text = text[:60]
            if case.meta.get("lang") == "zh":
                prefix = "客户消息（" + channel + "）："
            else:
                prefix = f"Customer message ({channel}): "
            prefix += "\\n"
            return prefix + text

        def system_for(case):
            return SYSTEMS.get(case.meta.get("lang"), DEFAULT)
        ''',
        test_suite="""
        import pytest

        import prompts
        from prompts import build_prompt
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_built(rollout, case):
            pair = rollout.ask(build_prompt(case, channel="email"),
                               system=prompts.system_for(case))
            assert pair.stable.ok and pair.candidate.ok
        """,
    )
    langs = [{"lang": "en"}, {"lang": "zh"}, {}]  # the last: no language, the default system
    _write_cases(project, [
        {"id": f"c{i:02d}", "meta": langs[i % 3],
         "prompt": f"  Where is order A-{i}? " + "It was due. " * (i % 8)}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=N_CASES)
    _every_call_went_ahead(result, sim, 2 * N_CASES)
    seen = sim.first_attempts()
    messages = [json.loads(k[1]) for k in seen]
    systems = {m[0]["content"] for m in messages}
    assert systems == {"Answer in English.", "请用中文回答。", "Be brief."}
    assert {m[1]["content"].split("\n")[0] for m in messages} == {
        "客户消息（email）：", "Customer message (email): "}
    assert max(len(m[1]["content"].split("\n")[1]) for m in messages) == 60


@XDIST
def test_message_lists_built_by_the_suites_functions_in_loops_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """``rollout.ask(build_messages(case))``: a function of the suite that makes its own
    message list (a copy of the module's) and adds to it in a ``for`` loop (a few-shot
    example's question and answer, skipping an empty one with ``continue``, stopping at a
    limit with ``break``), or builds a context string with ``+=`` in a loop over the case's
    documents, is worked out for each case without running it: every call goes ahead, none
    wasted. One that adds to the module's own list (each call's result longer than the last)
    is not read. Before, a function with a loop or an ``append`` was not read and its tests
    ran live."""
    project.makepyfile(
        prompts='''
        """The support suite's prompts."""
        BASE = [{"role": "system", "content": "Answer like the examples."}]
        SHOTS = [("Where is order A-1?", "On its way."), ("", "(none)"),
                 ("Can I return it?", "Yes, within 30 days."), ("Gift wrap?", "Yes.")]
        LOG = []


        def build_messages(case, limit=2):
            messages = list(BASE)
            for question, answer in SHOTS:
                if not question:
                    continue
                if len(messages) > 2 * limit:
                    break
                messages.extend([{"role": "user", "content": question},
                                 {"role": "assistant", "content": answer}])
            messages.append({"role": "user", "content": case.prompt})
            return messages


        def with_context(case):
            context = ""
            for i, doc in enumerate(case.meta["docs"], 1):
                context += f"[{i}] {doc}\\n"
            return context + "Question: " + case.prompt


        def logged(case):
            LOG.append(case.prompt)
            return f"{len(LOG)}. {case.prompt}"
        ''',
        test_suite="""
        import pytest

        from prompts import build_messages, logged, with_context
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_few_shot(rollout, case):
            rollout.candidate.ask(build_messages(case))

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_context(rollout, case):
            rollout.candidate.ask(with_context(case), system="Answer from the documents.")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_logged(rollout, case):
            rollout.candidate.ask(logged(case))
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "meta": {"docs": [f"Order A-{i} shipped.", "Returns: 30 days."][: i % 3]}}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=3 * N_CASES)
    out = result.stdout.str()
    assert "run live: test_suite.py::test_few_shot" not in out
    assert "run live: test_suite.py::test_context" not in out
    line, (sent, used, unused) = _prefetch_counts(result)
    # the first two: every call; the one adding to the module's list: two probes at most (per
    # worker)
    assert used >= 2 * N_CASES and unused <= (4 if xdist else 2) and sent == used + unused, line
    asked = [json.loads(k[1]) for k in sim.first_attempts()]
    assert [{"role": "system", "content": "Answer like the examples."},
            {"role": "user", "content": "Where is order A-1?"},
            {"role": "assistant", "content": "On its way."},
            {"role": "user", "content": "Can I return it?"},
            {"role": "assistant", "content": "Yes, within 30 days."},
            {"role": "user", "content": "Where is order A-7?"}] in asked
    assert [{"role": "system", "content": "Answer from the documents."},
            {"role": "user", "content": "[1] Order A-5 shipped.\n[2] Returns: 30 days.\n"
                                        "Question: Where is order A-5?"}] in asked


@XDIST
def test_asks_made_by_the_suites_helper_functions_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """``pair = ask_support(rollout, case)``: a helper of the suite (here in a module next to
    the tests) whose first statement to ask is ``return rollout.ask(prompt, system=SYSTEM)``,
    after a ``prompt = f"..."`` built from its parameters: its ask is read from its source,
    its parameters bound to the test's arguments (a default, a keyword, a local name of the
    test), and sent ahead to the models the test passes it (``ask_with(rollout.candidate,
    ...)``: the candidate alone). So are the helper's later asks (``ask_then_brief``), the
    asks of a helper the test calls after its first (``ask_with`` in ``test_followed``), and
    a helper's ask under an ``if`` (``ask_in_language``: the one each case reaches, to its
    models), and a helper's asks in a loop (``ask_each_style``; nothing for a case whose list
    is empty), and the first ask of a helper's ``while`` retry loop up to a limit of the
    helper's module (``ask_until_answered``).
    Before, each function was probed with the case's own request (wasted: the helper's prompt
    is not the case's) and ran live; before the later asks were read, those ran live."""
    project.makepyfile(
        helpers='''
        """The support suite's helpers."""
        SYSTEM = "Answer briefly."


        def ask_support(rollout, case, style="brief"):
            """Asks both models the customer's message, in a style."""
            prompt = f"{case.prompt} (answer: {style})"
            return rollout.ask(prompt, system=SYSTEM)


        def ask_with(model, text):
            return model.ask(text, system="请用中文回答。")


        def ask_in_language(rollout, case):
            """The Chinese cases to the candidate alone, in Chinese."""
            if case.meta["lang"] == "zh":
                return rollout.candidate.ask(case.prompt, system="请只用中文回答。")
            return rollout.ask(case.prompt, system="Answer in English.")


        def ask_each_style(rollout, case):
            for style in case.meta["styles"]:
                rollout.candidate.ask(f"{case.prompt} ({style})")


        def ask_then_brief(rollout, case):
            """Asks both models, then the candidate alone for one sentence."""
            pair = rollout.ask(case.prompt, system=SYSTEM)
            rollout.candidate.ask(case.prompt + " One sentence.", system=SYSTEM)
            return pair


        MAX_TRIES = 3


        def ask_until_answered(model, text, tries=MAX_TRIES):
            """Asks until the model answers, at most ``tries`` times."""
            attempt = 0
            while attempt < tries:
                reply = model.ask(text + " (retried)")
                attempt += 1
                if reply.ok:
                    return reply
            return None
        ''',
        test_suite="""
        import pytest
        from pytest_modelrollout import cases
        from helpers import (ask_each_style, ask_in_language, ask_support, ask_then_brief,
                             ask_until_answered, ask_with)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_support(rollout, case):
            pair = ask_support(rollout, case)
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_formal(rollout, case):
            style = "formal"
            ask_support(rollout, case, style=style)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_candidate(rollout, case):
            assert ask_with(rollout.candidate, case.prompt).ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_followed(rollout, case):
            pair = ask_then_brief(rollout, case)
            assert pair.candidate.ok
            ask_with(rollout.candidate, case.prompt + " Why?")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_by_language(rollout, case):
            ask_in_language(rollout, case)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_each_style(rollout, case):
            ask_each_style(rollout, case)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_retried(rollout, case):
            assert ask_until_answered(rollout.candidate, case.prompt) is not None
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "lang": "zh" if i % 3 == 0 else "en",
         "styles": ["brief", "formal"] if i % 4 else []}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=7 * N_CASES)
    # test_followed: both models and the candidate in its helper, then the candidate;
    # test_by_language: the candidate alone for a Chinese case (one in three), else both;
    # test_each_style: the candidate for each style, none for a case without styles;
    # test_retried: the candidate, once (it answers)
    zh, styled = len(range(0, N_CASES, 3)), N_CASES - len(range(0, N_CASES, 4))
    _every_call_went_ahead(result, sim, 2 * N_CASES + 2 * N_CASES + N_CASES + 4 * N_CASES
                           + zh + 2 * (N_CASES - zh) + 2 * styled + N_CASES)
    texts = {json.loads(k[1])[-1]["content"] for k in sim.first_attempts()}
    assert {"Where is order A-3? (answer: brief)", "Where is order A-3? (answer: formal)",
            "Where is order A-3?", "Where is order A-3? One sentence.",
            "Where is order A-3? Why?"} <= texts


@XDIST
def test_a_test_that_ends_before_it_asks_gets_nothing_sent(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """``if case.expected is None: pytest.skip(...)`` before the ask is read for each case:
    a case it skips gets nothing sent. Before, each such case's calls were sent and unused.
    And the ask under an ``if`` that each case reaches goes to its own receiver's models,
    when the branches ask the same prompt (``rollout.candidate.ask(case.prompt, ...)`` for the
    Chinese cases, ``rollout.ask(case.prompt, ...)`` else): before, the Chinese cases' stable
    calls were sent and unused. The same before a loop of asks (its later iterations read:
    before, they ran live) and before a helper's ask (before: probed, then run live)."""
    project.makepyfile(
        helpers="""
        def ask_briefly(rollout, case):
            return rollout.ask(case.prompt, system="Be brief.")
        """,
        test_suite="""
        import pytest
        from pytest_modelrollout import cases
        from helpers import ask_briefly

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_expected(rollout, case):
            if case.expected is None:
                pytest.skip("no expected answer")
            rollout.ask(case)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_expected_styles(rollout, case):
            if case.expected is None:
                pytest.skip("no expected answer")
            for style in ("brief", "formal"):
                rollout.ask(f"{case.prompt} ({style})")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_expected_through_a_helper(rollout, case):
            if case.expected is None:
                pytest.skip("no expected answer")
            ask_briefly(rollout, case)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_by_language(rollout, case):
            if case.meta["lang"] == "zh":
                rollout.candidate.ask(case.prompt, system="请只用中文回答。")
            else:
                rollout.ask(case.prompt, system="Answer in English.")
        """
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "lang": "zh" if i % 3 == 0 else "en",
         **({} if i % 4 == 0 else {"expected": "soon"})}
        for i in range(N_CASES)
    ])  # fmt: skip
    skipped, zh = len(range(0, N_CASES, 4)), len(range(0, N_CASES, 3))
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=4 * N_CASES - 3 * skipped, skipped=3 * skipped)
    # test_expected, test_by_language, test_expected_styles, test_expected_through_a_helper
    _every_call_went_ahead(result, sim, 2 * (N_CASES - skipped) + zh + 2 * (N_CASES - zh)
                           + 4 * (N_CASES - skipped) + 2 * (N_CASES - skipped))


@XDIST
def test_what_the_tests_other_fixtures_return_is_read(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A fixture that is not parametrized, whose body returns a form that is read (a module's
    constant, an item of a dict by a parameter of the test, a call of a function of the
    module): ``rollout.ask(case.prompt, system=system_prompt)`` goes ahead for every test, and
    so does a test on its own. Before, the fixture's value was not known: the function was
    probed, and a test on its own ran live."""
    project.makepyfile(
        conftest="""
        import pytest

        SYSTEM = "You are a concise support agent."

        @pytest.fixture
        def system_prompt():
            \"\"\"The support bot's system prompt.\"\"\"
            return SYSTEM
        """,
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        STYLES = {"en": "Answer in English.", "zh": "请用中文回答。"}

        def styled(prompt, style):
            return f"{prompt} ({style})"

        @pytest.fixture
        def style(lang):
            return STYLES[lang]

        @pytest.fixture(scope="module")
        def greeting():
            text = styled("Hello", "brief")
            yield text
            print("module done")  # its teardown

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_system(rollout, case, system_prompt):
            pair = rollout.ask(case.prompt, system=system_prompt)
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("lang", ["en", "zh"])
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_by_language(rollout, case, lang, style):
            pair = rollout.ask(case.prompt, system=style)
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        def test_alone(rollout, greeting):
            pair = rollout.ask(greeting)
            assert pair.stable.ok and pair.candidate.ok
        """,
    )
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=3 * N_CASES + 1)
    _every_call_went_ahead(result, sim, 2 * (3 * N_CASES + 1))
    seen = sim.first_attempts()
    systems = {json.loads(k[1])[0]["content"] for k in seen}
    assert {"You are a concise support agent.", "Answer in English.", "请用中文回答。"} <= systems


@XDIST
def test_prompts_from_templates_and_prompt_files_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """Prompts kept out of the test: a Jinja2 template of a ``FileSystemLoader`` rendered with
    the case's fields (``**case.meta`` too), a system prompt read from a file chosen by the
    case, a :class:`string.Template`, a ``str.format`` template given ``**case.meta``, and a
    session fixture that reads a file next to the tests. Each is worked out for each case by the library's own code: every call goes ahead,
    none is wasted, and what was sent is what the tests sent. Before, each of these functions
    was probed and wasted its probes, then ran live."""
    prompts = project.path / "prompts"
    prompts.mkdir()
    (prompts / "support.j2").write_text(
        "{% if lang == 'zh' %}客户问题：{% else %}Customer question: {% endif %}{{ question }}"
        "{% for tag in tags %} #{{ tag }}{% endfor %}\n",
        encoding="utf-8",
    )
    (prompts / "system_en.txt").write_text("Answer in English.", encoding="utf-8")
    (prompts / "system_zh.txt").write_text("请用中文回答。", encoding="utf-8")
    (prompts / "house.txt").write_text("You are Acme's support agent.\n", encoding="utf-8")
    project.makepyfile(
        conftest="""
        from pathlib import Path

        import pytest

        HERE = Path(__file__).parent

        @pytest.fixture(scope="session")
        def house_rules():
            return (HERE / "prompts" / "house.txt").read_text(encoding="utf-8").strip()
        """,
        test_suite="""
        import string
        from pathlib import Path

        import jinja2
        import pytest
        from pytest_modelrollout import cases

        PROMPTS = Path(__file__).parent / "prompts"
        ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(PROMPTS), autoescape=False)
        SUPPORT = ENV.get_template("support.j2")
        NOTE = string.Template("Note for $name: $message")
        ORDER = "Customer {name} ({lang}, {tags}): {question}"

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_rendered(rollout, case):
            pair = rollout.ask(SUPPORT.render(question=case.prompt, **case.meta))
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_system_file(rollout, case, house_rules):
            lang = case.meta["lang"]
            system = (PROMPTS / f"system_{lang}.txt").read_text(encoding="utf-8")
            pair = rollout.ask(case.prompt, system=house_rules + " " + system)
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_substituted(rollout, case):
            pair = rollout.ask(NOTE.substitute(case.meta, message=case.prompt))
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_formatted(rollout, case):
            rollout.candidate.ask(ORDER.format(question=case.prompt, **case.meta))
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "meta": {"lang": "zh" if i % 2 else "en", "name": f"N{i}",
                  "tags": ["late"] * (i % 3)}}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=4 * N_CASES)
    _every_call_went_ahead(result, sim, 2 * 3 * N_CASES + N_CASES)
    messages = [json.loads(k[1]) for k in sim.first_attempts()]
    texts = {m[-1]["content"] for m in messages}
    assert "Customer N2 (en, ['late', 'late']): Where is order A-2?" in texts
    assert "客户问题：Where is order A-1? #late" in texts  # (Jinja2 drops the last newline)
    assert "Customer question: Where is order A-2? #late #late" in texts
    assert "Note for N3: Where is order A-3?" in texts
    systems = {m[0]["content"] for m in messages if m[0]["role"] == "system"}
    assert systems == {"You are Acme's support agent. Answer in English.",
                       "You are Acme's support agent. 请用中文回答。"}


@XDIST
def test_names_assigned_again_or_under_an_if_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A system prompt chosen by an ``if`` / ``else`` on the case's language, a prompt
    extended with ``+=`` (for some cases under an ``if``), a parametrized text cleaned and
    extended in the test, a prompt's parts in a list joined (a name set under the ``if`` that
    adds to it, two names set by one tuple) and sent after the case's history
    (``[*history, turn]``), a context string added to with ``+=`` in a loop over the case's
    history: each is read as it is when the test asks, for each case, and every
    call goes ahead, none wasted. Before, a name assigned more than once (or under an ``if``)
    was not read, nor a list handed to ``join``, nor a ``*`` in a list: each function was
    probed and ran live."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_system_by_language(rollout, case):
            if case.meta["lang"] == "zh":
                system = "请用中文回答。"
            else:
                system = "Answer in English."
            pair = rollout.ask(case.prompt, system=system)
            assert pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_prompt_extended(rollout, case):
            prompt = case.prompt
            if case.meta["lang"] == "en":
                prompt += " Answer briefly."
            prompt += " (ticket " + case.id + ")"
            rollout.candidate.ask(prompt)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("text", ["  Where is my order?  ", "我的订单在哪？"])
        def test_parameter_again(rollout, text):
            text = text.strip()
            text += " Thanks!"
            rollout.candidate.ask(text)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_parts_and_history(rollout, case):
            question, lang = case.prompt, case.meta["lang"]
            parts = ["Customer (" + lang + "):"]
            if lang == "zh":
                note = "请用中文回答。"
                parts.append(note)
            parts.append(question)
            turn = {"role": "user", "content": " ".join(parts)}
            rollout.candidate.ask([*case.meta["history"], turn])

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_context_built_in_a_loop(rollout, case):
            context = ""
            for turn in case.meta["history"]:
                context += turn["role"] + ": " + turn["content"] + "\\n"
            rollout.candidate.ask(context + "user: " + case.prompt)
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "meta": {"lang": "zh" if i % 2 else "en", "history": [
             {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}][: i % 3]}}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=4 * N_CASES + 2)
    _every_call_went_ahead(result, sim, 5 * N_CASES + 2)
    messages = [json.loads(k[1]) for k in sim.first_attempts()]
    assert [{"role": "system", "content": "请用中文回答。"},
            {"role": "user", "content": "Where is order A-1?"}] in messages
    texts = {m[-1]["content"] for m in messages}
    assert {"Where is order A-2? Answer briefly. (ticket c02)",
            "Where is order A-3? (ticket c03)", "Where is my order? Thanks!"} <= texts
    assert [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Customer (en): Where is order A-2?"}] in messages
    assert [{"role": "user", "content": "Hi"},
            {"role": "user", "content": "Customer (zh): 请用中文回答。 Where is order A-1?"}
            ] in messages
    assert "user: Hi\nassistant: Hello!\nuser: Where is order A-2?" in texts


@XDIST
def test_a_message_list_added_to_before_its_ask_is_sent_as_the_test_asks_it(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test that builds its message list and adds to it before it asks
    (``messages.append(...)``, ``messages.extend(...)``; under an ``if`` / ``elif`` /
    ``else``; in a loop over the case's history that only appends; a conversation's turns
    appended in a loop) has its ask sent ahead as it makes it: the list as added to (in a
    conversation, each turn's, the next once the reply it holds is in), and so has one that
    hands its list
    to a function of the suite that only adds to it (``add_context(messages, case)``, read
    from its source). One whose function also reads the list (``len(messages)``) is not read:
    at most a probe is wasted, and the list as built is never sent.
    Before, each test had the list as built sent ahead, and left unused; before that was
    fixed, the functions that add to their list were probed and ran live."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        SYSTEM = "You are a support agent."

        def add_context(messages, case):
            messages.append({"role": "user", "content": "Order " + case.id})

        def add_counted(messages, case):
            messages.append({"role": "user", "content": f"({len(messages)}) {case.id}"})

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_appended(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            messages.extend(case.meta["history"])
            messages.append({"role": "user", "content": case.prompt})
            pair = rollout.ask(messages)
            assert pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_conversation(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            for turn in (case.prompt, "Thanks!"):
                messages.append({"role": "user", "content": turn})
                reply = rollout.candidate.ask(messages)
                messages.append({"role": "assistant", "content": reply.text})

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_then_followed_up(rollout, case):
            messages = [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": case.prompt}]
            first = rollout.candidate.ask(messages)
            messages.append({"role": "assistant", "content": first.text})
            messages.append({"role": "user", "content": "Thanks!"})
            rollout.candidate.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_handed_on(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            add_context(messages, case)
            rollout.candidate.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_handed_to_a_reader(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            add_counted(messages, case)
            rollout.candidate.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_added_to_if(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            if len(case.meta["history"]) > 1:
                messages.extend(case.meta["history"])
            elif case.meta["history"]:
                pass
            else:
                messages.append({"role": "assistant", "content": "Welcome! How can I help?"})
                messages.append({"role": "user", "content": "I am new here."})
            messages.append({"role": "user", "content": case.prompt})
            rollout.candidate.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_added_to_in_a_loop(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            for turn in case.meta["history"]:
                if turn["role"] == "user":
                    messages.append({"role": "user", "content": "Earlier: " + turn["content"]})
            messages.append({"role": "user", "content": case.prompt})
            rollout.candidate.ask(messages)
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?", "meta": {
            "history": [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}][: i % 3]}}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=7 * N_CASES)
    line, (sent, used, unused) = _prefetch_counts(result)
    # test_appended: both models; test_conversation and test_then_followed_up: both turns
    # (the second once the first's reply is in); test_added_to_if and
    # test_added_to_in_a_loop: their one (added to under an if, and in a loop over the case's
    # history, as each case takes it); test_handed_on: its one (a function of the suite that
    # only adds to the list)
    assert used == 9 * N_CASES and unused <= (4 if not xdist else 8) and sent == used + unused, line
    result.stdout.fnmatch_lines(["*run live: test_suite.py::test_handed_to_a_reader*"])
    for name in ("test_appended", "test_added_to_if", "test_added_to_in_a_loop",
                 "test_handed_on"):
        assert f"run live: test_suite.py::{name}" not in result.stdout.str()
    asked = [json.loads(k[1]) for k in sim.first_attempts()]
    assert [{"role": "system", "content": "You are a support agent."}] not in asked
    assert [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Where is order A-2?"}] in asked
    assert [{"role": "system", "content": "You are a support agent."},
            {"role": "assistant", "content": "Welcome! How can I help?"},
            {"role": "user", "content": "I am new here."},
            {"role": "user", "content": "Where is order A-3?"}] in asked
    assert [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Earlier: Hi"},
            {"role": "user", "content": "Where is order A-5?"}] in asked
    assert [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Order c07"}] in asked


@XDIST
def test_few_shot_turns_built_in_a_loop_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test that builds its few-shot examples in a loop before it asks has its ask sent ahead
    as it makes it: a question and an answer appended for each example, a pair of them
    extended, names set in the turn (``q = shot["q"].strip()``), an example skipped with ``if
    not ...: continue``, a context string added to twice a turn, one under an ``if`` / ``else``,
    and the examples flattened by a comprehension with two ``for``s in the ask itself. Before,
    each of these functions was probed (its probes wasted) and ran live: 3.6–4.2× the time of
    a plain ``rollout.ask(case)`` suite (``bench/prefetch_shapes.py``)."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        SYSTEM = "Answer like the examples."
        EXAMPLES = {"en": [("Where is order A-1?", "On its way.")],
                    "zh": [("订单 B-1 在哪？", "在路上。"), ("能退货吗？", "可以。")]}

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_appended(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            for shot in case.meta["shots"]:
                q = shot["q"].strip()
                if not q:
                    continue
                messages.append({"role": "user", "content": q})
                messages.append({"role": "assistant", "content": shot["a"]})
            messages.append({"role": "user", "content": case.prompt})
            rollout.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_extended(rollout, case):
            messages = [{"role": "system", "content": SYSTEM}]
            for question, answer in EXAMPLES[case.meta["lang"]]:
                messages.extend([{"role": "user", "content": question},
                                 {"role": "assistant", "content": answer}])
            messages.append({"role": "user", "content": case.prompt})
            rollout.candidate.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_context(rollout, case):
            context = ""
            for shot in case.meta["shots"]:
                if shot["q"].strip():
                    context += "Q: " + shot["q"].strip()
                else:
                    context += "Q: (none)"
                context += " A: " + shot["a"] + "\\n"
            rollout.candidate.ask(context + "Q: " + case.prompt)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_flattened(rollout, case):
            rollout.candidate.ask([
                turn
                for q, a in EXAMPLES[case.meta["lang"]]
                for turn in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
            ] + [{"role": "user", "content": case.prompt}])
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?", "meta": {
            "lang": "zh" if i % 2 else "en",
            "shots": [{"q": "Hi", "a": "Hello!"}, {"q": " ", "a": "(skipped)"},
                      {"q": f"Order A-{i - 1}?", "a": "Shipped."}][: i % 4]}}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=4 * N_CASES)
    _every_call_went_ahead(result, sim, 5 * N_CASES)
    asked = [json.loads(k[1]) for k in sim.first_attempts()]
    system = {"role": "system", "content": "Answer like the examples."}
    assert [system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Order A-2?"}, {"role": "assistant", "content": "Shipped."},
            {"role": "user", "content": "Where is order A-3?"}] in asked
    assert [system, {"role": "user", "content": "Where is order A-4?"}] in asked
    zh = [{"role": "user", "content": "订单 B-1 在哪？"}, {"role": "assistant", "content": "在路上。"},
          {"role": "user", "content": "能退货吗？"}, {"role": "assistant", "content": "可以。"},
          {"role": "user", "content": "Where is order A-5?"}]
    assert [system, *zh] in asked and zh in asked
    assert [{"role": "user", "content": "Q: Hi A: Hello!\nQ: (none) A: (skipped)\n"
                                        "Q: Where is order A-2?"}] in asked


@XDIST
def test_copies_of_the_modules_messages_and_payload_dicts_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test that copies the module's message list before adding to it (``list(BASE)``,
    ``copy.deepcopy(BASE)``, ``BASE.copy()``, ``BASE[:]``, ``BASE + [...]``), or builds a
    payload dict (``{**case.meta, "q": ...}``, ``dict(case.meta, ...)``) and sets its items
    (under an ``if`` too), has its ask sent ahead as it makes it. A test that adds to the
    module's own list (``history = HISTORY``) asks something else each time: it is not read,
    so at most a probe is wasted. Before, each of the first ran live (1.3–1.7× a plain suite at
    20 cases), and the last had its first test's list sent for a window of tests, wasted."""
    project.makepyfile(
        test_suite="""
        import copy

        import pytest
        from pytest_modelrollout import cases

        BASE = [{"role": "system", "content": "You are a support agent."}]
        HISTORY = [{"role": "system", "content": "You are a support agent."}]
        ORDER = "{q} (lang: {lang}, channel: {channel})"

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_listed(rollout, case):
            messages = list(BASE)
            messages.append({"role": "user", "content": case.prompt})
            rollout.candidate.ask(messages)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_deep_copied(rollout, case):
            messages = copy.deepcopy(BASE)
            messages.append({"role": "user", "content": case.prompt + " Be brief."})
            rollout.candidate.ask(messages)
            messages[0]["content"] = "(its own copy: BASE stays as it is)"

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_copied_and_sliced(rollout, case):
            messages = BASE.copy() if case.meta["lang"] == "en" else BASE[:]
            first = BASE + [{"role": "user", "content": "Hi"}]
            first.extend(messages[1:])
            first.append({"role": "user", "content": case.prompt})
            rollout.candidate.ask(first)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_payload(rollout, case):
            payload = {**case.meta, "q": case.prompt}
            payload["channel"] = "chat"
            if case.meta["lang"] == "zh":
                payload["channel"] = "微信"
            rollout.candidate.ask(ORDER.format(**payload))

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_dict_of_meta(rollout, case):
            meta = dict(case.meta, channel="email")
            rollout.candidate.ask(ORDER.format(q=case.prompt, **meta))

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_modules_own_list(rollout, case):
            history = HISTORY
            reply = rollout.candidate.ask(history + [{"role": "user", "content": case.prompt}])
            history.append({"role": "assistant", "content": reply.text[:20]})
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "meta": {"lang": "zh" if i % 2 else "en"}}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=6 * N_CASES)
    out = result.stdout.str()
    for name in ("listed", "deep_copied", "copied_and_sliced", "payload", "dict_of_meta"):
        assert f"run live: test_suite.py::test_{name}" not in out
    line, (sent, used, unused) = _prefetch_counts(result)
    # the five read: all of their calls; the module's own list: two probes at most (each
    # test asks with a longer history), per worker
    assert used >= 5 * N_CASES and unused <= (4 if xdist else 2) and sent == used + unused, line
    asked = [json.loads(k[1]) for k in sim.first_attempts()]
    system = {"role": "system", "content": "You are a support agent."}
    assert [system, {"role": "user", "content": "Where is order A-3? Be brief."}] in asked
    assert [system, {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Where is order A-4?"}] in asked
    assert [{"role": "user", "content": "Where is order A-1? (lang: zh, channel: 微信)"}] in asked
    assert [{"role": "user", "content": "Where is order A-2? (lang: en, channel: email)"}] in asked


@XDIST
def test_asks_in_a_loop_are_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test that asks in a ``for`` loop — each paraphrase of the case, each style of a
    module's list, pairs unpacked from a list written in the test; under an ``if`` /
    ``elif`` there, or after an ``if ...: continue`` — or in a list comprehension (with an
    ``if``: the items it asks for) has every iteration's ask sent ahead, the first with its
    later ones, to the models it asks; a case whose list is empty (or whose items the ``if``
    turns all away) asks nothing and gets nothing sent; a ``while True:`` retry loop has its
    first ask sent ahead, and so has a ``while tries < 3:`` after ``tries = 0``, and a ``while
    tries < MAX_TRIES:`` of a module's name, and one whose condition reads the case for the
    cases it holds for (the others ask nothing, and get nothing); and a ``for`` retry loop
    with an ``else: pytest.fail(...)``, and one whose ask is in a ``try`` (and a ``with``)
    with an ``except`` that goes round again. Before, a function of these loops (but the
    ``while True:`` one) was probed (its probes wasted) and ran live."""
    project.makepyfile(
        test_suite="""
        import contextlib

        import pytest
        from pytest_modelrollout import cases

        SYSTEMS = {"en": "Answer in English.", "zh": "请用中文回答。"}
        STYLES = ["brief", "formal"]

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_paraphrases(rollout, case):
            for text in case.meta["paraphrases"]:
                pair = rollout.ask(text, system=SYSTEMS[case.meta["lang"]])
                assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_styles(rollout, case):
            rollout.ask(case)
            for style in STYLES:
                prompt = f"{case.prompt} (answer: {style})"
                pair = rollout.ask(prompt)
                assert pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_pairs(rollout, case):
            for lang, greeting in [("en", "Hello"), ("zh", "你好")]:
                rollout.ask(f"{greeting}! {case.prompt}", system=SYSTEMS[lang])

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_comprehension(rollout, case):
            texts = [rollout.ask(p, system="Be brief.").candidate.text
                     for p in case.meta["paraphrases"]]
            assert all(p for p in texts)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_filtered(rollout, case):
            pairs = [rollout.ask(p) for p in case.meta["paraphrases"] if "(0)" not in p]
            assert all(pair.candidate.ok for pair in pairs)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_guarded(rollout, case):
            for p in case.meta["paraphrases"]:
                text = "Again: " + p
                if text.endswith("(1)"):
                    continue
                pair = rollout.ask(text)
                assert pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_under_an_if(rollout, case):
            for p in case.meta["paraphrases"]:
                if case.meta["lang"] == "zh":
                    rollout.candidate.ask(p, system="请简短回答。")
                elif not p.endswith("(0)"):
                    rollout.ask(p, system="Answer briefly.")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_retries(rollout, case):
            attempts = 0
            while True:
                pair = rollout.ask(case, system="Answer, or be asked again.")
                attempts += 1
                if pair.candidate.ok or attempts == 3:
                    break

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_counted_retries(rollout, case):
            tries = 0
            while tries < 3:
                pair = rollout.ask(case.prompt + " (counted)")
                tries += 1
                if pair.candidate.ok:
                    break

        MAX_TRIES = 3

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_retries_up_to_a_limit(rollout, case):
            tries = 0
            while tries < MAX_TRIES:
                pair = rollout.ask(case.prompt + " (up to a limit)")
                tries += 1
                if pair.candidate.ok:
                    break

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_retries_for_else(rollout, case):
            for attempt in range(MAX_TRIES):
                pair = rollout.ask(case.prompt + " (for else)")
                if pair.candidate.ok:
                    break
            else:
                pytest.fail("the candidate never answered")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_retries_in_english(rollout, case):
            tries = 0
            while tries < MAX_TRIES and case.meta["lang"] == "en":
                pair = rollout.ask(case.prompt + " (in English)")
                tries += 1
                if pair.candidate.ok:
                    break

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_retries_in_a_try(rollout, case):
            for attempt in range(MAX_TRIES):
                try:
                    with contextlib.nullcontext():
                        pair = rollout.ask(case.prompt + " (try)")
                    assert pair.candidate.ok
                    break
                except AssertionError:
                    continue
        """,
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "meta": {"lang": "zh" if i % 2 else "en",
                  "paraphrases": [f"Order A-{i}: where? ({k})"
                                  for k in range(i % 4)]}}
        for i in range(N_CASES)
    ])  # fmt: skip
    paraphrases = sum(i % 4 for i in range(N_CASES))
    filtered = sum(max(0, i % 4 - 1) for i in range(N_CASES))  # all but each case's "(0)"
    guarded = sum(i % 4 - (i % 4 >= 2) for i in range(N_CASES))  # all but each case's "(1)"
    # the Chinese cases' paraphrases, asked of the candidate; the others' but "(0)", of both
    under_an_if = sum(i % 4 if i % 2 else 2 * max(0, i % 4 - 1) for i in range(N_CASES))
    english = (N_CASES + 1) // 2
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=13 * N_CASES)
    _every_call_went_ahead(  # (the retry loops' first asks: answered, asked once)
        result, sim,
        2 * (2 * paraphrases + 8 * N_CASES + 2 * N_CASES + filtered + guarded + english)
        + under_an_if)
    texts = {json.loads(k[1])[-1]["content"] for k in sim.first_attempts()}
    assert {"Order A-3: where? (2)", "Where is order A-5? (answer: formal)",
            "你好! Where is order A-7?"} <= texts


def test_a_test_classs_attributes_are_read_through_self(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """``class TestSupport:`` with ``rollout.ask(self.PREFIX + case.prompt,
    system=self.system_for(case))``: ``self`` is read as the test's class, whose plain
    attributes it reads, and whose methods it reads from their source like the module's
    functions (a staticmethod's first argument is not ``self``). Before, ``self`` was not
    known: the function was probed, and a system prompt that varies by case ran it live."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        class TestSupport:
            SYSTEMS = {"en": "Answer in English.", "zh": "请用中文回答。"}
            PREFIX = "Customer: "

            def system_for(self, case):
                return self.SYSTEMS[case.meta["lang"]]

            @pytest.mark.parametrize("case", cases("cases.jsonl"))
            def test_by_language(self, rollout, case):
                pair = rollout.ask(self.PREFIX + case.prompt, system=self.system_for(case))
                assert pair.stable.ok and pair.candidate.ok

            @staticmethod
            @pytest.mark.parametrize("case", cases("cases.jsonl"))
            def test_static(rollout, case):
                pair = rollout.ask(case.prompt, system="Be brief.")
                assert pair.stable.ok and pair.candidate.ok
        """
    )
    _write_cases(project, [
        {"id": f"c{i:02d}", "lang": "zh" if i % 2 else "en",
         "prompt": f"Where is order A-{i}?"}
        for i in range(N_CASES)
    ])  # fmt: skip
    result = _run(project, "-v")
    result.assert_outcomes(passed=2 * N_CASES)
    _every_call_went_ahead(result, sim, 4 * N_CASES)


@XDIST
def test_the_ask_a_test_reaches_under_an_if_is_the_one_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test whose first ask is under ``if`` / ``elif`` / ``else`` on the case (its language,
    its id) gets the ask its branch makes sent ahead, with that ask's arguments; a test whose
    branch asks nothing gets nothing sent; a name the branch sets before its ask is read as it
    sets it (before that was read, its function ran live), and so is a walrus in the condition
    (``if (lang := case.meta["lang"]) == "zh":``). Before, the first ask in the source was planned for
    every test: the other branches' calls were wasted (in a suite of three such functions, 196
    of the 240 calls sent ahead) until the functions ran live."""
    project.makepyfile(
        test_suite="""
        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_branches(rollout, case):
            if case.meta["lang"] == "zh":
                pair = rollout.ask(case.prompt, system="请用中文简短回答。")
            elif case.id.endswith("5"):
                pair = rollout.ask("Summarize: " + case.prompt, temperature=0)
            else:
                pair = rollout.ask(case.prompt, system="Answer briefly in English.")
            assert pair.stable.ok and pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_only_english(rollout, case):
            if case.meta["lang"] == "en":
                assert rollout.ask(case.prompt).candidate.ok

        SYSTEMS = {"zh": "请用中文回答。"}

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_set_in_the_branch(rollout, case):
            if case.meta["lang"] == "zh":
                system = SYSTEMS[case.meta["lang"]]
                note = " (" + case.id + ")"
                rollout.candidate.ask(case.prompt + note, system=system)
            else:
                rollout.candidate.ask(case.prompt + " (en)")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_walrus(rollout, case):
            if (lang := case.meta["lang"]) == "zh":
                rollout.candidate.ask(case.prompt, system=SYSTEMS[lang])
            else:
                rollout.candidate.ask(case.prompt + " [" + lang + "]")
        """
    )
    n = 20
    _write_cases(project, [
        {"id": f"c{i:02d}", "prompt": f"Where is order A-{i}?",
         "lang": "zh" if i % 2 else "en"}
        for i in range(n)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=4 * n)
    out = result.stdout.str()
    assert "run live:" not in out
    # both models: every test of the first, half of the second; the candidate: the third's
    # and the fourth's
    asks = 2 * n + 2 * (n // 2) + 2 * n
    result.stdout.fnmatch_lines([
        f"modelrollout prefetch*: {asks} calls sent ahead of their tests, {asks} used, 0 unused*"
    ])  # fmt: skip
    seen = sim.first_attempts()
    assert sum(seen.values()) == asks and set(seen.values()) == {1}


@XDIST
def test_a_first_ask_under_an_if_it_cannot_tell_is_probed_not_guessed(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """A test whose first ask is under an ``if`` whose condition prefetch does not read is
    probed until three of its tests have asked what was planned. Here the machine's core count
    (every test takes the ``else``): one call per model is wasted, then what the tests ask is
    learned, and sent ahead for the rest. And a condition on the case's language that is not
    read (``if case.meta["lang"].casefold() == "zh":``, the ``else`` asking ``case.prompt``
    alone): the first test's probe matches, the next takes the other branch, and the function
    runs live after at most two calls per model are wasted. A first ask that is not read at
    all, whose case is planned (``rollout.ask(shortened(case.prompt))``, cutting only the long
    English prompts: the Chinese tests' probes match), runs live after its first probe that
    its test does not take and that teaches nothing: one call per model wasted. Before, the
    first ask in the source was sent ahead for a window of tests as if it were known (or, once
    one probe matched, the ``else``'s, or the case as it is), each test of the other kind
    wasting its calls, and the function then ran live; and until 2026-11-28 a guess that had
    missed once could still be confirmed by three probes that matched, by chance of the order
    an xdist worker got its tests in (24 calls wasted in one run)."""
    project.makepyfile(
        test_suite="""
        import os

        import pytest
        from pytest_modelrollout import cases

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_by_mode(rollout, case):
            if os.cpu_count() == 1024:  # (not read)
                pair = rollout.ask(case.prompt, system="Answer strictly by the policy.")
            else:
                pair = rollout.ask(case.prompt, system="Answer briefly.")
            assert pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_by_language(rollout, case):
            if case.meta["lang"].casefold() == "zh":  # (str.casefold: not read)
                rollout.ask(case.prompt, system="请用中文回答。")
            else:
                rollout.ask(case.prompt)

        def shortened(text):
            while len(text) > 20:  # (a while loop: not read)
                text = text[:20]
            return text

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_shortened(rollout, case):
            rollout.ask(shortened(case.prompt))
        """
    )
    n = 20
    _write_cases(project, [
        {"id": f"c{i:02d}", "meta": {"lang": "zh" if i % 2 else "en"},
         "prompt": f"我的订单 B-{i} 在哪？" if i % 2 else
         f"Where is my order A-{i}? It is late."}
        for i in range(n)
    ])  # fmt: skip
    result = _run(project, "-v", *xdist)
    result.assert_outcomes(passed=3 * n)
    out = result.stdout.str()
    assert "run live: test_suite.py::test_by_mode" not in out
    result.stdout.fnmatch_lines([f"*run live: test_suite.py::test_by_language ({LIVE_MISMATCH})",
                                 "*run live: test_suite.py::test_shortened (*)"])
    line, (sent, used, unused) = _prefetch_counts(result)
    # test_by_mode: its first probe; test_by_language: its second and third; test_shortened:
    # its first that a test did not take (per worker)
    wasted = 8 if not xdist else 16
    assert unused <= wasted and used >= 2 * n - wasted and sent == used + unused, line
    assert sum("strictly" in k[1] for k in sim.first_attempts()) <= 2


@XDIST
def test_a_test_that_asks_through_an_object_a_fixture_made_is_probed_with_its_question(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """Teams wrap their app's model calls in a class of their own, and hand the tests an
    instance from a fixture (``bot.answer(question)``): no ``.ask(...)`` in the test, no model
    fixture among its arguments. Its parametrized question (of several strings, the one the
    test's body passes on first: not ``expected``) is planned as a guess: probed with the
    marker's arguments, the arguments the bot passes are learned from the first test, and
    after three matching probes the rest are sent ahead. Before, each such function ran live,
    one test at a time. A bot handed the case that asks the case's prompt string
    (``self.model.ask(case.prompt, ...)``): its case is the guess, and that its tests ask its
    prompt is learned with the arguments. A bot that puts text around the question
    (``f"Customer: {question}\\nReply briefly."``): that text is learned from the first test.
    A test with an ask of its own that is not read (a
    prompt with the machine's core count) is not guessed at: it runs live, and no call is
    wasted on it."""
    project.makepyfile(
        test_suite="""
        import os

        import pytest
        from pytest_modelrollout import cases

        QUESTIONS = [f"Where is my order A-{1000 + i}?" if i % 2 else
                     f"你好，我的订单 B-{2000 + i} 到哪了？" for i in range(20)]

        class SupportBot:
            SYSTEM = "You are a concise support agent."

            def __init__(self, model):
                self.model = model

            def answer(self, question):
                return self.model.ask(question, system=self.SYSTEM, temperature=0)

        @pytest.fixture
        def bot(rollout):
            return SupportBot(rollout)

        @pytest.fixture
        def candidate_bot(rollout):
            return SupportBot(rollout.candidate)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", QUESTIONS)
        def test_bot(bot, question):
            pair = bot.answer(question)
            assert pair.candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question,expected", [(q + " Thanks.", q[-4:]) for q in QUESTIONS])
        def test_candidate_bot(candidate_bot, question, expected):
            reply = candidate_bot.answer(question)
            assert reply.ok and expected in question

        class CaseBot:
            def __init__(self, model):
                self.model = model

            def answer(self, case):
                return self.model.ask(case.prompt, system="Answer the customer.")

        @pytest.fixture
        def case_bot(rollout):
            return CaseBot(rollout)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_case_bot(case_bot, case):
            case_bot.answer(case)

        class WrappingBot:
            def __init__(self, model):
                self.model = model

            def answer(self, question):
                return self.model.ask(f"Customer: {question}\\nReply briefly.")

        @pytest.fixture
        def wrapping_bot(rollout):
            return WrappingBot(rollout)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", [q + " Now." for q in QUESTIONS])
        def test_wrapping_bot(wrapping_bot, question):
            wrapping_bot.answer(question)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", [q + " Please." for q in QUESTIONS])
        def test_styled(rollout, question):
            cores = os.cpu_count()  # (not read)
            rollout.ask(f"({cores} cores) {question}")
        """
    )
    result = _run(project, "-v", *xdist)
    n = 20
    result.assert_outcomes(passed=4 * n + N_CASES)
    _only_live(result, ("test_bot ", "test_candidate_bot", "test_case_bot", "test_wrapping_bot"),
               "*run live: test_suite.py::test_styled (*)")
    line, (sent, used, unused) = _prefetch_counts(result)
    # test_bot, test_case_bot and test_wrapping_bot: their first probes (the marker's
    # arguments, the question as it is), both models; test_candidate_bot: its first probe,
    # both models, and the stable of the next two (each per worker); test_styled: none
    wasted = 10 if not xdist else 20
    asked = 2 * n + n + 2 * N_CASES + 2 * n
    assert unused <= wasted and used >= asked - (14 if xdist else 7), line
    assert sent == used + unused, line
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}  # each request sent once (ahead, or by its test)
    assert all("cores)" in k[1] for k in seen if "Please." in k[1])  # test_styled's: its own
    assert sum("Answer the customer." in k[1] for k in seen) == 2 * N_CASES
    assert sum("Customer: " in k[1] and "Reply briefly." in k[1] for k in seen) == 2 * n
    # the bots' requests: each question with the bot's system prompt, and the stable's of
    # test_candidate_bot's second and third probes (sent before its first test was over)
    bots = sum("concise support agent" in k[1] for k in seen)
    assert 3 * n <= bots <= 3 * n + (4 if xdist else 2)


@XDIST
def test_a_bot_that_words_its_request_by_language_is_learned_per_language(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """English and Chinese traffic through a team's bot that words the request by language
    (a template and a system prompt for each): its tests are learned per script of their
    question (Latin, Chinese, ...), each group probed as a function of its own, the Chinese
    group's first probe built with what the English group taught. Before, the second probe
    missed (the other language's template) and every test of the function ran live, one at a
    time. A bot with the same wording for every language wastes no more than before (its first
    probe, with the marker's arguments); one whose wording changes from case to case within a
    language still runs live, a few calls wasted."""
    project.makepyfile(
        test_suite="""
        import pytest

        QUESTIONS = [f"Where is my order A-{1000 + i}? It has not arrived." if i % 2 else
                     f"你好，我的订单 B-{2000 + i} 到哪了？" for i in range(20)]

        def is_chinese(text):
            return any("\\u4e00" <= ch <= "\\u9fff" for ch in text)

        class LangBot:
            TEMPLATES = {"en": "Customer: {q}\\nReply briefly.", "zh": "客户：{q}\\n请简短回答。"}
            SYSTEMS = {"en": "You are a concise support agent.", "zh": "你是一名简洁的客服。"}

            def __init__(self, model):
                self.model = model

            def answer(self, question):
                lang = "zh" if is_chinese(question) else "en"
                return self.model.ask(self.TEMPLATES[lang].format(q=question),
                                      system=self.SYSTEMS[lang])

        class SameBot:
            def __init__(self, model):
                self.model = model

            def answer(self, question):
                return self.model.ask(f"Customer: {question}", system="Be brief.")

        class MoodyBot:
            def __init__(self, model):
                self.model = model

            def answer(self, question):
                tone = "warmly" if len(question) % 2 else "briefly"
                return self.model.ask(f"Reply {tone}: {question}")

        @pytest.fixture
        def lang_bot(rollout):
            return LangBot(rollout)

        @pytest.fixture
        def same_bot(rollout):
            return SameBot(rollout)

        @pytest.fixture
        def moody_bot(rollout):
            return MoodyBot(rollout)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", QUESTIONS)
        def test_lang_bot(lang_bot, question):
            assert lang_bot.answer(question).candidate.ok

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", [q + " Thanks." for q in QUESTIONS])
        def test_same_bot(same_bot, question):
            same_bot.answer(question)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", [q + " Now" + "!" * (i % 3) for i, q in enumerate(QUESTIONS)])
        def test_moody_bot(moody_bot, question):
            moody_bot.answer(question)
        """
    )
    result = _run(project, "-v", *xdist)
    n = 20
    result.assert_outcomes(passed=3 * n)
    _only_live(result, ("test_lang_bot", "test_same_bot"),
               "*run live: test_suite.py::test_moody_bot (*)")
    line, (sent, used, unused) = _prefetch_counts(result)
    # per worker: test_lang_bot's first probe of each language (the marker's arguments, then
    # the English wording), test_same_bot's first (the marker's arguments), test_moody_bot's
    # probes until its wording misses in each language: two calls each
    workers = 2 if xdist else 1
    assert unused <= workers * (4 + 2 + 8), line
    assert used >= 2 * n + 2 * n - workers * 6, line  # a probe's test takes its own calls
    assert sent == used + unused, line
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}  # each request sent once (ahead, or by its test)
    texts = [" | ".join(m["content"] for m in json.loads(k[1])) for k in seen]
    zh = [t for t in texts if "B-" in t and "Thanks" not in t and "Now" not in t]
    en = [t for t in texts if "A-" in t and "Thanks" not in t and "Now" not in t]
    # each question asked of both models in its own language's wording, and the first probes'
    # misses (the marker's arguments; the English wording of a Chinese question), per worker
    assert sum("请简短回答" in t and "简洁的客服" in t for t in zh) == n
    assert sum("Reply briefly." in t and "concise support agent" in t for t in en) == n
    assert len(zh) + len(en) <= 2 * n + 4 * workers


def test_a_language_that_asked_as_written_keeps_to_it_when_another_teaches(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    """A bot that asks a Chinese question as it is and wraps an English one: the Chinese
    group's first probe (the question as it is) matches, the English group's misses and
    teaches its wrapping. The Chinese group keeps asking as written: one probe wasted in all.
    Before, the Chinese group's later probes took the English wrapping (what the first group
    to teach taught), and missed."""
    project.makepyfile(
        test_suite="""
        import pytest

        QUESTIONS = [f"Where is my order A-{1000 + i}?" if i % 2 else
                     f"你好，我的订单 B-{2000 + i} 到哪了？" for i in range(20)]

        class Bot:
            def __init__(self, model):
                self.model = model

            def answer(self, question):
                if question.startswith("Where"):
                    question = f"Customer: {question}"
                return self.model.ask(question)

        @pytest.fixture
        def bot(rollout):
            return Bot(rollout)

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", QUESTIONS)
        def test_bot(bot, question):
            bot.answer(question)
        """
    )
    result = _run(project, "-v")
    result.assert_outcomes(passed=20)
    assert "run live:" not in result.stdout.str()
    line, (sent, used, unused) = _prefetch_counts(result)
    assert (used, unused) == (40 - 2, 2), line  # the English group's first probe, both models
    assert sent == used + unused, line
    assert set(sim.first_attempts().values()) == {1}


@XDIST
def test_what_a_test_reads_from_the_environment_is_probed_then_sent_ahead(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.environ.get(...)``, ``os.environ[...]`` and ``os.getenv(...)`` in a test are read
    as the environment is when the plan is made; as a fixture may set the variable before the
    test reads it, such a plan is probed until three tests asked what was planned, then the
    rest go ahead. Before, each such function ran live. A fixture that sets the variable
    (``monkeypatch.setenv``) makes the first probe miss: one call per model wasted (per
    worker), then the function runs live, every test asking what it means to, and ``-v`` says
    why."""
    project.makepyfile(
        test_suite="""
        import os

        import pytest

        QUESTIONS = [f"Where is my order A-{1000 + i}?" if i % 2 else
                     f"你好，我的订单 B-{2000 + i} 到哪了？" for i in range(20)]

        @pytest.fixture
        def strict(monkeypatch):
            monkeypatch.setenv("MR_TEST_STYLE", "strict")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", QUESTIONS)
        def test_styled(rollout, question):
            style = os.environ.get("MR_TEST_STYLE", "brief")
            rollout.ask(f"[{style}] {question}",
                        system=os.getenv("MR_TEST_SYSTEM", "Answer the customer."))

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", QUESTIONS)
        def test_region(rollout, question):
            rollout.ask(question + " (" + os.environ["MR_TEST_REGION"] + ")")

        @pytest.mark.workflow("support")
        @pytest.mark.parametrize("question", QUESTIONS)
        def test_strict(rollout, strict, question):
            style = os.environ.get("MR_TEST_STYLE", "brief")
            rollout.ask(f"<{style}> {question}")
        """
    )
    monkeypatch.setenv("MR_TEST_REGION", "EU")
    monkeypatch.delenv("MR_TEST_STYLE", raising=False)
    monkeypatch.delenv("MR_TEST_SYSTEM", raising=False)
    result = _run(project, "-v", *xdist)
    n = 20
    result.assert_outcomes(passed=3 * n)
    _only_live(result, ("test_styled", "test_region"),
               "*run live: test_suite.py::test_strict (its tests took none of what was sent "
               "ahead for them: its plan read the environment*)")
    line, (sent, used, unused) = _prefetch_counts(result)
    wasted = 2 if not xdist else 4  # test_strict's first probe, both models (per worker)
    assert unused <= wasted and used >= 4 * n - 2 * (3 if xdist else 0), line
    assert sent == used + unused, line
    seen = sim.first_attempts()
    assert set(seen.values()) == {1}  # each request sent once (ahead, or by its test)
    assert sum("[brief]" in k[1] and "Answer the customer." in k[1] for k in seen) == 2 * n
    assert sum("(EU)" in k[1] for k in seen) == 2 * n
    assert sum("<strict>" in k[1] for k in seen) == 2 * n  # what test_strict asked
    assert sum("<brief>" in k[1] for k in seen) <= wasted  # its probes


def test_deselected_items_are_not_prefetched(project: pytest.Pytester, sim: CountingSim) -> None:
    project.makepyfile(test_suite=SUITE)
    result = _run(project, "-k", "c00 or c07", "--rollout-report=r.json")
    result.assert_outcomes(passed=2, deselected=N_CASES - 2)
    seen = sim.first_attempts()
    assert len(seen) == 4 and set(seen.values()) == {1}
    assert all("A-1000" in k[1] or "B-2007" in k[1] for k in seen)


def test_skipped_items_are_not_prefetched(project: pytest.Pytester, sim: CountingSim) -> None:
    project.makepyfile(
        test_suite=SUITE.replace(
            '@pytest.mark.workflow("support"',
            '@pytest.mark.skip("no")\n@pytest.mark.workflow("support"',
        )
    )
    _run(project).assert_outcomes(skipped=N_CASES)
    assert sim.total() == 0


@XDIST
def test_kill_switch_is_respected(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    project.makepyfile(
        test_suite=SUITE
        + """

@pytest.mark.workflow("solo")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_stable_only(stable, case):
    assert stable.ask(case).ok
"""
    )
    result = _run(project, *xdist, f"--rollout-kill={CANDIDATE}", "--rollout-no-gate")
    result.assert_outcomes(passed=N_CASES, skipped=N_CASES)
    assert sim.total(CANDIDATE.removeprefix("sim:")) == 0
    assert sim.total(STABLE.removeprefix("sim:")) == N_CASES


def test_shadow_rows_do_not_call_the_stable(project: pytest.Pytester, sim: CountingSim) -> None:
    rows = [
        {
            "id": f"s{i}",
            "prompt": f"Where is my order A-{3000 + i}?",
            "stable_reply": {"text": f"Your order A-{3000 + i} ships tomorrow.", "latency_ms": 500},
        }
        for i in range(4)
    ]
    project.path.joinpath("cases.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    project.makepyfile(test_suite=SUITE)
    _run(project, "--rollout-report=r.json").assert_outcomes(passed=4)
    assert sim.total(STABLE.removeprefix("sim:")) == 0
    assert sim.total(CANDIDATE.removeprefix("sim:")) == 4
    wf = _report(project.path / "r.json")["workflows"]["support"]
    assert wf["stable"]["shadow"] == 4 and wf["candidate"]["requests"] == 4


def test_cassettes_record_then_replay(project: pytest.Pytester, sim: CountingSim) -> None:
    project.makepyfile(test_suite=SUITE)
    _run(project, "--rollout-record=new", "--rollout-report=new.json").assert_outcomes(
        passed=N_CASES
    )
    assert sim.total() == 2 * N_CASES
    sim.reset()
    _run(project, "--rollout-record=replay", "--rollout-report=replay.json").assert_outcomes(
        passed=N_CASES
    )
    assert sim.total() == 0
    sim.settle_accepts()
    assert sim.accepted == []  # nothing opened ahead for models that are only replayed
    replay = _report(project.path / "replay.json")["workflows"]["support"]
    assert replay["candidate"]["replayed"] == N_CASES
    new = _essentials(_report(project.path / "new.json"))
    assert _essentials(_report(project.path / "replay.json")) == new


@XDIST
def test_the_first_connections_are_opened_while_the_run_collects(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """As many connections per model as calls may be in flight to it (its max_concurrency, 8,
    within the run's concurrency, 16), opened when the run starts, before the first request:
    the requests go out on them, none opens its own. Under xdist the controller opens them for
    its head start, and a worker opens its own only for the calls it makes itself (at most its
    concurrency)."""
    project.makepyfile(test_suite=SUITE)
    project.makeconftest(
        "import time\n\n"
        "def pytest_collection_modifyitems(items):\n"
        "    time.sleep(0.5)  # a large suite, collecting\n"
    )
    _run(project, *xdist).assert_outcomes(passed=N_CASES)
    assert sim.total() == 2 * N_CASES
    sim.settle_accepts()
    if not xdist:
        assert len(sim.accepted) == 16
        assert max(sim.accepted) < min(t for t, _ in sim.arrivals)
    else:  # the controller's 16, and at most 8 per model for each worker's own calls
        assert 16 <= len(sim.accepted) <= 16 + 2 * 2 * 8


def test_a_model_replayed_from_cassettes_gets_no_connection_opened_ahead(
    project: pytest.Pytester, sim: CountingSim
) -> None:
    project.makepyfile(test_suite=SUITE)
    _run(project, "--rollout-record=new").assert_outcomes(passed=N_CASES)
    # those opened ahead and left unused may be accepted after the run, later on a busy machine
    sim.settle_accepts(quiet_s=0.5)
    sim.reset()
    project.makepyprojecttoml(CONFIG + 'record = { stable = "replay", candidate = "all" }\n')
    _run(project).assert_outcomes(passed=N_CASES)
    assert sim.total(STABLE.removeprefix("sim:")) == 0
    assert sim.total(CANDIDATE.removeprefix("sim:")) == N_CASES
    sim.settle_accepts(quiet_s=0.5)
    assert len(sim.accepted) == 8  # the candidate's


@XDIST
def test_rate_limits_with_prefetch(
    project: pytest.Pytester, sim: CountingSim, xdist: list[str]
) -> None:
    """429s (retried with adaptive back-off) and an rpm bucket give the same records."""
    project.makepyprojecttoml(
        """
[tool.modelrollout]
stable = "steady"
candidate = "limited"

[tool.modelrollout.models.steady]
provider = "sim"
model = "stable?latency_ms=10&jitter=0"

[tool.modelrollout.models.limited]
provider = "sim"
model = "flaky?error_rate=0&rate_limit_rate=0.2&latency_ms=10&jitter=0"
max_retries = 3
rpm = 6000
"""
    )
    project.makepyfile(test_suite=SUITE)
    _run(project, *xdist, "--rollout-no-prefetch", "--rollout-report=off.json").assert_outcomes(
        passed=N_CASES
    )
    sim.reset()
    _run(project, *xdist, "--rollout-report=on.json").assert_outcomes(passed=N_CASES)
    on = _report(project.path / "on.json")
    assert _essentials(on) == _essentials(_report(project.path / "off.json"))
    assert on["workflows"]["support"]["candidate"]["success_rate"] == 1.0
    seen = sim.first_attempts()
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {1}
    retried = [k for k, v in sim.seen.items() if k[2] != "0"]
    assert retried, "the flaky persona should have answered some first attempts with 429"


@pytest.mark.parametrize("dist", ["loadfile", "load"])
def test_xdist_workers_share_the_runs_limits(
    project: pytest.Pytester, sim: CountingSim, dist: str, one_heavy_run_at_a_time: None
) -> None:
    """The limits are the run's, kept by the xdist controller: a worker with every test (one
    file under ``--dist loadfile``) calls at the whole concurrency, not at its half of it, and
    the workers together never go over it."""
    project.makepyprojecttoml(CONFIG.replace("latency_ms=20", "latency_ms=300"))
    project.makepyfile(test_suite=SUITE)
    # counted at the simulator, from a request's handling to its reply: never more than the
    # calls the workers hold slots for
    sim.hold_in_handler = True
    result = _run(
        project, "-n", "2", f"--dist={dist}", "--rollout-concurrency=4",
        "--rollout-allow-inconclusive", "-v",
    )
    result.assert_outcomes(passed=N_CASES)
    assert sim.total() == 2 * N_CASES
    assert sim.peak_in_flight == 4
    # -v says how much of each limit the workers used at once
    result.stdout.fnmatch_lines([
        "modelrollout limits, shared by the xdist workers: at most 4 calls in flight at once "
        "(concurrency 4); sim:good?latency_ms=300&jitter=0 * (max_concurrency 8), "
        "sim:stable?latency_ms=300&jitter=0 * (8)"
    ])


@pytest.mark.parametrize("dist", ["load", "worksteal"])
def test_xdist_modes_send_nothing_twice(
    project: pytest.Pytester, sim: CountingSim, dist: str, one_heavy_run_at_a_time: None
) -> None:
    project.makepyfile(test_suite=SUITE, test_more=SUITE.replace("test_support", "test_again"))
    _run(project, "-n", "2", f"--dist={dist}", "--rollout-report=r.json").assert_outcomes(
        passed=2 * N_CASES
    )
    seen = sim.first_attempts()
    # both files ask the same requests: each is asked exactly twice (once per test)
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {2}


# -- the xdist controller's head start -------------------------------------------------------
HEADSTART_LINE = re.compile(
    r"  xdist controller's head start: (\d+) of them sent by the controller, (\d+) taken by "
    r"its workers, (\d+) unused"
)


def _headstart(result: pytest.RunResult) -> tuple[int, int, int]:
    """The -v line's counts: sent by the controller, taken by the workers, unused."""
    for line in result.outlines:
        m = HEADSTART_LINE.fullmatch(line)
        if m:
            sent, taken, unused = (int(g) for g in m.groups())
            return sent, taken, unused
    raise AssertionError("no head start line in:\n" + "\n".join(result.outlines[-20:]))


@pytest.mark.parametrize("beside", [True, False], ids=["beside-the-workers-start", "before"])
def test_xdist_controller_sends_while_its_workers_start(
    project: pytest.Pytester,
    sim: CountingSim,
    monkeypatch: pytest.MonkeyPatch,
    one_heavy_run_at_a_time: None,
    beside: bool,
) -> None:
    """Under -n the controller sends the requests it reads in full before its workers are up;
    each test takes its result from the controller's call (claimed by test id and request
    key): every request reaches the provider once, and the records, checks and verdict are
    those of a run without xdist. The controller collects beside xdist starting its workers
    where pytest has ``--disable-plugin-autoload`` (8.4 on), before it otherwise."""
    from pytest_modelrollout import headstart

    if not beside:
        monkeypatch.setattr(headstart, "autoload_flag", lambda: False)
    elif not headstart.autoload_flag():
        pytest.skip("pytest before 8.4 has no --disable-plugin-autoload")
    project.makepyfile(test_suite=SUITE)
    _run(project, "--rollout-report=plain.json").assert_outcomes(passed=N_CASES)
    sim.reset()
    result = _run(project, "-n", "2", "-v", "--rollout-report=xdist.json")
    result.assert_outcomes(passed=N_CASES)
    sent, taken, unused = _headstart(result)
    # the controller plans before it starts the workers: its first calls are out before any
    # worker can claim anything
    assert sent >= 2 and taken == sent and unused == 0
    seen = sim.first_attempts()
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {1}
    assert _essentials(_report(project.path / "xdist.json")) == _essentials(
        _report(project.path / "plain.json")
    )


def test_the_controller_sends_the_later_asks_too(
    project: pytest.Pytester, sim: CountingSim, one_heavy_run_at_a_time: None
) -> None:
    """A test that always asks twice, both asks read in full: the controller sends both with
    its head start (here all of them, its workers taking a second longer to start), and the
    workers take them all; every request is sent once."""
    project.makeconftest(
        """
        import os, time

        def pytest_configure(config):
            if os.environ.get("PYTEST_XDIST_WORKER"):
                time.sleep(1.0)
        """
    )
    project.makepyfile(test_suite=TWICE.format(second=BOTH))
    result = _run(project, "-n", "2", "-v")
    result.assert_outcomes(passed=N_CASES)
    sent, taken, unused = _headstart(result)
    assert (sent, taken, unused) == (4 * N_CASES, 4 * N_CASES, 0)
    seen = sim.first_attempts()
    assert len(seen) == 4 * N_CASES and set(seen.values()) == {1}


def test_a_head_start_with_last_failed(
    project: pytest.Pytester, sim: CountingSim, one_heavy_run_at_a_time: None
) -> None:
    """``--lf`` selects what the workers run from pytest's cache: the controller's collection
    reads the same cache, so the head start stays on and sends only what is run."""
    project.makepyfile(test_suite=SUITE.replace(
        "    pair = rollout.ask(case)\n",
        "    pair = rollout.ask(case)\n    assert case.id not in ('c02', 'c07')\n",
    ))
    args = ("--rollout-allow-inconclusive", "-n", "2", "-v")
    project.runpytest(*args).assert_outcomes(passed=N_CASES - 2, failed=2)
    sim.reset()
    result = project.runpytest(*args, "--lf")
    result.assert_outcomes(failed=2)
    sent, taken, unused = _headstart(result)  # on, not "off (... --lf)"
    assert taken == sent <= 4 and unused == 0
    seen = sim.first_attempts()
    assert len(seen) == 4 and set(seen.values()) == {1}


def test_the_only_worker_of_n1_takes_the_controllers_calls_too(
    project: pytest.Pytester, sim: CountingSim, one_heavy_run_at_a_time: None
) -> None:
    """With one worker (which has no share of the limits to split) the worker still claims
    what the controller sent: nothing is sent twice."""
    project.makepyfile(test_suite=SUITE)
    result = _run(project, "-n", "1", "-v")
    result.assert_outcomes(passed=N_CASES)
    sent, taken, unused = _headstart(result)
    assert sent >= 2 and taken == sent and unused == 0
    seen = sim.first_attempts()
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {1}


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        # an option of a plugin the controller's own collection does not load (syrupy's)
        (["--snapshot-update"], {}, "off (the controller's collection did not succeed "
         "(unrecognized arguments: --snapshot-update))"),
        ([], {"MODELROLLOUT_HEADSTART": "0"}, None),
    ],
    ids=["unknown-option", "turned-off"],
)
def test_without_a_head_start_the_workers_send_everything(
    project: pytest.Pytester,
    sim: CountingSim,
    monkeypatch: pytest.MonkeyPatch,
    one_heavy_run_at_a_time: None,
    args: list[str],
    env: dict[str, str],
    said: str | None,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    project.makepyfile(test_suite=SUITE)
    result = _run(project, "-n", "2", "-v", *args)
    result.assert_outcomes(passed=N_CASES)
    if said is None:
        result.stdout.no_fnmatch_line("*head start*")
    else:
        result.stdout.fnmatch_lines([f"  xdist controller's head start: {said}"])
    seen = sim.first_attempts()
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {1}


NICE_CONFTEST = """
import os

def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)  # not the environment: this run's
    if workerinput:  # controller may itself be a worker of the run of these tests
        with open(f"nice-{workerinput['workerid']}.txt", "w") as f:
            f.write(str(os.nice(0)))
"""


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process priorities on this platform")
@pytest.mark.parametrize(
    ("args", "env", "added"),
    [
        (["-n", "2"], {}, 10),
        (["-n", "2"], {"MODELROLLOUT_WORKER_NICE": "4"}, 4),
        (["-n", "2"], {"MODELROLLOUT_WORKER_NICE": "0"}, 0),
        (["-n", "2"], {"MODELROLLOUT_HEADSTART": "0"}, 0),  # no calls of the controller's
        (["-d", "--tx", "2*popen//nice=3"], {}, 3),  # the user's own is kept
    ],
    ids=["head-start", "set", "turned-off", "no-head-start", "users-own"],
)
def test_with_a_head_start_the_workers_run_below_the_controllers_cpu_priority(
    project: pytest.Pytester,
    sim: CountingSim,
    monkeypatch: pytest.MonkeyPatch,
    one_heavy_run_at_a_time: None,
    args: list[str],
    env: dict[str, str],
    added: int,
) -> None:
    """The controller's calls are timed by its event loop: with more processes than cores,
    the workers starting beside it delay the requests that follow each reply. The workers on
    this machine start ``nice`` 10 steps below it while it sends, and nothing else changes."""
    base = os.nice(0)
    if base + 10 > 19:
        pytest.skip("this process runs at too low a priority to go 10 steps lower")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    project.makeconftest(NICE_CONFTEST)
    project.makepyfile(test_suite=SUITE)
    _run(project, *args).assert_outcomes(passed=N_CASES)
    seen = {p.name: int(p.read_text()) for p in project.path.glob("nice-*.txt")}
    assert seen == {"nice-gw0.txt": base + added, "nice-gw1.txt": base + added}
    assert set(sim.first_attempts().values()) == {1}


def test_a_bad_worker_nice_is_one_line_before_any_worker_starts(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROLLOUT_WORKER_NICE", "high")
    project.makeconftest(NICE_CONFTEST)
    project.makepyfile(test_suite=SUITE)
    result = _run(project, "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: modelrollout: MODELROLLOUT_WORKER_NICE must be a whole number from 0 (the "
        "workers at the controller's CPU priority) to 19, got 'high'"
    ])
    assert not list(project.path.glob("nice-*.txt"))


@pytest.mark.parametrize(
    ("record", "sent_expected", "files_after", "headstart"),
    [
        # every model records what it misses: the controller sends the misses (the first
        # half of the cases is recorded), its workers replay the rest
        ('record = "new"', 2 * (N_CASES - N_CASES // 2), 2 * N_CASES, True),
        ('record = "all"', 2 * N_CASES, 2 * N_CASES, True),
        # the stable replays and records misses, the candidate is live and never recorded: the
        # controller sends the stable's misses and every candidate request
        ('record = { stable = "new", candidate = "off" }',
         N_CASES - N_CASES // 2 + N_CASES, N_CASES // 2 + N_CASES, True),
    ],
    ids=["new", "all", "per-role"],
)
def test_a_head_start_with_cassettes_sends_what_a_run_without_xdist_sends(
    project: pytest.Pytester,
    sim: CountingSim,
    one_heavy_run_at_a_time: None,
    record: str,
    sent_expected: int,
    files_after: int,
    headstart: bool,
) -> None:
    """With cassettes the controller reads them as the workers will and writes none: a
    request recorded already is replayed by its worker, a miss is sent once (by the
    controller, or by the worker when it got to its test first), and the worker that takes the
    controller's result records it. Records, sources and cassettes are those of a run without
    xdist from the same cassettes."""
    import shutil

    project.makepyfile(test_suite=SUITE)
    first = [f"c{i:02d}" for i in range(N_CASES // 2)]
    _run(project, "--rollout-record=all", "-k", " or ".join(first)).assert_outcomes(
        passed=len(first)
    )
    cassettes = project.path / "model_cassettes"
    shutil.copytree(cassettes, project.path / "recorded")
    before = {p.relative_to(cassettes) for p in cassettes.rglob("*.json")}
    assert len(before) == 2 * len(first)
    project.makepyprojecttoml(CONFIG + record + "\n")

    def sources(path: Path) -> Counter[tuple[str, str]]:
        return Counter((c["role"], c["source"]) for c in _report(path)["records"]["calls"])

    def recorded() -> dict[Path, dict[str, Any]]:
        """Each cassette's content, but when it was recorded and how long the call took."""
        out = {}
        for path in cassettes.rglob("*.json"):
            doc = json.loads(path.read_text(encoding="utf-8"))  # complete, valid JSON
            out[path.relative_to(cassettes)] = {
                k: v for k, v in doc.items() if k not in ("recorded_at", "latency_ms")
            }
        return out

    _run(project, "--rollout-report=plain.json").assert_outcomes(passed=N_CASES)
    plain = recorded()
    assert len(plain) == files_after
    shutil.rmtree(cassettes)
    shutil.copytree(project.path / "recorded", cassettes)
    sim.reset()
    result = _run(project, "-n", "2", "-v", "--rollout-report=xdist.json")
    result.assert_outcomes(passed=N_CASES)
    if headstart:
        sent, taken, unused = _headstart(result)
        assert 2 <= sent <= sent_expected and taken == sent and unused == 0
    else:
        result.stdout.fnmatch_lines([f"  xdist controller's head start: off ({OFF_CASSETTES})"])
    seen = sim.first_attempts()
    assert sum(seen.values()) == len(seen) == sent_expected  # each miss sent once
    assert sources(project.path / "xdist.json") == sources(project.path / "plain.json")
    assert _essentials(_report(project.path / "xdist.json")) == _essentials(
        _report(project.path / "plain.json")
    )
    assert recorded() == plain


def test_no_head_start_when_every_model_only_replays(
    project: pytest.Pytester, sim: CountingSim, one_heavy_run_at_a_time: None
) -> None:
    project.makepyfile(test_suite=SUITE)
    _run(project, "--rollout-record=new").assert_outcomes(passed=N_CASES)
    sim.reset()
    result = _run(project, "-n", "2", "-v", "--rollout-record=replay")
    result.assert_outcomes(passed=N_CASES)
    result.stdout.fnmatch_lines([f"  xdist controller's head start: off ({OFF_CASSETTES})"])
    assert not sim.first_attempts()


def test_what_no_test_asks_for_is_unused_and_never_recorded_with_a_head_start(
    project: pytest.Pytester, sim: CountingSim, one_heavy_run_at_a_time: None
) -> None:
    """A test that does not make the ask planned for it (here: under a condition it does not
    meet) leaves what was sent for it unused, whether the controller or its worker sent it:
    counted once, never recorded, never sent twice."""
    project.makepyfile(test_suite=SUITE.replace(  # object(): a condition prefetch does not read
        "    pair = rollout.ask(case)\n",
        "    if case.id == \"c03\" and object():\n        return\n    pair = rollout.ask(case)\n",
    ))
    result = _run(project, "-n", "2", "-v", "--rollout-report=r.json")
    result.assert_outcomes(passed=N_CASES)
    sent, taken, unused = _headstart(result)
    assert sent >= 2 and taken + unused == sent
    result.stdout.fnmatch_lines([
        f"modelrollout prefetch (2 xdist workers): {2 * N_CASES} calls sent ahead of their "
        f"tests, {2 * N_CASES - 2} used, 2 unused (not recorded), 0 errors, * calls/s"
    ])
    report = _report(project.path / "r.json")
    assert report["workflows"]["support"]["candidate"]["requests"] == N_CASES - 1
    seen = sim.first_attempts()
    assert len(seen) == 2 * N_CASES and set(seen.values()) == {1}


# -- units ---------------------------------------------------------------------------------
def test_skipped_statically(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        def test_plain(): pass
        @pytest.mark.skipif(False, reason="no")
        def test_skipif_false(): pass
        @pytest.mark.skipif(True, reason="yes")
        def test_skipif_true(): pass
        @pytest.mark.skipif("1 == 1", reason="string")
        def test_skipif_string(): pass
        @pytest.mark.xfail(run=False)
        def test_xfail_norun(): pass
        """
    )
    items, _ = pytester.inline_genitems()
    assert {i.name: _skipped_statically(i) for i in items} == {
        "test_plain": False,
        "test_skipif_false": False,
        "test_skipif_true": True,
        "test_skipif_string": True,
        "test_xfail_norun": True,
    }


def test_take_requires_the_exact_request() -> None:
    import concurrent.futures

    from pytest_modelrollout.prefetch import Slot
    from pytest_modelrollout.providers.base import ChatRequest

    pf = Prefetcher.__new__(Prefetcher)
    Prefetcher.__init__(pf, session=None, context_for=lambda item: None, window=4)  # type: ignore[arg-type]
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}], system="s")
    other = ChatRequest(messages=[{"role": "user", "content": "hi"}], system="t")
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    pf._slots["t::a"] = [Slot("candidate", "m", req.key("m"), fut)]
    pf._held = 1
    assert pf.take("t::a", [("m", other, "candidate")]) == [None]
    assert pf.take("t::a", [("x", req, "candidate")]) == [None]
    assert pf.take("t::a", [("m", req, "stable")]) == [None]
    assert pf.take("t::b", [("m", req, "candidate")]) == [None]
    assert pf.take("t::a", [("m", req, "candidate")]) == [fut]
    assert pf.take("t::a", [("m", req, "candidate")]) == [None]  # consumed once
    assert pf.held == 0 and pf.stats.used == 1


def _item(name: str) -> Any:
    """Enough of a test item for the head start's planner."""
    return SimpleNamespace(nodeid=f"t.py::{name}", path="t.py", name=name,
                           originalname=name.split("[")[0])


def _done_at_once(result: Any) -> Any:
    """Enough of a session for the head start, whose calls are done with ``result`` as soon
    as they are submitted, models ``m`` without cassettes."""
    import concurrent.futures

    class Runner:
        def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
            coro.close()
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            done.set_result((result, "live"))
            return done

    class Session:
        runner = Runner()
        record_modes: ClassVar[dict[str, str]] = {"stable": "off", "candidate": "off"}

        def default_roles(self) -> dict[str, str]:
            return {"stable": "m", "candidate": "m"}

        def warm(self, roles: Any) -> None:
            pass

    return Session()


def test_a_head_start_call_done_at_once_neither_blocks_nor_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A controller's call can be done before its callback is added (one that fails at once):
    the planner goes on to the next items, and a worker's claim still gets the result."""
    import asyncio

    from pytest_modelrollout.headstart import HeadStart
    from pytest_modelrollout.providers.base import CallResult, ChatRequest, result_from_wire

    result = CallResult(ref="m", status="error", response=None, error=None, latency_ms=0.5,
                        attempts=1, fallback=False, served_by="m", cost_usd=None,
                        started_at=1.0)
    items = [_item(f"test[{i}]") for i in range(3)]
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    hs = HeadStart(_done_at_once(result), items, lambda item: None, concurrency=1)
    monkeypatch.setattr(hs, "_plan", lambda item: [("candidate", "m", request, True)])
    hs.start()
    hs._thread.join(5)
    assert not hs._thread.is_alive() and hs.stats.sent == 3
    got = asyncio.run(hs.claim("t.py::test[1]", "candidate", "m", request.key("m"), True))
    assert got is not None and result_from_wire(got) == result
    hs.close()
    assert (hs.stats.taken, hs.stats.unused) == (1, 2)


class _Planner:
    """A head start on items whose first ask (both models, or those learned) and, with
    ``later``, a later candidate ask are planned as :func:`plan_item` / :func:`plan_later`
    plan them; its calls are done at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, items: list[Any], later: bool) -> None:
        from pytest_modelrollout import headstart
        from pytest_modelrollout.providers.base import CallResult, ChatRequest

        result = CallResult(ref="m", status="ok", response=None, error=None, latency_ms=1.0,
                            attempts=1, fallback=False, served_by="m", cost_usd=None,
                            started_at=1.0)

        def first(item: Any) -> ChatRequest:
            return ChatRequest(messages=[{"role": "user", "content": item.name}])

        def second(item: Any) -> ChatRequest:
            return ChatRequest(messages=[{"role": "user", "content": item.name + " again"}])

        def plan_item(item: Any, session: Any, ctx: Any, kwargs: Any, roles: Any) -> list[Any]:
            return [(role, "m", first(item)) for role in ("stable", "candidate")
                    if roles is None or role in roles]

        def plan_later(item: Any, session: Any, ctx: Any, calls: Any) -> list[Any]:
            return [("candidate", "m", second(item))] if later else []

        monkeypatch.setattr(headstart, "_planned", lambda item: ("case", object()))
        monkeypatch.setattr(headstart, "_source_kwargs", lambda item, planned: {})
        monkeypatch.setattr(headstart, "is_guess", lambda item: False)
        monkeypatch.setattr(headstart, "plan_item", plan_item)
        monkeypatch.setattr(headstart, "plan_later", plan_later)
        # concurrency 1: at most 4 x 4 = 16 calls sent and not taken
        self.hs = headstart.HeadStart(_done_at_once(result), items, lambda item: None,
                                      concurrency=1)
        self.first, self.second = first, second

    def sent(self, item: Any) -> set[tuple[str, str]]:
        """The roles and prompts sent for the item and not yet taken."""
        with self.hs._lock:
            return {(k[1], "later" if later else "first")
                    for k, later in ((k, k[3] != self.first(item).key("m"))
                                     for k in self.hs._calls if k[0] == item.nodeid)}

    def take(self, item: Any, role: str) -> None:
        import asyncio

        key = self.first(item).key("m")
        assert asyncio.run(self.hs.claim(item.nodeid, role, "m", key, True)) is not None

    def settle(self, sent: int) -> None:
        """Wait until the planner has sent ``sent`` calls and waits for room."""
        deadline = time.monotonic() + 10
        while self.hs.stats.sent < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert self.hs.stats.sent == sent


def test_the_controller_stops_sending_for_a_function_whose_tests_take_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a run without xdist learns it: from the second finished test of a function that took
    none of the controller's calls (they are one in ten of its tests), nothing more is sent
    for that function, and what those tests left frees the window for the next function's; a
    test that took one model's reply and not the other's: the function's next tests get only
    that model's."""
    a = [_item(f"test_a[{i}]") for i in range(10)]
    b = [_item(f"test_b[{i}]") for i in range(10)]
    p = _Planner(monkeypatch, a + b, later=False)
    p.hs.start()
    p.settle(16)  # test_a[0..7], both models
    assert p.sent(a[7]) == {("stable", "first"), ("candidate", "first")}
    p.hs.finished(a[0].nodeid)
    p.hs.finished(a[1].nodeid)  # two of two finished tests took nothing: test_a is off
    p.settle(20)  # test_a[8], test_a[9] are not sent; test_b[0], test_b[1] are
    assert not p.sent(a[8]) and not p.sent(a[9])
    assert p.sent(b[1]) == {("stable", "first"), ("candidate", "first")}
    p.take(b[0], "candidate")  # room for test_b[2], both models (nothing learned yet)
    p.settle(22)
    p.hs.finished(b[0].nodeid)  # it asked the candidate only
    for item in a[2:8]:
        p.hs.finished(item.nodeid)
    p.settle(22 + 7)  # the 7 tests of test_b after it, the candidate only
    assert [p.sent(item) for item in b[3:]] == [{("candidate", "first")}] * 7
    p.hs.close()
    assert (p.hs.stats.taken, p.hs.stats.unused) == (1, 16 + 1 + 2 + 2 + 7)


def test_the_controller_stops_sending_later_asks_its_tests_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Later asks go with the first (the test always makes them, read in full from its source)
    until two finished tests of the function, one in ten of them, left theirs (an assert
    failed before them, say): then only first asks are sent for it."""
    items = [_item(f"test_twice[{i}]") for i in range(12)]
    p = _Planner(monkeypatch, items, later=True)
    p.hs.start()
    p.settle(18)  # 6 tests x (2 first + 1 later)
    assert p.sent(items[0]) == {("stable", "first"), ("candidate", "first"),
                                ("candidate", "later")}
    for item in items[:6]:
        p.take(item, "stable")
        p.take(item, "candidate")
        p.hs.finished(item.nodeid)  # it never made the later ask
    deadline = time.monotonic() + 10
    while not p.sent(items[-1]) and time.monotonic() < deadline:
        time.sleep(0.01)  # the tests planned after the second finished one: first asks only
    assert p.sent(items[-1]) == {("stable", "first"), ("candidate", "first")}
    p.hs.close()


# -- xdist scheduling ------------------------------------------------------------------------
class _Node:
    """Enough of xdist's WorkerController for a scheduler."""

    def __init__(self, name: str) -> None:
        self.gateway = type("Gateway", (), {"id": name})()
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def send_runtest_all(self) -> None:  # pragma: no cover - not used by load scheduling
        raise AssertionError("not expected")

    def shutdown(self) -> None:
        self.shutting_down = True


def test_load_scheduler_keeps_worker_queues_as_deep_as_the_window(
    pytester: pytest.Pytester,
) -> None:
    """xdist's own load scheduler would hand each of 2 workers 25 of 200 items, then top up only
    at 2 left once tests take 0.1 s; ours keeps 2 x 4 x 16 / 2 = 64 queued, in collection order,
    and still hands every item out exactly once. The first worker to have collected starts at
    once; the other joins when xdist has both collections."""
    from pytest_modelrollout.prefetch import make_load_scheduler

    config = pytester.parseconfig("--tx=2*popen")
    sched = make_load_scheduler(config, None, concurrency=16)
    nodes = [_Node("gw0"), _Node("gw1")]
    collection = [f"test_x.py::test[{i}]" for i in range(200)]
    for node in nodes:
        sched.add_node(node)
    sched.add_node_collection(nodes[0], collection)
    assert nodes[0].sent == list(range(64)) and nodes[1].sent == []
    sched.check_schedule(nodes[1])  # not collected yet: nothing for it
    assert nodes[1].sent == []
    sched.mark_test_complete(nodes[0], 0, duration=2.0)  # gw0 runs meanwhile
    assert nodes[0].sent == list(range(65))
    sched.add_node_collection(nodes[1], collection)
    assert sched.collection_is_completed
    sched.schedule()
    assert [len(n.sent) for n in nodes] == [65, 64]
    assert nodes[1].sent == list(range(65, 129))
    # a slow test finishes on gw1: its queue is topped up to 64 again at once
    sched.mark_test_complete(nodes[1], nodes[1].sent[0], duration=2.0)
    assert len(sched.node2pending[nodes[1]]) == 64
    # run everything to the end, slow tests throughout
    while any(sched.node2pending[n] for n in nodes):
        for node in nodes:
            if sched.node2pending[node]:
                sched.mark_test_complete(node, sched.node2pending[node][0], duration=2.0)
    sent = nodes[0].sent + nodes[1].sent
    assert sorted(sent) == list(range(200))
    assert all(n.shutting_down for n in nodes)


def test_a_worker_that_collected_other_tests_gets_none_after_an_early_start(
    pytester: pytest.Pytester,
) -> None:
    """The first worker started before the second had collected; the second collected other
    tests: it is reported (as xdist reports it) and shut down, and every test runs on the
    first, once."""
    from pytest_modelrollout.prefetch import make_load_scheduler

    reports: list[Any] = []

    class Collect:
        def pytest_collectreport(self, report: Any) -> None:
            reports.append(report)

    config = pytester.parseconfig("--tx=2*popen")
    config.pluginmanager.register(Collect())
    sched = make_load_scheduler(config, None, concurrency=2)
    nodes = [_Node("gw0"), _Node("gw1")]
    for node in nodes:
        sched.add_node(node)
    sched.add_node_collection(nodes[0], [f"t.py::test[{i}]" for i in range(20)])
    sched.add_node_collection(nodes[1], [f"t.py::test[{i}]" for i in range(21)])
    sched.schedule()
    assert nodes[1].sent == [] and nodes[1].shutting_down
    assert [r.nodeid for r in reports if r.failed] == ["gw1"]
    while sched.node2pending[nodes[0]]:
        sched.mark_test_complete(nodes[0], sched.node2pending[nodes[0]][0], duration=0.5)
    assert nodes[0].sent == list(range(20)) and nodes[0].shutting_down
    assert sched.tests_finished


def test_xdist_workers_prefetch_their_queue(
    project: pytest.Pytester, sim: CountingSim, one_heavy_run_at_a_time: None
) -> None:
    """Each worker sends its queued items ahead, not only the running and the next item."""
    project.makepyfile(test_suite=SUITE)
    project.makeconftest(
        """
import json, os
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield
    pp = item.config.pluginmanager.get_plugin("modelrollout-prefetch")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"submitted-{worker}.txt", "a") as f:
        f.write(f"{pp.prefetcher.stats.submitted}\\n")
"""
    )
    _run(project, "-n", "2", "--rollout-report=r.json").assert_outcomes(passed=N_CASES)
    counts = {
        worker: [int(x) for x in path.read_text().split()]
        for worker in ("gw0", "gw1")
        if (path := project.path / f"submitted-{worker}.txt").exists()
    }
    assert sum(len(c) for c in counts.values()) == N_CASES
    # 12 items over 2 workers: the first worker to have collected is handed its 6 at once
    # (and may take the rest if it is done before the other has collected), and has sent all
    # 12 of their calls by the end of its second test; with xdist's own scheduling and only
    # the running and next item known, that would be 6
    busiest = max(counts.values(), key=len)
    assert len(busiest) >= N_CASES // 2 and busiest[1] >= N_CASES, counts
    assert sim.total() == 2 * N_CASES


def test_collect_only_gives_no_verdict(project: pytest.Pytester, sim: CountingSim) -> None:
    project.makepyfile(test_suite=SUITE)
    result = project.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    assert result.ret == 0
    result.stdout.no_fnmatch_line("*rollout readiness*")
    assert sim.total() == 0


@pytest.mark.parametrize(
    ("args", "configured", "ours"),
    [
        ([], True, True),
        (["--maxschedchunk=1"], True, False),  # the user tunes xdist's chunking
        (["--rollout-no-prefetch"], True, False),
        (["--dist=loadscope"], True, False),
        ([], False, False),  # the plugin is installed, this project does not use it
    ],
)
def test_which_xdist_scheduler(
    pytester: pytest.Pytester, args: list[str], configured: bool, ours: bool
) -> None:
    if configured:
        pytester.makepyprojecttoml(CONFIG)
    config = pytester.parseconfigure("--tx=2*popen", "--dist=load", *args)
    try:
        sched = config.hook.pytest_xdist_make_scheduler(config=config, log=None)
        assert (type(sched).__name__ == "PrefetchLoadScheduling") is ours, type(sched)
    finally:
        config._ensure_unconfigure()


def test_environment_set_by_a_conftest_is_honoured(
    pytester: pytest.Pytester, sim: CountingSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients are built early (while pytest collects), but not before the conftests' own
    configure and session-start hooks have run: a URL they set is the one used."""
    sim.reset()
    # recorded first, so that what the conftest sets is undone after this test too
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", "unset")
    monkeypatch.delenv("MODELROLLOUT_SIM_URL")
    pytester.makepyprojecttoml(CONFIG)
    pytester.path.joinpath("cases.jsonl").write_text(
        "\n".join(json.dumps({"id": f"c{i}", "prompt": f"Order A-{i}?"}) for i in range(4)) + "\n",
        encoding="utf-8",
    )
    pytester.makeconftest(
        f"""
import os, time

def pytest_sessionstart(session):
    time.sleep(0.3)  # a slow hook: clients built before it ends would miss the URL
    os.environ["MODELROLLOUT_SIM_URL"] = {sim.server.base_url!r}
"""
    )
    pytester.makepyfile(test_suite=SUITE)
    _run(pytester).assert_outcomes(passed=4)
    assert sim.total() == 8


def _plain(rollout, case):
    pair = rollout.ask(case)
    rollout.ask(case, system="again")  # later asks do not matter
    return pair


def _with_format(rollout, case):
    if case:
        return rollout.ask(case, response_format={"type": "json_object"}, temperature=0)
    return rollout.ask(case)


def _unreadable(rollout, case):
    return rollout.ask(case, system=case.describe())


def _through_a_helper(rollout, item):
    return _plain(rollout, item)


def _rebinding(rollout, prompt):
    prompt = prompt.strip()
    return rollout.ask(prompt)


def _reading(rollout, example, case):
    rollout.ask(example["turns"][0], system=PREFIX)
    rollout.ask(case.prompt)
    return rollout.ask(example["turns"][0])


@pytest.mark.parametrize(
    ("func", "expr", "keywords"),
    [(_plain, ("param", "case"), ()),
     (_with_format, ("param", "case"),
      (("response_format", ("dict", (("type", ("const", "json_object")),))),
       ("temperature", ("const", 0)))),
     (_unreadable, ("param", "case"), None),  # a call: not known before the test runs
     (_through_a_helper, ("param", "item"), None), (_plain, ("param", "row"), None),
     (len, ("param", "case"), None), (_rebinding, ("param", "prompt"), None),
     (_reading, ("attr", ("param", "case"), "prompt"), ()),
     (_reading, ("item", ("item", ("param", "example"), "turns"), 0),
      (("system", ("global", "PREFIX")),)),  # its first ask on it
     (_reading, ("param", "case"), None)],
)  # fmt: skip
def test_first_ask_is_read_from_the_source(func: Any, expr: Any, keywords: Any) -> None:
    """A function whose first ask's arguments are all read from the source is prefetched
    without a probe; anything unclear is probed (never wrong, at worst one latency slower)."""
    from pytest_modelrollout.asked import first_ask_keywords

    assert first_ask_keywords(func, expr) == keywords


def _greeting(name, punctuation="!", *, lang="en"):
    """A function of the module: read from its source."""
    if lang == "zh":
        return "你好，" + name + punctuation
    text = "Hello, " + name
    text += punctuation
    return text


def _forever(text):
    return _forever(text + ".")  # never returns: its reading stops, 16 calls deep


def _countdown(text):
    if len(text) >= 5:
        return text
    return _countdown(text + ".")  # a recursion that ends: read to its end


def _logged(text):
    print(text)  # a call for its effect: not read
    return text


def _wrapping(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return "wrapped " + func(*args, **kwargs)

    return wrapper


@_wrapping
def _decorated(text):
    return text  # what runs is the wrapper: not read


@functools.lru_cache
def _cached(text):
    return text


class _Prompts:
    PREFIX = "Q: "

    def build(self, text):
        return self.PREFIX + text

    @staticmethod
    def static(text):
        return text


class _OwnGet(dict):
    def get(self, key, default=None):
        return "its own"


def _asks_through_functions(rollout, case):
    rollout.ask(_greeting(case, lang="zh"))
    rollout.ask(_logged(case))


def test_functions_of_the_module_are_read_from_their_source() -> None:
    """What a call of the module's function returns is worked out from its source, as it runs:
    arguments, defaults, keyword-only arguments, ``+=``, ``if``, recursion; what cannot be
    known (a call for its effect, a decorated or cached function, an endless recursion, a dict
    whose ``get`` is its own) is not, and says where."""
    from pytest_modelrollout.asked import MISSING, asked, first_ask_unread

    names = {name: value for name, value in globals().items() if name.startswith("_")}

    def value(call: str, **params: Any) -> Any:
        return _planned_value(call, names, **params)

    assert value("_greeting(name)", name="Ann") == "Hello, Ann!"
    assert value("_greeting(name, '?', lang='zh')", name="安") == "你好，安?"
    assert value("_greeting(name, lang=lang)", name="Ann", lang="en") == "Hello, Ann!"
    assert value("_greeting()") is MISSING  # a TypeError when it runs
    assert value("_greeting(name, nope=1)", name="Ann") is MISSING
    assert value("_countdown('a')") == "a...."
    assert value("_forever('a')") is MISSING  # stopped, no RecursionError
    assert value("_logged('a')") is MISSING
    assert value("_decorated('a')") is MISSING
    assert value("_cached('a')") is MISSING
    assert value("d.get('k', 'default')", d=_OwnGet()) is MISSING
    assert value("d.get('k', 'default')", d={"k": "v"}) == "v"
    assert value("d.get('x', 'default')", d={"k": "v"}) == "default"
    # a test class's method through self, which prefetch reads as the class
    assert value("self.build('a')", self=_Prompts) == "Q: a"
    assert value("self.static('a')", self=_Prompts) is MISSING  # not called with self
    assert value("self.build('a')", self=_Prompts()) is MISSING  # an instance: not read
    assert len(asked(_asks_through_functions)) == 2
    line = _logged.__code__.co_firstlineno + 1
    assert first_ask_unread(_asks_through_functions) is None  # the first ask's is read
    assert first_ask_unread(_reads_a_logged) == (
        f"`_logged(case)` at line {_reads_a_logged.__code__.co_firstlineno + 1} cannot be read "
        f"without running it (in `_logged`, `print(text)` at line {line} is not read)"
    )


def _planned_value(call: str, names: dict[str, Any], **params: Any) -> Any:
    """What prefetch plans for ``rollout.ask(<call>)`` in a test with these parameters and
    module names (it must read the expression)."""
    from pytest_modelrollout.asked import _Reader, evaluate

    fdef = ast.parse(f"def t({', '.join(params)}):\n    return {call}\n").body[0]
    assert isinstance(fdef, ast.FunctionDef)
    statement = fdef.body[0]
    assert isinstance(statement, ast.Return) and statement.value is not None
    expr = _Reader(fdef).read(statement.value, 2)
    assert expr is not None, f"{call} is not read"
    return evaluate(expr, params, names)


_ITEMS = ["a", "b", "c"]


def _length(text: str) -> int:
    return len(text)


class _Text(str):
    def __len__(self) -> int:
        return 0


def _loop(rollout, case):
    for text in _ITEMS:
        prompt = text.upper()
        rollout.ask(prompt, system=case)
        rollout.ask(text)


def _loop_over_a_view(rollout, case):
    for key, text in case.items():
        rollout.ask(text, system=key)


def _loop_breaks(rollout, case):
    for text in _ITEMS:
        if text == case:
            break
        rollout.ask(text)


def _loop_with_else(rollout, case):
    for text in _ITEMS:
        rollout.ask(text)
    else:
        rollout.ask(case)


def _loop_rebinds(rollout, case):
    for text in _ITEMS:
        text = text.strip()
        rollout.ask(text)


def _two_loops_one_target(rollout, case):
    for text in _ITEMS:  # each model's own, both `for text in ...`: each loop reads its own
        rollout.stable.ask(text)
    for text in ("x", "y"):
        rollout.candidate.ask(text + "!")


def _two_loops_one_target_set_between(rollout, case):
    for text in _ITEMS:
        rollout.ask(text)
    text = "z"  # bound outside the loops too: neither is read
    for text in ("x", "y"):
        rollout.ask(text)


def _loop_over_a_parameter_name(rollout, case):
    for case in _ITEMS:  # on purpose: the parameter is bound again
        rollout.ask(case)


def _loop_skips_before(rollout, case):
    for text in _ITEMS:
        if text == case:
            pytest.skip("not this one")
        rollout.ask(text)


def _loop_skips_after(rollout, case):
    for text in _ITEMS:
        rollout.ask(text)
        if text == case:
            pytest.skip("no more")


def _loop_nested(rollout, case):
    for text in _ITEMS:
        for other in _ITEMS:
            rollout.ask(text + other)


def _loop_over_a_call(rollout, case):
    for text in sorted(_ITEMS, key=_length):  # a key function of the user's: not called
        rollout.ask(text)


def _comprehension(rollout, case):
    texts = [rollout.ask(text, system=case).candidate.text for text in _ITEMS]
    assert all(text for text in texts)  # `text` bound again: in its own scope


def _comprehension_filtered(rollout, case):
    pairs = [rollout.ask(text) for text in _ITEMS if text != case]
    assert pairs


def _comprehension_filtered_by_a_call(rollout, case):
    pairs = [rollout.ask(text) for text in _ITEMS if text in sorted(_ITEMS, key=_length)]
    assert pairs


def _comprehension_in_a_call(rollout, case):
    print([rollout.ask(text) for text in _ITEMS])


def _loop_guarded(rollout, case):
    for text in _ITEMS:
        upper = text.upper()
        if upper == case:
            continue
        rollout.ask(upper)


def _loop_under_an_if(rollout, case):
    for text in _ITEMS:
        if text == case:
            rollout.ask(text.upper(), system="again")
        elif text != "c":
            rollout.ask(text, system=case)


def _loop_fails_after_an_ask(rollout, case):
    for text in _ITEMS:
        if text == case:
            rollout.ask(text.upper(), system="again")
        elif text != "c":
            pair = rollout.ask(text, system=case)
            if not pair:
                pytest.fail("no reply")  # on an item the first ask is not for


def _loop_stops_after(rollout, case):
    for text in _ITEMS:
        rollout.ask(text)
        if text == case:
            break


def _loop_stops_on_an_item_it_skips(rollout, case):
    for text in _ITEMS:
        if text != case:
            rollout.ask(text)
        else:
            break


def _loop_continues_after_its_ask(rollout, case):
    for text in _ITEMS:
        if text == case:
            continue
        rollout.ask(text)
        if text == "z":
            continue  # after the ask: ends only this iteration
    for other in _ITEMS:
        if other != case:
            rollout.ask(other + "!")
    pytest.skip("done")  # after both loops: they make their asks first


def _messages_changed_before(rollout, case):
    messages = [{"role": "system", "content": "S"}]
    messages.append({"role": "user", "content": case})  # before the ask: read as added to
    rollout.ask(messages)


def _messages_changed_after(rollout, case):
    messages = [{"role": "user", "content": case}]
    rollout.ask(messages)  # as built: the change comes after
    messages.append({"role": "assistant", "content": "x"})


def _messages_handed_on(rollout, case):
    messages = [{"role": "user", "content": case}]
    history = messages  # (what is done to history is done to messages)
    history.append({"role": "user", "content": "again"})
    rollout.ask(messages)


def _messages_sorted_then_added_to(rollout, case):
    messages = [{"role": "user", "content": case}]
    messages.sort(key=len)  # a change that is not read: what follows is not either
    messages.append({"role": "user", "content": "again"})
    rollout.ask(messages)


def _messages_added_to_in_a_loop_then_asked(rollout, case):
    messages = [{"role": "system", "content": "S"}]
    for text in _ITEMS:
        messages.append({"role": "user", "content": text})  # once for each of its items
    rollout.ask(messages)


def _turns(rollout, case):
    messages = [{"role": "system", "content": "S"}]
    for text in _ITEMS:
        messages.append({"role": "user", "content": text})  # each turn's, before its ask
        rollout.ask(messages)


def _turns_added_with_plus_equals(rollout, case):
    messages = [{"role": "system", "content": "S"}]
    for text in _ITEMS:
        messages += [{"role": "user", "content": text}]  # a list's += extends it in place
        rollout.ask(messages)


def _turns_skipping(rollout, case):
    messages = [{"role": "system", "content": "S"}]
    for text in _ITEMS:
        messages.append({"role": "user", "content": text})  # for the items it skips too
        if text == "a":
            continue
        rollout.ask(messages)


def _loop_asks_under_an_if_then_changes(rollout, case):
    notes = {"last": case}
    for text in _ITEMS:
        if text != "a":
            rollout.ask(text + notes["last"])
        notes["last"] = text  # (the item it does not ask for changes it too)


def _loop_changes_after_its_ask(rollout, case):
    notes = {"last": case}
    for text in _ITEMS:
        rollout.ask(text + notes["last"])  # the first iteration's as set; the later ones not
        notes["last"] = text


def _retries(rollout, case):
    while True:
        pair = rollout.ask(case)  # its first iteration's, whatever happens
        if pair:
            break


def _retries_while_a_condition_holds(rollout, case):
    while case:
        rollout.ask(case)  # maybe never


def _retries_counted(rollout, case):
    tries = 0
    while tries < 3 and not False:
        pair = rollout.ask(case)  # its first iteration's: 0 < 3 when the test gets here
        tries += 1
        if pair:
            break


def _retries_done_before(rollout, case):
    tries = 3
    while tries < 3:
        rollout.ask(case)  # never


def _retries_set_under_an_if(rollout, case):
    tries = 0
    if case:
        tries = 5
    while tries < 3:
        rollout.ask(case)  # made only for the items the if leaves tries under 3 for


_TRIES = 3
_NO_TRIES = 0


def _retries_up_to_a_limit(rollout, case):
    tries = 0
    while tries < _TRIES:
        pair = rollout.ask(case)  # its first iteration's: 0 < _TRIES, the module's 3
        tries += 1
        if pair:
            break


def _retries_up_to_no_limit(rollout, case):
    tries = 0
    while tries < _NO_TRIES:
        rollout.ask(case)  # never: 0 < 0 does not hold


def _retries_up_to_a_local_limit(rollout, case):
    tries = 0
    while tries < _TRIES:  # noqa: F823 (a local name of the function: not the module's)
        rollout.ask(case)
        _TRIES = 1


def _retries_of_a_rebound_case(rollout, case):
    if not case:
        case = "again"
    while case:  # the parameter bound again before the loop (under an if): not read
        rollout.ask(case)
        break


def _retries_for_else(rollout, case):
    for _attempt in range(_TRIES):
        pair = rollout.ask(case)  # its first iteration's; the later ones only if it failed
        if pair:
            break
    else:
        raise AssertionError("never answered")  # (after the loop's asks)


def _retries_on_a_flag(rollout, case):
    done = False
    while not done:
        pair = rollout.ask(case)
        done = bool(pair)


def _retries_after_a_break(rollout, case):
    while True:
        if case:
            break
        rollout.ask(case)


def _loop_asks_the_case_after_a_break(rollout, case):
    for text in _ITEMS:
        if text == case:
            break
        rollout.ask(case)  # its prompt is read, but the loop is not: it may never ask


def _ask_support(rollout, case, style="brief"):
    """Asks both models, in a style."""
    prompt = f"{case} ({style})"
    return rollout.ask(prompt, system=_ITEMS[0])


def _ask_with(model, text):
    pair = model.candidate.ask(text)
    return pair


def _ask_if(rollout, case):
    if case:
        return rollout.ask(case)
    return None


def _ask_rebinding(rollout, case):
    case = case.strip()
    return rollout.ask(case)


def _ask_twice(rollout, case):
    return rollout.ask(case), rollout.ask(case)


def _ask_until_answered(rollout, case, tries=_TRIES):
    """A retry loop: asks both models until the candidate answers, up to ``tries`` times."""
    attempt = 0
    while attempt < tries:
        pair = rollout.ask(f"{case}?")
        attempt += 1
        if pair:
            return pair
    return None


def _ask_while_true(model, case):
    while True:
        reply = model.candidate.ask(case)
        if reply:
            return reply


def _through_a_retrying_helper(rollout, case):
    _ask_until_answered(rollout, case)


def _through_a_helper_retrying_no_times(rollout, case):
    _ask_until_answered(rollout, case, tries=0)


def _through_a_helper_retrying_forever(rollout, case):
    assert _ask_while_true(rollout, case) is not None  # (the call: what the assert does first)


def _passed_through(func):
    return func


@_passed_through
def _ask_decorated(rollout, case):
    return rollout.ask(case)


def _through_a_helper(rollout, case):
    style = "formal"
    pair = _ask_support(rollout, case, style=style)
    assert pair


def _through_a_helper_with_defaults(rollout, case):
    assert _ask_support(rollout, case).candidate.ok


def _through_a_helper_to_the_candidate(rollout, case):
    _ask_with(rollout, case)


def _after_a_print(rollout, case):
    print(case)
    _ask_support(rollout, case)


def _not_a_model(rollout, case):
    _ask_support(object(), case)


def _through_unread_helpers(rollout, case):
    _ask_if(rollout, case)


def test_the_first_ask_of_a_helper_the_test_calls_first_is_read() -> None:
    """A test without an ask of its own whose first call of a function of the module is a
    helper that asks: the helper's first ask is read from its source, its parameters bound to
    the test's arguments (a default, a keyword, a local name of the test), and its models are
    those of the fixture the test passes it (``model.candidate.ask`` on ``rollout``: the
    candidate). Not read: a helper that asks under a condition, twice in one statement, binds
    a parameter again or is decorated; a call before it (``print``); an object that is not a
    model fixture passed to it."""
    from pytest_modelrollout.asked import (
        MISSING,
        asked,
        asked_roles,
        asks_nothing,
        evaluate,
        first_ask_keywords,
    )

    names = globals()

    def planned(func: Any) -> Any:
        exprs = asked(func)
        if not exprs:
            return MISSING
        keywords = first_ask_keywords(func, exprs[0])
        return (evaluate(exprs[0], {"case": "x"}, names),
                None if keywords is None else {
                    k: evaluate(v, {"case": "x"}, names) for k, v in keywords})

    assert planned(_through_a_helper) == ("x (formal)", {"system": "a"})
    assert planned(_through_a_helper_with_defaults) == ("x (brief)", {"system": "a"})
    assert asked_roles(_through_a_helper) == {"stable", "candidate"}
    assert planned(_through_a_helper_to_the_candidate) == ("x", {})
    assert asked_roles(_through_a_helper_to_the_candidate) == {"candidate"}
    for func in (_after_a_print, _not_a_model, _through_unread_helpers):
        assert planned(func) is MISSING, func.__name__
    # a helper's retry loop: its first iteration's ask, when the loop is entered (its
    # condition read with the helper's parameters, as the call binds them, and its module's
    # names); one not entered asks nothing
    assert planned(_through_a_retrying_helper) == ("x?", {})
    assert planned(_through_a_helper_retrying_no_times) == (MISSING, {})
    assert asks_nothing(_through_a_helper_retrying_no_times, {"case": "x"}, names)
    assert not asks_nothing(_through_a_retrying_helper, {"case": "x"}, names)
    assert planned(_through_a_helper_retrying_forever) == ("x", {})
    assert asked_roles(_through_a_helper_retrying_forever) == {"candidate"}
    from pytest_modelrollout.asked import _helper_asks_first

    for helper in (_ask_if, _ask_rebinding, _ask_twice, _ask_decorated):
        assert _helper_asks_first(helper) is None, helper.__name__
    assert _helper_asks_first(_ask_support) is not None


def _ask_then_more(rollout, case, style="brief"):
    """Asks both models, then more: each read as the test's later asks."""
    first = rollout.ask(f"{case} ({style})")
    rollout.candidate.ask(case + " Be brief.", system="b")
    for text in _ITEMS[:2]:
        rollout.stable.ask(text + case)
    rollout.ask(first.candidate.text)  # reads a reply: not known ahead
    return rollout.ask(case.upper())


def _ask_then_maybe(rollout, case):
    rollout.ask(case)
    if not case:
        return None
    return rollout.ask(case + "!")  # after a return: not always made


def _through_helpers_asking_more(rollout, case):
    pair = _ask_then_more(rollout, case, style="formal")
    assert pair
    _ask_with(rollout, case + "?")
    _ask_then_maybe(rollout, case)
    pytest.skip("the rest")
    _ask_with(rollout, case + "??")  # after a skip: not read


def _asks_then_a_helper(candidate, case):
    candidate.ask(case)
    _ask_with(candidate, case)  # model.candidate.ask on the candidate: not a model fixture
    _ask_support(candidate, case + "!")


class _Bot:
    def __init__(self, model: Any) -> None:
        self.model = model

    def answer(self, question: str) -> Any:
        return self.model.ask(question, system="Be brief.")


def _through_a_bot(bot: Any, question: str, expected: str) -> None:
    reply = bot.answer(question)
    assert expected in reply.text


def _expected_first(bot: Any, question: str, expected: str) -> None:
    assert bot.check(expected)
    bot.answer(question)


def _both_at_once(bot: Any, question: str, expected: str) -> None:
    bot.compare(question, expected)


def _ask_of_its_own(rollout: Any, question: str) -> None:
    rollout.ask(question.center(40))


def test_the_question_a_test_asks_through_an_object_is_guessed_from_what_it_passes() -> None:
    """A test with no ask in its source (nor in a helper that is read) asks through an object
    a fixture made: of its prompt parameters, the one its first statement that passes one on
    passes is the guess; the only one is. No guess for a statement passing two, nor for a test
    with an ask of its own that is not read (it does not ask the parameter as it is)."""
    from pytest_modelrollout.asked import asked_through

    both = frozenset({"question", "expected"})
    assert asked_through(_through_a_bot, both) == "question"
    assert asked_through(_through_a_bot, frozenset({"question"})) == "question"
    assert asked_through(_expected_first, both) == "expected"  # (it passes that first)
    assert asked_through(_both_at_once, both) is None
    assert asked_through(_ask_of_its_own, frozenset({"question"})) is None


def test_the_later_asks_of_helpers_are_read() -> None:
    """The asks a helper makes after its first one, read as a test's later asks (a loop
    among them; a ``return`` ask), with the models the test passes it; and every ask of a
    helper the test calls after its first ask, up to a statement that may end the test. Not
    read: an ask that reads a reply, one after a ``return`` of the helper, one on an object
    that is not a model fixture."""
    from pytest_modelrollout.asked import MISSING, evaluate, later_asks

    names = globals()

    def later(func: Any) -> list[tuple[Any, ...]]:  # a loop's iterations past its list: MISSING
        return [(tuple(sorted(roles)), value,
                 {k: evaluate(v, {"case": "x"}, names) for k, v in keywords})
                for roles, expr, keywords in later_asks(func)
                if (value := evaluate(expr, {"case": "x"}, names)) is not MISSING]

    both = ("candidate", "stable")
    assert later(_through_helpers_asking_more) == [
        (("candidate",), "x Be brief.", {"system": "b"}),
        (("stable",), "ax", {}), (("stable",), "bx", {}),
        (both, "X", {}),
        (("candidate",), "x?", {}),  # _ask_with: model.candidate.ask
        (both, "x", {}),  # _ask_then_maybe's first ask, not the one after its return
    ]
    assert later(_asks_then_a_helper) == [(("candidate",), "x! (brief)", {"system": "a"})]


def _ask_by_language(rollout, case, lang="en"):
    """Asks in a language."""
    if lang == "zh":
        return rollout.candidate.ask(case, system="zh")
    elif lang == "none":
        return None
    return rollout.ask(case + "!", system="en")


def _ask_by_language_or_a_client(rollout, case):
    if case == "zh":
        return rollout.ask(case)
    return _ITEMS.ask(case)  # not a model the test passes it


def _through_a_branching_helper(rollout, case):
    _ask_by_language(rollout, case, lang=case)


def _through_a_branching_helper_then_another(rollout, case):
    _ask_by_language(rollout, case, lang=case)
    _ask_with(rollout, case)


def _through_a_helper_with_a_client(rollout, case):
    _ask_by_language_or_a_client(rollout, case)


def test_a_helpers_ask_under_an_if_is_read() -> None:
    """A helper whose first ask is under an ``if``: the ask each item reaches is read, its
    conditions worked out on the helper's parameters as the test's call binds them, and sent
    to the models of its own receiver; a branch that asks nothing makes the test ask nothing,
    unless the test calls another function of a module after it. Not read: a helper with an
    ask on something else than a model the test passes it."""
    from pytest_modelrollout.asked import NOT_ASKED, evaluate, reached_ask

    names = globals()

    def reached(func: Any, case: str) -> Any:
        found = reached_ask(func, {"case": case}, names)
        if found is None or found is NOT_ASKED:
            return found
        expr, keywords, roles = found
        return (evaluate(expr, {"case": case}, names),
                {k: evaluate(v, {"case": case}, names) for k, v in keywords}, roles)

    assert reached(_through_a_branching_helper, "zh") == ("zh", {"system": "zh"}, {"candidate"})
    assert reached(_through_a_branching_helper, "x") == (
        "x!", {"system": "en"}, {"stable", "candidate"})
    assert reached(_through_a_branching_helper, "none") is NOT_ASKED
    assert reached(_through_a_branching_helper_then_another, "none") is None
    assert reached(_through_a_branching_helper_then_another, "x")[0] == "x!"
    assert reached(_through_a_helper_with_a_client, "zh") is None


def _guarded_helper(rollout, case):
    if case == "skip":
        pytest.skip("no expected answer")
    if case == "unread" and case.nowhere:  # an attribute a str does not have: not known
        return
    _ask_support(rollout, case)


def _guarded_by_a_call(rollout, case):
    if not len(case.strip()):  # calls that are given no model: they cannot ask
        pytest.skip("empty")
    _ask_support(rollout, case)


def _guarded_asks(rollout, case):
    if not case:
        raise ValueError("no case")
    rollout.ask(case)
    rollout.ask(case + "?")
    _ask_with(rollout, case + "!")


def test_an_if_that_ends_the_test_before_it_asks_is_read() -> None:
    """An ``if`` before the test's first ask, or its first call of a helper, that ends it
    (``pytest.skip``, ``return``, ``raise``), its condition calling what is given no model or
    not: read for each item, a case it ends asks nothing;
    one whose condition is not read is planned as if it did not end it. The test's later asks
    (and the helper's first) are read past it."""
    from pytest_modelrollout.asked import (
        NOT_ASKED,
        asked,
        ends_before_asking,
        evaluate,
        later_asks,
        reached_ask,
    )

    names = globals()
    assert ends_before_asking(_guarded_helper, {"case": "skip"}, names)
    assert reached_ask(_guarded_helper, {"case": "skip"}, names) is NOT_ASKED
    for case in ("x", "unread"):
        assert not ends_before_asking(_guarded_helper, {"case": case}, names)
        assert evaluate(asked(_guarded_helper)[0], {"case": case}, names) == f"{case} (brief)"
    assert ends_before_asking(_guarded_by_a_call, {"case": " "}, names)
    assert not ends_before_asking(_guarded_by_a_call, {"case": "x"}, names)
    assert evaluate(asked(_guarded_by_a_call)[0], {"case": "x"}, names) == "x (brief)"
    assert reached_ask(_guarded_asks, {"case": ""}, names) is NOT_ASKED
    assert [evaluate(e, {"case": "x"}, names) for _, e, _ in later_asks(_guarded_asks)] == [
        "x?", "x!"]


def test_asks_in_a_loop_are_read_from_the_source() -> None:
    """An ask in a ``for`` loop of the test's body is read for each iteration (its target and
    the names its body assigns once before it), and so is one in a list comprehension that is
    a statement's value (its ``if``s read for each item: the items it asks for); in a ``for``,
    the ``if`` / ``elif`` / ``else`` it is under and an ``if ...: continue`` before it are read
    the same way, and a ``break`` after it leaves its first iteration read. A loop that may
    not make its asks on the items read (a ``break`` or a skip before the ask, or on an item
    it does not ask for; an ``else``; a condition that is not read) is not, nor its asks, nor
    one whose target is bound again, nor an ask in a nested loop; ``-v`` names an iterable
    that is not read."""
    from pytest_modelrollout.asked import (
        LOOP_AHEAD,
        MISSING,
        asked,
        asks_nothing,
        evaluate,
        first_ask_call,
        first_ask_keywords,
        first_ask_unread,
        later_asks,
    )

    names = globals()

    def first(func: Any) -> Any:
        exprs = asked(func)
        return evaluate(exprs[0], {"case": "x"}, names) if exprs else MISSING

    assert first(_loop) == "A"
    keywords = first_ask_keywords(_loop, asked(_loop)[0])
    assert keywords is not None and evaluate(keywords[0][1], {"case": "x"}, names) == "x"
    later = [evaluate(e, {"case": "x"}, names) for _, e, _ in later_asks(_loop)]
    assert len(later) == 2 * LOOP_AHEAD - 1  # both asks of each iteration but the first's
    assert [v for v in later if v is not MISSING] == ["a", "B", "b", "C", "c"]
    for func in (_loop_breaks, _loop_rebinds, _loop_skips_before, _loop_nested):
        assert first(func) is MISSING, func.__name__
        assert later_asks(func) == (), func.__name__
    assert first(_loop_over_a_call) is MISSING  # read, but sorted(key=...) is not called
    assert {evaluate(e, {}, names) for _, e, _ in later_asks(_loop_over_a_call)} == {MISSING}
    # its else's ask comes after the loop's (when no break ends it): only the loop's is read
    assert asked(_loop_with_else) == [("each", "text", ("global", "_ITEMS"), 0, ("param", "text"))]
    # a parameter the loop binds again: the loop is not read, nor its ask (not the parameter)
    rebound = _loop_over_a_parameter_name
    assert asked(rebound) == [] and later_asks(rebound) == ()
    # two loops with the same target (one per model): each is read, with its own items
    assert first(_two_loops_one_target) == "a"
    assert [(roles, evaluate(e, {}, names)) for roles, e, _ in later_asks(_two_loops_one_target)
            if evaluate(e, {}, names) is not MISSING] == [
        (("stable",), "b"), (("stable",), "c"), (("candidate",), "x!"), (("candidate",), "y!")]
    assert first(_two_loops_one_target_set_between) is MISSING
    assert later_asks(_two_loops_one_target_set_between) == ()
    assert first(_loop_skips_after) == "a" and later_asks(_loop_skips_after) == ()
    assert first(_comprehension) == "a"
    later = [evaluate(e, {"case": "x"}, names) for _, e, _ in later_asks(_comprehension)]
    assert [v for v in later if v is not MISSING] == ["b", "c"]
    assert first(_comprehension_in_a_call) is MISSING
    assert later_asks(_comprehension_in_a_call) == ()
    filtered_by_a_call = _comprehension_filtered_by_a_call  # sorted(key=...): not called ahead
    assert first(filtered_by_a_call) is MISSING
    assert {evaluate(e, {}, names) for _, e, _ in later_asks(filtered_by_a_call)} == {MISSING}
    # the comprehension's if, for each item: the i-th ask is the i-th item that passes it
    assert first(_comprehension_filtered) == "a"
    assert evaluate(asked(_comprehension_filtered)[0], {"case": "a"}, names) == "b"
    later = [evaluate(e, {"case": "b"}, names) for _, e, _ in later_asks(_comprehension_filtered)]
    assert [v for v in later if v is not MISSING] == ["c"]  # (the first: "a")
    assert asks_nothing(_comprehension_filtered, {"case": "a"}, {**names, "_ITEMS": ["a"]})
    assert not asks_nothing(_comprehension_filtered, {"case": "x"}, {**names, "_ITEMS": ["a"]})
    assert asks_nothing(_loop, {"case": "x"}, {**names, "_ITEMS": []})
    assert asks_nothing(_loop_over_a_view, {"case": {}}, names)  # an empty dict's items()
    assert not asks_nothing(_loop_over_a_view, {"case": {"a": "b"}}, names)
    assert not asks_nothing(_loop, {"case": "x"}, names)
    # an `if ...: continue` before the ask, or the ask under an if / elif (with a name set
    # before it): the i-th ask is the i-th item that passes the conditions on the way to it
    def planned(func: Any, case: str) -> tuple[list[Any], list[Any]]:
        params = {"case": case}
        firsts = [evaluate(e, params, names) for e in asked(func)]
        later = [(evaluate(e, params, names), {k: evaluate(v, params, names) for k, v in kw})
                 for _, e, kw in later_asks(func)]
        return firsts, [x for x in later if x[0] is not MISSING]

    assert planned(_loop_guarded, "A") == (["B"], [("C", {})])
    assert asks_nothing(_loop_guarded, {"case": "A"}, {**names, "_ITEMS": ["a"]})
    assert planned(_loop_under_an_if, "b") == (["B", "a"], [("a", {"system": "b"})])  # c: none
    assert planned(_loop_under_an_if, "x") == (
        [MISSING, "a"], [("a", {"system": "x"}), ("b", {"system": "x"})])
    assert asks_nothing(_loop_under_an_if, {"case": "x"}, {**names, "_ITEMS": ["c"]})
    # a fail after the second ask, in its own block: the second's first iteration is made, but
    # the test may end on an item before the first's
    assert planned(_loop_fails_after_an_ask, "b") == (["a"], [])
    # a break after the ask: its first iteration's ask is made, the later ones may not be
    assert planned(_loop_stops_after, "b") == (["a"], [])
    # a break or a continue on an item the ask is not for: what follows may never be asked
    assert planned(_loop_stops_on_an_item_it_skips, "a") == ([], [])
    assert planned(_loop_asks_the_case_after_a_break, "a") == ([], [])
    # `while True:`: the ask of its first iteration, when nothing before it may end the loop
    assert planned(_retries, "a") == (["a"], [])
    # a value the test changes in place before its ask is not read there (it would plan the
    # value as built); one changed after it is; nor in a loop's later iterations, when the
    # loop changes it
    assert planned(_messages_changed_after, "a") == ([[{"role": "user", "content": "a"}]], [])
    assert planned(_messages_handed_on, "a") == ([], [])
    assert planned(_messages_sorted_then_added_to, "a") == ([], [])
    assert planned(_loop_changes_after_its_ask, "a") == (["aa"], [])
    # ... but a list the test built and adds to by statements of its body (messages.append,
    # .extend) is read as it is then, and so is one added to in a for loop on the way to the
    # loop's ask, in its first iteration (a conversation's first turn)
    system, user = {"role": "system", "content": "S"}, {"role": "user", "content": "a"}
    assert planned(_messages_changed_before, "a") == ([[system, user]], [])
    # (and its later turns: each adds before its ask and reads no reply)
    assert planned(_turns, "a") == ([[system, user]], [
        ([system, user, *({"role": "user", "content": t} for t in _ITEMS[1:turn])], {})
        for turn in range(2, len(_ITEMS) + 1)])
    assert planned(_turns_added_with_plus_equals, "a") == planned(_turns, "a")
    # (a loop that only appends, before the ask: read as the comprehension it amounts to)
    assert planned(_messages_added_to_in_a_loop_then_asked, "a") == (
        [[system, *({"role": "user", "content": t} for t in _ITEMS)]], [])
    # not when the loop may go round without asking first (the items its conditions skip
    # add to it, or change it, too)
    assert planned(_turns_skipping, "a") == ([], [])
    assert planned(_loop_asks_under_an_if_then_changes, "x") == ([], [])
    # a `while` whose condition reads the case: its ask, for the items it holds for
    assert planned(_retries_while_a_condition_holds, "a") == (["a"], [])
    assert planned(_retries_while_a_condition_holds, "") == ([MISSING], [])
    assert asks_nothing(_retries_while_a_condition_holds, {"case": ""}, names)
    assert not asks_nothing(_retries_while_a_condition_holds, {"case": "a"}, names)
    # ... or the module's names
    assert planned(_retries_up_to_a_limit, "a") == (["a"], [])
    assert not asks_nothing(_retries_up_to_a_limit, {"case": "a"}, names)
    assert planned(_retries_up_to_no_limit, "a") == ([MISSING], [])
    assert asks_nothing(_retries_up_to_no_limit, {"case": "a"}, names)
    assert planned(_retries_up_to_a_limit, "a") == (["a"], [])
    # a for loop with an else (after its asks): its first iteration's, as without one
    assert planned(_retries_for_else, "a") == (["a"], [])
    # but not a name the function binds itself, nor a parameter it binds again before it
    assert planned(_retries_up_to_a_local_limit, "a") == ([], [])
    assert planned(_retries_of_a_rebound_case, "a") == ([], [])
    # a `while` whose condition holds when the test gets to it, from literals set before it
    assert planned(_retries_counted, "a") == (["a"], [])
    assert planned(_retries_on_a_flag, "a") == (["a"], [])
    assert planned(_retries_done_before, "a") == ([MISSING], [])  # never asks
    assert asks_nothing(_retries_done_before, {"case": "a"}, names)
    # ... and names set under an if before it, per item
    assert planned(_retries_set_under_an_if, "a") == ([MISSING], [])
    assert asks_nothing(_retries_set_under_an_if, {"case": "a"}, names)
    assert planned(_retries_set_under_an_if, "") == ([""], [])
    assert planned(_retries_after_a_break, "a") == ([], [])
    line = _loop_asks_the_case_after_a_break.__code__.co_firstlineno + 1
    assert first_ask_unread(_loop_asks_the_case_after_a_break) == (
        f"`for text in _ITEMS:` at line {line} is not read (a loop is read when it is a `for` of"
        " the test's body, a list comprehension that is a statement's value, or"
        " a `while` of the test's body that asks first and whose condition is read as it is"
        " when the test gets to it (`while True:`, `while tries < 3:` after `tries = 0`, `while"
        " tries < MAX_TRIES:`), and nothing before its ask may end it or the test)")
    assert first_ask_unread(_retries_while_a_condition_holds) is None
    line = _retries_up_to_a_local_limit.__code__.co_firstlineno + 2
    assert first_ask_unread(_retries_up_to_a_local_limit).startswith(
        f"`while tries < _TRIES:` at line {line} is not read")
    assert first_ask_unread(_retries) is None
    # a continue after the ask ends only its iteration; a skip after the loops comes after
    # all their asks
    assert planned(_loop_continues_after_its_ask, "a") == (
        ["b", "b!"], [("c", {}), ("b!", {}), ("c!", {})])
    line = _loop_over_a_call.__code__.co_firstlineno + 1
    assert first_ask_unread(_loop_over_a_call) is None
    assert first_ask_call(_loop_over_a_call) == (
        f"`sorted(_ITEMS, key=_length)` at line {line} cannot be read without running it")


def test_comprehensions_format_specs_and_the_standard_librarys_builders_are_read() -> None:
    """Prompts built from a case's lists and dicts: a comprehension, a generator joined, a
    dict's ``items()`` / ``keys()`` / ``values()`` gone over, ``enumerate``, ``zip``,
    ``reversed``, ``sorted``, ``min``, ``max`` (with ``key=len`` or a ``str`` method, not a
    function of the user's), ``range``, ``list``, ``tuple``, f-string conversions and format
    specs, ``textwrap.dedent`` / ``indent``, ``inspect.cleandoc``, ``json.dumps``: worked out
    as they run. A width read from the data that would take gigabytes is not formatted (the
    collection must not run out of memory on a case's bad value); nor is a ``json.dumps``
    with a ``default`` of the user's, or a view passed on as a value."""
    import inspect as inspect_module
    import textwrap

    from pytest_modelrollout.asked import MISSING

    names = {"textwrap": textwrap, "json": json, "inspect": inspect_module, "_length": _length,
             "dedent": textwrap.dedent, "SHOTS": [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}]}
    meta = {"lang": "zh", "tags": ["late", "vip"], "score": 0.8765, "order": {"id": "A-1"}}

    def planned(call: str, **params: Any) -> Any:
        return _planned_value(call, names, **params)

    for call in [
        "'\\n'.join(f'- {tag}' for tag in meta['tags'])",
        "'\\n\\n'.join(f\"Q: {s['q']}\\nA: {s['a']}\" for s in SHOTS) + '\\nQ: ' + q",
        "[tag.upper() for tag in meta['tags'] if tag != 'late']",
        "', '.join(f'{k}={v!r}' for k, v in meta.items() if k in ('lang', 'score'))",
        "', '.join(meta.keys()) + str(len(meta.values()))",
        "f\"{meta['score']:.2f} {meta['lang']!r:>6} {q:*^{width}}\"",
        "textwrap.dedent(f\'\'\'\n    Customer: {q}\n      (vip)\n    \'\'\')",
        "dedent('  a\\n  b') + inspect.cleandoc('  c\\n    d') + textwrap.indent(q, '> ')",
        "json.dumps(meta, ensure_ascii=False, sort_keys=True)",
        "json.dumps(meta['order'], indent=2, separators=(',', ': '))",
        "'; '.join(f'{i}. {t}' for i, t in enumerate(meta['tags'], 1))",
        "[a + b for a, b in zip(meta['tags'], reversed(meta['tags']))]",
        "', '.join(sorted(meta, reverse=True)) + str(len(list(range(2, 9, 3))))",
        "[str(i) + t for i, t in enumerate(sorted(meta['tags']), start=len(meta))]",
        "tuple(meta['order'].items())",
        "', '.join(sorted(['vip', 'A', q, 'be'], key=str.lower))",
        "', '.join(sorted(meta, key=len, reverse=True))",
        "max(meta['tags'], key=len) + min(meta) + max('b', q, 'a') + min([], default='-')",
        "str(max(meta['score'], 1, len(meta)))",
    ]:
        params = {"meta": meta, "q": "Where is it?", "width": 20}
        expected = eval(call, {**names}, params)  # as the test computes it
        assert planned(call, **params) == expected, call
    for call, params in [
        ("f'{q:{width}}'", {"q": "x", "width": 10**10}),  # would allocate 10 GB
        ("f'{q:.{width}f}'", {"q": 1.5, "width": 10**9}),
        ("'{:{}}'.format(q, width)", {"q": "x", "width": 5}),  # a width from the arguments
        ("'%*s' % (width, q)", {"q": "x", "width": 5}),
        ("('%' + str(width) + 's') % q", {"q": "x", "width": 10**10}),
        ("json.dumps(meta, default=str)", {"meta": meta}),  # default: the user's code
        ("json.dumps(meta)", {"meta": {"when": object()}}),
        ("meta.keys()", {"meta": meta}),  # a view is gone over, not passed on
        ("[meta.keys()]", {"meta": meta}),
        ("meta.items()[0]", {"meta": meta}),  # a TypeError when it runs
        ("[t for t in meta]", {"meta": 3}),  # not iterable
        ("[a + b for a, b in meta]", {"meta": [["x", "y", "z"]]}),  # does not unpack
        ("len(enumerate(meta))", {"meta": ["a"]}),  # TypeErrors when they run
        ("reversed(enumerate(meta))", {"meta": ["a"]}),
        ("enumerate(meta)", {"meta": ["a"]}),  # an iterator is gone over, not passed on
        ("sorted(meta)", {"meta": [1, "a"]}),
        ("sorted(meta, key=_length)", {"meta": ["a"]}),  # a key function of the user's
        ("sorted(meta, key=len)", {"meta": [_Text("a")]}),  # a str subclass's own len
        ("max(meta, key=str.lower)", {"meta": ["a", 1]}),
        ("min(meta)", {"meta": []}),  # a ValueError when it runs
        ("min(meta)", {"meta": ["a", 1]}),  # a TypeError
        ("max(meta, 'b', default='x')", {"meta": "a"}),
        ("[i for i in range(width)]", {"width": 10**6}),  # too long to go over ahead
    ]:
        assert planned(call, **params) is MISSING, call


def test_a_parse_that_another_thread_disturbs_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On CPython 3.11 two threads building ASTs at once (pytest rewriting an import's asserts
    on one, prefetch reading a test on another) can make one of them fail with a SystemError
    ("AST constructor recursion depth mismatch"); reading a test's source tries again rather
    than failing the run."""
    from pytest_modelrollout import asked

    parse, failures = ast.parse, []

    def disturbed(source: str, *args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(source)
            raise SystemError("AST constructor recursion depth mismatch (before=204, after=225)")
        return parse(source, *args, **kwargs)

    def test_fresh(rollout, case):  # type: ignore[no-untyped-def]
        rollout.ask(case.prompt)

    monkeypatch.setattr(asked.ast, "parse", disturbed)
    fdef = asked._function_def(test_fresh)
    assert fdef is not None and fdef.name == "test_fresh" and len(failures) == 1


def _reads_a_logged(rollout, case):
    rollout.ask(_logged(case))


def _templated(rollout, text, n, row):
    rollout.ask(f"{text.swapcase()} is not planned")  # a method that is not read
    return rollout.ask(f"Say {row['word']} {n} times: {text}")


def _specified(rollout, text, n):
    return rollout.ask(f"{text!r:>12} x{n:03d}")  # a conversion, format specs


def test_f_strings_of_parameters_are_read_from_the_source() -> None:
    from pytest_modelrollout.asked import MISSING, asked, evaluate, first_ask_keywords

    fstring = ("fstr", (("const", "Say "), ("item", ("param", "row"), "word"), ("const", " "),
                        ("param", "n"), ("const", " times: "), ("param", "text")))  # fmt: skip
    assert asked(_templated) == [fstring]
    assert first_ask_keywords(_templated, fstring) == ()
    params = {"text": "hello", "n": 3, "row": {"word": "hi"}}
    assert evaluate(fstring, params, {}) == "Say hi 3 times: hello"
    assert evaluate(fstring, {**params, "n": [3]}, {}) is MISSING  # strings and numbers only
    (specified,) = asked(_specified)
    assert evaluate(specified, {"text": "hi", "n": 7}, {}) == "        'hi' x007"
    assert evaluate(specified, {"text": "hi", "n": "7"}, {}) is MISSING  # a ValueError


TEMPLATE = "Answer in {lang}: {question}"
PREFIX = "Customer message: "


def _built(rollout, case, row, n):
    intro: str = PREFIX + case.prompt
    prompt = f"{intro} (ticket {n})"
    for turn in row["turns"]:
        rollout.ask(turn)  # a loop's target: read for its first iteration
    rollout.ask(undefined)  # noqa: F821 (neither a parameter nor the module's)
    rollout.ask(TEMPLATE.format(question=row["q"], lang="English"))
    rollout.ask(TEMPLATE.format(*row["turns"]))  # *args: not read
    rollout.ask([{"role": "system", "content": PREFIX}, {"role": "user", "content": prompt}])
    rollout.ask("\n".join([PREFIX.strip(), case.prompt.lower()]))
    rollout.ask(case.prompt.encode())  # not a str method that builds a string: not read
    return rollout.ask(prompt)


def _late(rollout, prompt, case):
    rollout.ask(answer)  # noqa: F821 (read before it is assigned: not read)
    answer = "x"
    prompt = prompt + "!"  # the parameter, read where it is assigned again
    again = f"{case}"
    again += "?"  # bound twice at the top of the body: read as it is at the ask
    rollout.ask(again)
    return rollout.ask(prompt), answer


def test_local_names_module_names_sums_and_templates_are_read_from_the_source() -> None:
    """What a demanding user writes before asking: a prompt built in a local variable, from a
    template or a constant of the module, or a message list."""
    from pytest_modelrollout.asked import MISSING, asked, evaluate, first_ask_keywords

    case = SimpleNamespace(prompt="Where is my order?")
    params = {"case": case, "row": {"q": "Why?", "turns": ["a", "b"]}, "n": 7}
    got = [evaluate(e, params, globals()) for e in asked(_built)]
    assert got == [
        "a",  # the loop's first iteration
        MISSING,  # `undefined`: not a name of the module
        "Answer in English: Why?",
        [{"role": "system", "content": PREFIX},
         {"role": "user", "content": "Customer message: Where is my order? (ticket 7)"}],
        "Customer message:\nwhere is my order?",
        "Customer message: Where is my order? (ticket 7)",
    ]  # fmt: skip
    assert all(first_ask_keywords(_built, e) == () for e in asked(_built))
    assert evaluate(asked(_built)[2], {**params, "row": {}}, globals()) is MISSING
    plus = ("add", ("param", "prompt"), ("const", "!"))
    again = ("add", ("fstr", (("param", "case"),)), ("const", "?"))
    assert asked(_late) == [again, plus]
    # the parameter bound again by a statement at the top of the body, read as it is there
    assert first_ask_keywords(_late, plus) == ()
    assert evaluate(plus, {"prompt": "Hi"}, {}) == "Hi!"
    assert evaluate(plus, {"prompt": 3}, {}) is MISSING  # str + str only


def _prefixed(rollout, text):
    return rollout.ask(PREFIX + text)


def test_a_decorated_test_reads_the_names_of_its_own_module() -> None:
    """The wrapper a decorator returns has its own module's names (here contextlib's): the
    prompt is read where the test is written."""
    import contextlib

    from pytest_modelrollout.asked import asked, evaluate, module_names

    wrapped = contextlib.contextmanager(_prefixed)
    assert wrapped.__globals__ is not globals()  # type: ignore[attr-defined]
    assert module_names(wrapped) is globals()
    (expr,) = asked(wrapped)
    assert evaluate(expr, {"text": "Hi"}, module_names(wrapped)) == "Customer message: Hi"


def test_what_an_ask_reads_from_a_parameter_is_resolved_without_running_code() -> None:
    from pytest_modelrollout.asked import MISSING, evaluate

    ran: list[str] = []

    class Row:
        def __init__(self) -> None:
            self.prompt = "plain attribute"

        @property
        def computed(self) -> str:
            ran.append("property")
            return "computed"

    class Lazy:
        __slots__ = ()

        def __getattr__(self, name: str) -> str:
            ran.append("__getattr__")
            return "made up"

    class Loud(str):
        def __format__(self, spec: str) -> str:
            ran.append("__format__")
            return "loud"

        def __add__(self, other: str) -> str:
            ran.append("__add__")
            return "loud"

    defaults: collections.defaultdict[str, str] = collections.defaultdict(lambda: "made up")
    params = {"ex": {"turns": ["first", "second"]}, "row": Row(), "lazy": Lazy(),
              "defaults": defaults, "loud": Loud("x")}  # fmt: skip

    def ev(expr: Any) -> Any:
        return evaluate(expr, params, {})

    turns = ("item", ("param", "ex"), "turns")
    assert ev(("item", turns, 1)) == "second"
    assert ev(("attr", ("param", "row"), "prompt")) == "plain attribute"
    assert ev(("attr", ("param", "row"), "computed")) is MISSING
    assert ev(("attr", ("param", "lazy"), "prompt")) is MISSING
    assert ev(("item", ("param", "defaults"), "prompt")) is MISSING and not defaults
    assert ev(("item", ("param", "ex"), "missing")) is MISSING
    assert ev(("item", turns, 5)) is MISSING
    assert ev(("param", "nope")) is MISSING
    assert ev(("fstr", (("param", "loud"),))) is MISSING
    assert ev(("add", ("param", "loud"), ("const", "y"))) is MISSING
    assert ev(("method", ("const", "{0}"), "format", (("param", "loud"),), ())) is MISSING
    assert ev(("method", ("const", "-"), "join", (("list", (("param", "loud"),)),), ())) is MISSING
    assert ev(("method", ("param", "loud"), "strip", (), ())) is MISSING
    assert ev(("method", ("const", "{missing}"), "format", (), ())) is MISSING  # a KeyError
    assert ran == []  # no property, __getattr__, __format__ or __add__ was called


@pytest.mark.parametrize(
    ("signature", "ask", "stable_sent"),
    [("stable, candidate, case", "candidate.ask(case)", (0, 0)),
     ("rollout, case", "rollout.candidate.ask(case)", (0, 0)),
     # an ask through a helper of the module: read from its source, with the model the test
     # passes it
     ("rollout, case", "ask_with(rollout.candidate, case)", (0, 0)),
     # through a helper that is not read (a local name asks): the fixtures say (both models);
     # after the first test, only what it took
     ("rollout, case", "ask_through_a_name(rollout.candidate, case)", (1, 4))],
)  # fmt: skip
def test_models_a_function_never_asks_are_not_prefetched(
    project: pytest.Pytester, sim: CountingSim, signature: str, ask: str,
    stable_sent: tuple[int, int],
) -> None:
    """Both models available to the test, only the candidate asked: the asks' receivers in the
    source say so (``candidate.ask``, ``rollout.candidate.ask``), and the stable is never sent
    ahead (before, the first window's stable calls were sent and wasted, and with a wide
    window every case's: a model's worth of calls); so does a helper's, read from its source
    (``ask_with(rollout.candidate, case)``: the model the test passes it). An ask the source
    does not show (a helper that asks through a name of its own) is learned from the first
    test: one unused stable call in all, not one per case."""
    project.makepyfile(
        test_suite=f"""
        import pytest
        from pytest_modelrollout import cases

        def ask_with(model, case):
            return model.ask(case)

        def ask_through_a_name(model, case):
            asker = model
            return asker.ask(case)

        @pytest.mark.workflow("support", system="You are a concise support agent.",
                              params={{"temperature": 0}})
        @pytest.mark.parametrize("case", cases("cases.jsonl"))
        def test_candidate_only({signature}):
            assert {ask}.ok
        """
    )
    _run(project, "--rollout-no-gate", "--rollout-concurrency=1").assert_outcomes(passed=N_CASES)
    assert sim.total(CANDIDATE.removeprefix("sim:")) == N_CASES
    # concurrency 1: a window of 4 calls (2 tests); the stable calls sent before the first test
    # ended are the only ones: the first window, and at most one more when the first test
    # starts after its replies came in (while it runs, nothing more of its function is sent)
    least, most = stable_sent
    assert least <= sim.total(STABLE.removeprefix("sim:")) <= most


def test_the_models_a_test_asks_are_read_from_its_asks_receivers() -> None:
    """Which models a test's first planned ask goes to: the receivers of its asks
    (``rollout.ask`` both, ``rollout.candidate.ask`` the candidate, ...), of those that send
    the prompt planned when it is known which; a receiver that is not a model fixture itself
    leaves it to the fixtures."""
    from pytest_modelrollout.asked import asked_roles

    def both(rollout, case):
        rollout.ask(case)

    def candidate_only(rollout, case):
        rollout.candidate.ask(case)
        rollout.candidate.ask(prompt="again")  # a keyword prompt: its receiver counts too

    def each_apart(stable, candidate, case):
        stable.ask(case)
        candidate.ask(case)

    def through_a_name(rollout, case):
        model = rollout.candidate
        model.ask(case)  # not a fixture itself: the fixtures say

    def rebound(candidate, case):
        candidate = make(candidate)  # noqa: F821
        candidate.ask(case)

    def no_ask(rollout, case):
        helper(rollout, case)  # noqa: F821

    def by_language(rollout, case):
        if case.lang == "zh":
            rollout.candidate.ask(case.prompt)
        else:
            rollout.ask("Answer: " + case.prompt)

    assert asked_roles(both) == {"stable", "candidate"}
    assert asked_roles(candidate_only) == {"candidate"}
    assert asked_roles(each_apart) == {"stable", "candidate"}
    # the models of the asks that send the prompt planned first (all that do), else all
    assert asked_roles(each_apart, ("param", "case")) == {"stable", "candidate"}
    assert asked_roles(by_language, ("attr", ("param", "case"), "prompt")) == {"candidate"}
    assert asked_roles(by_language, ("param", "case")) == {"stable", "candidate"}
    assert asked_roles(through_a_name) is None
    assert asked_roles(rebound) is None
    assert asked_roles(no_ask) is None


def _rendered(raw: str) -> str:
    """What a terminal shows for one line of output (backspaces and carriage returns)."""
    cells: list[str] = []
    pos = 0
    for ch in raw:
        if ch == "\b":
            pos = max(0, pos - 1)
        elif ch == "\r":
            pos = 0
        else:
            if pos < len(cells):
                cells[pos] = ch
            else:
                cells.append(ch)
            pos += 1
    return "".join(cells).rstrip()


@pytest.mark.parametrize("shown", [True, False], ids=["terminal", "CI"])
def test_a_long_wait_shows_the_counts_then_leaves_pytests_line_as_it_was(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shown: bool
) -> None:
    from pytest_modelrollout import progress

    # a slow model and one call at a time: later tests wait for their prefetched replies
    slow = CONFIG.replace("latency_ms=20", "latency_ms=100") + "concurrency = 1\n"
    project.makepyprojecttoml(slow)
    project.makepyfile(test_suite=SUITE)
    monkeypatch.setattr(progress, "WAIT_SHOW_S", 0.01)
    monkeypatch.setattr(progress, "WAIT_REDRAW_S", 0.02)
    if shown:
        monkeypatch.setenv("MODELROLLOUT_PROGRESS", "1")
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.delenv("MODELROLLOUT_PROGRESS", raising=False)
        monkeypatch.setenv("CI", "1")
    result = _run(project)
    result.assert_outcomes(passed=N_CASES)
    raw = "\n".join(result.outlines)
    assert ("(waiting for replies; modelrollout: " in raw) is shown
    # the counts, cut to the room left on the line (after two dots, right after "0 errors,"):
    # the calls done of all, then no error
    assert bool(re.search(rf"modelrollout: \d+/{2 * N_CASES} calls done", raw)) is shown
    assert not re.search(r"calls done, [1-9]", raw)
    line = next(x for x in result.outlines if "test_suite.py" in x)
    # once the replies are in, the counts are erased: the line is pytest's own
    assert re.fullmatch(rf"test_suite\.py \.{{{N_CASES}}} +\[100%\]", _rendered(line)), line
