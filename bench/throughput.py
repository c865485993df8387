"""Benchmark: throughput, per-call overhead and memory of the plugin against the simulator.

Usage::

    python bench/throughput.py [--cases 200] [--latency-ms 100] [--memory-calls 10000]
                               [--in-process-sim] [--xdist 2,4] [--skip-naive] [--skip-memory]
                               [--base REV]

(a) wall time of a ``cases()`` suite (CASES rows x 2 models, ``rollout.ask(case)``) run with
    pytest in a subprocess, including pytest start-up, as a ratio to the ideal
    ``calls x latency / concurrency`` at concurrency 16 (the default ``concurrency`` and twice
    the default ``max_concurrency`` of 8 per model). Also with ``-n N`` for each N in
    ``--xdist`` (default 2 and 4), as a ratio to the run without xdist and to the same run
    without the controller's head start (``MODELROLLOUT_HEADSTART=0``, alternating), and with
    the largest N and ``--dist loadfile`` (the suite is one file: one worker runs every test),
    and with the largest N recording cassettes (``--rollout-record=all``, against ``-n 0``
    recording them too); the same suite with
    its prompts as strings in the test file (``parametrize("prompt", PROMPTS)``), and with each
    prompt built in the test from a template (``prompt = TEMPLATE.format(...)``); xdist's own cost:
    the same suite with tests that call no model, at ``-n 0`` and ``-n N``; when the calls run
    in the last run at ``-n 0`` and at each ``-n N`` (the first send and the last reply after
    the process's start, from the JSON report's call times); and the best the controller's head
    start could do: the floor's calls (below) made next to a ``-n N`` run of the suite without
    model calls, started together. Printed with it: the candidate's p50 / p95 latency against
    the same suite run sequentially (``--rollout-no-prefetch``); the floor (the same calls from
    plain asyncio and the plugin's transport, no pytest), and the same calls from bare asyncio
    streams; and the bound for (a) on this machine, pytest's start-up and collection alone plus
    the floor.
(b) the same suite written the way teams write it today (plain pytest, an ``httpx.Client``
    calling the two models one after the other in each test); the ratio b / a.
(c) per-call CPU overhead on a zero-latency endpoint: ``ModelClient.call`` plus the per-reply
    work (CallRecord + Reply) minus a raw ``httpx.AsyncClient`` post + JSON parse.
(d) peak RSS of a pytest run making ``--memory-calls`` calls through the plugin (prefetch on,
    JSON report written).

With ``--base REV``, (a) is also run with the plugin as it was at git revision REV (its
``src/`` exported to a temporary directory and put first on ``PYTHONPATH``), alternating with
the working tree's runs, and the ratio of the medians is printed: the machine's speed drifts
between runs by more than most changes, so compare versions only within one run.

Every pytest run gets a user's environment: bytecode caching on (unset
PYTHONDONTWRITEBYTECODE) and the hypothesis plugin (a test dependency of this repository)
disabled, in (a), (b) and (d) alike.

By default the simulator runs as a standalone process (``python -m pytest_modelrollout sim``)
so that it does not share the GIL with pytest (a real provider does not either); with
``--in-process-sim`` the plugin's own in-process simulator is used for (a) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

CONCURRENCY = 16
TARGETS = {"a": 1.3, "b": 10.0, "c": 0.3, "d": 150.0}

SUITE = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support", system="You are a concise support agent.")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_support(rollout, case):
    pair = rollout.ask(case)
    pair.expect_language("same_as_prompt")
    pair.expect_length(max_chars=2000)
"""

# the same suite with the prompts as strings in the test file instead of a cases() dataset
PROMPT_SUITE = """
import pytest

PROMPTS = {prompts!r}

@pytest.mark.workflow("support", system="You are a concise support agent.")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_support(rollout, prompt):
    pair = rollout.ask(prompt)
    pair.expect_language("same_as_prompt")
    pair.expect_length(max_chars=2000)
"""

# the same suite with the prompt built in the test, in a local name, from the module's template
BUILT_SUITE = """
import pytest
from pytest_modelrollout import cases

TEMPLATE = "Customer message: {message}"

@pytest.mark.workflow("support", system="You are a concise support agent.")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_support(rollout, case):
    prompt = TEMPLATE.format(message=case.prompt)
    pair = rollout.ask(prompt)
    pair.expect_length(max_chars=2000)
"""

NAIVE = """
import json
import os

import httpx
import pytest

URL = os.environ["MODELROLLOUT_SIM_URL"] + "/v1/chat/completions"
STABLE, CANDIDATE = {stable!r}, {candidate!r}
client = httpx.Client(timeout=60)
CASES = [json.loads(line) for line in open("cases.jsonl", encoding="utf-8") if line.strip()]

def ask(model, prompt):
    r = client.post(URL, json={{"model": model, "messages": [
        {{"role": "system", "content": "You are a concise support agent."}},
        {{"role": "user", "content": prompt}}]}})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]

@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_support(case):
    stable = ask(STABLE, case["prompt"])
    candidate = ask(CANDIDATE, case["prompt"])
    assert stable and candidate
    assert len(candidate) <= 2000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sim() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_modelrollout", "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("simulator did not start")


# the same collection, markers and plugins as SUITE, tests that call no model: what pytest, the
# plugin's start-up and xdist cost before and around the calls
NO_CALLS = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support", system="You are a concise support agent.")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_support(case):
    assert case.prompt
"""


def write_project(root: Path, n: int, stable: str, candidate: str, naive: bool = False,
                  body: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "cases.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            prompt = (
                f"Where is my order A-{10000 + i}? It has not arrived yet."
                if i % 2 == 0
                else f"你好，我的订单 B-{20000 + i} 什么时候到？"
            )
            f.write(json.dumps({"id": f"c{i:05d}", "prompt": prompt}, ensure_ascii=False) + "\n")
    (root / "pyproject.toml").write_text(
        f'[tool.modelrollout]\nstable = "sim:{stable}"\ncandidate = "sim:{candidate}"\n'
        f"concurrency = {CONCURRENCY}\n",
        encoding="utf-8",
    )
    if body is None:
        body = NAIVE.format(stable=stable, candidate=candidate) if naive else SUITE
    (root / "test_suite.py").write_text(body, encoding="utf-8")


def export_src(rev: str, dest: Path) -> Path:
    """The plugin's ``src/`` at git revision ``rev``, exported under ``dest``."""
    repo = Path(__file__).resolve().parent.parent
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "src"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--base {rev}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's run: bytecode caching on (this sandbox sets
    PYTHONDONTWRITEBYTECODE, which makes every start-up recompile the plugin), CI=1 (no
    progress bar)."""
    env = {**os.environ, "CI": "1", **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def pytest_cmd(*args: str, plugin: bool = True) -> list[str]:
    # hypothesis is a test dependency of this repository, not of a user's install; its pytest
    # plugin alone adds ~0.5 s to every start-up here, so it is disabled in both suites
    extra = ["-p", "no:hypothesispytest"] if _has_hypothesis() else []
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra,
            *(["--rollout-allow-inconclusive"] if plugin else ["-p", "no:modelrollout"]), *args]


def _has_hypothesis() -> bool:
    import importlib.util

    return importlib.util.find_spec("hypothesis") is not None


# root -> (epoch at the start, epoch at the end) of its last pytest run
_RUN_SPAN: dict[Path, tuple[float, float]] = {}


def run_pytest(root: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    plugin = "-p no:modelrollout" not in env.get("PYTEST_ADDOPTS", "")
    cmd = pytest_cmd(*args, plugin=plugin)
    epoch = time.time()
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    _RUN_SPAN[root] = (epoch, epoch + wall)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    tail = f"cpu {cpu:.2f} s; " + (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return wall, tail


def call_timeline(root: Path, report: Path) -> tuple[float, float, float]:
    """Of ``root``'s last run, which wrote ``report``: seconds from the process's start to the
    first call's send and to the last reply (the report's call times: each call's first send
    plus its latency), and from the last reply to the process's exit."""
    start, end = _RUN_SPAN[root]
    calls = json.loads(report.read_text(encoding="utf-8"))["records"]["calls"]
    first = min(c["ts"] for c in calls) - start
    last = max(c["ts"] + (c.get("latency_ms") or 0.0) / 1000.0 for c in calls) - start
    return first, last, end - start - last


def bench_suite(args: argparse.Namespace, sim_url: str | None, work: Path) -> dict[str, Any]:
    lat = args.latency_ms
    stable, candidate = f"stable?latency_ms={lat}&jitter=0", f"good?latency_ms={lat}&jitter=0"
    env = user_env()
    if sim_url:
        env["MODELROLLOUT_SIM_URL"] = sim_url
    else:
        env.pop("MODELROLLOUT_SIM_URL", None)
    calls = 2 * args.cases
    ideal = calls * lat / 1000.0 / CONCURRENCY
    out: dict[str, Any] = {"calls": calls, "ideal_s": ideal}
    proj = work / "plugin"
    write_project(proj, args.cases, stable, candidate)
    run_pytest(proj, env, "--collect-only")  # warm the file system / bytecode caches
    # the median of --repeat runs: a shared machine's load drifts by seconds
    base_env = None
    if args.base:
        base_src = export_src(args.base, work / "base")
        base_env = {**env, "PYTHONPATH": os.pathsep.join(
            [str(base_src), *filter(None, [env.get("PYTHONPATH")])])}
        run_pytest(proj, base_env, "--collect-only")  # its bytecode caches
    runs_list = []
    base_runs = []
    for _ in range(args.repeat):
        if base_env is not None:  # alternating: both see the same drift
            base_runs.append(run_pytest(proj, base_env, "--rollout-report=base.json")[0])
        runs_list.append(run_pytest(proj, env, "--rollout-report=report.json"))
    runs = sorted(runs_list, key=lambda r: r[0])
    if base_runs:
        out["a_base_walls"] = sorted(base_runs)
    out["a_wall_s"], out["a_tail"] = runs[len(runs) // 2]
    out["timeline"] = {"-n 0": call_timeline(proj, proj / "report.json")}
    out["a_walls"] = [w for w, _ in runs]
    report = json.loads((proj / "report.json").read_text(encoding="utf-8"))
    wf = report["workflows"]["support"]
    out["a_requests"] = wf["stable"]["requests"] + wf["candidate"]["requests"]
    out["a_p50_ms"] = wf["candidate"]["latency_p50_ms"]
    out["a_p95_ms"] = wf["candidate"]["latency_p95_ms"]
    wall_np, _ = run_pytest(proj, env, "--rollout-no-prefetch", "--rollout-report=seq.json")
    out["a_no_prefetch_s"] = wall_np
    seq = json.loads((proj / "seq.json").read_text(encoding="utf-8"))["workflows"]["support"]
    out["seq_p50_ms"] = seq["candidate"]["latency_p50_ms"]
    out["seq_p95_ms"] = seq["candidate"]["latency_p95_ms"]
    # prefetch is not only for cases(): prompt strings the tests are parametrized with
    strings = work / "strings"
    prompts = [json.loads(line)["prompt"] for line in
               (proj / "cases.jsonl").read_text(encoding="utf-8").splitlines()]  # fmt: skip
    write_project(strings, args.cases, stable, candidate,
                  body=PROMPT_SUITE.format(prompts=prompts))  # fmt: skip
    run_pytest(strings, env, "--collect-only")
    out["a_strings_s"] = sorted(run_pytest(strings, env)[0] for _ in range(3))[1]
    # and with the prompt built in the test from a template of the module, in a local name
    built = work / "built"
    write_project(built, args.cases, stable, candidate, body=BUILT_SUITE)
    run_pytest(built, env, "--collect-only")
    out["a_built_s"] = sorted(run_pytest(built, env)[0] for _ in range(3))[1]
    out["a_xdist"] = {}
    out["a_xdist_base"] = {}
    out["a_xdist_off"] = {}
    off_env = {**env, "MODELROLLOUT_HEADSTART": "0"}

    def xdist_run(*xargs: str, plain: tuple[str, ...] | None = None) -> tuple[float, bool]:
        """The median wall of ``--repeat`` runs, alternating with as many runs without the
        controller's head start (their median in out["a_xdist_off"][xargs]), with --base with
        the base's (out["a_xdist_base"][xargs]) and with ``plain``, runs without xdist
        (out["a_plain"][xargs]); whether the last run gave the same verdict, requests, tokens
        and checks as (a)."""
        walls, base_walls, off_walls, plain_walls = [], [], [], []
        for _ in range(args.repeat):
            if plain is not None:
                plain_walls.append(run_pytest(proj, env, *plain)[0])
            if base_env is not None:
                base_walls.append(run_pytest(proj, base_env, *xargs)[0])
            off_walls.append(run_pytest(proj, off_env, *xargs)[0])
            walls.append(run_pytest(proj, env, *xargs, "--rollout-report=report_x.json")[0])
        key = " ".join(xargs)
        if plain_walls:
            out.setdefault("a_plain", {})[key] = sorted(plain_walls)[len(plain_walls) // 2]
        out["a_xdist_off"][key] = sorted(off_walls)[len(off_walls) // 2]
        if base_walls:
            out["a_xdist_base"][key] = sorted(base_walls)[len(base_walls) // 2]
        out["timeline"][key] = call_timeline(proj, proj / "report_x.json")
        rx = json.loads((proj / "report_x.json").read_text(encoding="utf-8"))
        wx = rx["workflows"]["support"]
        same = (
            rx["verdict"] == report["verdict"]
            and wx["stable"]["requests"] == wf["stable"]["requests"]
            and wx["candidate"]["output_tokens"] == wf["candidate"]["output_tokens"]
            and wx["checks"] == wf["checks"]
        )
        return sorted(walls)[len(walls) // 2], same

    for n in args.xdist:
        out["a_xdist"][n] = xdist_run("-n", str(n))
    if args.xdist:  # the suite is one file: under --dist loadfile one worker runs every test
        n = max(args.xdist)
        out["a_loadfile"] = (n, *xdist_run("-n", str(n), "--dist=loadfile"))
    if args.xdist:  # recording cassettes (every call written): -n 0 against -n N
        n = max(args.xdist)
        rec = "--rollout-record=all"
        wall_x, same = xdist_run("-n", str(n), rec, plain=(rec,))
        out["a_record"] = (n, out["a_plain"][f"-n {n} {rec}"], wall_x, same)
    if args.xdist:  # xdist's own cost: the same suite without a model call, -n 0 against -n N
        quiet = work / "no_calls"
        write_project(quiet, args.cases, stable, candidate, body=NO_CALLS)
        run_pytest(quiet, env, "--collect-only")
        walls: dict[int, list[float]] = {n: [] for n in [0, *args.xdist]}
        for _ in range(args.repeat):  # interleaved, as the machine drifts
            for n in walls:
                walls[n].append(run_pytest(quiet, env, "-n", str(n))[0])
        out["no_calls"] = {n: sorted(w)[len(w) // 2] for n, w in walls.items()}
    # pytest start-up + collection alone, for reference
    out["startup_s"] = sorted(
        run_pytest(proj, env, "--collect-only")[0] for _ in range(args.repeat)
    )[args.repeat // 2]
    if not args.skip_naive and sim_url:
        naive = work / "naive"
        write_project(naive, args.cases, stable, candidate, naive=True)
        wall_b, _ = run_pytest(naive, {**env, "PYTEST_ADDOPTS": "-p no:modelrollout"})
        out["b_wall_s"] = wall_b
    return out


TAIL = "slow_rate=0.02&slow_min_ms=4000&slow_max_ms=8000"


def bench_tail(args: argparse.Namespace, sim_url: str, work: Path) -> dict[str, Any]:
    """The same suite when 2% of requests take 4-8 s (a provider's slow tail: long answers,
    timeouts and retries) and the rest ~0.1-0.3 s: the calls phase (first send to last reply)
    against its bound, the longest call or all latencies / concurrency, whichever is larger.
    Deterministic: the simulator picks the slow requests by their content."""
    env = user_env(MODELROLLOUT_SIM_URL=sim_url)
    proj = work / "tail"
    write_project(proj, args.cases, f"stable?{TAIL}", f"good?{TAIL}")
    run_pytest(proj, env, "--collect-only")
    variants: list[tuple[str, dict[str, str]]] = [("tree", env)]
    if args.base:
        base_src = export_src(args.base, work / "base-tail")
        variants.append((args.base, {**env, "PYTHONPATH": os.pathsep.join(
            [str(base_src), *filter(None, [env.get("PYTHONPATH")])])}))
        run_pytest(proj, variants[1][1], "--collect-only")
    out: dict[str, Any] = {name: [] for name, _ in variants}
    for _ in range(max(1, min(args.repeat, 3))):
        for name, e in variants:
            wall, _ = run_pytest(proj, e, "--rollout-report=tail.json")
            calls = json.loads((proj / "tail.json").read_text(encoding="utf-8"))["records"]["calls"]
            first = min(c["ts"] for c in calls)
            phase = max(c["ts"] + c["latency_ms"] / 1000 for c in calls) - first
            bound = max(max(c["latency_ms"] for c in calls),
                        sum(c["latency_ms"] for c in calls) / CONCURRENCY) / 1000
            out[name].append((wall, phase, bound))
    return out


def bench_floor(sim_url: str, cases: int, latency_ms: int) -> float:
    """The same calls with nothing but asyncio and the plugin's asyncio transport used directly
    (no pytest, no httpx client, no plugin logic) at the same concurrency, on connections opened
    beforehand (as the plugin opens them while pytest collects): what this machine allows, for
    reference."""
    stable, candidate = (f"{p}?latency_ms={latency_ms}&jitter=0" for p in ("stable", "good"))
    bodies = [
        {"model": model, "messages": [
            {"role": "system", "content": "You are a concise support agent."},
            {"role": "user", "content": f"Where is my order A-{10000 + i}? It has not arrived yet."
             if i % 2 == 0 else f"你好，我的订单 B-{20000 + i} 什么时候到？"}]}
        for i in range(cases) for model in (stable, candidate)
    ]

    from pytest_modelrollout.providers.transport import make_transport

    async def run() -> float:
        sem = asyncio.Semaphore(CONCURRENCY)
        # the cheapest client there is here: the plugin's asyncio transport, used directly
        transport = make_transport(verify=False, max_connections=CONCURRENCY, trust_env=False, timeout=60)
        assert transport is not None, "the asyncio transport needs Python 3.11+"
        url = sim_url + "/v1/chat/completions"
        headers = {"content-type": "application/json"}
        # the connections open first, as the plugin opens them while pytest collects
        transport.preconnect(url, CONCURRENCY)
        await asyncio.sleep(0.3)

        async def one(body: dict[str, Any]) -> None:
            async with sem, transport.stream_post(url, json.dumps(body).encode(), headers) as (
                _, _, chunks
            ):
                json.loads(b"".join([c async for c in chunks]))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - t0
        await transport.aclose()
        return elapsed

    return asyncio.run(run())


def bench_raw_floor(sim_url: str, cases: int, latency_ms: int) -> float:
    """The floor's calls from the leanest client there is: asyncio streams, one keep-alive
    connection per slot opened beforehand, each request written at once, the reply read by its
    ``content-length``; no pool, no h11, no timeouts, no TLS. How far the plugin's transport
    (:func:`bench_floor`) is from what asyncio itself allows here."""
    from urllib.parse import urlsplit

    stable, candidate = (f"{p}?latency_ms={latency_ms}&jitter=0" for p in ("stable", "good"))
    bodies = [
        json.dumps({"model": model, "messages": [
            {"role": "system", "content": "You are a concise support agent."},
            {"role": "user", "content": f"Where is my order A-{10000 + i}? It has not arrived yet."
             if i % 2 == 0 else f"你好，我的订单 B-{20000 + i} 什么时候到？"}]}).encode()
        for i in range(cases) for model in (stable, candidate)
    ]
    parts = urlsplit(sim_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def run() -> float:
        streams = [await asyncio.open_connection(host, port) for _ in range(CONCURRENCY)]
        pending = iter(bodies)

        async def slot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for body in pending:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\n"
                             b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (host.encode(), len(body), body))  # fmt: skip
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))  # fmt: skip
                json.loads(await reader.readexactly(length))

        t0 = time.perf_counter()
        await asyncio.gather(*(slot(r, w) for r, w in streams))
        elapsed = time.perf_counter() - t0
        for _, writer in streams:
            writer.close()
        return elapsed

    return asyncio.run(run())


def bench_overlap(sim_url: str, work: Path, n: int, args: argparse.Namespace) -> list[tuple[float, float, float]]:
    """What the xdist controller's head start could give at best: the floor's calls
    (:func:`bench_floor`) made from this process while a ``-n N`` run of the suite with tests
    that call no model starts next to them (the calls 0.3 s after it, about when its
    controller is up), so the calls made with no pytest and no claims. Per round: the floor
    alone, the floor next to that run, and that run's wall time."""
    quiet = work / "no_calls"
    env = user_env(MODELROLLOUT_SIM_URL=sim_url)
    rows = []
    for _ in range(args.repeat):
        alone = bench_floor(sim_url, args.cases, args.latency_ms)
        t0 = time.perf_counter()
        proc = subprocess.Popen(pytest_cmd("-n", str(n)), cwd=quiet, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        together = bench_floor(sim_url, args.cases, args.latency_ms)
        proc.wait()
        rows.append((alone, together, time.perf_counter() - t0))
    return rows


# -- (c) per-call overhead ------------------------------------------------------------------
def bench_overhead(sim_url: str, n: int) -> dict[str, float]:
    from pytest_modelrollout._records import CallRecord
    from pytest_modelrollout.config import parse_config, resolve_model
    from pytest_modelrollout.providers.base import ChatRequest
    from pytest_modelrollout.providers.client import ModelRegistry
    from pytest_modelrollout.replies import CheckContext, Reply
    from pytest_modelrollout.session import call_record, reply_fields

    model = "stable?latency_ms=0&jitter=0"
    env = {**os.environ, "MODELROLLOUT_SIM_URL": sim_url}
    os.environ["MODELROLLOUT_SIM_URL"] = sim_url
    cfg = parse_config({})
    registry = ModelRegistry(lambda ref: resolve_model(cfg, ref), set(), env)
    client = registry.client(f"sim:{model}")
    prompts = [f"Where is my order A-{i}? It has not arrived yet." for i in range(n)]
    url = sim_url + "/v1/chat/completions"

    rounds = 15
    chunk = max(1, n // rounds)

    async def plugin_round(ps: list[str]) -> float:
        reqs = [ChatRequest(messages=[{"role": "user", "content": p}]) for p in ps]
        c0 = time.process_time()
        for req in reqs:
            await client.call(req)
        return (time.process_time() - c0) / len(ps) * 1000

    async def direct_round(t: Any, ps: list[str]) -> float:
        bodies = [json.dumps({"model": model, "messages": [{"role": "user", "content": p}]})
                  .encode() for p in ps]
        headers = {"content-type": "application/json"}
        c0 = time.process_time()
        for body in bodies:
            async with t.stream_post(url, body, headers) as (_, _, chunks):
                json.loads(b"".join([c async for c in chunks]))
        return (time.process_time() - c0) / len(ps) * 1000

    async def raw_round(http: httpx.AsyncClient, ps: list[str]) -> float:
        bodies = [{"model": model, "messages": [{"role": "user", "content": p}]} for p in ps]
        c0 = time.process_time()
        for body in bodies:
            (await http.post(url, json=body)).json()
        return (time.process_time() - c0) / len(ps) * 1000

    from pytest_modelrollout.providers.transport import make_transport

    async def both() -> tuple[float, float, float, float, float, Any]:
        # interleaved rounds, median of each: the machine's load drifts during a run
        plug: list[float] = []
        raw: list[float] = []
        raw_fast: list[float] = []
        fast = make_transport(verify=False, max_connections=8, trust_env=False, timeout=60)
        assert fast is not None, "the asyncio transport needs Python 3.11+"
        async with httpx.AsyncClient(timeout=60) as http:
            await raw_round(http, prompts[:20])
            await direct_round(fast, prompts[:20])
            await plugin_round(prompts[:20])
            for r in range(rounds):
                ps = prompts[r * chunk : (r + 1) * chunk]
                raw.append(await raw_round(http, ps))
                raw_fast.append(await direct_round(fast, ps))
                plug.append(await plugin_round(ps))
        await fast.aclose()
        last = await client.call(ChatRequest(messages=[{"role": "user", "content": "hi"}]))
        await registry.aclose()
        med = rounds // 2
        # the differences are taken per round (back-to-back measurements) before the median:
        # the machine's speed drifts between rounds more than the overhead being measured
        own = sorted(p - f for p, f in zip(plug, raw_fast, strict=False))[med]
        over = sorted(p - r for p, r in zip(plug, raw, strict=False))[med]
        return sorted(plug)[med], sorted(raw)[med], sorted(raw_fast)[med], own, over, last

    plugin_ms, raw_ms, raw_fast_ms, own_ms, over_ms, result = asyncio.run(both())

    # per-reply work the handles do after the call: the CallRecord and the Reply
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    sink: list[Any] = []
    m = 20000
    c0 = time.process_time()
    for i in range(m):
        rec: CallRecord = call_record(result, source="live", pair_id=f"t#{i}", test_id="t",
                                      workflow="w", role="candidate", model="m", case_id=None)
        sink.append(rec)
        Reply(model="m", request=req, source="live",
              context=CheckContext(workflow="w", role="candidate", test_id="t",
                                   pair_id=f"t#{i}", call_id=rec.call_id, record=sink.append,
                                   strict=False),
              **reply_fields(result))
    reply_ms = (time.process_time() - c0) / m * 1000
    return {"plugin_call_ms": plugin_ms, "raw_httpx_ms": raw_ms, "reply_record_ms": reply_ms,
            "raw_fast_ms": raw_fast_ms, "c_overhead_ms": over_ms + reply_ms,
            "c_own_ms": own_ms + reply_ms}


# -- (d) memory -------------------------------------------------------------------------------
def bench_memory(sim_url: str, calls: int, work: Path) -> dict[str, Any]:
    proj = work / "memory"
    n = calls // 2
    write_project(proj, n, "stable?latency_ms=0&jitter=0", "good?latency_ms=0&jitter=0")
    env = user_env(MODELROLLOUT_SIM_URL=sim_url)
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "time.perf_counter() - t, p.returncode)\n"
    )
    cmd = [sys.executable, "-c", wrapper, *pytest_cmd("--rollout-report=report.json")]
    out = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, check=True)
    kb, wall, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"memory run failed with {rc}")
    report = json.loads((proj / "report.json").read_text(encoding="utf-8"))
    wf = report["workflows"]["support"]
    return {"d_peak_rss_mb": int(kb) / 1024, "d_calls": wf["stable"]["requests"]
            + wf["candidate"]["requests"], "d_wall_s": float(wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--latency-ms", type=int, default=100)
    ap.add_argument("--overhead-calls", type=int, default=2000)
    ap.add_argument("--memory-calls", type=int, default=10000)
    ap.add_argument("--xdist", default="2,4",
                    help="comma-separated worker counts to run (a) with as well; '' for none")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of (a) and of the start-up measurement; the median is reported")
    ap.add_argument("--base", default="",
                    help="git revision to run (a) with as well, alternating, for a same-run ratio")
    ap.add_argument("--in-process-sim", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-tail", action="store_true")
    args = ap.parse_args()
    args.xdist = [int(n) for n in str(args.xdist).split(",") if n.strip()]

    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: nproc={os.cpu_count()}, python {platform.python_version()}, "
          f"{platform.platform()}, load average {os.getloadavg()[0]:.1f}")
    sim, url = start_sim()
    try:
        with tempfile.TemporaryDirectory(prefix="mr-throughput-") as tmp:
            work = Path(tmp)
            where = "in-process" if args.in_process_sim else f"standalone ({url})"
            print(f"simulator: {where}; latency {args.latency_ms} ms, jitter 0")
            r = bench_suite(args, None if args.in_process_sim else url, work)
            if args.in_process_sim and not args.skip_naive:
                naive = work / "naive"
                lat = args.latency_ms
                write_project(naive, args.cases, f"stable?latency_ms={lat}&jitter=0",
                              f"good?latency_ms={lat}&jitter=0", naive=True)
                env = user_env(MODELROLLOUT_SIM_URL=url, PYTEST_ADDOPTS="-p no:modelrollout")
                r["b_wall_s"], _ = run_pytest(naive, env)
            a_ratio = r["a_wall_s"] / r["ideal_s"]
            print(f"(a) {args.cases} cases x 2 models = {r['calls']} calls "
                  f"({r['a_requests']} recorded), wall {r['a_wall_s']:.2f} s incl. start-up "
                  f"(start-up + collection alone {r['startup_s']:.2f} s); ideal "
                  f"{r['ideal_s']:.2f} s -> {a_ratio:.2f}x ideal (target <= {TARGETS['a']}x); "
                  f"without prefetch {r['a_no_prefetch_s']:.2f} s")
            print(f"    candidate latency p50 / p95: {r['a_p50_ms']:.1f} / {r['a_p95_ms']:.1f} ms "
                  f"(the sequential run without prefetch: {r['seq_p50_ms']:.1f} / "
                  f"{r['seq_p95_ms']:.1f} ms; the simulator answers after {args.latency_ms} ms)")
            print(f"    median of {args.repeat} runs: "
                  + ", ".join(f"{w:.2f}" for w in r["a_walls"]) + " s")
            if "a_base_walls" in r:
                bw = r["a_base_walls"]
                base_med = bw[len(bw) // 2]
                print(f"    {args.base} (runs alternating with these): "
                      + ", ".join(f"{w:.2f}" for w in bw)
                      + f" s, median {base_med:.2f} s -> this tree takes "
                      f"{r['a_wall_s'] / base_med:.2f}x the time of {args.base}")
            print(f"    the same suite with its prompts as strings in the test file "
                  f"(parametrize('prompt', PROMPTS), rollout.ask(prompt)): {r['a_strings_s']:.2f} s "
                  f"= {r['a_strings_s'] / r['ideal_s']:.2f}x ideal (median of 3)")
            print("    the same suite with each prompt built in the test (prompt = "
                  "TEMPLATE.format(message=case.prompt), rollout.ask(prompt)): "
                  f"{r['a_built_s']:.2f} s = {r['a_built_s'] / r['ideal_s']:.2f}x ideal (median of 3)")
            print(f"    pytest process: {r['a_tail']}; wall minus start-up "
                  f"{r['a_wall_s'] - r['startup_s']:.2f} s -> "
                  f"{(r['a_wall_s'] - r['startup_s']) / r['ideal_s']:.2f}x ideal")
            def against_base(key: str, wall_x: float) -> str:
                off = r["a_xdist_off"][key]
                said = (f"; without the controller's head start (MODELROLLOUT_HEADSTART=0): "
                        f"{off:.2f} s = {off / r['a_wall_s']:.2f}x, so the head start takes "
                        f"{wall_x / off:.2f}x its time (medians of {args.repeat}, alternating)")
                base_x = r["a_xdist_base"].get(key)
                if base_x is None:
                    return said
                return said + (f"; {args.base}: {base_x:.2f} s, this tree {wall_x / base_x:.2f}x "
                               f"its time")

            for n, (wall_x, same) in r["a_xdist"].items():
                print(f"    -n {n}: wall {wall_x:.2f} s = {wall_x / r['a_wall_s']:.2f}x the -n 0 run "
                      f"(same verdict/requests/tokens/checks: {same})"
                      + against_base(f"-n {n}", wall_x))
            if "a_loadfile" in r:
                n, wall_x, same = r["a_loadfile"]
                print(f"    -n {n} --dist loadfile (one worker runs every test: the run's limits "
                      f"are shared, not split): wall {wall_x:.2f} s = {wall_x / r['a_wall_s']:.2f}x "
                      f"the -n 0 run (same verdict/requests/tokens/checks: {same})"
                      + against_base(f"-n {n} --dist=loadfile", wall_x))
            if "a_record" in r:
                n, rec0, wall_x, same = r["a_record"]
                print(f"    recording cassettes (--rollout-record=all): -n 0 {rec0:.2f} s; -n {n} "
                      f"{wall_x:.2f} s = {wall_x / rec0:.2f}x the -n 0 run (same verdict/requests/"
                      f"tokens/checks: {same})"
                      + against_base(f"-n {n} --rollout-record=all", wall_x))
            print("    when the calls run (the last run of each; from the report's call times): "
                  + "; ".join(f"{k}: first send {a:.2f} s after the start, last reply {b:.2f} s, "
                              f"exit {c:.2f} s after it" for k, (a, b, c) in r["timeline"].items()))
            if "no_calls" in r:
                nc = r["no_calls"]
                print(f"    xdist's own cost: the same suite with tests that call no model takes "
                      f"{nc[0]:.2f} s at -n 0; "
                      + "; ".join(f"-n {n}: {nc[n]:.2f} s (+{nc[n] - nc[0]:.2f} s; with the "
                                  f"calls +{r['a_xdist'][n][0] - r['a_wall_s']:.2f} s)"
                                  for n in args.xdist)
                      + f" (medians of {args.repeat})")
            floor = bench_floor(url, args.cases, args.latency_ms)
            print(f"    floor: the same {r['calls']} calls from plain asyncio + the asyncio transport, "
                  f"connections open, "
                  f"at concurrency "
                  f"{CONCURRENCY}, no pytest: {floor:.2f} s = {floor / r['ideal_s']:.2f}x ideal "
                  f"(what this machine allows at this latency); pytest + plugin = "
                  f"{r['a_wall_s'] / floor:.2f}x the floor")
            raw = bench_raw_floor(url, args.cases, args.latency_ms)
            print(f"    the same calls from bare asyncio streams (no pool, no h11, no timeouts): "
                  f"{raw:.2f} s = {raw / r['ideal_s']:.2f}x ideal; the transport's floor is "
                  f"{floor / raw:.2f}x it")
            if "no_calls" in r and not args.in_process_sim:
                n = max(args.xdist)
                rows = sorted(bench_overlap(url, work, n, args), key=lambda row: row[1])
                alone, together, wall = rows[len(rows) // 2]
                print(f"    bound for -n {n} with the controller's head start: the floor's calls "
                      f"made next to a -n {n} run of the no-calls suite starting with them take "
                      f"{together:.2f} s (alone {alone:.2f} s), and that run {wall:.2f} s (alone "
                      f"{r['no_calls'][n]:.2f} s): {wall / r['a_wall_s']:.2f}x the -n 0 run, "
                      f"against {r['a_xdist'][n][0] / r['a_wall_s']:.2f}x measured (median of "
                      f"{len(rows)} by the calls' time)")
            bound = r["startup_s"] + floor
            print(f"    bound for (a) here: start-up + collection ({r['startup_s']:.2f} s) + the "
                  f"floor = {bound:.2f} s = {bound / r['ideal_s']:.2f}x ideal (the target "
                  f"{TARGETS['a']}x is {'above' if bound / r['ideal_s'] <= TARGETS['a'] else 'below'}"
                  f" it); (a) is {r['a_wall_s'] / bound:.2f}x this bound (start-up is timed in a "
                  f"run of its own: the two runs' noise adds up)")
            if not args.skip_tail:
                t = bench_tail(args, url, work)
                for name, rows in t.items():
                    wall, phase, bound = sorted(rows)[len(rows) // 2]
                    label = "this tree" if name == "tree" else name
                    print(f"    slow tail ({label}): the same suite when 2% of requests take "
                          f"4-8 s: wall {wall:.2f} s; calls phase {phase:.2f} s = "
                          f"{phase / bound:.2f}x its bound {bound:.2f} s (the longest call, or "
                          f"all latencies / {CONCURRENCY}); median of {len(rows)}")
            if "b_wall_s" in r:
                print(f"(b) naive pytest + httpx, sequential: {r['b_wall_s']:.2f} s -> "
                      f"b/a = {r['b_wall_s'] / r['a_wall_s']:.1f}x (target >= {TARGETS['b']}x)")
            o = bench_overhead(url, args.overhead_calls)
            print(f"(c) CPU per call: ModelClient.call {o['plugin_call_ms']:.3f} ms + "
                  f"record/Reply {o['reply_record_ms']:.3f} ms vs raw httpx post+json "
                  f"{o['raw_httpx_ms']:.3f} ms (medians): {o['c_overhead_ms']:.3f} ms overhead "
                  f"(median of per-round differences; target < {TARGETS['c']} ms)")
            print(f"    the plugin's own work (against a bare POST + JSON parse on the same "
                  f"asyncio transport, {o['raw_fast_ms']:.3f} ms): {o['c_own_ms']:.3f} ms per call")
            if not args.skip_memory:
                m = bench_memory(url, args.memory_calls, work)
                print(f"(d) peak RSS for {m['d_calls']} calls through pytest + plugin: "
                      f"{m['d_peak_rss_mb']:.0f} MB (target < {TARGETS['d']:.0f} MB; "
                      f"run took {m['d_wall_s']:.1f} s)")
    finally:
        sim.terminate()
        sim.wait(10)


if __name__ == "__main__":
    main()
