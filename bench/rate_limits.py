"""Benchmark: a suite whose candidate's provider has a quota the config does not state.

Usage::

    python bench/rate_limits.py [--cases 200] [--rpm 600] [--tpm 160000] [--xdist 2]
                                [--base REV] [--only requests|tokens|cache]
                                [--cache-cases 100] [--itpm 100000]

The 200-case suite of ``bench/throughput.py`` (``rollout.ask(case)``, 2 models at 100 ms),
its candidate ``sim:good?latency_ms=100&jitter=0&rpm_limit=RPM``: the simulator (a standalone
process) answers 429 over RPM requests a minute, a second's worth banked, as a provider keeps a
quota per key and model. Run with ``-n 0`` and ``-n N``, with the quota stated in the 429's
headers (``x-ratelimit-limit-requests``) and without (``limit_headers=0``), and once with
``rpm`` set in the config to 95 % of the quota. For each: the wall time, the candidate's calls
that failed, the 429s (attempts beyond the first), its p95 latency and the verdict; and the
least time the quota allows (the cases / RPM a minute). With ``--base REV`` the same runs with
the plugin as it was at git revision REV (its ``src/`` first on ``PYTHONPATH``), the simulator
being this tree's.

Then the same for a quota in tokens a minute (``tpm_limit=TPM``: the prompt and the answer, as
OpenAI counts them), with longer prompts, half Chinese and half English (about 160 and 200
tokens, answers about 90): stated in the answers' headers (``x-ratelimit-limit-tokens``) and
not stated, each without ``tpm`` in the config and with ``tpm`` at 95 % of the quota; the least
time is the tokens the candidate's calls used / TPM a minute.

Then (``--only cache``, or with the rest) a candidate on the Anthropic wire whose system
prompt (about 1,300 tokens) is cached at a breakpoint (``cache_control`` on its block, as a
team that caches it in production sends it), ``--cache-cases`` cases against ``itpm_limit=ITPM`` input tokens a
minute (``--itpm``, stated in its answers' headers): Anthropic does not count the prompt's reads
from its cache against that limit, so the least time is the cases' calls at concurrency 16; a
client that counts them waits for the whole prompts' tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import export_src, pytest_cmd, start_sim, user_env, write_project


def run(root: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    report = root / "report.json"
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(pytest_cmd("--rollout-report=report.json", *args), cwd=root, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not report.exists():
        raise SystemExit(f"no report ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    data = json.loads(report.read_text(encoding="utf-8"))
    calls = [c for c in data["records"]["calls"] if c["role"] == "candidate"]
    return {
        "wall": wall,
        "tokens": sum((c.get("input_tokens") or 0) + (c.get("output_tokens") or 0) for c in calls),
        "input_tokens": sum(c.get("input_tokens") or 0 for c in calls),
        "failed": sum(c["status"] != "ok" for c in calls),
        "calls": len(calls),
        "retried": sum(max(0, int(c.get("attempts") or 1) - 1) for c in calls),
        "p95": data["workflows"]["support"]["candidate"]["latency_p95_ms"],
        "verdict": data["verdict"],
    }


ZH = ("我们的退货政策规定，商品在签收后三十天内可以申请退款，但需要保持包装完好并附上购买凭证。"
      "如果商品存在质量问题，我们会承担来回运费。")
EN = ("Our return policy says that items can be refunded within thirty days of delivery, as long "
      "as the packaging is intact and the receipt is included. If the item is defective we pay "
      "the shipping both ways. ")


def write_tokens_project(root: Path, n: int, stable: str, candidate: str, tpm: int) -> None:
    write_project(root, n, stable, "x")
    with (root / "cases.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            prompt = (f"{ZH * 3}请问订单 B-{20000 + i} 可以退款吗？" if i % 2
                      else f"{EN * 3}Can order A-{10000 + i} be refunded?")
            f.write(json.dumps({"id": f"c{i:05d}", "prompt": prompt}, ensure_ascii=False) + "\n")
    (root / "pyproject.toml").write_text(
        f'[tool.modelrollout]\nstable = "sim:{stable}"\ncandidate = "cand"\nconcurrency = 16\n\n'
        f'[tool.modelrollout.models.cand]\nprovider = "sim"\nmodel = "{candidate}"\n'
        + (f"tpm = {tpm}\n" if tpm else ""), encoding="utf-8")


def tokens_rows(work: Path, args: argparse.Namespace, trees: dict[str, dict[str, str]],
                stable: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for headers in (1, 0):
        for tpm in (0, int(args.tpm * 0.95)):
            proj = work / f"t{headers}-{tpm}"
            quota = f"good?latency_ms=100&jitter=0&tpm_limit={args.tpm}&limit_headers={headers}"
            write_tokens_project(proj, args.cases, stable, quota, tpm)
            for label, tree_env in trees.items():
                for n in (0, args.xdist):
                    xargs = ["-n", str(n)] if n else []
                    said = "stated" if headers else "not stated"
                    rows.append((label, f"-n {n}, {said}, " + (f"tpm = {tpm}" if tpm else
                                                                "no tpm"),
                                 run(proj, tree_env, *xargs)))
    return rows


CACHED_SUITE = """
import pytest
from pytest_modelrollout import cases

POLICY = {policy!r}
SYSTEM = {{"role": "system", "content": [
    {{"type": "text", "text": POLICY, "cache_control": {{"type": "ephemeral"}}}}]}}

@pytest.mark.workflow("support")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_support(rollout, case):
    pair = rollout.ask([SYSTEM, {{"role": "user", "content": case.prompt}}])
    pair.expect_language("same_as_prompt")
"""


def cache_rows(work: Path, args: argparse.Namespace, trees: dict[str, dict[str, str]],
               stable: str) -> list[tuple[str, str, dict[str, Any]]]:
    proj = work / "cache"
    write_project(proj, args.cache_cases, stable, "x",
                  body=CACHED_SUITE.format(policy=(ZH + EN) * 12))
    quota = (f"good?latency_ms=100.0&jitter=0.0&itpm_limit={args.itpm}&otpm_limit=10000000"
             "&limit_headers=1")
    (proj / "pyproject.toml").write_text(
        f'[tool.modelrollout]\nstable = "sim:{stable}"\ncandidate = "cand"\nconcurrency = 16\n\n'
        f'[tool.modelrollout.models.cand]\nprovider = "sim-anthropic"\nmodel = "{quota}"\n',
        encoding="utf-8")
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for label, tree_env in trees.items():
        for n in (0, args.xdist):
            xargs = ["-n", str(n)] if n else []
            rows.append((label, f"-n {n}, cached system prompt", run(proj, tree_env, *xargs)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--xdist", type=int, default=2)
    ap.add_argument("--tpm", type=int, default=160_000)
    ap.add_argument("--base", default="")
    ap.add_argument("--only", choices=["requests", "tokens", "cache"], default="")
    ap.add_argument("--cache-cases", type=int, default=100)
    ap.add_argument("--itpm", type=int, default=100_000)
    args = ap.parse_args()
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: nproc={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    sim, url = start_sim()
    try:
        with tempfile.TemporaryDirectory(prefix="mr-ratelimits-") as tmp:
            work = Path(tmp)
            env = user_env(MODELROLLOUT_SIM_URL=url)
            trees = {"this tree": env}
            if args.base:
                src = export_src(args.base, work / "base")
                trees[args.base] = {**env, "PYTHONPATH": str(src)}
            stable = "stable?latency_ms=100&jitter=0"
            quota = f"good?latency_ms=100&jitter=0&rpm_limit={args.rpm}"
            rows: list[tuple[str, str, dict[str, Any]]] = []
            token_rows = ([] if args.only in ("requests", "cache")
                          else tokens_rows(work, args, trees, stable))
            cached_rows = (cache_rows(work, args, trees, stable)
                           if args.only in ("", "cache") else [])
            for headers in (1, 0) if args.only in ("", "requests") else ():
                proj = work / f"h{headers}"
                write_project(proj, args.cases, stable, f"{quota}&limit_headers={headers}")
                for label, tree_env in trees.items():
                    for n in (0, args.xdist):
                        xargs = ["-n", str(n)] if n else []
                        said = "stated" if headers else "not stated"
                        rows.append((label, f"-n {n}, {said}", run(proj, tree_env, *xargs)))
            proj = work / "rpm"
            write_project(proj, args.cases, stable, "x")
            (proj / "pyproject.toml").write_text(
                f'[tool.modelrollout]\nstable = "sim:{stable}"\ncandidate = "cand"\n'
                f'concurrency = 16\n\n[tool.modelrollout.models.cand]\nprovider = "sim"\n'
                f'model = "{quota}"\nrpm = {int(args.rpm * 0.95)}\n', encoding="utf-8")
            for n in (0, args.xdist) if args.only in ("", "requests") else ():
                xargs = ["-n", str(n)] if n else []
                rows.append(("this tree", f"-n {n}, rpm = {int(args.rpm * 0.95)}",
                             run(proj, env, *xargs)))
    finally:
        sim.terminate()
        sim.wait(10)
    if rows:
        least = args.cases / (args.rpm / 60.0)
        print(f"{args.cases} cases, the candidate's quota {args.rpm} requests a minute: at best "
              f"{least:.1f} s for its calls")
        show(rows)
    if token_rows:
        used = max(r["tokens"] for _, _, r in token_rows)
        print(f"{args.cases} cases, the candidate's quota {args.tpm} tokens a minute, its calls "
              f"{used} tokens: at best {used / (args.tpm / 60.0):.1f} s for them")
        show(token_rows)
    if cached_rows:
        whole = max(r["input_tokens"] for _, _, r in cached_rows)
        least = args.cache_cases * 0.1 / 16
        print(f"{args.cache_cases} cases on the Anthropic wire, a cached system prompt, the "
              f"candidate's quota {args.itpm} input tokens a minute (a minute's worth banked); "
              f"its prompts {whole} input tokens in all: at best {least:.1f} s for its calls "
              f"with the cache's reads not counted, "
              f"{max(0.0, whole - 0.95 * args.itpm) / (0.95 * args.itpm / 60.0):.1f} s counted")
        show(cached_rows)


def show(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    for label, what, r in rows:
        print(f"  {label:>12} | {what:<32} | {r['wall']:6.1f} s | {r['failed']:3d} of "
              f"{r['calls']} failed | {r['retried']:3d} 429s retried | p95 {r['p95']:8.1f} ms | "
              f"{r['verdict']}")


if __name__ == "__main__":
    main()
