"""The ``expect_*`` checks and their semantics on a :class:`~.replies.Reply` and a
:class:`~.replies.Pair`.

A check is evaluated into an :class:`Outcome` per reply and every outcome is recorded through
``reply._record`` (one :class:`~._records.CheckRecord` per reply and check name), *before*
anything is raised, so metrics see every check that ran.

Check names (stable strings, the keys of ``check_pass_rates`` in the report):

=================  ==========================================================================
``json``           the reply is JSON as a strict production parser reads it (the whole reply,
                   no code fence, no prose, no trailing commas, no NaN) and matches the schema
``json_lenient``   recorded alongside ``json`` by ``expect_json``: the JSON *inside* the reply
                   (a fenced block, or an object/array with prose around it) parses and matches.
                   Never decides a test. ``json`` passing implies ``json_lenient`` passing, so
                   per reply: both pass = strict-valid, only ``json_lenient`` = lenient-valid
                   (``json`` detail ``"fenced"`` or ``"prose around JSON"``), neither = invalid.
``tool_call``      a tool call exists, its name is declared (and equals ``name``), its
                   arguments are JSON and match the schema (default: the declared parameters)
``length``         ``max_chars`` / ``min_chars`` / ``max_words``
``language``       see :func:`.language.language_matches`
``latency``        ``latency_ms <= max_ms``
``length_ratio``   candidate chars / stable chars (``Pair`` only)
*custom*           ``expect(predicate, name)``
=================  ==========================================================================

A reply with ``ok == False`` fails every check with detail ``"no reply: <error>"``.

On a single reply a failing check raises ``AssertionError``. On a pair the check runs on both
replies and is recorded for both; the candidate passing passes; the candidate failing where the
stable passes raises :class:`RegressionError`; both failing is ``pytest.xfail`` ("stable fails
too: not a regression"), or ``AssertionError`` ("shared failure (strict)") under
``--rollout-strict``. Note that ``xfail`` ends the test there: later checks of that test do not
run and are not recorded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias

import pytest
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from .replies import Pair, Reply

__all__ = [
    "BUILTIN_CHECKS",
    "Check",
    "Outcome",
    "ParsedJSON",
    "RegressionError",
    "Schema",
    "parse_json_reply",
    "run_pair",
    "run_single",
    "validate",
]

JSON = "json"
JSON_LENIENT = "json_lenient"
TOOL_CALL = "tool_call"
LENGTH = "length"
LANGUAGE = "language"
LATENCY = "latency"
LENGTH_RATIO = "length_ratio"
BUILTIN_CHECKS = frozenset({JSON, JSON_LENIENT, TOOL_CALL, LENGTH, LANGUAGE, LATENCY, LENGTH_RATIO})

#: A JSON Schema (dict, ``$ref``/``$defs`` supported) or a pydantic model class.
Schema: TypeAlias = "Mapping[str, Any] | type[BaseModel]"

REPLY_LIMIT = 300  # characters of a reply shown in a failure message
PROMPT_LIMIT = 200  # characters of the prompt shown in a failure message
DETAIL_LIMIT = 240  # characters of a one-line detail


class RegressionError(AssertionError):
    """The candidate fails a check that the stable passes. The message starts with
    ``"regression:"`` and shows both replies."""


@dataclass(frozen=True)
class Record:
    check: str
    passed: bool
    detail: str | None
    value: float | None = None


@dataclass
class Outcome:
    """One check evaluated on one reply."""

    check: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: str = ""
    extra: list[Record] = field(default_factory=list)  # auxiliary records (json_lenient)
    error: BaseException | None = None  # an unexpected exception raised by a custom predicate

    def records(self) -> Iterator[Record]:
        yield Record(self.check, self.passed, self.detail, self.value)
        yield from self.extra


@dataclass(frozen=True)
class Check:
    """A configured check: its name, what it promises, and how to evaluate one reply."""

    name: str
    threshold: str
    evaluate: Callable[[Reply], Outcome]
    aux: tuple[str, ...] = ()  # auxiliary check names recorded along (failed on "no reply")

    def on(self, reply: Reply) -> Outcome:
        if not reply.ok:
            detail = _one_line(f"no reply: {reply.error}")
            return Outcome(
                self.name,
                False,
                detail,
                threshold=self.threshold,
                extra=[Record(a, False, detail) for a in self.aux],
            )
        outcome = self.evaluate(reply)
        outcome.threshold = outcome.threshold or self.threshold
        return outcome


# --------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int = DETAIL_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit - 20]!r}... [{len(text)} chars]"


def _schema_name(schema: Schema | None) -> str:
    if schema is None:
        return ""
    if isinstance(schema, type):
        return schema.__name__
    title = schema.get("title")
    return str(title) if title else "the schema"


def _check_schema_arg(schema: object) -> None:
    """Reject a schema that is neither a JSON Schema dict nor a pydantic model (test bug)."""
    if schema is None:
        return
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return
    if isinstance(schema, Mapping):
        import jsonschema  # lazily: ~0.1 s of start-up that suites without schemas never need

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(dict(schema))  # raises jsonschema.SchemaError: a bug in the test
        return
    raise TypeError(
        f"schema must be a JSON Schema dict or a pydantic BaseModel subclass, "
        f"not {type(schema).__name__}"
    )


def _json_path(path: Any) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate(data: Any, schema: Schema | None) -> str | None:
    """Validate ``data``: ``None`` when valid, else a one-line reason naming the path."""
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            schema.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            first = errors[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "$"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            return _one_line(f"{schema.__name__}: {loc}: {first.get('msg', 'invalid')}{more}")
        return None
    import jsonschema
    import jsonschema.exceptions

    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    found = list(validator.iter_errors(data))
    if not found:
        return None
    best = jsonschema.exceptions.best_match(found)
    assert best is not None
    more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
    return _one_line(f"{_json_path(best.absolute_path)}: {_one_line(best.message, 160)}{more}")


# --------------------------------------------------------------------------- JSON parsing


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FENCE_ONLY_RE = re.compile(r"\A\s*```[ \t]*([\w+-]*)[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*\Z", re.S)
_FENCE_RE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\r?\n(.*?)```", re.S)
_TRAILING_COMMA_RE = re.compile(r",\s*[}\]]")
MAX_EMBEDDED_STARTS = 64
MAX_SCAN_CHARS = 200_000


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _json_error(text: str, exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {exc.lineno} col {exc.colno}"
        if _TRAILING_COMMA_RE.search(text):
            return f"invalid JSON: trailing comma ({where})"
        return f"invalid JSON: {exc.msg} ({where})"
    return _one_line(f"invalid JSON: {exc}")


@dataclass(frozen=True)
class ParsedJSON:
    """How a reply's text reads as JSON.

    ``form``: ``strict`` (the whole reply is JSON), ``fenced`` (one code fence around JSON and
    nothing else), ``prose`` (JSON object/array with text around it), ``invalid``, ``empty``.
    """

    form: Literal["strict", "fenced", "prose", "invalid", "empty"]
    data: Any = None
    error: str | None = None

    @property
    def lenient(self) -> bool:
        return self.form in ("strict", "fenced", "prose")


def _embedded(text: str) -> tuple[bool, Any]:
    """The longest JSON object/array embedded in ``text`` (bounded scan)."""
    scan = text[:MAX_SCAN_CHARS]
    best: tuple[int, Any] | None = None
    starts = 0
    for m in re.finditer(r"[{\[]", scan):
        starts += 1
        if starts > MAX_EMBEDDED_STARTS:
            break
        try:
            obj, end = _DECODER.raw_decode(scan, m.start())
        except ValueError:
            continue
        if isinstance(obj, (dict, list)) and obj and (best is None or end - m.start() > best[0]):
            best = (end - m.start(), obj)
    return (False, None) if best is None else (True, best[1])


def parse_json_reply(text: str) -> ParsedJSON:
    """Read ``text`` as a strict parser would, and failing that as a lenient one would."""
    stripped = text.strip()
    if not stripped:
        return ParsedJSON("empty", error="empty reply")
    try:
        return ParsedJSON("strict", _loads(stripped))
    except ValueError as exc:
        strict_error = _json_error(stripped, exc)
    m = _FENCE_ONLY_RE.match(text)
    if m is not None:
        inner = m.group(2)
        try:
            return ParsedJSON("fenced", _loads(inner))
        except ValueError as exc:
            return ParsedJSON("invalid", error="fenced, " + _json_error(inner, exc))
    for i, fm in enumerate(_FENCE_RE.finditer(text[:MAX_SCAN_CHARS])):
        if i >= 8:
            break
        try:
            return ParsedJSON("prose", _loads(fm.group(1)))
        except ValueError:
            continue
    found, data = _embedded(text)
    if found:
        return ParsedJSON("prose", data)
    return ParsedJSON("invalid", error=strict_error)


# --------------------------------------------------------------------------- the checks


def json_check(schema: Schema | None = None) -> Check:
    _check_schema_arg(schema)
    name = _schema_name(schema)
    threshold = f"strict JSON matching {name}" if name else "strict JSON"

    def evaluate(reply: Reply) -> Outcome:
        parsed = parse_json_reply(reply.text)
        if not parsed.lenient:
            detail = parsed.error or "invalid JSON"
            return Outcome(JSON, False, detail, extra=[Record(JSON_LENIENT, False, detail)])
        problem = validate(parsed.data, schema)
        wrap = {"strict": "", "fenced": "fenced", "prose": "prose around JSON"}[parsed.form]
        if problem is not None:
            detail = f"{wrap}; schema: {problem}" if wrap else f"schema: {problem}"
            lenient_detail = f"schema: {problem}"
            return Outcome(JSON, False, detail, extra=[Record(JSON_LENIENT, False, lenient_detail)])
        ok_detail = f"valid JSON matching {name}" if name else "valid JSON"
        if parsed.form == "strict":
            return Outcome(JSON, True, ok_detail, extra=[Record(JSON_LENIENT, True, ok_detail)])
        return Outcome(
            JSON, False, wrap, extra=[Record(JSON_LENIENT, True, f"{ok_detail} ({wrap})")]
        )

    return Check(JSON, threshold, evaluate, aux=(JSON_LENIENT,))


def _declared_tools(reply: Reply) -> dict[str, Mapping[str, Any] | None]:
    """``{name: parameters schema}`` of the request's tools (OpenAI function-tool format; a
    bare ``{"name", "parameters"}`` or Anthropic ``input_schema`` is accepted too)."""
    tools = reply.request.tools if reply.request is not None else None
    out: dict[str, Mapping[str, Any] | None] = {}
    for tool in tools or []:
        if not isinstance(tool, Mapping):
            continue
        fn = tool.get("function")
        spec: Mapping[str, Any] = fn if isinstance(fn, Mapping) else tool
        name = spec.get("name")
        if not isinstance(name, str):
            continue
        params = spec.get("parameters", spec.get("input_schema"))
        out[name] = params if isinstance(params, Mapping) else None
    return out


def tool_call_check(name: str | None = None, schema: Schema | None = None) -> Check:
    _check_schema_arg(schema)
    against = _schema_name(schema) if schema is not None else "the declared parameters"
    threshold = f"a call to {name!r}" if name else "a tool call"
    threshold += f" with arguments matching {against}"

    def evaluate(reply: Reply) -> Outcome:
        calls = reply.tool_calls
        if not calls:
            text = f"; text reply: {_truncate(reply.text, 80)}" if reply.text else ""
            return Outcome(TOOL_CALL, False, _one_line(f"no tool call{text}"), value=0.0)
        declared = _declared_tools(reply)
        names = [c.name for c in calls]
        if name is not None:
            calls = [c for c in calls if c.name == name]
            if not calls:
                return Outcome(
                    TOOL_CALL, False, _one_line(f"no call to {name!r}; called {names}"), value=0.0
                )
        problems: list[str] = []
        for call in calls:
            if declared and call.name not in declared:
                problems.append(
                    f"{call.name!r} is not a declared tool (declared: {sorted(declared)})"
                )
                continue
            if call.arguments is None:
                raw = _truncate(call.raw_arguments or "", 80)
                problems.append(f"{call.name}: arguments are not valid JSON: {raw}")
                continue
            sch: Schema | None = schema if schema is not None else declared.get(call.name)
            problem = validate(call.arguments, sch)
            if problem is not None:
                problems.append(f"{call.name}: {problem}")
        n = float(len(calls))
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            return Outcome(TOOL_CALL, False, _one_line(problems[0]) + more, value=n)
        return Outcome(TOOL_CALL, True, _one_line(f"valid: {[c.name for c in calls]}"), value=n)

    return Check(TOOL_CALL, threshold, evaluate)


def length_check(
    max_chars: int | None = None, max_words: int | None = None, min_chars: int | None = None
) -> Check:
    if max_chars is None and max_words is None and min_chars is None:
        raise ValueError("expect_length needs max_chars, max_words or min_chars")
    for label, v in (("max_chars", max_chars), ("max_words", max_words), ("min_chars", min_chars)):
        if v is not None and v < 0:
            raise ValueError(f"{label} must be >= 0, got {v}")
    if max_chars is not None and min_chars is not None and min_chars > max_chars:
        raise ValueError(f"min_chars {min_chars} > max_chars {max_chars}")
    limits = [
        f"{k}={v}"
        for k, v in (("max_chars", max_chars), ("max_words", max_words), ("min_chars", min_chars))
        if v is not None
    ]
    words_only = max_chars is None and min_chars is None

    def evaluate(reply: Reply) -> Outcome:
        from .language import count_words  # lazily: its tables cost ~30 ms at import

        chars = len(reply.text)
        words = count_words(reply.text)
        fails = []
        if max_chars is not None and chars > max_chars:
            fails.append(f"{chars} chars > max_chars {max_chars}")
        if min_chars is not None and chars < min_chars:
            fails.append(f"{chars} chars < min_chars {min_chars}")
        if max_words is not None and words > max_words:
            fails.append(f"{words} words > max_words {max_words}")
        value = float(words if words_only else chars)
        detail = "; ".join(fails) if fails else f"{chars} chars, {words} words"
        return Outcome(LENGTH, not fails, detail, value=value)

    return Check(LENGTH, ", ".join(limits), evaluate)


def language_check(lang: str) -> Check:
    if not isinstance(lang, str) or not lang.strip():
        raise ValueError(
            "expect_language needs a language: 'en', 'zh', 'mixed', 'same_as_prompt', ..."
        )
    from .language import language_matches, normalize_lang

    want = normalize_lang(lang)

    def evaluate(reply: Reply) -> Outcome:
        prompt = reply.prompt if want == "same_as_prompt" else None
        ok, detail = language_matches(want, reply.text, prompt)
        return Outcome(LANGUAGE, ok, detail)

    return Check(LANGUAGE, f"language {want}", evaluate)


def latency_check(max_ms: float) -> Check:
    if max_ms <= 0:
        raise ValueError(f"max_ms must be > 0, got {max_ms}")

    def evaluate(reply: Reply) -> Outcome:
        ms = reply.latency_ms
        if ms is None:
            return Outcome(LATENCY, False, "latency not measured")
        ok = ms <= max_ms
        return Outcome(
            LATENCY, ok, f"{ms:.0f} ms {'<=' if ok else '>'} max_ms {max_ms:g}", value=ms
        )

    return Check(LATENCY, f"max_ms={max_ms:g}", evaluate)


def custom_check(predicate: Callable[[Reply], object], name: str | None = None) -> Check:
    """``predicate(reply)`` returns a bool (``False`` fails; ``None`` passes, for predicates
    written with ``assert``) or raises ``AssertionError`` whose message becomes the detail.
    Any other exception is recorded as a failure and then re-raised: a bug in the predicate
    errors the test instead of hiding as a shared failure."""
    if not callable(predicate):
        raise TypeError("expect(predicate, name): predicate must be callable")
    if name is None:
        name = getattr(predicate, "__name__", "")
        if not name or name == "<lambda>":
            raise ValueError("expect(predicate, name): give the check a name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("expect(predicate, name): name must be a non-empty string")
    if name in BUILTIN_CHECKS:
        raise ValueError(f"expect(): {name!r} is a built-in check name; choose another")
    check_name = name

    def evaluate(reply: Reply) -> Outcome:
        try:
            result = predicate(reply)
        except AssertionError as exc:
            return Outcome(check_name, False, _one_line(str(exc) or "assertion failed"))
        except Exception as exc:
            return Outcome(check_name, False, _one_line(f"{type(exc).__name__}: {exc}"), error=exc)
        if result is None or bool(result):
            return Outcome(check_name, True, "predicate passed")
        return Outcome(check_name, False, f"predicate returned {result!r}")

    return Check(check_name, f"custom check {check_name!r}", evaluate)


def length_ratio_outcomes(pair: Pair, max_ratio: float) -> tuple[Outcome, Outcome]:
    """Outcomes of ``expect_length_ratio`` for (stable, candidate).

    The ratio is a property of the pair, but it is recorded once per reply so that both models
    have a ``length_ratio`` pass rate over the same pairs:

    * the **candidate** record carries the measurement: passed iff
      ``len(candidate.text) / len(stable.text) <= max``, ``value`` = the ratio;
    * the **stable** record is the baseline and passes trivially (``value`` 1.0) whenever the
      stable answered. Its pass rate is therefore the stable's answer rate, *not* a quality
      measurement, and a "regression" on this check is exactly a candidate outside the bound.
      Read the candidate's pass rate as "share of pairs within the ratio".
    * if the stable did not answer there is no baseline: both records fail (the stable with
      "no reply", the candidate with "no baseline"), a shared failure that cannot count against
      the candidate as a regression.
    * an empty stable text against a non-empty candidate has no finite ratio: the candidate
      fails with ``value`` None; two empty texts are ratio 1.0.
    """
    stable, candidate = pair.stable, pair.candidate
    threshold = f"candidate/stable chars <= {max_ratio:g}"
    if not stable.ok:
        s = Outcome(
            LENGTH_RATIO, False, _one_line(f"no reply: {stable.error}"), threshold=threshold
        )
        c_detail = (
            "no baseline: the stable reply failed"
            if candidate.ok
            else _one_line(f"no reply: {candidate.error}")
        )
        return s, Outcome(LENGTH_RATIO, False, c_detail, threshold=threshold)
    s = Outcome(LENGTH_RATIO, True, "baseline (stable is the reference)", 1.0, threshold)
    if not candidate.ok:
        return s, Outcome(
            LENGTH_RATIO, False, _one_line(f"no reply: {candidate.error}"), threshold=threshold
        )
    sc, cc = len(stable.text), len(candidate.text)
    if sc == 0:
        if cc == 0:
            return s, Outcome(LENGTH_RATIO, True, "both replies empty: ratio 1.0", 1.0, threshold)
        return s, Outcome(
            LENGTH_RATIO, False, f"stable reply is empty, candidate {cc} chars", None, threshold
        )
    ratio = cc / sc
    ok = ratio <= max_ratio
    detail = f"{cc} / {sc} chars = {ratio:.2f}x {'<=' if ok else '>'} max {max_ratio:g}"
    return s, Outcome(LENGTH_RATIO, ok, detail, ratio, threshold)


# --------------------------------------------------------------------------- semantics


def _record(reply: Reply, outcome: Outcome) -> None:
    for r in outcome.records():
        reply._record(r.check, r.passed, r.detail, r.value)


def _single_message(reply: Reply, o: Outcome) -> str:
    lines = [
        f"check {o.check!r} failed: {o.detail}",
        f"  threshold: {o.threshold}" if o.threshold else "",
        f"  measured:  {o.value:g}" if o.value is not None else "",
        f"  reply:     {reply.summary(REPLY_LIMIT)}",
        f"  prompt:    {_truncate(reply.prompt, PROMPT_LIMIT)}",
    ]
    return "\n".join(line for line in lines if line)


def _pair_lines(pair: Pair, s: Outcome, c: Outcome) -> list[str]:
    def status(o: Outcome) -> str:
        value = f" [value {o.value:g}]" if o.value is not None else ""
        return f"{'passed' if o.passed else 'FAILED'}: {o.detail}{value}"

    return [
        f"  threshold: {c.threshold or s.threshold}",
        f"  stable    {status(s)}",
        f"  candidate {status(c)}",
        f"  stable reply:    {pair.stable.summary(REPLY_LIMIT)}",
        f"  candidate reply: {pair.candidate.summary(REPLY_LIMIT)}",
        f"  prompt: {_truncate(pair.candidate.prompt or pair.stable.prompt, PROMPT_LIMIT)}",
    ]


def decide_pair(pair: Pair, s: Outcome, c: Outcome) -> None:
    """Apply the pair semantics to recorded outcomes (raises, xfails or returns)."""
    __tracebackhide__ = True
    for o in (c, s):
        if o.error is not None:
            raise o.error
    if c.passed:
        return
    if s.passed:
        head = f"regression: check {c.check!r} fails on the candidate but passes on the stable"
        raise RegressionError("\n".join([head, *_pair_lines(pair, s, c)]))
    strict = any(r.context is not None and r.context.strict for r in (pair.stable, pair.candidate))
    if strict:
        head = f"shared failure (strict): check {c.check!r} fails on both stable and candidate"
        raise AssertionError("\n".join([head, *_pair_lines(pair, s, c)]))
    pytest.xfail(
        _one_line(
            f"stable fails too: not a regression: {c.check}: {c.detail} (stable: {s.detail})",
            400,
        )
    )


def run_single(reply: Reply, check: Check) -> None:
    """Evaluate, record, and raise ``AssertionError`` when the check fails."""
    __tracebackhide__ = True  # failures point at the test line, not at this module
    outcome = check.on(reply)
    _record(reply, outcome)
    if outcome.error is not None:
        raise outcome.error
    if not outcome.passed:
        raise AssertionError(_single_message(reply, outcome))


def run_pair(pair: Pair, check: Check) -> None:
    """Evaluate on both replies, record both, then apply the pair semantics."""
    __tracebackhide__ = True
    s = check.on(pair.stable)
    c = check.on(pair.candidate)
    _record(pair.stable, s)
    _record(pair.candidate, c)
    decide_pair(pair, s, c)


def run_length_ratio(pair: Pair, max_ratio: float) -> None:
    __tracebackhide__ = True
    if not max_ratio > 0:
        raise ValueError(f"expect_length_ratio(max=...) must be > 0, got {max_ratio}")
    s, c = length_ratio_outcomes(pair, max_ratio)
    _record(pair.stable, s)
    _record(pair.candidate, c)
    decide_pair(pair, s, c)
