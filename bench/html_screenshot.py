"""Render the HTML report for a realistic summary and, when Chromium is installed, screenshot it.

    python bench/html_screenshot.py [--out-dir DIR]

Prints the HTML path and the PNG path. The summary is hand-made (matching docs/DESIGN.md, "The
summary"); it goes through ``summary.build_summary`` instead when ``--from-records`` is given
and that module is available.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pytest_modelrollout.report.html import write_html

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def _latencies(rng: random.Random, n: int, median: float, spread: float) -> list[float]:
    return [round(rng.lognormvariate(0, spread) * median, 1) for _ in range(n)]


def _metrics(
    requests: int,
    ok: int,
    errors: int,
    timeouts: int,
    fallbacks: int,
    lat: list[float],
    tin: int,
    tout: int,
    price_in: float | None,
    price_out: float | None,
    checks: dict[str, float],
    validation: float,
) -> dict[str, Any]:
    srt = sorted(lat)

    def pct(q: float) -> float:
        return round(srt[min(len(srt) - 1, int(q * len(srt)))], 1)

    cost = None
    if price_in is not None and price_out is not None:
        cost = round((tin * price_in + tout * price_out) / 1e6, 6)
    return {
        "requests": requests,
        "success_rate": ok / requests,
        "error_rate": errors / requests,
        "timeout_rate": timeouts / requests,
        "fallback_rate": fallbacks / requests,
        "latency_p50_ms": pct(0.5),
        "latency_p95_ms": pct(0.95),
        "input_tokens": tin,
        "output_tokens": tout,
        "cost_usd": cost,
        "cost_per_success_usd": None if cost is None else round(cost / max(ok, 1), 8),
        "validation_pass_rate": validation,
        "check_pass_rates": checks,
        "replayed": 0,
        "shadow": 0,
    }


def realistic_summary(seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    s_lat = _latencies(rng, 120, 820, 0.35)
    c_lat = _latencies(rng, 120, 1150, 0.45)
    zs_lat = _latencies(rng, 60, 640, 0.3)
    zc_lat = _latencies(rng, 60, 590, 0.28)
    json_wf: dict[str, Any] = {
        "verdict": "BLOCKED",
        "stable_model": "gpt-4o-mini",
        "candidate_model": "deepseek-v3",
        "reasons": [
            {
                "gate": "p95_latency:+25%",
                "status": "breach",
                "message": "p95 latency 1,512 ms -> 2,410 ms (+59%, 95% CI +31%..+92%) > +25%",
                "stable": 1512.0,
                "candidate": 2410.0,
                "change": 0.59,
                "interval": [0.31, 0.92],
                "threshold": 0.25,
            },
            {
                "gate": "check.json:-2pp",
                "status": "breach",
                "message": "check json pass rate 99.2% -> 93.3% (-5.9pp, 95% CI -10.4pp..-2.2pp) "
                "beyond -2pp; 8 regressions, 1 improvement (McNemar p=0.02)",
                "stable": 0.992,
                "candidate": 0.933,
                "change": -0.059,
                "interval": [-0.104, -0.022],
                "threshold": -0.02,
            },
        ],
        "stable": _metrics(
            120,
            119,
            1,
            0,
            0,
            s_lat,
            48_210,
            21_400,
            0.15,
            0.60,
            {"json": 0.992, "language": 1.0, "length": 0.975, "latency": 0.958},
            0.98,
        ),
        "candidate": _metrics(
            120,
            117,
            1,
            2,
            1,
            c_lat,
            47_900,
            25_310,
            0.27,
            1.10,
            {"json": 0.933, "language": 1.0, "length": 0.95, "latency": 0.85},
            0.93,
        ),
        "checks": {
            "json": {
                "stable_pass_rate": 0.992,
                "candidate_pass_rate": 0.933,
                "regressions": 8,
                "improvements": 1,
                "pairs": 120,
            },
            "language": {
                "stable_pass_rate": 1.0,
                "candidate_pass_rate": 1.0,
                "regressions": 0,
                "improvements": 0,
                "pairs": 120,
            },
            "length": {
                "stable_pass_rate": 0.975,
                "candidate_pass_rate": 0.95,
                "regressions": 4,
                "improvements": 1,
                "pairs": 120,
            },
            "latency": {
                "stable_pass_rate": 0.958,
                "candidate_pass_rate": 0.85,
                "regressions": 14,
                "improvements": 1,
                "pairs": 120,
            },
        },
        "tolerated": {"regressions": 0, "why": ""},
    }
    zh_wf: dict[str, Any] = {
        "verdict": "READY",
        "stable_model": "gpt-4o-mini",
        "candidate_model": "qwen:qwen-plus",
        "reasons": [],
        "stable": _metrics(
            60,
            60,
            0,
            0,
            0,
            zs_lat,
            18_020,
            9_900,
            0.15,
            0.60,
            {"language": 0.983, "语气": 1.0},
            0.99,
        ),
        "candidate": _metrics(
            60,
            60,
            0,
            0,
            0,
            zc_lat,
            17_950,
            9_200,
            0.11,
            0.28,
            {"language": 0.967, "语气": 1.0},
            0.98,
        ),
        "checks": {
            "language": {
                "stable_pass_rate": 0.983,
                "candidate_pass_rate": 0.967,
                "regressions": 2,
                "improvements": 1,
                "pairs": 60,
            },
            "语气": {
                "stable_pass_rate": 1.0,
                "candidate_pass_rate": 1.0,
                "regressions": 0,
                "improvements": 0,
                "pairs": 60,
            },
        },
        "tolerated": {
            "regressions": 2,
            "why": "2 of 60 pairs regressed and 1 improved: "
            "McNemar p=0.56, within what two equivalent models show by chance",
        },
    }
    zh_wf["candidate"]["replayed"] = 0
    zh_wf["stable"]["shadow"] = 60
    return {
        "schema_version": 1,
        "verdict": "BLOCKED",
        "stable": "gpt-4o-mini",
        "candidate": "deepseek-v3",
        "complete": True,
        "started_at": "2026-11-25T10:00:00+00:00",
        "duration_s": 84.2,
        "plugin_version": "0.1.0",
        "gates": [
            {
                "metric": "p95_latency",
                "op": "+",
                "threshold": 0.25,
                "expr": "p95_latency:+25%",
                "source": "default",
            },
            {
                "metric": "check.json",
                "op": "-pp",
                "threshold": 0.02,
                "expr": "check.json:-2pp",
                "source": "config",
            },
        ],
        "decision": "standard",
        "confidence": 0.95,
        "workflows": {"json_extraction": json_wf, "客服对话": zh_wf},
        "workers": {"crashed": []},
        "samples": {
            "json_extraction": {"stable": s_lat, "candidate": c_lat},
            "客服对话": {"stable": zs_lat, "candidate": zc_lat},
        },
    }


def records_summary(seed: int = 7) -> dict[str, Any]:
    """A summary built by ``summary.build_summary`` from synthetic records."""
    from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet, Role
    from pytest_modelrollout.gates import parse_gate
    from pytest_modelrollout.summary import build_summary

    rng = random.Random(seed)
    rs = RecordSet()
    plans: list[tuple[str, str, str, float, float, dict[str, float]]] = [
        ("json_extraction", "sim:stable", "sim:slow", 800, 1.6, {"json": 0.9, "language": 1.0}),
        ("客服对话", "sim:stable", "sim:good", 600, 0.95, {"language": 0.97, "语气": 1.0}),
    ]
    for wf, s_ref, c_ref, median, slow, cand_checks in plans:
        for i in range(80):
            pair = f"test_{wf}[{i}]#0"
            roles: tuple[tuple[Role, str, float], ...] = (
                ("stable", s_ref, 1.0),
                ("candidate", c_ref, slow),
            )
            for role, ref, factor in roles:
                call_id = f"{pair}:{role}"
                status = "ok" if rng.random() > (0.01 if role == "stable" else 0.03) else "error"
                rs.calls.append(
                    CallRecord(
                        call_id=call_id,
                        pair_id=pair,
                        test_id=f"test_{wf}[{i}]",
                        workflow=wf,
                        role=role,
                        model=ref,
                        status=status,  # type: ignore[arg-type]
                        latency_ms=round(rng.lognormvariate(0, 0.35) * median * factor, 1),
                        input_tokens=rng.randint(200, 400),
                        output_tokens=rng.randint(80, 200),
                        cost_usd=rng.uniform(1e-5, 5e-5),
                    )
                )
                for check, p_cand in cand_checks.items():
                    p_pass = 0.98 if role == "stable" else p_cand
                    rs.checks.append(
                        CheckRecord(
                            call_id=call_id,
                            pair_id=pair,
                            test_id=f"test_{wf}[{i}]",
                            workflow=wf,
                            role=role,
                            model=ref,
                            check=check,
                            passed=status == "ok" and rng.random() < p_pass,
                        )
                    )
    gates = [parse_gate("p95_latency:+25%", "default"), parse_gate("check.json:-2pp", "config")]
    return dict(
        build_summary(
            rs.sorted(),
            stable="sim:stable",
            candidate="sim:good",
            workflow_models={w: (s, c) for w, s, c, *_ in plans},
            gates_by_workflow={"*": gates},
            started_at="2026-11-25T10:00:00+00:00",
            duration_s=42.0,
            plugin_version="0.1.0",
        )
    )


def screenshot(html_path: Path, png_path: Path, *, size: str = "1400,2400") -> Path | None:
    chromium = next((c for c in CHROMIUM_CANDIDATES if Path(c).exists()), None)
    if chromium is None:
        chromium = shutil.which("chromium")
    if chromium is None:
        return None
    with tempfile.TemporaryDirectory(prefix="modelrollout-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--virtual-time-budget=5000",
                "--hide-scrollbars",
                f"--screenshot={png_path}",
                html_path.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--size", default="1400,2400")
    parser.add_argument("--from-records", action="store_true", help="use summary.build_summary")
    args = parser.parse_args(argv)
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="modelrollout-html-"))
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / "report.html"
    write_html(html_path, records_summary() if args.from_records else realistic_summary())
    print(f"html: {html_path} ({html_path.stat().st_size / 1e6:.1f} MB)")
    png = screenshot(html_path, out / "report.png", size=args.size)
    if png is None:
        print("chromium not found: no screenshot", file=sys.stderr)
    else:
        print(f"screenshot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
