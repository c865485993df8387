"""The ``modelrollout`` command: ``merge``, ``show``, ``routes``, ``sim`` (and ``gate``).

Every error is one line on stderr and exit code 2 (no traceback; set ``MODELROLLOUT_DEBUG=1``
to see one for an unexpected error). ``merge`` exits like the plugin: 0 when the merged verdict
is READY, 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn

from pytest_modelrollout._exceptions import ModelRolloutError
from pytest_modelrollout._records import CallRecord, CheckRecord, RecordSet

__all__ = ["CliError", "main", "next_share", "parse_plan", "routes_from_report", "routes_to_toml"]

PROG = "modelrollout"
DEFAULT_PLAN: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0)


class CliError(ModelRolloutError):
    """A usage or input error of the command; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(message)


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


# --------------------------------------------------------------------------- show


def _cmd_show(args: argparse.Namespace) -> int:
    from pytest_modelrollout.report.jsonreport import load_report

    report = load_report(args.report)
    if args.markdown:
        from pytest_modelrollout.report.markdown import render_markdown

        sys.stdout.write(render_markdown(report))
    else:
        from pytest_modelrollout.report.terminal import render_terminal

        for line in render_terminal(report, verbose=args.verbose):
            _out(line)
    return 0


# --------------------------------------------------------------------------- merge


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _records_of(path: str, report: Mapping[str, Any]) -> RecordSet:
    raw = report.get("records")
    if not isinstance(raw, Mapping):
        raise CliError(f"{path}: the report has no records (written without them): cannot merge")
    try:
        return RecordSet(
            calls=[CallRecord.from_dict(dict(c)) for c in raw.get("calls", [])],
            checks=[CheckRecord.from_dict(dict(c)) for c in raw.get("checks", [])],
        )
    except (TypeError, ValueError) as exc:
        raise CliError(f"{path}: malformed records: {exc}") from None


def _config(report: Mapping[str, Any]) -> Mapping[str, Any]:
    cfg = report.get("config")
    if isinstance(cfg, Mapping):
        return cfg
    from pytest_modelrollout.report.jsonreport import config_from_summary

    return config_from_summary(report)


def merge_reports(paths: Sequence[str]) -> tuple[dict[str, Any], RecordSet, dict[str, Any]]:
    """Load shard reports and judge their records together.

    Returns ``(summary, records, config)``.
    """
    from pytest_modelrollout.report.jsonreport import load_report

    reports = [(p, load_report(p)) for p in paths]
    first_path, first = reports[0]
    for path, rep in reports[1:]:
        for role in ("stable", "candidate"):
            if rep.get(role) != first.get(role):
                raise CliError(
                    f"{path}: {role} {rep.get(role)!r} differs from {first_path}'s "
                    f"{first.get(role)!r}: reports of different rollouts cannot be merged"
                )

    records = RecordSet()
    seen: dict[str, str] = {}
    models: dict[str, tuple[str, str]] = {}
    gate_entries: dict[str, list[Mapping[str, Any]]] = {}
    killed: set[str] = set()
    for path, rep in reports:
        shard = _records_of(path, rep)
        for call in shard.calls:
            if call.call_id in seen:
                raise CliError(
                    f"duplicate shard: call {call.call_id!r} is in both {seen[call.call_id]} "
                    f"and {path}"
                )
            seen[call.call_id] = path
        records.extend(shard)
        cfg = _config(rep)
        wf_models = cfg.get("workflow_models")
        if isinstance(wf_models, Mapping):
            for wf, pair in wf_models.items():
                if not isinstance(pair, Mapping):
                    continue
                mp = (str(pair.get("stable") or ""), str(pair.get("candidate") or ""))
                if wf in models and models[wf] != mp:
                    raise CliError(
                        f"{path}: workflow {wf!r} compares {mp[0]} -> {mp[1]}, but an earlier "
                        f"report compares {models[wf][0]} -> {models[wf][1]}"
                    )
                models.setdefault(str(wf), mp)
        by_wf = cfg.get("gates_by_workflow")
        if isinstance(by_wf, Mapping):
            for wf, entries in by_wf.items():
                if isinstance(entries, list):
                    gate_entries.setdefault(str(wf), entries)  # the first report's win
        k = cfg.get("killed")
        if isinstance(k, (list, tuple)):
            killed.update(str(x) for x in k)

    first_cfg = _config(first)
    default_entries: list[Any] = []
    for candidate_entries in (first_cfg.get("default_gates"), first.get("gates")):
        if isinstance(candidate_entries, list):
            default_entries = candidate_entries
            break
    # Workflows only present in the records (e.g. a report without config): models from calls.
    for call in records.calls:
        a, b = models.get(call.workflow, ("", ""))
        if call.role == "stable" and not a:
            a = call.model
        if call.role == "candidate" and not b:
            b = call.model
        models[call.workflow] = (a, b)

    from pytest_modelrollout.gates import Gate, parse_gate

    def gate_of(e: Any) -> Gate:
        if isinstance(e, str):
            return parse_gate(e, "config")
        expr, source = str(e["expr"]), str(e.get("source") or "config")
        if all(k in e for k in ("metric", "op", "threshold")):
            floor = e.get("floor")
            try:
                return Gate(
                    metric=str(e["metric"]),
                    op=str(e["op"]),
                    threshold=float(e["threshold"]),
                    expr=expr,
                    source=source,
                    floor=None if floor is None else float(floor),
                )
            except (TypeError, ValueError):
                pass
        return parse_gate(expr, source)

    def gates_for(entries: Sequence[Any]) -> list[Gate]:
        return [
            gate_of(e)
            for e in entries
            if isinstance(e, str) or (isinstance(e, Mapping) and e.get("expr"))
        ]

    gates_by_workflow = {
        wf: gates_for(gate_entries.get(wf, default_entries)) for wf in sorted(models)
    }

    starts = [(_parse_time(r.get("started_at")), r.get("duration_s")) for _, r in reports]
    known = [(s, d) for s, d in starts if s is not None]
    started_at = first.get("started_at") or datetime.now(timezone.utc).isoformat()
    duration = 0.0
    if known:
        t0 = min(s for s, _ in known)
        t1 = max(
            s.timestamp() + (float(d) if isinstance(d, (int, float)) else 0.0) for s, d in known
        )
        started_at = t0.isoformat()
        duration = round(max(0.0, t1 - t0.timestamp()), 3)

    confidence = first_cfg.get("confidence", first.get("confidence"))
    decision = first_cfg.get("decision", first.get("decision"))
    complete = all(r.get("complete") is not False for _, r in reports)
    crashed: list[str] = []
    for _, r in reports:
        workers = r.get("workers")
        if isinstance(workers, Mapping) and isinstance(workers.get("crashed"), list):
            crashed.extend(str(w) for w in workers["crashed"])

    from pytest_modelrollout._version import __version__
    from pytest_modelrollout.summary import build_summary

    kwargs: dict[str, Any] = {}
    if confidence is not None:
        kwargs["confidence"] = confidence
    if decision is not None:
        kwargs["decision"] = decision
    merged_records = records.sorted()
    summary = build_summary(
        merged_records,
        stable=str(first.get("stable") or ""),
        candidate=str(first.get("candidate") or ""),
        workflow_models=models,
        gates_by_workflow=gates_by_workflow,
        killed=killed,
        complete=complete,
        started_at=started_at,
        duration_s=duration,
        plugin_version=__version__,
        extra={"workers": {"crashed": crashed}, "merged_from": [str(p) for p in paths]},
        **kwargs,
    )
    config: dict[str, Any] = dict(first_cfg)
    config.update(
        {
            "default_gates": default_entries,
            "gates_by_workflow": {
                wf: list(gate_entries.get(wf, default_entries)) for wf in sorted(models)
            },
            "workflow_models": {
                wf: {"stable": m[0], "candidate": m[1]} for wf, m in sorted(models.items())
            },
            "killed": sorted(killed),
        }
    )
    return summary, merged_records, config


def _cmd_merge(args: argparse.Namespace) -> int:
    from pytest_modelrollout.report.jsonreport import write_json_report
    from pytest_modelrollout.report.terminal import render_terminal

    summary, records, config = merge_reports(args.reports)
    write_json_report(args.output, summary, records, config=config)
    for line in render_terminal(summary, verbose=args.verbose):
        _out(line)
    _out(f"merged {len(args.reports)} reports into {args.output}")
    return 0 if summary.get("verdict") == "READY" else 1


# --------------------------------------------------------------------------- routes


def parse_plan(text: str) -> tuple[float, ...]:
    """``"1,5,25,100"`` (percent) -> ``(0.01, 0.05, 0.25, 1.0)``."""
    shares: list[float] = []
    for part in text.split(","):
        item = part.strip().rstrip("%").strip()
        if not item:
            continue
        try:
            pct = float(item)
        except ValueError:
            raise CliError(f"--plan: {part.strip()!r} is not a percentage") from None
        if not math.isfinite(pct) or not 0 < pct <= 100:
            raise CliError(f"--plan: {part.strip()!r} is not a percentage in (0, 100]")
        shares.append(round(pct / 100, 6))
    if not shares:
        raise CliError("--plan: empty rollout plan")
    if any(b <= a for a, b in itertools.pairwise(shares)):
        raise CliError(f"--plan: shares must increase ({text})")
    return tuple(shares)


def next_share(current: float, plan: Sequence[float]) -> float:
    """The next step of the plan after ``current`` (the last step once reached)."""
    for share in plan:
        if share > current + 1e-9:
            return share
    return plan[-1]


def _current_share(report: Mapping[str, Any], workflow: str) -> float:
    cfg = report.get("config")
    value: Any = cfg.get("traffic_share") if isinstance(cfg, Mapping) else None
    if isinstance(value, Mapping):
        value = value.get(workflow)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    v = float(value)
    if v > 1:  # given in percent
        v /= 100
    return min(max(v, 0.0), 1.0)


def routes_from_report(
    report: Mapping[str, Any],
    *,
    plan: Sequence[float] = DEFAULT_PLAN,
    killed: set[str] | None = None,
) -> dict[str, Any]:
    """Routes per workflow (contract section 9): the candidate, at the next share of the plan,
    only where the workflow is READY; the stable elsewhere; killed models never."""
    dead = set(killed or ())
    cfg = report.get("config")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("killed"), (list, tuple)):
        dead.update(str(k) for k in cfg["killed"])
    if isinstance(report.get("killed"), (list, tuple)):
        dead.update(str(k) for k in report["killed"])
    out: dict[str, Any] = {}
    workflows = report.get("workflows")
    if not isinstance(workflows, Mapping):
        return {"workflows": out}
    for name, wf in sorted(workflows.items(), key=lambda kv: str(kv[0])):
        if not isinstance(wf, Mapping):
            continue
        verdict = str(wf.get("verdict") or "INCONCLUSIVE")
        stable = str(wf.get("stable_model") or report.get("stable") or "")
        candidate = str(wf.get("candidate_model") or report.get("candidate") or "")
        entry: dict[str, Any]
        candidate_ok = verdict == "READY" and candidate and candidate not in dead
        if (not stable or stable in dead) and candidate_ok and candidate != stable:
            # the stable is switched off but the candidate is READY: it takes all the traffic
            entry = {
                "model": candidate,
                "traffic": {candidate: 1.0},
                "verdict": verdict,
                "note": f"stable model {stable or '?'} is killed: the READY candidate takes all traffic",
            }
        elif not stable or stable in dead:
            why = f"stable model {stable} is killed" if stable else "no stable model known"
            entry = {"verdict": verdict, "note": f"{why}: no model routed for this workflow"}
        elif verdict == "READY" and candidate and candidate not in dead and candidate != stable:
            share = next_share(_current_share(report, str(name)), plan)
            traffic: dict[str, float] = {candidate: round(share, 6)}
            rest = round(1.0 - share, 6)
            if rest > 0:
                traffic[stable] = rest
            entry = {"model": candidate, "traffic": traffic, "verdict": verdict}
        else:
            entry = {"model": stable, "traffic": {stable: 1.0}, "verdict": verdict}
            if verdict == "READY" and candidate in dead:
                entry["note"] = f"candidate model {candidate} is killed"
        out[str(name)] = entry
    return {"workflows": out}


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(s: str) -> str:
    return s if s and all(c.isascii() and (c.isalnum() or c in "_-") for c in s) else _toml_str(s)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CliError(f"cannot write {v} to TOML")
        return repr(v)
    return _toml_str(str(v))


def routes_to_toml(routes: Mapping[str, Any]) -> str:
    """The fixed routes structure as TOML (keys quoted unless bare-safe: any name works)."""
    lines = ["# written by `modelrollout routes`", ""]
    workflows = routes.get("workflows", {})
    if not workflows:
        lines.append("[workflows]")
    for name, entry in workflows.items():
        lines.append(f"[workflows.{_toml_key(str(name))}]")
        for key, value in entry.items():
            if key != "traffic" and value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        traffic = entry.get("traffic")
        if isinstance(traffic, Mapping):
            lines.append(f"[workflows.{_toml_key(str(name))}.traffic]")
            for ref, share in traffic.items():
                lines.append(f"{_toml_key(str(ref))} = {_toml_value(float(share))}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _report_plan(report: Mapping[str, Any]) -> tuple[float, ...]:
    """The rollout plan the report was made with (config ``traffic_plan``), else the default."""
    cfg = report.get("config")
    raw = cfg.get("traffic_plan") if isinstance(cfg, Mapping) else None
    if isinstance(raw, list) and raw:
        try:
            plan = tuple(float(x) for x in raw)
        except (TypeError, ValueError):
            return DEFAULT_PLAN
        if all(0 < x <= 1 for x in plan) and all(b > a for a, b in itertools.pairwise(plan)):
            return plan
    return DEFAULT_PLAN


def _cmd_routes(args: argparse.Namespace) -> int:
    from pytest_modelrollout.report import _write_atomic
    from pytest_modelrollout.report.jsonreport import load_report

    report = load_report(args.report)
    plan = parse_plan(args.plan) if args.plan is not None else _report_plan(report)
    killed = set(args.kill or ())
    env_killed = os.environ.get("MODELROLLOUT_KILLED", "")
    killed.update(k.strip() for k in env_killed.split(",") if k.strip())
    routes = routes_from_report(report, plan=plan, killed=killed)
    out = str(args.output)
    if out.lower().endswith(".toml"):
        text = routes_to_toml(routes)
    else:
        text = json.dumps(routes, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(out, text)
    for name, entry in routes["workflows"].items():
        if "model" in entry:
            split = ", ".join(f"{ref} {share:.0%}" for ref, share in entry["traffic"].items())
            _out(f"{name}: {entry['model']}  ({split})")
        else:
            _out(f"{name}: no model ({entry.get('note', '')})")
    _out(f"routes written to {out}")
    return 0


# --------------------------------------------------------------------------- sim, gate


def _cmd_sim(args: argparse.Namespace) -> int:
    from pytest_modelrollout.sim import main_serve

    try:
        main_serve(args.port, host=args.host)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from pytest_modelrollout.canary import GateRun, run_gate

    return run_gate(
        GateRun(
            logs=list(args.logs),
            stable=args.stable,
            candidate=args.candidate,
            config=args.config,
            gates=list(args.gate or ()),
            kill=list(args.kill or ()),
            report=args.report,
            markdown=args.markdown,
            html=args.html,
            since=args.since,
            until=args.until,
            window=args.window,
            allow_inconclusive=args.allow_inconclusive,
            verbose=args.verbose,
        )
    )


# --------------------------------------------------------------------------- main


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Rollout readiness reports for pytest-modelrollout.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("merge", help="merge the JSON reports of sharded runs and judge them")
    p.add_argument("reports", nargs="+", metavar="REPORT.json")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("show", help="print the summary of a JSON report")
    p.add_argument("report", metavar="REPORT.json")
    p.add_argument("--markdown", action="store_true", help="print it as Markdown")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("routes", help="write the model routes for the next rollout step")
    p.add_argument("report", metavar="REPORT.json")
    p.add_argument("-o", "--output", required=True, metavar="routes.json|routes.toml")
    p.add_argument(
        "--plan",
        default=None,
        metavar="1,5,25,100",
        help="rollout plan: candidate traffic shares in percent (default 1,5,25,100)",
    )
    p.add_argument(
        "--kill",
        action="append",
        metavar="REF",
        help="a killed model (repeatable; also $MODELROLLOUT_KILLED)",
    )
    p.set_defaults(func=_cmd_routes)

    p = sub.add_parser("sim", help="serve the simulator")
    p.add_argument("--port", type=_port, required=True, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser(
        "gate", help="judge production canary logs (JSONL, .jsonl.gz) with the rollout gates"
    )
    p.add_argument("logs", nargs="+", metavar="LOG.jsonl", help="'-' reads standard input")
    p.add_argument("--stable", metavar="REF", help="stable model (default: the config's)")
    p.add_argument("--candidate", metavar="REF", help="candidate model (default: the config's)")
    p.add_argument("--config", metavar="PATH", help="modelrollout.toml or pyproject.toml")
    p.add_argument("--gate", action="append", metavar="EXPR", help="extra gate (repeatable)")
    p.add_argument(
        "--kill", action="append", metavar="REF", help="a killed model (also $MODELROLLOUT_KILLED)"
    )
    p.add_argument("--report", metavar="PATH", help="write the JSON report")
    p.add_argument("--markdown", metavar="PATH", help="write the Markdown summary")
    p.add_argument("--html", metavar="PATH", help="write the HTML report")
    p.add_argument("--since", metavar="ISO", help="only requests at or after this time")
    p.add_argument("--until", metavar="ISO", help="only requests before this time")
    p.add_argument("--window", metavar="15m|1h|1d", help="also judge each time window")
    p.add_argument("--allow-inconclusive", action="store_true", help="exit 0 on INCONCLUSIVE too")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_gate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
        if extra:
            raise CliError(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "command", None):
            raise CliError("missing command (one of: merge, show, routes, sim, gate)")
        code: int = args.func(args)
        return code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (ModelRolloutError, OSError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        if os.environ.get("MODELROLLOUT_DEBUG"):
            raise
        msg = " ".join(str(exc).split())
        sys.stderr.write(f"{PROG}: error: {type(exc).__name__}: {msg}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
