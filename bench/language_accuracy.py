"""Accuracy of ``detect_language`` on the labelled set ``tests/data/language_set.jsonl``.

Usage::

    python bench/language_accuracy.py [PATH] [--errors]

Prints accuracy overall, per label and per kind (en, zh-hans, zh-hant, mixed, code-zh, ja,
other), the number of Japanese texts read as Chinese (must be 0), and with ``--errors`` every
misclassified text. Exit status 1 when accuracy < 98% or any Japanese text reads as Chinese.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pytest_modelrollout.language import detect_language  # noqa: E402

DEFAULT = ROOT / "tests" / "data" / "language_set.jsonl"
TARGET = 0.98


def evaluate(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    by_label: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors: list[tuple[str, str, str]] = []
    ja_as_zh = 0
    start = time.perf_counter()
    for row in rows:
        got = detect_language(row["text"])
        ok = got == row["label"]
        for table, key in ((by_label, row["label"]), (by_kind, row.get("kind", row["label"]))):
            table[key][0] += ok
            table[key][1] += 1
        if not ok:
            errors.append((row["label"], got, row["text"]))
        if row["label"] == "ja" and got == "zh":
            ja_as_zh += 1
    elapsed = time.perf_counter() - start
    correct = sum(v[0] for v in by_label.values())
    return {
        "n": len(rows),
        "accuracy": correct / len(rows) if rows else 0.0,
        "by_label": {k: v[0] / v[1] for k, v in sorted(by_label.items())},
        "by_kind": {k: v[0] / v[1] for k, v in sorted(by_kind.items())},
        "counts_by_label": {k: v[1] for k, v in sorted(by_label.items())},
        "counts_by_kind": {k: v[1] for k, v in sorted(by_kind.items())},
        "ja_as_zh": ja_as_zh,
        "errors": errors,
        "seconds": elapsed,
    }


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    path = Path(args[0]) if args else DEFAULT
    res = evaluate(path)
    print(f"language accuracy: {res['accuracy']:.1%} on {res['n']} texts ({res['seconds']:.2f} s)")
    print("per label:")
    for k, acc in res["by_label"].items():
        print(f"  {k:8} {acc:7.1%}  (n={res['counts_by_label'][k]})")
    print("per kind:")
    for k, acc in res["by_kind"].items():
        print(f"  {k:8} {acc:7.1%}  (n={res['counts_by_kind'][k]})")
    print(f"Japanese read as Chinese: {res['ja_as_zh']}")
    if "--errors" in argv:
        for label, got, text in res["errors"]:
            print(f"  expected {label}, got {got}: {text!r}")
    return 0 if res["accuracy"] >= TARGET and res["ja_as_zh"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
