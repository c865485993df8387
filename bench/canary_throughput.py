"""Throughput and memory of ``modelrollout gate`` on a large canary log.

Generates a JSONL log (default 200 MB: ~95% stable, ~5% canary traffic over three workflows,
one day of timestamps) in a temporary directory, runs ``modelrollout gate`` on it in a child
process and prints lines/s, MB/s and the child's peak RSS (``resource.getrusage``), next to the
peak RSS of a child that only imports the package (the baseline).

    python bench/canary_throughput.py              # 200 MB
    python bench/canary_throughput.py --mb 1000 --window 1h --gz
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKFLOWS = ("support_chat", "json_extraction", "tool_calls")
STABLE, CANDIDATE = "gpt-4o-mini", "deepseek-v3"


def generate(path: Path, target_bytes: int, seed: int = 7) -> tuple[int, int]:
    """Write about ``target_bytes`` of log; return (lines, bytes)."""
    rng = random.Random(seed)
    t0 = 1795600800  # 2026-11-25T10:00:00Z
    lines = written = 0
    buf: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        while written < target_bytes:
            canary = rng.random() < 0.05
            model = CANDIDATE if canary else STABLE
            status = "ok" if rng.random() > 0.01 else rng.choice(("error", "timeout"))
            obj = {
                "ts": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + (lines * 86400) // 1_000_000)
                ),
                "workflow": rng.choice(WORKFLOWS),
                "model": model,
                "latency_ms": round(rng.lognormvariate(6.6, 0.35) * (1.05 if canary else 1.0), 2),
                "status": status,
                "input_tokens": rng.randrange(100, 2000),
                "output_tokens": rng.randrange(20, 600),
                "cost_usd": round(rng.uniform(1e-5, 1e-3), 7),
                "fallback": rng.random() < 0.002,
                "checks": {"json": rng.random() > 0.02, "language": rng.random() > 0.01},
            }
            text = json.dumps(obj, separators=(",", ":")) + "\n"
            buf.append(text)
            written += len(text)
            lines += 1
            if len(buf) >= 10_000:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))
    return lines, written


def run_child(argv: list[str]) -> tuple[float, float, float, int]:
    """Run a child; (wall seconds, its CPU seconds, its peak RSS in MB, exit code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest of any child so far: run the biggest one last
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout + proc.stderr)
    return wall, cpu, after.ru_maxrss / scale, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="log size in MB (default 200)")
    ap.add_argument("--window", default=None, help="also pass --window (e.g. 1h)")
    ap.add_argument("--gz", action="store_true", help="gzip the log first")
    ap.add_argument(
        "--keep", metavar="DIR", help="write the log here and keep it (reused by the next run)"
    )
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="modelrollout-bench-")
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "canary.jsonl"
    meta = work / "canary.meta.json"
    if args.keep and meta.exists() and json.loads(meta.read_text())["mb"] == args.mb:
        lines, size = json.loads(meta.read_text())["lines"], log.stat().st_size
        print(f"reusing {log}: {lines:,} lines, {size / 1e6:.1f} MB")
    else:
        t = time.perf_counter()
        lines, size = generate(log, int(args.mb * 1e6))
        meta.write_text(json.dumps({"mb": args.mb, "lines": lines}))
        print(f"generated {lines:,} lines, {size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s")
    if args.gz:
        gz = log.with_suffix(".jsonl.gz")
        subprocess.run(["gzip", "-1", "-k", "-f", str(log)], check=True)
        log = gz
        print(f"gzipped to {log.stat().st_size / 1e6:.1f} MB")

    exe = [sys.executable, "-m", "pytest_modelrollout"]
    # the baseline: a child that imports everything the gate imports, and reads nothing
    base_wall, _, base_rss, _ = run_child(
        [
            sys.executable,
            "-c",
            "import pytest_modelrollout.canary, pytest_modelrollout.summary, "
            "pytest_modelrollout.report.html, pytest_modelrollout.config, tabulate",
        ]
    )
    argv = [*exe, "gate", str(log), f"--stable={STABLE}", f"--candidate={CANDIDATE}"]
    argv += ["--report", str(work / "report.json")]
    if args.window:
        argv += ["--window", args.window]
    wall, cpu, rss, code = run_child(argv)
    print(f"gate exit code {code} (0 READY, 1 otherwise): {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(
        f"  wall: {lines / wall:,.0f} lines/s, {size / 1e6 / wall:.1f} MB/s (uncompressed); "
        f"CPU: {lines / cpu:,.0f} lines/s, {size / 1e6 / cpu:.1f} MB/s"
    )
    print(f"  (start-up, imports only: {base_wall:.2f} s wall)")
    print(f"  peak RSS {rss:.0f} MB (baseline: import only {base_rss:.0f} MB)")
    report = json.loads((work / "report.json").read_text(encoding="utf-8"))
    print(f"  verdict {report['verdict']}; per workflow:")
    for name, wf in report["workflows"].items():
        print(
            f"    {name}: {wf['verdict']}, {wf['stable']['requests']:,} stable / "
            f"{wf['candidate']['requests']:,} candidate, p95 {wf['stable']['latency_p95_ms']} -> "
            f"{wf['candidate']['latency_p95_ms']} ms"
        )
    if not args.keep:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
