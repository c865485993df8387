"""Bad input: malformed configs, datasets and flags give one clear line, never a traceback.

Each row of the tables runs pytest (pytester, in process) on a tiny project and checks that

* the run stops with a usage or collection error (never an internal error),
* one line of the output names the file, key, variable or line at fault (every ``needle``),
* that line is short, and no "Traceback" (nor ``INTERNALERROR``) reaches the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

SUITE = """
import pytest

@pytest.mark.workflow("support_chat")
def test_one(rollout):
    rollout.ask("Where is my order A-1042?")
"""

BASE = '[tool.modelrollout]\nstable = "sim:stable"\ncandidate = "sim:good"\n'


@dataclass
class Bad:
    id: str
    needles: tuple[str, ...]
    pyproject: str | None = BASE
    files: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    suite: str | None = SUITE
    env: dict[str, str] = field(default_factory=dict)


def _model(body: str, top: str = 'stable = "sim:stable"\ncandidate = "m"\n') -> str:
    return f"[tool.modelrollout]\n{top}[tool.modelrollout.models.m]\n{body}"


CONFIGS = [
    Bad("toml-syntax", ("pyproject.toml", "line 1"), pyproject="[tool.modelrollout\nstable = 1\n"),
    Bad("toml-syntax-modelrollout-toml", ("modelrollout.toml", "TOML"),
        files={"modelrollout.toml": 'stable = "sim:stable"\ncandidate = \n'}),
    Bad("unknown-top-key", ("candidat", "unknown key"), pyproject=BASE + 'candidat = "x"\n'),
    Bad("unknown-model-key", ("models.m.timeout", "unknown key"),
        pyproject=_model('provider = "sim"\nmodel = "good"\ntimeout = 5\n')),
    Bad("unknown-workflow-key", ("workflows.w.candiate", "unknown key"),
        pyproject=BASE + '[tool.modelrollout.workflows.w]\ncandiate = "sim:good"\n'),
    Bad("wrong-type-concurrency", ("concurrency",), pyproject=BASE + 'concurrency = "many"\n'),
    Bad("wrong-type-killed", ("killed",), pyproject=BASE + 'killed = "sim:good"\n'),
    Bad("wrong-type-params", ("models.m.params",),
        pyproject=_model('provider = "sim"\nmodel = "good"\nparams = "temperature=0"\n')),
    Bad("wrong-type-headers", ("models.m.headers",),
        pyproject=_model('provider = "sim"\nmodel = "good"\nheaders = { x-team = 7 }\n')),
    Bad("wrong-type-models-table", ("models.m",), pyproject=BASE + "models = { m = 3 }\n"),
    Bad("not-a-table", ("[tool.modelrollout]", "table"),
        pyproject='[tool]\nmodelrollout = "yes"\n'),
    Bad("negative-timeout", ("models.m.timeout_s",),
        pyproject=_model('provider = "sim"\nmodel = "good"\ntimeout_s = -1\n')),
    Bad("negative-retries", ("models.m.max_retries",),
        pyproject=_model('provider = "sim"\nmodel = "good"\nmax_retries = -2\n')),
    Bad("negative-price", ("models.m.input_price_per_mtok",),
        pyproject=_model('provider = "sim"\nmodel = "good"\ninput_price_per_mtok = -0.1\n')),
    Bad("zero-concurrency", ("models.m.max_concurrency",),
        pyproject=_model('provider = "sim"\nmodel = "good"\nmax_concurrency = 0\n')),
    Bad("missing-provider", ("models.m.provider",), pyproject=_model('model = "good"\n')),
    Bad("unknown-provider", ("models.m", "unknown provider 'nosuch'"),
        pyproject=_model('provider = "nosuch"\nmodel = "x"\n')),
    Bad("unknown-model-ref", ("nonexistent",),
        pyproject=BASE.replace('"sim:good"', '"nonexistent"')),
    Bad("unknown-provider-ref", ("unknown provider 'nosuch'",),
        pyproject=BASE.replace('"sim:good"', '"nosuch:model-x"')),
    Bad("missing-api-key-var", ("MR_TEST_MISSING_KEY",),
        pyproject=_model('provider = "openai"\nmodel = "gpt-x"\napi_key_env = "MR_TEST_MISSING_KEY"\n')),
    Bad("missing-fallback-key-var", ("MR_TEST_MISSING_FB_KEY",),
        pyproject=_model('provider = "sim"\nmodel = "good"\nfallback = "fb"\n')
        + '[tool.modelrollout.models.fb]\nprovider = "openai"\nmodel = "x"\n'
        'api_key_env = "MR_TEST_MISSING_FB_KEY"\n'),
    Bad("bad-fallback-ref", ("nope",),
        pyproject=_model('provider = "sim"\nmodel = "good"\nfallback = "nope"\n')),
    Bad("fallback-itself", ("models.m", "fallback"),
        pyproject=_model('provider = "sim"\nmodel = "good"\nfallback = "m"\n')),
    Bad("bad-record-mode", ("record", "sometimes"), pyproject=BASE + 'record = "sometimes"\n'),
    Bad("bad-record-role", ("record", "canary"),
        pyproject=BASE + 'record = { canary = "new" }\n'),
    Bad("bad-exit", ("exit",), pyproject=BASE + 'exit = "sometimes"\n'),
    Bad("bad-confidence", ("confidence",), pyproject=BASE + "confidence = 1.5\n"),
    Bad("bad-traffic-plan-order", ("traffic_plan",), pyproject=BASE + "traffic_plan = [0.5, 0.1]\n"),
    Bad("bad-traffic-plan-range", ("traffic_plan",), pyproject=BASE + "traffic_plan = [0.1, 2.0]\n"),
    Bad("bad-traffic-plan-type", ("traffic_plan",), pyproject=BASE + 'traffic_plan = "slow"\n'),
    Bad("bad-gate-key", ("gates", "max_p95_latency_increas"),
        pyproject=BASE + "[tool.modelrollout.gates]\nmax_p95_latency_increas = 0.2\n"),
    Bad("bad-gate-value", ("max_p95_latency_increase",),
        pyproject=BASE + '[tool.modelrollout.gates]\nmax_p95_latency_increase = "lots"\n'),
    Bad("bad-gate-expression", ("p95_latency:+lots",),
        pyproject=BASE + '[tool.modelrollout.gates]\nexpressions = ["p95_latency:+lots"]\n'),
    Bad("bad-workflow-gate", ("max_error_rate_ratio",),
        pyproject=BASE + "[tool.modelrollout.workflows.support_chat]\n"
        "gates = { max_error_rate_ratio = 0.5 }\n"),
    Bad("missing-config-file", ("nothere.toml",), args=("--rollout-config=nothere.toml",)),
    Bad("marker-bad-gates", ("max_p95_latency_increase",),
        suite=SUITE.replace('"support_chat"', '"support_chat", gates={"max_p95_latency_increase": -1}')),
]  # fmt: skip

DATASET_SUITE = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support_chat")
@pytest.mark.parametrize("case", cases("{name}"))
def test_case(rollout, case):
    rollout.ask(case)
"""


def _ds(id: str, name: str, content: str, needles: tuple[str, ...]) -> Bad:
    return Bad(id, needles, files={name: content}, suite=DATASET_SUITE.replace("{name}", name))


DATASETS = [
    _ds("jsonl-bad-json-line", "cases.jsonl", '{"prompt": "a"}\n{"prompt": "b",}\n',
        ("cases.jsonl:2", "invalid JSON")),
    _ds("jsonl-missing-prompt", "cases.jsonl", '{"prompt": "a"}\n\n{"id": "x"}\n',
        ("cases.jsonl:3", "prompt")),
    _ds("jsonl-prompt-not-string", "cases.jsonl", '{"prompt": 42}\n', ("cases.jsonl:1", "prompt")),
    _ds("jsonl-not-object", "cases.jsonl", '["a", "b"]\n', ("cases.jsonl:1", "object")),
    _ds("jsonl-duplicate-id", "cases.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n',
        ("cases.jsonl:2", "duplicate id")),
    _ds("jsonl-bad-messages", "cases.jsonl", '{"messages": [{"role": "wizard", "content": "x"}]}\n',
        ("cases.jsonl:1", "wizard")),
    _ds("json-syntax", "cases.json", '[{"prompt": "a"}\n', ("cases.json",)),
    _ds("csv-no-prompt-column", "cases.csv", "question\nhello\n", ("cases.csv",)),
    _ds("empty-file", "cases.jsonl", "\n\n", ("cases.jsonl", "no cases")),
    _ds("unknown-format", "cases.txt", "hello\n", ("cases.txt", "format")),
    Bad("dataset-not-found", ("missing.jsonl", "not found"),
        suite=DATASET_SUITE.replace("{name}", "missing.jsonl")),
]  # fmt: skip

FLAGS = [
    Bad("flag-gate-nonsense", ("--rollout-gate", "nonsense"), args=("--rollout-gate=nonsense",)),
    Bad("flag-gate-unknown-metric", ("--rollout-gate", "speed"), args=("--rollout-gate=speed:+5%",)),
    Bad("flag-record-maybe", ("--rollout-record", "maybe"), args=("--rollout-record=maybe",)),
    Bad("flag-concurrency-0", ("--rollout-concurrency", "0"), args=("--rollout-concurrency=0",)),
    Bad("flag-concurrency-abc", ("--rollout-concurrency", "abc"),
        args=("--rollout-concurrency=abc",)),
    Bad("flag-exit-foo", ("--rollout-exit", "foo"), args=("--rollout-exit=foo",)),
    Bad("flag-candidate-empty", ("--candidate", "empty"), args=("--candidate=",)),
    Bad("flag-stable-unknown", ("nosuchmodel",), args=("--stable=nosuchmodel",)),
    Bad("flag-kill-empty", ("--rollout-kill", "empty"), args=("--rollout-kill=",)),
]  # fmt: skip

ALL = CONFIGS + DATASETS + FLAGS


def test_table_is_big_enough() -> None:
    assert len(CONFIGS) >= 25 and len(DATASETS) >= 8 and len(FLAGS) >= 5
    assert len({b.id for b in ALL}) == len(ALL)


@pytest.mark.parametrize("bad", ALL, ids=[b.id for b in ALL])
def test_bad_input_is_one_clear_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, bad: Bad
) -> None:
    for var in ("MR_TEST_MISSING_KEY", "MR_TEST_MISSING_FB_KEY", "MODELROLLOUT_KILLED"):
        monkeypatch.delenv(var, raising=False)
    for k, v in bad.env.items():
        monkeypatch.setenv(k, v)
    if bad.pyproject is not None:
        pytester.makepyprojecttoml(bad.pyproject)
    for name, content in bad.files.items():
        (pytester.path / name).write_text(content)
    if bad.suite is not None:
        pytester.makepyfile(test_suite=bad.suite)
    result = pytester.runpytest("-p", "no:cacheprovider", *bad.args)
    out = result.stdout.str() + "\n" + result.stderr.str()
    assert result.ret in (
        pytest.ExitCode.USAGE_ERROR,
        pytest.ExitCode.INTERRUPTED,  # a collection error stops the session
    ), (result.ret, out)
    assert "Traceback" not in out, out
    assert "INTERNALERROR" not in out, out
    lines = [line for line in out.splitlines() if all(n in line for n in bad.needles)]
    assert lines, f"no line names {bad.needles}:\n{out}"
    assert min(len(line) for line in lines) <= 400, lines
