"""Benchmark: a suite whose candidate's provider has a quota the config does not state.

Usage::

    python bench/rate_limits.py [--cases 200] [--rpm 600] [--xdist 2] [--base REV]

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
        "failed": sum(c["status"] != "ok" for c in calls),
        "calls": len(calls),
        "retried": sum(max(0, int(c.get("attempts") or 1) - 1) for c in calls),
        "p95": data["workflows"]["support"]["candidate"]["latency_p95_ms"],
        "verdict": data["verdict"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--xdist", type=int, default=2)
    ap.add_argument("--base", default="")
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
            for headers in (1, 0):
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
            for n in (0, args.xdist):
                xargs = ["-n", str(n)] if n else []
                rows.append(("this tree", f"-n {n}, rpm = {int(args.rpm * 0.95)}",
                             run(proj, env, *xargs)))
    finally:
        sim.terminate()
        sim.wait(10)
    least = args.cases / (args.rpm / 60.0)
    print(f"{args.cases} cases, the candidate's quota {args.rpm} requests a minute: at best "
          f"{least:.1f} s for its calls")
    for label, what, r in rows:
        print(f"  {label:>12} | {what:<22} | {r['wall']:6.1f} s | {r['failed']:3d} of "
              f"{r['calls']} failed | {r['retried']:3d} 429s retried | p95 {r['p95']:8.1f} ms | "
              f"{r['verdict']}")


if __name__ == "__main__":
    main()
