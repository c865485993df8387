"""Canary gate: judge production traffic logs with the plugin's metrics, gates and verdicts.

``modelrollout gate LOG.jsonl... --stable=REF --candidate=REF`` (contract section 9) reads
per-request logs (JSONL, optionally gzipped), keeps the lines of the two compared models and
builds the same summary as a pytest session (``summary.build_summary``), so the terminal table,
the JSON / Markdown / HTML reports and ``modelrollout routes`` work unchanged.

Bounded memory
--------------
A log is streamed line by line into one :class:`RoleAgg` per workflow and role; no record
objects are kept. What a role keeps:

* counters (requests, outcomes, token and cost totals, check passes per check name);
* latencies exactly, as an ``array('d')`` (8 bytes each), up to :data:`RAW_LATENCIES` per
  workflow and role (3 MB); beyond that as a histogram ``{value: count}``, exact while there are
  at most :data:`LATENCY_BINS` distinct values, then in 0.1 ms bins (the precision the reports
  show), then 1 ms, 10 ms ... bins: so at most ~3 MB per workflow and role whatever the number
  of lines. The quantiles, their order-statistic intervals and the p95 bootstrap only ever
  read order statistics, which :class:`SortedSamples` serves from the histogram in
  O(log bins). A test suite's data is therefore judged exactly as by the plugin;
* per request, only what a gate needs as a vector: the cost (8 bytes, an ``array('d')``) and
  the task-success flag (1 byte) for the ``cost_per_success`` / ``cost`` gates (the bootstrap
  resamples them), and the output tokens (8 bytes) only when an ``output_tokens`` gate is
  configured. That is about 9 bytes a line with the default gates (90 MB for 10 million lines;
  twice that with ``--window``, which keeps a second set per window).

Canary traffic is not paired (a request goes to one model), so every line is its own pair and
check comparisons use independent proportions (Newcombe intervals), never McNemar.
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
import os
import re
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TextIO, cast, overload

from ._exceptions import ModelRolloutError
from ._records import ROLES, CallRecord, CheckRecord, RecordSet, Role, Status
from .metrics import CheckComparison, RoleData, WorkflowData

__all__ = [
    "LATENCY_BINS",
    "MALFORMED_SHOWN",
    "RAW_LATENCIES",
    "SAMPLE_CAP",
    "CanaryError",
    "GateRun",
    "Latencies",
    "LatencyHistogram",
    "LogLine",
    "RoleAgg",
    "SortedSamples",
    "WorkflowAgg",
    "line_records",
    "parse_duration",
    "parse_instant",
    "parse_line",
    "run_gate",
    "spread",
]

RAW_LATENCIES = 393_216  # latencies per workflow/role kept as an array('d') (3 MB) ...
LATENCY_BINS = 32_768  # ... then in a histogram of at most this many values (~3 MB)
SAMPLE_CAP = 5_000  # latency samples per workflow/role written for the HTML chart
MALFORMED_SHOWN = 20  # malformed lines reported one by one; then a count
MAX_WINDOWS = 10_000
_SMALL = 10_000  # below this many requests, per-request vectors are put in a canonical order
_OTHER_MODEL_NAMES = 1_000  # distinct ignored model names counted by name


class CanaryError(ModelRolloutError):
    """A usage or input error of ``modelrollout gate`` (one line)."""


class _Bad(Exception):
    """A malformed log line (the message says why)."""


# --------------------------------------------------------------------------- time


def parse_instant(text: str, what: str = "time") -> float:
    """ISO 8601 (``2026-11-25T10:00:00Z``, a date, an offset) -> epoch seconds (naive = UTC)."""
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise CanaryError(
            f"{what}: {text!r} is not an ISO 8601 time (e.g. 2026-11-25T10:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``15m``, ``1h``, ``1d``, ``30s`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise CanaryError(f"--window: {text!r} is not a duration (e.g. 15m, 1h, 1d)")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    if seconds < 1:
        raise CanaryError(f"--window: {text!r} is shorter than a second")
    return seconds


def _iso(ts: float) -> str:
    spec = "seconds" if ts == int(ts) else "milliseconds"
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.isoformat(timespec=spec).replace("+00:00", "Z")


def _epoch(value: Any) -> float:
    """A log timestamp: ISO 8601 text or epoch seconds (ms / us / ns by magnitude)."""
    if isinstance(value, str):
        s = value.strip()
        if s.isdigit():  # OTLP JSON encodes nanoseconds as a string
            return _epoch(int(s))
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise _Bad(f"ts {value!r} is not an ISO 8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"ts {value!r} is not a time")
    v = float(value)
    if abs(v) >= 1e17:  # nanoseconds
        return v / 1e9
    if abs(v) >= 1e14:  # microseconds
        return v / 1e6
    if abs(v) >= 1e11:  # milliseconds
        return v / 1e3
    return v


# --------------------------------------------------------------------------- one log line

# OpenTelemetry GenAI semantic-convention names accepted besides the contract's own
_MODEL_KEYS = ("model", "gen_ai.request.model", "gen_ai.response.model")
_INPUT_KEYS = ("input_tokens", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_KEYS = ("output_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
_WORKFLOW_KEYS = ("workflow", "modelrollout.workflow")
_TS_KEYS = ("ts", "timestamp", "time", "@timestamp", "startTimeUnixNano", "start_time_unix_nano")
_ID_KEYS = ("id", "request_id", "gen_ai.response.id", "spanId", "span_id")
_STATUSES: tuple[Status, ...] = ("ok", "error", "timeout")


@dataclass(slots=True)
class LogLine:
    """One request of a log, validated (the contract's fields)."""

    workflow: str
    model: str
    status: Status
    latency_ms: float | None
    ts: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    fallback: bool = False
    checks: dict[str, bool] = field(default_factory=dict)
    id: str | None = None


def _otlp_value(v: Any) -> Any:
    """An OTLP JSON ``AnyValue`` (``{"stringValue": ...}``, ``{"intValue": "3"}``) -> Python."""
    if isinstance(v, Mapping) and len(v) == 1:
        ((kind, inner),) = v.items()
        if kind == "intValue":
            try:
                return int(inner)
            except (TypeError, ValueError):
                return inner
        if kind in ("stringValue", "boolValue", "doubleValue"):
            return inner
    return v


def _flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys win; ``attributes`` (a dict, or OTLP's key/value list) fills in the rest."""
    attrs = obj.get("attributes")
    extra: dict[str, Any] = {}
    if isinstance(attrs, Mapping):
        extra = {str(k): _otlp_value(v) for k, v in attrs.items()}
    elif isinstance(attrs, list):
        for item in attrs:
            if isinstance(item, Mapping) and "key" in item:
                extra[str(item["key"])] = _otlp_value(item.get("value"))
    if not extra:
        return obj
    merged = dict(extra)
    merged.update(obj)
    return merged


def _first(obj: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        v = obj.get(k)
        if v is not None:
            return v
    return None


def _count(obj: Mapping[str, Any], keys: Sequence[str], what: str) -> int | None:
    v = _first(obj, keys)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != int(v):
        raise _Bad(f"{what} {v!r} is not a whole number >= 0")
    return int(v)


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _Bad(f"{what} {v!r} is not a number >= 0")
    return float(v)


_ABSENT = object()


def _latency(obj: Mapping[str, Any]) -> Any:
    """The latency in ms (None when given as null), or ``_ABSENT``."""
    for key in ("latency_ms", "duration_ms"):
        if key in obj:
            v = obj[key]
            return None if v is None else _number(v, key)
    v = obj.get("gen_ai.client.operation.duration")  # seconds, per the semantic conventions
    if v is not None:
        return _number(v, "gen_ai.client.operation.duration") * 1000.0
    start = _first(obj, ("startTimeUnixNano", "start_time_unix_nano"))
    end = _first(obj, ("endTimeUnixNano", "end_time_unix_nano"))
    if start is not None and end is not None:
        try:
            ms = (int(end) - int(start)) / 1e6
        except (TypeError, ValueError):
            raise _Bad("span start/end times are not integers") from None
        if ms < 0:
            raise _Bad("span ends before it starts")
        return ms
    return _ABSENT


def _status(obj: Mapping[str, Any]) -> Status:
    err = obj.get("error.type")
    timeout = isinstance(err, str) and "timeout" in err.lower()
    if "status" in obj:
        st = obj["status"]
        if isinstance(st, str):
            if st in _STATUSES:
                return st
            raise _Bad(f"status {st!r} is not ok, error or timeout")
        if isinstance(st, Mapping) and "code" in st:  # an OTLP span status
            code = st["code"]
            if code in (2, "STATUS_CODE_ERROR", "ERROR"):
                return "timeout" if timeout else "error"
            if code in (0, 1, "STATUS_CODE_UNSET", "STATUS_CODE_OK", "UNSET", "OK"):
                return "error" if err is not None else "ok"
        raise _Bad(f"status {st!r} is not ok, error or timeout")
    if err is not None:
        return "timeout" if timeout else "error"
    if any(k.startswith("gen_ai.") for k in obj):  # an OTel span: ok unless error.type is set
        return "ok"
    raise _Bad("missing status")


def parse_line(obj: Any) -> LogLine:
    """Validate one decoded log object; raise ``ValueError`` naming what is wrong."""
    try:
        return _parse(obj)
    except _Bad as exc:
        raise ValueError(str(exc)) from None


_INF = math.inf
_ts_cache: dict[str, float] = {}


def _ts_of(raw: Any) -> float:
    """:func:`_epoch` with a cache: consecutive requests of a log share their timestamps."""
    if type(raw) is str:
        ts = _ts_cache.get(raw)
        if ts is None:
            if len(_ts_cache) > 100_000:
                _ts_cache.clear()
            ts = _ts_cache[raw] = _epoch(raw)
        return ts
    return _epoch(raw)


def _parse(obj: Any) -> LogLine:
    # Fast paths for the contract's own field names and types; the OTel aliases and every
    # error message go through the general helpers.
    if not isinstance(obj, dict):
        raise _Bad(f"not a JSON object ({type(obj).__name__})")
    if "attributes" in obj:
        obj = _flatten(obj)
    get = obj.get
    workflow = get("workflow")
    if type(workflow) is not str or not workflow or workflow[0] == " " or workflow[-1] == " ":
        workflow = _first(obj, _WORKFLOW_KEYS)
        if not isinstance(workflow, str) or not workflow.strip():
            raise _Bad(
                "missing workflow" if workflow is None else f"workflow {workflow!r} is not text"
            )
        workflow = workflow.strip()
    model = get("model")
    if type(model) is not str or not model or model[0] == " " or model[-1] == " ":
        model = _first(obj, _MODEL_KEYS)
        if not isinstance(model, str) or not model.strip():
            raise _Bad("missing model" if model is None else f"model {model!r} is not text")
        model = model.strip()
    st = get("status")
    status: Status = st if st in _STATUSES else _status(obj)
    lat = get("latency_ms")
    latency: float | None
    if (type(lat) is float or type(lat) is int) and 0 <= lat < _INF:
        latency = float(lat)
    else:
        lat = _latency(obj)
        if lat is _ABSENT:
            raise _Bad("missing latency_ms")
        latency = lat
        if latency is None and status == "ok":
            raise _Bad("latency_ms is null on an ok request")
    ts_raw = get("ts")
    if ts_raw is None:
        ts_raw = _first(obj, _TS_KEYS)
    ts = None if ts_raw is None else _ts_of(ts_raw)
    cost = get("cost_usd")
    if cost is not None and not (type(cost) is float and 0 <= cost < _INF):
        cost = _number(cost, "cost_usd")
    n_in = get("input_tokens")
    if not (type(n_in) is int and n_in >= 0):
        n_in = _count(obj, _INPUT_KEYS, "input_tokens")
    n_out = get("output_tokens")
    if not (type(n_out) is int and n_out >= 0):
        n_out = _count(obj, _OUTPUT_KEYS, "output_tokens")
    fb = get("fallback", False)
    if fb is not False and fb is not True:
        if fb is not None:
            raise _Bad(f"fallback {fb!r} is not true/false")
        fb = False
    checks_raw = get("checks")
    checks: dict[str, bool] = {}
    if checks_raw is not None:
        if type(checks_raw) is not dict:
            raise _Bad("checks is not an object of name: true/false")
        for name, passed in checks_raw.items():
            if passed is not True and passed is not False:
                raise _Bad(f"check {name!r}: {passed!r} is not true/false")
        checks = checks_raw
    ident = get("id")
    if ident is None:
        ident = _first(obj, _ID_KEYS)
    return LogLine(
        workflow,
        model,
        status,
        latency,
        ts,
        n_in,
        n_out,
        cost,
        fb,
        checks,
        None if ident is None else str(ident),
    )


def line_records(line: LogLine, role: Role, line_id: str) -> tuple[CallRecord, list[CheckRecord]]:
    """The records of one log line (each line is its own pair: canary traffic is unpaired)."""
    pair_id = line.id or line_id
    call_id = f"{pair_id}:{role}"
    call = CallRecord(
        call_id=call_id,
        pair_id=pair_id,
        test_id=line_id,
        workflow=line.workflow,
        role=role,
        model=line.model,
        status=line.status,
        latency_ms=line.latency_ms,
        input_tokens=line.input_tokens,
        output_tokens=line.output_tokens,
        cost_usd=line.cost_usd,
        fallback=line.fallback,
        source="log",
        ts=line.ts,
    )
    checks = [
        CheckRecord(call_id, pair_id, line_id, line.workflow, role, line.model, name, passed)
        for name, passed in sorted(line.checks.items())
    ]
    return call, checks


# --------------------------------------------------------------------------- aggregation


class SortedSamples(Sequence[float]):
    """A sorted sample served from a histogram: ``xs[i]`` is the i-th smallest value."""

    __slots__ = ("_cum", "_n", "_values")

    def __init__(self, values: Sequence[float], counts: Sequence[int]) -> None:
        self._values = array("d", values)
        self._cum = array("q")
        total = 0
        for c in counts:
            total += c
            self._cum.append(total)
        self._n = total

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...
    def __getitem__(self, i: int | slice) -> float | list[float]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("sample index out of range")
        return self._values[bisect.bisect_right(self._cum, i)]

    def __iter__(self) -> Iterator[float]:
        prev = 0
        for v, c in zip(self._values, self._cum, strict=True):
            for _ in range(c - prev):
                yield v
            prev = c


def spread(xs: Sequence[float], k: int) -> list[float]:
    """At most ``k`` values of a sorted sample: all, or ``k`` evenly spaced order statistics."""
    n = len(xs)
    if n <= k:
        return [float(x) for x in xs]
    if k <= 1:
        return [float(xs[n // 2])]
    return [float(xs[round(j * (n - 1) / (k - 1))]) for j in range(k)]


class Latencies:
    """Latencies of one workflow/role: a plain ``array('d')`` (8 bytes each, exact) while
    there are at most :data:`RAW_LATENCIES`, then a :class:`LatencyHistogram` (bounded)."""

    __slots__ = ("hist", "raw")

    def __init__(self) -> None:
        self.raw: array[float] | None = array("d")
        self.hist: LatencyHistogram | None = None

    def add(self, v: float) -> None:
        raw = self.raw
        if raw is not None:
            raw.append(v)
            if len(raw) > RAW_LATENCIES:
                self.hist = LatencyHistogram()
                for x in raw:
                    self.hist.add(x)
                self.raw = None
        else:
            assert self.hist is not None
            self.hist.add(v)

    def samples(self) -> Sequence[float]:
        """The sorted sample (a list-like sequence)."""
        if self.raw is not None:
            return array("d", sorted(self.raw))
        assert self.hist is not None
        return self.hist.samples()


class LatencyHistogram:
    """Latencies as ``{value: count}``; exact, then binned when too many distinct values."""

    __slots__ = ("counts", "exp")

    def __init__(self) -> None:
        self.counts: dict[float, int] = {}
        self.exp: int | None = None  # None: exact; else bins of 10**exp ms

    def add(self, v: float) -> None:
        if self.exp is not None:
            v = self._bin(v, self.exp)
        counts = self.counts
        counts[v] = counts.get(v, 0) + 1
        if len(counts) > LATENCY_BINS:
            self._coarsen()

    @staticmethod
    def _bin(v: float, exp: int) -> float:
        # k / 10 is the double nearest to the decimal k/10: a 0.1 ms bin holds "812.3" exactly
        if exp < 0:
            scale = int(10 ** (-exp))
            return float(round(v * scale)) / scale
        width = int(10**exp)
        return float(round(v / width) * width)

    def _coarsen(self) -> None:
        while len(self.counts) > LATENCY_BINS:
            self.exp = -1 if self.exp is None else self.exp + 1
            binned: dict[float, int] = {}
            for v, c in self.counts.items():
                b = self._bin(v, self.exp)
                binned[b] = binned.get(b, 0) + c
            self.counts = binned

    def samples(self) -> SortedSamples:
        keys = sorted(self.counts)
        return SortedSamples(keys, [self.counts[k] for k in keys])


class RoleAgg:
    """Everything one role of one workflow needs for the metrics and the gates, compactly."""

    __slots__ = (
        "check_passed",
        "check_total",
        "cost_n",
        "cost_sum",
        "costs",
        "errors",
        "fallbacks",
        "in_n",
        "in_sum",
        "latencies",
        "out_n",
        "out_sum",
        "out_values",
        "requests",
        "successes",
        "task",
        "timeouts",
    )

    def __init__(self, *, keep_costs: bool = True, keep_tokens: bool = False) -> None:
        self.requests = self.successes = self.fallbacks = self.errors = self.timeouts = 0
        self.latencies = Latencies()
        self.in_sum = self.in_n = self.out_sum = self.out_n = self.cost_n = 0
        self.cost_sum = 0.0
        self.costs: array[float] | None = array("d") if keep_costs else None
        self.out_values: array[float] | None = array("d") if keep_tokens else None
        self.task: array[int] = array("b")
        self.check_passed: dict[str, int] = {}
        self.check_total: dict[str, int] = {}

    def add(self, line: LogLine) -> None:
        self.requests += 1
        status = line.status
        if status == "ok":
            if line.fallback:
                self.fallbacks += 1
            else:
                self.successes += 1
        elif status == "timeout":
            self.timeouts += 1
        else:
            self.errors += 1
        if line.latency_ms is not None:
            self.latencies.add(line.latency_ms)
        if line.input_tokens is not None:
            self.in_sum += line.input_tokens
            self.in_n += 1
        if line.output_tokens is not None:
            self.out_sum += line.output_tokens
            self.out_n += 1
            if self.out_values is not None:
                self.out_values.append(float(line.output_tokens))
        cost = line.cost_usd
        if cost is not None:
            self.cost_sum += cost
            self.cost_n += 1
        if self.costs is not None:
            self.costs.append(cost if cost is not None else 0.0)
        ok = status == "ok"
        if line.checks:
            total, passed = self.check_total, self.check_passed
            for name, p in line.checks.items():
                total[name] = total.get(name, 0) + 1
                if p:
                    passed[name] = passed.get(name, 0) + 1
                else:
                    ok = False
        self.task.append(1 if ok else 0)

    def role_data(self) -> RoleData:
        """The metrics module's :class:`RoleData`, with compact sequences instead of lists."""
        costs: Sequence[float] = self.costs if self.costs is not None else ()
        task: Sequence[int] = self.task
        if len(task) <= _SMALL and costs:
            # a canonical order: seeded bootstraps then do not depend on the order of the lines
            pairs = sorted(zip(costs, task, strict=True))
            costs = array("d", (p[0] for p in pairs))
            task = array("b", (p[1] for p in pairs))
        out_values: Sequence[float] = self.out_values if self.out_values is not None else ()
        if len(out_values) <= _SMALL:
            out_values = sorted(out_values)
        names = sorted(self.check_total)
        # RoleData declares lists; it only ever reads them as sequences (len, index, iterate)
        return RoleData(
            requests=self.requests,
            successes=self.successes,
            fallbacks=self.fallbacks,
            errors=self.errors,
            timeouts=self.timeouts,
            latencies=cast("list[float]", self.latencies.samples()),
            input_tokens=self.in_sum if self.in_n else None,
            output_tokens=self.out_sum if self.out_n else None,
            output_token_values=cast("list[float]", out_values),
            cost_usd=self.cost_sum if self.cost_n else None,
            costs=cast("list[float]", costs),
            task_success=cast("list[bool]", task),
            check_passed={k: self.check_passed.get(k, 0) for k in names},
            check_total={k: self.check_total[k] for k in names},
        )


class WorkflowAgg:
    __slots__ = ("candidate", "stable", "workflow")

    def __init__(self, workflow: str, keep_costs: bool, keep_tokens: bool) -> None:
        self.workflow = workflow
        self.stable = RoleAgg(keep_costs=keep_costs, keep_tokens=keep_tokens)
        self.candidate = RoleAgg(keep_costs=keep_costs, keep_tokens=keep_tokens)

    def data(self) -> WorkflowData:
        st, ca = self.stable.role_data(), self.candidate.role_data()
        names = sorted(set(st.check_total) | set(ca.check_total))
        checks = {
            n: CheckComparison(
                stable_passed=st.check_passed.get(n, 0),
                stable_total=st.check_total.get(n, 0),
                candidate_passed=ca.check_passed.get(n, 0),
                candidate_total=ca.check_total.get(n, 0),
            )
            for n in names
        }
        validation = CheckComparison(
            stable_passed=st.checks_passed,
            stable_total=st.checks_total,
            candidate_passed=ca.checks_passed,
            candidate_total=ca.checks_total,
        )
        return WorkflowData(self.workflow, st, ca, checks, validation)


# --------------------------------------------------------------------------- reading


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.exists():
        raise CanaryError(f"{path}: no such file")
    if not p.is_file():
        raise CanaryError(f"{path}: not a file")
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed by the caller
        if fh.peek(2)[:2] != b"\x1f\x8b":  # gzip magic, whatever the file is called
            return fh
        fh.close()
        # opened by name, so that closing the GzipFile closes the file too (one given as
        # fileobj= stays open, one descriptor per log until the garbage collector finds it)
        return cast(IO[bytes], gzip.open(p, "rb"))
    except OSError as exc:
        raise CanaryError(f"{path}: cannot read: {exc.strerror or exc}") from None


@dataclass
class ReadStats:
    files: list[str] = field(default_factory=list)
    lines: int = 0  # non-blank lines
    used: dict[str, int] = field(default_factory=lambda: {"stable": 0, "candidate": 0})
    other_models: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    outside: int = 0  # outside --since/--until
    no_ts: int = 0  # without a timestamp while one was needed
    ts_min: float | None = None
    ts_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "lines": self.lines,
            "stable_requests": self.used["stable"],
            "candidate_requests": self.used["candidate"],
            "other_models": dict(sorted(self.other_models.items())),
            "malformed": self.malformed,
            "outside_range": self.outside,
            "without_ts": self.no_ts,
            "first_ts": None if self.ts_min is None else _iso(self.ts_min),
            "last_ts": None if self.ts_max is None else _iso(self.ts_max),
        }


class _Roles:
    """Which role a (workflow, model) of a log line plays, per the compared references."""

    def __init__(
        self,
        models_for: Any,
        aliases: Any,
    ) -> None:
        self._models_for = models_for  # workflow -> (stable_ref, candidate_ref)
        self._aliases = aliases  # ref -> set of names a log may use for it
        self._cache: dict[tuple[str, str], Role | None] = {}

    def role(self, workflow: str, model: str) -> Role | None:
        key = (workflow, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        s_ref, c_ref = self._models_for(workflow)
        role: Role | None = None
        if model == c_ref:
            role = "candidate"
        elif model == s_ref:
            role = "stable"
        else:
            in_s = model in self._aliases(s_ref)
            in_c = model in self._aliases(c_ref)
            if in_s != in_c:
                role = "stable" if in_s else "candidate"
        self._cache[key] = role
        return role


@dataclass
class GateRun:
    """The options of one ``modelrollout gate`` run (see :func:`run_gate`)."""

    logs: list[str]
    stable: str | None = None
    candidate: str | None = None
    config: str | None = None
    gates: list[str] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)
    report: str | None = None
    markdown: str | None = None
    html: str | None = None
    since: str | None = None
    until: str | None = None
    window: str | None = None
    allow_inconclusive: bool = False
    verbose: bool = False
    rootdir: str | None = None


def _ref_aliases(cfg: Any, ref: str) -> frozenset[str]:
    names = {ref}
    mc = cfg.models.get(ref)
    if mc is not None and mc.model:
        names.add(mc.model)
    if mc is None and ":" in ref:
        names.add(ref.split(":", 1)[1])
    return frozenset(n for n in names if n)


def run_gate(
    opts: GateRun,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Judge the logs and write the reports; the exit code (0 READY, 1 otherwise).

    Usage and input errors raise :class:`CanaryError` / ``ConfigError`` (one line; exit 2).
    """
    from ._version import __version__
    from .config import killed_models, load_config
    from .gates import default_gates, gates_from_config, merge_gates, parse_gate
    from .summary import build_summary

    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    environ = os.environ if env is None else env

    if not opts.logs:
        raise CanaryError("gate: at least one LOG.jsonl is required")
    cfg, cfg_path = load_config(Path(opts.rootdir or os.getcwd()), opts.config)
    cli_gates = [parse_gate(g, "cli") for g in opts.gates]
    since = parse_instant(opts.since, "--since") if opts.since else None
    until = parse_instant(opts.until, "--until") if opts.until else None
    if since is not None and until is not None and until <= since:
        raise CanaryError("--until must be later than --since")
    window = parse_duration(opts.window) if opts.window else None
    killed = killed_models(cfg, opts.kill, environ)

    def models_for(workflow: str) -> tuple[str, str]:
        wf = cfg.workflows.get(workflow)
        s = opts.stable or (wf.stable if wf else None) or cfg.stable or ""
        c = opts.candidate or (wf.candidate if wf else None) or cfg.candidate or ""
        return s, c

    top_s, top_c = models_for("")
    if not top_s or not top_c:
        missing = "--stable" if not top_s else "--candidate"
        raise CanaryError(f"gate: {missing}=REF is required (or set it in the config)")
    if top_s == top_c:
        raise CanaryError(f"gate: stable and candidate are the same model ({top_s})")
    for name in cfg.workflows:
        s, c = models_for(name)
        if s == c:
            raise CanaryError(f"gate: workflow {name!r} compares {s} with itself")

    gate_cache: dict[str, list[Any]] = {}

    def gates_for(workflow: str) -> list[Any]:
        if workflow not in gate_cache:
            layers: list[list[Any]] = [default_gates(), gates_from_config(cfg.gates, "config")]
            wf = cfg.workflows.get(workflow)
            if wf is not None and wf.gates:
                layers.append(gates_from_config(wf.gates, "workflow"))
            layers.append(cli_gates)
            gate_cache[workflow] = merge_gates(*layers)
        return gate_cache[workflow]

    # which per-request vectors the configured gates can need
    metrics_used = {g.metric for g in gates_for("")}
    for name in cfg.workflows:
        metrics_used |= {g.metric for g in gates_for(name)}
    keep_costs = bool(metrics_used & {"cost_per_success", "cost"})
    keep_tokens = "output_tokens" in metrics_used

    alias_cache: dict[str, frozenset[str]] = {}

    def aliases(ref: str) -> frozenset[str]:
        if ref not in alias_cache:
            alias_cache[ref] = _ref_aliases(cfg, ref)
        return alias_cache[ref]

    roles = _Roles(models_for, aliases)
    stats = ReadStats()
    overall: dict[str, WorkflowAgg] = {}
    windows: dict[float, dict[str, WorkflowAgg]] = {}
    need_ts = since is not None or until is not None
    shown = 0

    def malformed(path: str, lineno: int, why: str) -> None:
        nonlocal shown
        stats.malformed += 1
        if shown < MALFORMED_SHOWN:
            shown += 1
            stderr.write(f"modelrollout: {path}:{lineno}: malformed line skipped: {why}\n")

    decode = json.JSONDecoder().decode
    for path in opts.logs:
        stats.files.append(path)
        fh = _open(path)
        lineno = 0
        try:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                stats.lines += 1
                try:
                    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM
                        raw = raw[3:]
                    line = _parse(decode(raw.decode("utf-8")))
                except _Bad as exc:
                    malformed(path, lineno, str(exc))
                    continue
                except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                    msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                    malformed(path, lineno, f"not JSON ({msg})")
                    continue
                except RecursionError:
                    malformed(path, lineno, "not JSON (nested too deeply)")
                    continue
                role = roles.role(line.workflow, line.model)
                if role is None:
                    om = stats.other_models
                    key = line.model if len(om) < _OTHER_MODEL_NAMES or line.model in om else "…"
                    om[key] = om.get(key, 0) + 1
                    continue
                ts = line.ts
                if ts is not None:
                    if stats.ts_min is None or ts < stats.ts_min:
                        stats.ts_min = ts
                    if stats.ts_max is None or ts > stats.ts_max:
                        stats.ts_max = ts
                if need_ts:
                    if ts is None:
                        stats.no_ts += 1
                        continue
                    if (since is not None and ts < since) or (until is not None and ts >= until):
                        stats.outside += 1
                        continue
                wf = overall.get(line.workflow)
                if wf is None:
                    wf = overall[line.workflow] = WorkflowAgg(
                        line.workflow, keep_costs, keep_tokens
                    )
                (wf.stable if role == "stable" else wf.candidate).add(line)
                stats.used[role] += 1
                if window is not None:
                    if ts is None:
                        stats.no_ts += 1
                        continue
                    start = math.floor(ts / window) * window
                    bucket = windows.get(start)
                    if bucket is None:
                        if len(windows) >= MAX_WINDOWS:
                            raise CanaryError(
                                f"--window {opts.window}: more than {MAX_WINDOWS} windows; "
                                "use a longer window or --since/--until"
                            )
                        bucket = windows[start] = {}
                    wa = bucket.get(line.workflow)
                    if wa is None:
                        wa = bucket[line.workflow] = WorkflowAgg(
                            line.workflow, keep_costs, keep_tokens
                        )
                    (wa.stable if role == "stable" else wa.candidate).add(line)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            malformed(path, lineno + 1, f"cannot read further ({exc}): rest of the file skipped")
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()

    if stats.malformed > shown:
        stderr.write(
            f"modelrollout: ... and {stats.malformed - shown} more malformed lines skipped "
            f"({stats.malformed} in all)\n"
        )

    # ---- judge
    def summarise(aggs: Mapping[str, WorkflowAgg], *, samples: bool, **kw: Any) -> dict[str, Any]:
        data = {name: aggs[name].data() for name in sorted(aggs)}
        extra: dict[str, Any] = dict(kw.pop("extra", {}))
        if samples:
            extra["samples"] = {
                name: {role: spread(wd.role(role).latencies, SAMPLE_CAP) for role in ROLES}
                for name, wd in data.items()
            }
        return build_summary(
            RecordSet(),
            data=data,
            stable=top_s,
            candidate=top_c,
            workflow_models={name: models_for(name) for name in data},
            gates_by_workflow={"*": gates_for(""), **{name: gates_for(name) for name in data}},
            killed=killed,
            confidence=cfg.confidence,
            decision=cfg.decision,
            include_samples=False,
            plugin_version=__version__,
            extra=extra,
            **kw,
        )

    t0 = since if since is not None else stats.ts_min
    t1 = until if until is not None else stats.ts_max
    canary_info: dict[str, Any] = {
        **stats.to_dict(),
        "since": None if since is None else _iso(since),
        "until": None if until is None else _iso(until),
        "window": opts.window,
        "config": cfg_path,
    }
    summary = summarise(
        overall,
        samples=True,
        started_at=_iso(t0) if t0 is not None else datetime.now(timezone.utc).isoformat(),
        duration_s=max(0.0, (t1 - t0)) if t0 is not None and t1 is not None else 0.0,
        extra={"killed": sorted(killed), "source": "canary", "canary": canary_info},
    )
    window_rows: list[dict[str, Any]] = []
    if window is not None:
        for start in sorted(windows):
            ws = summarise(windows[start], samples=False)
            window_rows.append(
                {
                    "start": _iso(start),
                    "end": _iso(start + window),
                    "verdict": ws["verdict"],
                    "workflows": {
                        name: {
                            "verdict": wf["verdict"],
                            "reasons": wf["reasons"],
                            "stable": wf["stable"],
                            "candidate": wf["candidate"],
                        }
                        for name, wf in ws["workflows"].items()
                    },
                }
            )
        summary["windows"] = {"size": opts.window, "seconds": window, "rows": window_rows}

    # ---- print
    from .report.terminal import render_terminal

    def say(text: str = "") -> None:
        stdout.write(text + "\n")

    say(_info_line(stats))
    if stats.other_models:
        top = sorted(stats.other_models.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        more = "" if len(stats.other_models) <= 5 else ", ..."
        n_other = sum(stats.other_models.values())
        say(
            f"ignored {n_other} lines of other models: "
            + ", ".join(f"{m} ({n})" for m, n in top)
            + more
        )
    if stats.outside or (need_ts and stats.no_ts):
        say(
            f"outside --since/--until: {stats.outside} lines"
            + (f"; without ts: {stats.no_ts}" if stats.no_ts else "")
        )
    elif window is not None and stats.no_ts:
        say(f"{stats.no_ts} lines without ts are in no window (still in the overall verdict)")
    if window_rows:
        say("")
        say(f"per-window verdicts ({opts.window} windows, UTC):")
        for row in window_table(window_rows):
            say(row)
    say("")
    say(" rollout readiness ".center(78, "="))
    for text in render_terminal(summary, verbose=opts.verbose):
        say(text)

    # ---- reports
    def say_err(text: str) -> None:
        stderr.write(text + "\n")

    _write_reports(opts, summary, cfg, stdout_say=say, err_say=say_err, environ=environ)

    verdict = summary.get("verdict")
    if verdict == "READY" or (verdict == "INCONCLUSIVE" and opts.allow_inconclusive):
        return 0
    return 1


def _info_line(stats: ReadStats) -> str:
    files = len(stats.files)
    text = (
        f"read {stats.lines} lines from {files} file{'s' if files != 1 else ''}: "
        f"{stats.used['stable']} stable, {stats.used['candidate']} candidate requests"
    )
    if stats.malformed:
        text += f", {stats.malformed} malformed (skipped)"
    if stats.ts_min is not None and stats.ts_max is not None:
        text += f"; {_iso(stats.ts_min)} .. {_iso(stats.ts_max)}"
    return text


def _fmt_rate(v: Any) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v * 100:.1f}%"


def _fmt_ms(v: Any) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:,.0f}"


def window_rows_flat(rows: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """One row per window and workflow: the verdict and the key metrics, stable → candidate."""
    table: list[list[str]] = []
    for row in rows:
        start = str(row["start"]).replace("T", " ").replace(":00Z", "").rstrip("Z")
        for name, wf in row["workflows"].items():
            s, c = wf["stable"], wf["candidate"]
            gates = sorted({str(r.get("gate")) for r in wf.get("reasons", []) if r.get("gate")})
            table.append(
                [
                    start,
                    str(name),
                    str(wf["verdict"]),
                    f"{s.get('requests', 0)}/{c.get('requests', 0)}",
                    f"{_fmt_rate(s.get('error_rate'))} → {_fmt_rate(c.get('error_rate'))}",
                    f"{_fmt_ms(s.get('latency_p95_ms'))} → {_fmt_ms(c.get('latency_p95_ms'))}",
                    f"{_fmt_rate(s.get('validation_pass_rate'))} → "
                    f"{_fmt_rate(c.get('validation_pass_rate'))}",
                    ", ".join(gates),
                ]
            )
    return table


WINDOW_HEADERS = (
    "window",
    "workflow",
    "verdict",
    "requests s/c",
    "error rate",
    "p95 ms",
    "validation",
    "gates hit",
)


def window_table(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    from tabulate import tabulate

    text = tabulate(
        window_rows_flat(rows),
        headers=list(WINDOW_HEADERS),
        tablefmt="simple",
        disable_numparse=True,
    )
    return ["  " + line.rstrip() for line in text.splitlines()]


def window_markdown(rows: Iterable[Mapping[str, Any]], size: str) -> str:
    from .report.markdown import md_escape

    lines = [f"### Per-window verdicts ({md_escape(size)} windows, UTC)", ""]
    lines.append("| " + " | ".join(WINDOW_HEADERS) + " |")
    lines.append("| " + " | ".join([":--"] * 3 + ["--:"] * 4 + [":--"]) + " |")
    for r in window_rows_flat(rows):
        lines.append("| " + " | ".join(md_escape(x) for x in r) + " |")
    return "\n".join(lines) + "\n"


def _observed_share(wf: Mapping[str, Any], plan: Sequence[float]) -> float:
    """The canary's traffic share, snapped down to a step of the plan (0 before the first)."""
    s = wf.get("stable", {}).get("requests") or 0
    c = wf.get("candidate", {}).get("requests") or 0
    if not c:
        return 0.0
    share = c / (s + c)
    steps = [p for p in plan if p <= share * 1.25]  # 25% tolerance for traffic noise
    return steps[-1] if steps else 0.0


def _write_reports(
    opts: GateRun,
    summary: dict[str, Any],
    cfg: Any,
    *,
    stdout_say: Any,
    err_say: Any,
    environ: Mapping[str, str],
) -> None:
    from .report import _write_atomic
    from .report.markdown import render_markdown

    plan = [float(x) for x in cfg.traffic_plan]
    shares: dict[str, float] = {}
    share_source: dict[str, str] = {}
    for name, wf in summary.get("workflows", {}).items():
        conf = cfg.workflows.get(name)
        if conf is not None and conf.traffic_share is not None:
            shares[name] = float(conf.traffic_share)
            share_source[name] = "config"
        else:
            shares[name] = _observed_share(wf, plan)
            share_source[name] = "observed"
    summary.setdefault("canary", {})["traffic_share"] = {
        n: {"share": shares[n], "source": share_source[n]} for n in sorted(shares)
    }

    def attempt(what: str, path: str, write: Any) -> None:
        # like the plugin: a report that cannot be written is a warning; the verdict decides
        try:
            write()
        except (OSError, ModelRolloutError, ImportError) as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            err_say(f"modelrollout: cannot write {what} {path}: {msg}")
        else:
            stdout_say(f"{what} written to {path}")

    if opts.report:
        from .report.jsonreport import write_json_report

        report_path = opts.report
        attempt(
            "report",
            report_path,
            lambda: write_json_report(
                report_path,
                summary,
                None,
                config={"traffic_share": shares, "traffic_plan": plan, "source": "canary"},
            ),
        )
    md_text: str | None = None
    if opts.markdown or environ.get("GITHUB_STEP_SUMMARY"):
        md_text = render_markdown(summary)
        windows = summary.get("windows")
        if isinstance(windows, Mapping) and windows.get("rows"):
            md_text += "\n" + window_markdown(windows["rows"], str(windows.get("size")))
    if opts.markdown and md_text is not None:
        md_path, text = opts.markdown, md_text
        attempt("markdown", md_path, lambda: _write_atomic(md_path, text))
    target = environ.get("GITHUB_STEP_SUMMARY", "").strip()
    if target and md_text is not None:
        try:
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(md_text + "\n")
        except OSError as exc:
            err_say(f"modelrollout: cannot append to $GITHUB_STEP_SUMMARY: {exc.strerror}")
    if opts.html:
        from .report.html import write_html

        html_path = opts.html
        attempt("html", html_path, lambda: write_html(html_path, summary))
