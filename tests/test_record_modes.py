"""Record modes end to end (pytester, real HTTP to a standalone simulator started here).

The simulator runs in this process; ``MODELROLLOUT_SIM_URL`` points the ``sim`` provider of the
inner runs (and of their xdist workers) at it, and every request it serves is counted. Pointing
``MODELROLLOUT_SIM_URL`` at a closed port makes any network call fail: replay must not need one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_modelrollout.sim import SimServer

CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens
XDIST = pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "xdist-2"])

CONFIG = """
[tool.modelrollout]
stable = "sim:stable"
candidate = "sim:good"
"""

SUITE = """
import pytest

PROMPTS = ["Where is my order A-1001?", "Can I change my delivery address?",
           "你好，我的订单什么时候到？", "How do I return a damaged item?"]

@pytest.mark.workflow("support")
@pytest.mark.parametrize("prompt", PROMPTS)
def test_support(rollout, prompt):
    pair = rollout.ask(prompt)
    assert pair.stable.ok and pair.candidate.ok, (pair.stable.error, pair.candidate.error)
    print("REPLY", pair.stable.source, pair.candidate.source, repr(pair.candidate.text[:40]))
    pair.expect_language("same_as_prompt")
"""


class CountingSim:
    def __init__(self) -> None:
        self.server = SimServer().start()
        self.count = 0
        self._lock = threading.Lock()
        handle = self.server.simulator.handle

        def counting(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.count += 1
            return handle(*args, **kwargs)

        self.server.simulator.handle = counting  # type: ignore[method-assign]

    @property
    def url(self) -> str:
        return self.server.base_url


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingSim]:
    s = CountingSim()
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", s.url)
    monkeypatch.setenv("MODELROLLOUT_BACKOFF_SCALE", "0")
    yield s
    s.server.stop()


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyprojecttoml(CONFIG)
    pytester.makepyfile(test_support=SUITE)
    return pytester


def cassettes(root: Path) -> list[Path]:
    return sorted((root / "model_cassettes").rglob("*.json"))


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest("-p", "no:cacheprovider", "-s", "--rollout-no-gate", *args)


@XDIST
def test_new_records_then_replay_needs_no_network(
    project: pytest.Pytester, sim: CountingSim, monkeypatch: pytest.MonkeyPatch, xdist: list[str]
) -> None:
    first = run(project, *xdist, "--rollout-record=new", "--rollout-report=rec.json")
    first.assert_outcomes(passed=4)
    files = cassettes(project.path)
    assert len(files) == 8  # 4 prompts x 2 models, keyed by request (not by test name)
    assert {f.parent.name for f in files} == {"sim_stable", "sim_good"}
    assert sim.count == 8
    doc = json.loads(files[0].read_text())
    assert doc["latency_ms"] > 0 and doc["response"]["output_tokens"] > 0

    # new again: every request is a hit, nothing is sent
    again = run(project, *xdist, "--rollout-record=new")
    again.assert_outcomes(passed=4)
    assert sim.count == 8

    # replay with the simulator unreachable: same results, zero network calls
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", CLOSED)
    replay = run(project, *xdist, "--rollout-record=replay", "--rollout-report=rep.json")
    replay.assert_outcomes(passed=4)
    assert sim.count == 8
    rec, rep = report(project.path / "rec.json"), report(project.path / "rep.json")
    for role in ("stable", "candidate"):
        r, p = rec["workflows"]["support"][role], rep["workflows"]["support"][role]
        assert p["replayed"] == 4 and r["replayed"] == 0
        for key in ("requests", "input_tokens", "output_tokens", "success_rate"):
            assert p[key] == r[key], key
        # the recorded latency is kept
        assert p["latency_p50_ms"] == pytest.approx(r["latency_p50_ms"], rel=0.01)
    if not xdist:  # -s shows the tests' prints only without xdist: same replies, replayed
        replied = sorted(line for line in replay.outlines if "REPLY" in line)
        assert len(replied) == 4
        assert replied == sorted(
            line.replace("REPLY live live", "REPLY replay replay")
            for line in first.outlines
            if "REPLY" in line
        )


SLOW_DISK_CONFTEST = """
import importlib, json, threading

# the module the session imports now (an attribute of the package may be one an earlier
# in-process run imported, which pytester has since dropped from sys.modules)
cassettes = importlib.import_module("pytest_modelrollout.cassettes")

_put = cassettes.CassetteStore.put
first, other = threading.Event(), threading.Event()
seen = []

def put(self, ref, request, entry):
    # a disk that takes its time: the first write finishes only once another call's write
    # has begun (or 20 s have passed)
    if not first.is_set():
        first.set()
        seen.append(other.wait(20))
    else:
        other.set()
    return _put(self, ref, request, entry)

def pytest_configure(config):
    cassettes.CassetteStore.put = put

def pytest_unconfigure(config):
    cassettes.CassetteStore.put = _put
    with open("seen.json", "w") as f:
        json.dump(seen, f)
"""


def test_a_cassette_being_written_does_not_hold_up_the_other_calls(
    project: pytest.Pytester, sim: CountingSim,
) -> None:
    """Recording writes each cassette to disk (fsync'ed); a write that takes a while must
    not stop the other calls in flight from being answered and recorded meanwhile (written on
    the event loop, it held every other call for as long as the disk took)."""
    project.makeconftest(SLOW_DISK_CONFTEST)
    result = run(project, "--rollout-record=all")
    result.assert_outcomes(passed=4)
    assert json.loads((project.path / "seen.json").read_text()) == [True]
    assert len(cassettes(project.path)) == 8


def test_replay_miss_names_the_request(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", CLOSED)
    result = run(project, "--rollout-record=replay", "-k", "A-1001")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines(
        [
            "*no cassette for sim:* request * (prompt: 'Where is my order A-1001?'); record it "
            "with --rollout-record=new*"
        ]
    )


def test_all_overwrites(project: pytest.Pytester, sim: CountingSim) -> None:
    run(project, "--rollout-record=new", "-k", "A-1001").assert_outcomes(passed=1, deselected=3)
    files = cassettes(project.path)
    assert len(files) == 2 and sim.count == 2
    for f in files:
        doc = json.loads(f.read_text())
        doc["response"]["text"] = "TAMPERED " + doc["response"]["text"]
        f.write_text(json.dumps(doc))
    replayed = run(project, "--rollout-record=new", "-k", "A-1001")
    replayed.stdout.fnmatch_lines(["*REPLY replay replay 'TAMPERED*"])
    assert sim.count == 2
    overwritten = run(project, "--rollout-record=all", "-k", "A-1001")
    overwritten.assert_outcomes(passed=1, deselected=3)
    overwritten.stdout.fnmatch_lines(["*REPLY live live*"])
    assert sim.count == 4
    assert cassettes(project.path) == files
    assert all("TAMPERED" not in f.read_text() for f in files)


def test_per_role_record_config(pytester: pytest.Pytester, sim: CountingSim) -> None:
    pytester.makepyprojecttoml(CONFIG + 'record = { stable = "new", candidate = "off" }\n')
    pytester.makepyfile(test_support=SUITE)
    run(pytester, "--rollout-report=1.json").assert_outcomes(passed=4)
    files = cassettes(pytester.path)
    assert {f.parent.name for f in files} == {"sim_stable"} and len(files) == 4
    assert sim.count == 8
    second = run(pytester, "--rollout-report=2.json")
    second.assert_outcomes(passed=4)
    second.stdout.fnmatch_lines(["*REPLY replay live*"])
    assert sim.count == 12  # only the candidate was called
    wf = report(pytester.path / "2.json")["workflows"]["support"]
    assert wf["stable"]["replayed"] == 4 and wf["candidate"]["replayed"] == 0
    out = second.stdout.str()
    assert "replayed" in out  # the terminal summary says how many were replayed


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("cli", "invalid record mode 'sometimes'"),
        ("config", "record"),
        ("role", "stable"),
    ],
)
def test_bad_record_mode_is_one_line_usage_error(
    pytester: pytest.Pytester, where: str, needle: str
) -> None:
    toml = CONFIG
    if where == "config":
        toml += 'record = "sometimes"\n'
    elif where == "role":
        toml += 'record = { stable = "sometimes" }\n'
    pytester.makepyprojecttoml(toml)
    pytester.makepyfile(test_support=SUITE)
    args = ["--rollout-record=sometimes"] if where == "cli" else []
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert needle in err and "sometimes" in err, err
    assert "Traceback" not in err + result.stdout.str()
    assert [line for line in err.splitlines() if "sometimes" in line] == [
        next(line for line in err.splitlines() if "sometimes" in line)
    ]


def test_xdist_workers_recording_the_same_request_never_corrupt(
    pytester: pytest.Pytester, sim: CountingSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyprojecttoml(CONFIG)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.workflow("same")
        @pytest.mark.parametrize("i", range(8))
        def test_same(rollout, i):
            pair = rollout.ask("Where is my order A-7777?")
            assert pair.stable.ok and pair.candidate.ok
        """
    )
    run(pytester, "-n", "2", "--rollout-record=new").assert_outcomes(passed=8)
    files = cassettes(pytester.path)
    assert len(files) == 2  # one request per model, however many tests asked it
    for f in files:
        json.loads(f.read_text())  # complete, valid JSON
    assert not list((pytester.path / "model_cassettes").rglob("*.tmp*"))
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", CLOSED)
    run(pytester, "-n", "2", "--rollout-record=replay").assert_outcomes(passed=8)


def test_cassettes_hold_no_api_key(
    pytester: pytest.Pytester, sim: CountingSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "sk-canary-3f9a1c7e5b2d4680"
    monkeypatch.setenv("CANARY_API_KEY", canary)
    pytester.makepyprojecttoml(
        CONFIG
        + """
[tool.modelrollout.models.keyed]
provider = "sim"
model = "good"
api_key_env = "CANARY_API_KEY"
"""
    )
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.workflow("w", candidate="keyed")
        def test_keyed(rollout):
            # even a prompt that leaks the key must not put it in a cassette
            pair = rollout.ask("Repeat after me: {canary}")
            assert pair.candidate.ok, pair.candidate.error
        """
    )
    run(pytester, "--rollout-record=new").assert_outcomes(passed=1)
    files = cassettes(pytester.path)
    assert len(files) == 2
    for f in files:
        text = f.read_text()
        assert canary not in text
        assert "authorization" not in text.lower()


CASE_SUITE = """
import pytest
from pytest_modelrollout import cases

@pytest.mark.workflow("support", system="Be brief.")
@pytest.mark.parametrize("case", cases("cases.jsonl"))
def test_case(rollout, case):
    pair = rollout.ask(case)
    assert pair.stable.ok and pair.candidate.ok
"""


def test_cassettes_live_beside_each_test_file(
    pytester: pytest.Pytester, sim: CountingSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cassettes go to ``model_cassettes/`` in the test file's folder, for live asks and for
    prefetched dataset cases alike, and replay finds them there."""
    pytester.makepyprojecttoml(CONFIG)
    (pytester.path / "chat").mkdir()
    (pytester.path / "chat" / "test_chat.py").write_text(SUITE)
    (pytester.path / "extract").mkdir()
    (pytester.path / "extract" / "test_extract.py").write_text(CASE_SUITE)
    (pytester.path / "extract" / "cases.jsonl").write_text(
        "".join(json.dumps({"id": f"c{i}", "prompt": f"Refund order A-{100 + i}"}) + "\n"
                for i in range(3))
    )
    run(pytester, "--rollout-record=new").assert_outcomes(passed=7)
    assert len(cassettes(pytester.path / "chat")) == 8
    assert len(cassettes(pytester.path / "extract")) == 6
    assert not (pytester.path / "model_cassettes").exists()
    monkeypatch.setenv("MODELROLLOUT_SIM_URL", CLOSED)
    before = sim.count
    replay = run(pytester, "--rollout-record=replay", "--rollout-report=r.json")
    replay.assert_outcomes(passed=7)
    assert sim.count == before
