"""``--rollout-smoke``: generated smoke items per model in use (real HTTP to the simulator)."""

from __future__ import annotations

import json
import re

import pytest

CHECKS = (
    "api_key",
    "reachable",
    "model_accepted",
    "response_shape",
    "usage_fields",
    "timeout_honoured",
)

CONFIG = """
[tool.modelrollout]
stable = "sim:stable"
candidate = "sim:good"
"""

TOOLS_SUITE = """
import pytest

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]

@pytest.mark.workflow("weather", tools=TOOLS)
def test_weather(rollout):
    pair = rollout.ask("What is the weather in Paris?")
    pair.expect_tool_call("get_weather")
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyprojecttoml(CONFIG)
    return pytester


def _statuses(out: str) -> dict[str, str]:
    """``{"smoke[x]::check": "PASSED", ...}`` from ``-v`` output."""
    found = re.findall(r"^(smoke\S+) (PASSED|FAILED|SKIPPED)", out, re.M)  # plain -v
    found += [(n, s) for s, n in re.findall(r"(PASSED|FAILED|SKIPPED) (smoke\S+)", out)]  # xdist
    return dict(found)


def _glob(name: str) -> str:
    return name.replace("[", "[[]")


def _names(ref: str, *, tools: bool = False) -> list[str]:
    return [f"smoke[{ref}]::{c}" for c in CHECKS + (("tool_calling",) if tools else ())]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_smoke_items_run_first_and_do_not_count(project: pytest.Pytester, xdist: list[str]) -> None:
    project.makepyfile(TOOLS_SUITE)
    result = project.runpytest(
        "-p",
        "no:cacheprovider",
        "-v",
        "--rollout-smoke",
        "--rollout-report=r.json",
        "--rollout-no-gate",
        *xdist,
    )
    result.assert_outcomes(passed=2 * 7 + 1)
    status = _statuses(result.stdout.str())
    for name in _names("sim:stable", tools=True) + _names("sim:good", tools=True):
        assert status.get(name) == "PASSED", (name, status)
    if not xdist:  # in order: stable's checks, candidate's checks, then the suite
        result.stdout.fnmatch_lines(
            [f"{_glob(n)} PASSED*" for n in _names("sim:stable", tools=True)]
            + [f"{_glob(n)} PASSED*" for n in _names("sim:good", tools=True)]
            + ["*test_weather PASSED*"]
        )
    report = json.loads((project.path / "r.json").read_text())
    wf = report["workflows"]["weather"]
    # the smoke calls are not records: one request per model, from the one suite test
    assert wf["stable"]["requests"] == 1
    assert wf["candidate"]["requests"] == 1
    assert set(report["workflows"]) == {"weather"}


def test_smoke_only_with_marker_or_keyword(project: pytest.Pytester) -> None:
    project.makepyfile(TOOLS_SUITE)
    result = project.runpytest("-p", "no:cacheprovider", "--rollout-smoke", "-m", "rollout_smoke")
    result.assert_outcomes(passed=14, deselected=1)
    assert "rollout readiness" not in result.stdout.str()  # no workflow ran: no verdict
    assert result.ret == 0
    result = project.runpytest(
        "-p", "no:cacheprovider", "--rollout-smoke", "-k", "smoke and sim:good and not tool"
    )
    result.assert_outcomes(passed=6, deselected=9)


def test_without_workflow_tests_uses_configured_models_and_fallbacks(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyprojecttoml(
        CONFIG
        + """
[tool.modelrollout.models.cand]
provider = "sim"
model = "verbose"
fallback = "sim:expensive"
"""
    )
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-v", "--rollout-smoke", "--candidate=cand"
    )
    result.assert_outcomes(passed=3 * 6 + 1)
    out = result.stdout.str()
    status = _statuses(out)
    for name in _names("sim:stable") + _names("cand") + _names("sim:expensive"):
        assert status.get(name) == "PASSED", (name, status)
    assert "tool_calling" not in out  # no workflow declares tools


def test_smoke_failures_are_one_line_and_plain(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMOKE_MISSING_KEY", raising=False)
    pytester.makepyprojecttoml(
        """
[tool.modelrollout]
stable = "sim:stable"
candidate = "gone"
[tool.modelrollout.models.gone]
provider = "sim"
model = "no-such-persona"
[tool.modelrollout.models.nousage]
provider = "sim"
model = "fault-no-usage"
[tool.modelrollout.models.keyed]
provider = "openai"
model = "x"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "SMOKE_MISSING_KEY"
"""
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.workflow("a")
        def test_a(candidate):
            candidate.ask("hi")

        @pytest.mark.workflow("b", candidate="nousage")
        def test_b(candidate):
            candidate.ask("hi")

        @pytest.mark.workflow("c", candidate="keyed")
        def test_c(candidate):
            candidate.ask("hi")
        """
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-v", "-rN", "--rollout-smoke", "-m", "rollout_smoke"
    )
    out = result.stdout.str()
    assert "Traceback" not in out and "During handling" not in out
    status = _statuses(out)
    expected_failed = {
        "smoke[gone]::model_accepted",
        "smoke[gone]::response_shape",
        "smoke[gone]::usage_fields",
        "smoke[nousage]::usage_fields",
        *(f"smoke[keyed]::{c}" for c in CHECKS),
    }
    for name in _names("sim:stable") + _names("nousage"):
        if name not in expected_failed:
            assert status[name] == "PASSED", name
    for name in expected_failed:
        assert status[name] == "FAILED", name
    assert status["smoke[gone]::api_key"] == "PASSED"
    result.stdout.fnmatch_lines(
        [
            "*_ smoke[[]gone]::model_accepted _*",
            "model not found: the provider rejected model id 'no-such-persona' (HTTP 404)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ smoke[[]nousage]::usage_fields _*",
            "reply has no usage: input_tokens and output_tokens missing",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ smoke[[]keyed]::api_key _*",
            "API key variable SMOKE_MISSING_KEY is not set (model keyed)",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*_ smoke[[]keyed]::reachable _*", "base URL http://127.0.0.1:9/v1 is not reachable: *"]
    )
    assert result.ret == 1


def test_killed_model_is_skipped_never_called(project: pytest.Pytester) -> None:
    project.makepyfile(TOOLS_SUITE)
    result = project.runpytest(
        "-p",
        "no:cacheprovider",
        "-rs",
        "--rollout-smoke",
        "-m",
        "rollout_smoke",
        "--rollout-kill=sim:good",
    )
    result.assert_outcomes(passed=7, skipped=7, deselected=1)
    result.stdout.fnmatch_lines(["*kill switch: sim:good is killed and never called*"])


def test_timeout_check_classifies_a_tiny_timeout(pytester: pytest.Pytester) -> None:
    """The timeout check itself, on a persona that hangs: classified as timeout, quickly."""
    pytester.makepyprojecttoml(
        '[tool.modelrollout]\nstable = "sim:stable"\ncandidate = "sim:fault-hang"\n'
    )
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-v",
        "--rollout-smoke",
        "-k",
        "timeout_honoured",
        "--durations=0",
        "--durations-min=0",
    )
    result.assert_outcomes(passed=2, deselected=11)
    result.stdout.fnmatch_lines(["smoke[[]sim:fault-hang]::timeout_honoured PASSED*"])
