"""pytest hooks, options, marker and fixtures. The real work is done by :class:`RolloutSession`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._exceptions import ConfigError, ModelRolloutError

if TYPE_CHECKING:
    from .handles import ModelHandle, Rollout, TestContext
    from .session import Options, RolloutSession

# Imported by every pytest run where the plugin is installed: the config's models (pydantic),
# the session and the checks load only in a run that uses modelrollout (:func:`_in_use`), or
# when a test asks for a model fixture. Kept light: a run that does not use the plugin pays
# nothing measurable for it, where loading those took ~0.25 s of every start-up.
SESSION_KEY = pytest.StashKey["RolloutSession"]()
FROZEN_KEY = pytest.StashKey[bool]()
MODEL_FIXTURES = ("rollout", "stable", "candidate")
WORKER_KEY = "modelrollout"


# -- options ---------------------------------------------------------------------------------
def _gate_type(value: str) -> Any:
    from .gates import parse_gate

    try:
        return parse_gate(value, source="cli")
    except ModelRolloutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _record_type(value: str) -> str:
    from .config import RECORD_MODES

    if value not in RECORD_MODES:
        raise argparse.ArgumentTypeError(
            f"invalid record mode {value!r} (choose from {', '.join(RECORD_MODES)})"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _model_ref(value: str) -> str:
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("empty model reference")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("modelrollout", "model rollout (stable vs candidate LLM)")
    g.addoption("--candidate", type=_model_ref, default=None, metavar="REF",
                help="candidate model reference (overrides config)")
    g.addoption("--stable", type=_model_ref, default=None, metavar="REF",
                help="stable model reference (overrides config)")
    g.addoption("--rollout-config", default=None, metavar="PATH",
                help="config file (default: modelrollout.toml or [tool.modelrollout] in pyproject.toml)")
    g.addoption("--rollout-report", default=None, metavar="PATH", help="write the JSON report")
    g.addoption("--rollout-markdown", default=None, metavar="PATH",
                help="write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)")
    g.addoption("--rollout-html", default=None, metavar="PATH",
                help="write a self-contained HTML report with charts")
    g.addoption("--rollout-gate", action="append", type=_gate_type, default=[], metavar="EXPR",
                help="extra rollback trigger, repeatable, e.g. p95_latency:+25%%, error_rate:x2, "
                     "check.json:-2pp, fallback_rate:<5%%, cost_per_success:+20%%")
    g.addoption("--rollout-record", type=_record_type, default=None, metavar="MODE",
                help="cassettes: off (live, default), replay, new, all")
    g.addoption("--rollout-kill", action="append", type=_model_ref, default=[], metavar="REF",
                help="kill switch: never call this model (repeatable; env MODELROLLOUT_KILLED=a,b)")
    g.addoption("--rollout-smoke", action="store_true", default=False,
                help="run the built-in smoke checks for the models in use")
    g.addoption("--rollout-strict", action="store_true", default=False,
                help="failures shared by stable and candidate fail instead of xfail")
    g.addoption("--rollout-no-gate", action="store_true", default=False,
                help="report the verdict but never fail the session on it")
    g.addoption("--rollout-allow-inconclusive", action="store_true", default=False,
                help="an INCONCLUSIVE verdict does not fail the session")
    g.addoption("--rollout-exit", choices=("tests", "verdict"), default=None,
                help="tests (default): failed tests fail the session; verdict: the verdict alone decides")
    g.addoption("--rollout-concurrency", type=_positive_int, default=None, metavar="N",
                help="bound on model calls in flight")
    g.addoption("--rollout-no-prefetch", action="store_true", default=False,
                help="do not send requests ahead of their tests (config prefetch)")


def _options(config: pytest.Config) -> Options:
    from .session import Options

    get = config.getoption
    return Options(
        stable=get("--stable"),
        candidate=get("--candidate"),
        report=get("--rollout-report"),
        markdown=get("--rollout-markdown"),
        html=get("--rollout-html"),
        gates=list(get("--rollout-gate") or []),
        record=get("--rollout-record"),
        killed=list(get("--rollout-kill") or []),
        smoke=bool(get("--rollout-smoke")),
        strict=bool(get("--rollout-strict")),
        no_gate=bool(get("--rollout-no-gate")),
        allow_inconclusive=bool(get("--rollout-allow-inconclusive")),
        exit=get("--rollout-exit"),
        concurrency=get("--rollout-concurrency"),
    )


# -- lifecycle -------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "workflow(name, *, stable=None, candidate=None, gates=None, system=None, tools=None, "
        "params=None): a model-rollout workflow test (modelrollout)",
    )
    if not _is_worker(config):
        config.pluginmanager.register(_WorkerRecordSink(config), "modelrollout-worker-records")
    if _in_use(config):
        _start(config)


def _in_use(config: pytest.Config) -> bool:
    """Whether the run uses modelrollout from its start: a config (``--rollout-config``,
    ``modelrollout.toml``, or ``[tool.modelrollout]`` in the rootdir's ``pyproject.toml``) or
    one of its options. Another run starts it (:func:`_session`) when a collected test asks
    for a model fixture, and the xdist controller when its workers' records arrive."""
    option = config.option
    if any(getattr(option, dest, None) not in (None, False, []) for dest in _OPTION_DESTS):
        return True
    root = Path(str(config.rootpath))
    if (root / "modelrollout.toml").is_file():
        return True
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return False
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    try:
        with pyproject.open("rb") as fh:
            tool = tomllib.load(fh).get("tool")
    except (OSError, ValueError):
        return True  # load_config says what is wrong with it, in one line
    return isinstance(tool, dict) and "modelrollout" in tool


# the options of pytest_addoption, by dest: any of them set means the run uses the plugin
_OPTION_DESTS = (
    "candidate", "stable", "rollout_config", "rollout_report", "rollout_markdown",
    "rollout_html", "rollout_gate", "rollout_record", "rollout_kill", "rollout_smoke",
    "rollout_strict", "rollout_no_gate", "rollout_allow_inconclusive", "rollout_exit",
    "rollout_concurrency", "rollout_no_prefetch",
)


def _start(config: pytest.Config) -> RolloutSession:
    """Load the config and build the run's session (once)."""
    from .config import load_config
    from .session import RolloutSession

    try:
        cfg, path = load_config(Path(str(config.rootpath)), config.getoption("--rollout-config"))
        session = RolloutSession(cfg, _options(config), rootdir=Path(str(config.rootpath)),
                                 config_path=path)
    except ConfigError as exc:
        raise pytest.UsageError(f"modelrollout: {exc}") from None
    session.xdist_worker = _is_worker(config)
    if session.xdist_worker:
        sim = config.workerinput.get(SIM_KEY)  # type: ignore[attr-defined]
        if sim:  # the controller's simulator (_shared_simulator)
            from .sim.process import adopt

            adopt(str(sim))
        address = config.workerinput.get(SLOTS_KEY)  # type: ignore[attr-defined]
        session.slots_address = str(address) if address else None
        from .headstart import HEADSTART_KEY

        session.headstart = bool(
            address and config.workerinput.get(HEADSTART_KEY)  # type: ignore[attr-defined]
        )
    session.remembered_limits = _remembered_limits(config)
    config.stash[SESSION_KEY] = session
    # registered now, before pytest's own cleanups: it runs after them (and their gc pass)
    config.add_cleanup(lambda: _unfreeze(config))
    if session.options.smoke:
        from .smoke import SmokePlugin

        config.pluginmanager.register(SmokePlugin(session), "modelrollout-smoke")
    from .prefetch import PrefetchPlugin

    config.pluginmanager.register(
        PrefetchPlugin(config, session, lambda item: _test_context(item, session)),
        "modelrollout-prefetch",
    )
    if _is_xdist_controller(config):
        from .headstart import (
            HEADSTART_PLUGIN,
            HeadStartOff,
            HeadStartPlugin,
            headstart_off,
            worker_nice,
        )

        why = headstart_off(config, session)
        if why is None:
            config.pluginmanager.register(
                HeadStartPlugin(
                    config,
                    session,
                    lambda item: _test_context(item, session),
                    lambda: _slot_broker(config),
                    worker_nice(),
                ),
                HEADSTART_PLUGIN,
            )
        elif why:
            config.pluginmanager.register(HeadStartOff(why), HEADSTART_PLUGIN)
    return session


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the configured models' clients on the event loop while pytest collects, so that
    the first prefetched calls leave at once. After every ``pytest_configure`` (a conftest may
    set the environment there); the base URL and the provider are resolved here, keys are still
    read at call time."""
    config = session.config
    rs = config.stash.get(SESSION_KEY, None)
    if rs is None or not rs.project_configured or config.option.collectonly:
        return
    from .prefetch import prefetch_enabled

    if _is_xdist_controller(config):
        _freeze_startup_objects(config)  # it collects nothing: its start-up is done here
        return  # it runs no tests; its only calls are its head start's (headstart.py)
    if not prefetch_enabled(config, rs):  # --rollout-no-prefetch
        return
    if rs.headstart:
        return  # the controller opens the run's connections for its head start (most calls)
    rs.warm(rs.default_roles())


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    rs = config.stash.get(SESSION_KEY, None)
    if rs is None or config.option.collectonly or not rs.project_configured:
        return
    # only a run of model tests alone: frozen objects are never collected during the run, and
    # a unit test in the same run might rely on gc.collect() freeing something made at import
    if session.items and all(_marker(item) is not None for item in session.items):
        _freeze_startup_objects(config)


def _freeze_startup_objects(config: pytest.Config) -> None:
    """Keep what start-up and collection built out of the garbage collector's way.

    Modules, classes, fixtures and collected items (~60,000 objects in a small suite) live until
    the end of the session, yet every full collection traverses them: ~50 ms per pass on a
    2-core CI machine, with the GIL held, so the calls in flight stall, and once more in
    pytest's own collection at unconfigure. ``gc.freeze()`` moves them to the permanent
    generation; they are unfrozen when the config is cleaned up (after pytest's collection), so
    nothing stays frozen after the session. Done only where no other test code runs: in a run
    whose items are all workflow tests, and in the xdist controller. Not done when something
    else froze objects already (a session inside a session, an application that manages the
    collector) or gc is off.

    The same run also freezes everything at interpreter exit (:func:`_freeze_at_exit`).
    """
    import gc

    if not gc.isenabled() or gc.get_freeze_count():
        return
    gc.freeze()
    config.stash[FROZEN_KEY] = True
    _freeze_at_exit()


_exit_freeze_registered = False


def _freeze_at_exit() -> None:
    """At interpreter exit, move every object to the collector's permanent generation.

    The interpreter's finalization collects and frees the cycles among modules, classes,
    functions and items one by one: ~0.2 s of every pytest process's exit on a 2-core CI
    machine (and in each xdist worker), after the last result is printed. Frozen, they are left
    to the operating system like the rest of the process's memory. Registered (once per
    process) when the session froze its start-up objects, so only where no other test code ran:
    what is skipped is the final collection of cyclic garbage (``__del__`` of objects in
    reference cycles still alive at exit, which Python does not promise to call). Non-cyclic
    objects, ``atexit`` handlers, ``weakref.finalize`` and the flushing of ``sys.stdout`` /
    ``sys.stderr`` are unaffected.
    """
    global _exit_freeze_registered

    if _exit_freeze_registered:
        return
    _exit_freeze_registered = True
    import atexit
    import gc

    atexit.register(gc.freeze)


def _unfreeze(config: pytest.Config) -> None:
    if config.stash.get(FROZEN_KEY, False):
        import gc

        config.stash[FROZEN_KEY] = False
        gc.unfreeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


def _session(config: pytest.Config) -> RolloutSession:
    session = config.stash.get(SESSION_KEY, None)
    return session if session is not None else _start(config)


def _marker(item: pytest.Item) -> pytest.Mark | None:
    return item.get_closest_marker("workflow")


def _workflow_name(mark: pytest.Mark, nodeid: str) -> str:
    name = mark.args[0] if mark.args else mark.kwargs.get("name")
    if not isinstance(name, str) or not name.strip():
        raise pytest.UsageError(
            f"modelrollout: {nodeid}: @pytest.mark.workflow needs a workflow name, "
            "e.g. @pytest.mark.workflow('support_chat')"
        )
    unknown = set(mark.kwargs) - {"name", "stable", "candidate", "gates", "system", "tools", "params"}
    if unknown:
        raise pytest.UsageError(
            f"modelrollout: {nodeid}: unknown workflow marker argument(s): {', '.join(sorted(unknown))}"
        )
    return name.strip()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if SESSION_KEY not in config.stash and not any(
        f in getattr(item, "fixturenames", ()) for item in items for f in MODEL_FIXTURES
    ):
        return  # a run that does not use modelrollout
    rs = _session(config)
    used = False
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        uses = [f for f in MODEL_FIXTURES if f in fixturenames]
        mark = _marker(item)
        if not uses:
            continue
        if mark is None:
            raise pytest.UsageError(
                f"modelrollout: {item.nodeid} uses the {uses[0]!r} fixture without "
                "@pytest.mark.workflow('name')"
            )
        used = True
        name = _workflow_name(mark, item.nodeid)
        try:
            models = rs.models_for(name, mark.kwargs.get("stable"), mark.kwargs.get("candidate"))
            if mark.kwargs.get("gates") is not None:
                rs.set_marker_gates(name, mark.kwargs["gates"])
        except ConfigError as exc:
            raise pytest.UsageError(f"modelrollout: {exc}") from None
        needed = {"stable": models.stable, "candidate": models.candidate}
        if uses == ["stable"]:
            needed.pop("candidate")
        elif uses == ["candidate"]:
            needed.pop("stable")
        killed = [f"{role} {ref!r}" for role, ref in needed.items() if rs.is_killed(ref)]
        if killed:
            item.add_marker(pytest.mark.skip(
                reason=f"kill switch: {' and '.join(killed)} is killed and never called"))
    if used and not rs.options.smoke:  # with --rollout-smoke, smoke[REF]::api_key reports it
        try:
            rs.check_keys()
        except ConfigError as exc:
            raise pytest.UsageError(f"modelrollout: {exc}") from None


# -- malformed datasets ----------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A DatasetError while collecting (``cases()`` at import) is one line, not a traceback."""
    from _pytest.reports import CollectErrorRepr

    from ._exceptions import DatasetError

    rep = yield
    call = rep.__dict__.get("call")
    excinfo = getattr(call, "excinfo", None)
    if rep.failed and excinfo is not None:
        exc: BaseException | None = excinfo.value
        seen = 0
        while exc is not None and not isinstance(exc, DatasetError) and seen < 10:
            exc, seen = exc.__cause__ or exc.__context__, seen + 1
        if isinstance(exc, DatasetError):
            rep.longrepr = CollectErrorRepr(f"modelrollout: DatasetError: {exc}")
    return rep


# -- fixtures --------------------------------------------------------------------------------
def _test_context(node: pytest.Item, rs: RolloutSession) -> TestContext:
    """The test's context from its workflow marker (the fixture and prefetch both use this)."""
    from .handles import TestContext
    from .prefetch import guessed_case_prompt, planned_prompt

    mark = _marker(node)
    assert mark is not None
    name = _workflow_name(mark, node.nodeid)
    models = rs.models_for(name, mark.kwargs.get("stable"), mark.kwargs.get("candidate"))
    return TestContext(
        session=rs,
        test_id=node.nodeid,
        workflow=name,
        stable_ref=models.stable,
        candidate_ref=models.candidate,
        system=mark.kwargs.get("system"),
        tools=mark.kwargs.get("tools"),
        params=dict(mark.kwargs.get("params") or {}),
        test_dir=Path(str(node.path)).parent,
        planned_prompt=planned_prompt(node),
        guessed_case_prompt=guessed_case_prompt(node),
    )


@pytest.fixture
def _modelrollout_context(request: pytest.FixtureRequest) -> Iterator[TestContext]:
    node = request.node
    mark = _marker(node)
    if mark is None:
        raise pytest.UsageError(
            f"modelrollout: {node.nodeid} uses a model fixture without @pytest.mark.workflow('name')"
        )
    ctx = _test_context(node, _session(request.config))
    yield ctx
    props = getattr(node, "user_properties", None)
    if props is not None:
        for role, reply in ctx.replies:
            props.append((f"modelrollout.{role}.model", reply.model))
            props.append((f"modelrollout.{role}.ok", reply.ok))
            if reply.latency_ms is not None:
                props.append((f"modelrollout.{role}.latency_ms", round(reply.latency_ms, 1)))
            if reply.output_tokens is not None:
                props.append((f"modelrollout.{role}.output_tokens", reply.output_tokens))
            if reply.cost_usd is not None:
                props.append((f"modelrollout.{role}.cost_usd", reply.cost_usd))
            if reply.error:
                props.append((f"modelrollout.{role}.error", reply.error))


@pytest.fixture
def rollout(_modelrollout_context: TestContext) -> Rollout:
    """Ask the stable and the candidate model the same thing; ``.ask(...) -> Pair``."""
    from .handles import Rollout

    return Rollout(_modelrollout_context)


@pytest.fixture
def stable(_modelrollout_context: TestContext) -> ModelHandle:
    """The workflow's stable model; ``.ask(...) -> Reply``."""
    from .handles import ModelHandle

    return ModelHandle(_modelrollout_context, "stable")


@pytest.fixture
def candidate(_modelrollout_context: TestContext) -> ModelHandle:
    """The workflow's candidate model; ``.ask(...) -> Reply``."""
    from .handles import ModelHandle

    return ModelHandle(_modelrollout_context, "candidate")


# -- xdist -----------------------------------------------------------------------------------
def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_xdist_controller(config: pytest.Config) -> bool:
    """``-n N`` / ``--dist``: xdist has set ``dist`` by the time plugins are configured (its
    own ``DSession`` may not be registered yet)."""
    dist = getattr(config.option, "dist", "no")
    return not _is_worker(config) and dist not in (None, "no")


REPORT_ATTR = "modelrollout_records"
DIST_KEY = "modelrollout_dist"
SLOTS_KEY = "modelrollout_slots"
SIM_KEY = "modelrollout_sim"  # the controller's simulator, for its workers (_shared_simulator)
_BROKER = pytest.StashKey[Any]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """On an xdist worker, send the test's records with its teardown report.

    The controller merges them as they come (:class:`_WorkerRecordSink`), so a worker that
    crashes loses only the test it was running, not everything it did before.
    """
    outcome = yield
    if call.when != "teardown" or not _is_worker(item.config):
        return
    rs = item.config.stash.get(SESSION_KEY, None)
    payload = rs.drain_new_records() if rs is not None else None
    if payload is not None:
        setattr(outcome.get_result(), REPORT_ATTR, payload)


class _WorkerRecordSink:
    """Controller side: merge the records that arrive with the workers' test reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, REPORT_ATTR, None)
        if isinstance(payload, dict):
            session = _session(self.config)
            session.merge_increment(payload)
            # the workers' calls are in flight: load what the end of the session needs now
            session.preload_end()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    output = getattr(node, "workeroutput", None) or {}
    rs = node.config.stash.get(SESSION_KEY, None)
    if rs is None:
        if output.get(WORKER_KEY) is None:
            return
        rs = _session(node.config)
    worker = str((getattr(node, "gateway", None) and node.gateway.id) or "worker")
    rs.merge_worker(output.get(WORKER_KEY), worker)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each xdist worker how items are distributed (workers see ``dist = "no"``) and
    where the run's limits are kept: the controller serves them to every worker
    (:mod:`.providers.slots`), so that one worker alone may use all of them."""
    config = node.config
    node.workerinput[DIST_KEY] = str(config.getvalue("dist"))
    rs = config.stash.get(SESSION_KEY, None)
    if rs is None or not rs.project_configured:
        return
    sim = _shared_simulator(rs, node)
    if sim is not None:
        node.workerinput[SIM_KEY] = sim
    broker = _slot_broker(config)
    if broker is None:
        return
    node.workerinput[SLOTS_KEY] = broker.address
    from .headstart import HEADSTART_KEY, HEADSTART_PLUGIN

    headstart = config.pluginmanager.get_plugin(HEADSTART_PLUGIN)
    if headstart is not None and headstart.broker is not None:  # its calls may be underway

        node.workerinput[HEADSTART_KEY] = True


def _shared_simulator(rs: RolloutSession, node: Any) -> str | None:
    """The base URL of the controller's simulator, for a worker on this machine, when the
    run's models are the simulator's and it runs in a child process (no
    ``MODELROLLOUT_SIM_URL``, not in-process): started now if it is not yet (its start
    overlaps the workers'). None otherwise: the worker starts its own when it needs one."""
    from .providers.presets import PRESETS, SIM_URL_ENV
    from .sim.process import in_process

    spec = getattr(getattr(node, "gateway", None), "spec", None)
    if spec is None or not getattr(spec, "popen", False) or getattr(spec, "via", None):
        return None  # a worker elsewhere would not reach this machine's loopback
    if os.environ.get(SIM_URL_ENV, "").strip() or in_process():
        return None
    try:
        refs = [ref for ref in rs.default_roles().values() if ref]
        if not any(PRESETS[m.provider].dynamic_base_url and not m.base_url
                   for m in map(rs.spec, refs) if m.provider in PRESETS):
            return None
        from .sim.process import simulator_url

        return simulator_url()
    except Exception:  # the workers start their own, as before
        return None


def _slot_broker(config: pytest.Config) -> Any:
    """The controller's slot broker, started on first use; None if it cannot start (said
    once: the workers then keep to their shares of the limits)."""
    broker = config.stash.get(_BROKER, None)
    if broker is None:
        from .providers.slots import SlotBroker

        broker = SlotBroker()
        try:
            broker.start()
        except Exception as exc:  # the workers keep to their shares of the limits
            config.stash[_BROKER] = False
            tr = config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(f"modelrollout: cannot start the slot broker ({exc}); each "
                              "worker keeps to its share of the limits", yellow=True)
            return None
        config.stash[_BROKER] = broker
        config.add_cleanup(broker.close)
    return broker or None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``-n N --dist load`` in a project set up for modelrollout, keep the workers'
    queues as deep as their prefetch windows (see :func:`prefetch.make_load_scheduler`)."""
    rs = config.stash.get(SESSION_KEY, None)
    if rs is None or str(config.getvalue("dist")) != "load":
        return None
    if config.getoption("maxschedchunk", None) is not None:
        return None  # the user tunes xdist's own chunking: leave it to xdist
    if not rs.project_configured:
        return None  # the plugin is installed but this project does not use it
    from .prefetch import make_load_scheduler, prefetch_enabled

    if not prefetch_enabled(config, rs):
        return None
    return make_load_scheduler(config, log, rs.options.concurrency or rs.cfg.concurrency)


# -- the limits providers stated, kept in pytest's cache for the next run -------------------
LIMITS_CACHE_KEY = "modelrollout/stated-limits"
LIMITS_KEPT_S = 7 * 24 * 3600.0  # a key's limits change with its tier, rarely


def _remembered_limits(config: pytest.Config) -> dict[str, dict[str, Any]]:
    """The limits providers stated in the runs of the last week (endpoint -> ``{"rpm",
    "tokens", "at"}``), from pytest's cache (none with ``-p no:cacheprovider``)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return {}
    try:
        data = cache.get(LIMITS_CACHE_KEY, {})
    except Exception:  # an unreadable cache is an empty one
        return {}
    now = time.time()
    out: dict[str, dict[str, Any]] = {}
    if isinstance(data, dict):
        for key, entry in data.items():
            at = entry.get("at") if isinstance(entry, dict) else None
            if isinstance(at, (int, float)) and 0 <= now - at < LIMITS_KEPT_S:
                out[str(key)] = entry
    return out


def _remember_limits(config: pytest.Config, rs: RolloutSession) -> None:
    """Keep the limits this run's replies stated (its workers' too) for the next run."""
    cache = getattr(config, "cache", None)
    stated = rs.stated_limits()
    if cache is None or not stated:
        return
    kept = _remembered_limits(config)
    now = time.time()
    for key, entry in stated.items():
        kept[key] = {**kept.get(key, {}), **entry, "at": now}
    with contextlib.suppress(Exception):  # (pytest warns of a cache it cannot write)
        cache.set(LIMITS_CACHE_KEY, kept)


# -- end of session --------------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    rs = config.stash.get(SESSION_KEY, None)
    if rs is None:
        return
    if _is_worker(config):
        config.workeroutput[WORKER_KEY] = rs.worker_payload()  # type: ignore[attr-defined]
        return
    _remember_limits(config, rs)
    if config.option.collectonly:
        return  # nothing ran: no verdict, and the exit status is pytest's
    if not rs.workflows and not rs.records.calls:
        return
    complete = int(exitstatus) not in (int(pytest.ExitCode.INTERRUPTED), int(pytest.ExitCode.INTERNAL_ERROR))
    rs.finish(complete=complete)
    new_status = rs.exit_status(int(session.exitstatus))
    if new_status is not None:
        session.exitstatus = new_status


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    rs = config.stash.get(SESSION_KEY, None)
    if rs is None or rs.summary is None:
        return
    tr = terminalreporter
    tr.section("rollout readiness")
    for err in rs.report_errors:
        tr.write_line(f"modelrollout: {err}", red=True)
    for line in rs.terminal_lines(verbose=config.getoption("verbose") > 0):
        tr.write_line(line)
    broker = config.stash.get(_BROKER, None)
    for line in _pace_lines(rs, broker):
        tr.write_line(line, yellow=True)
    if config.getoption("verbose") > 0:
        for line in _token_lines(rs, broker):
            tr.write_line(line)
    if broker and config.getoption("verbose") > 0:
        line = _limits_line(broker.usage())
        if line:
            tr.write_line(line)


def _pace_lines(rs: RolloutSession, broker: Any) -> list[str]:
    """What each model's provider said with its 429s and the pace the run kept to: this
    process's clients, and under xdist the pace the controller's broker learned from every
    worker's replies."""
    from .providers.slots import limit_key

    paces = dict(rs.paces())
    if broker:
        prefix = limit_key("model", "")
        for key, pace in list(broker.paces.items()):
            if pace.limited and key.startswith(prefix):
                paces[key.removeprefix(prefix)] = pace
    return [line for ref, pace in sorted(paces.items()) if (line := pace.describe(ref))]


_TOKEN_KINDS = {"tpm": "prompt and answer", "itpm": "input", "otpm": "output"}


def _token_lines(rs: RolloutSession, broker: Any) -> list[str]:
    """With ``-v``: the tokens-a-minute limits each model was kept to (the config's ``tpm``, or
    95 % of what its provider states), e.g. ``modelrollout: sim:good kept to tokens a minute:
    152000 (prompt and answer)``; under xdist, as the controller's broker kept them."""
    limits = rs.token_limits()
    if broker:
        for ref, rates in broker.token_rates().items():
            limits.setdefault(ref, {}).update(rates)
    return [f"modelrollout: {ref} kept to tokens a minute: " + ", ".join(
        f"{rate:.0f} ({_TOKEN_KINDS[kind]})" for kind, rate in sorted(rates.items()))
        for ref, rates in sorted(limits.items())]


def _limits_line(usage: list[tuple[str, int, int]]) -> str:
    """With ``-v`` under xdist: how much of each limit the workers used at once, e.g.
    ``modelrollout limits, shared by the xdist workers: at most 16 calls in flight at once
    (concurrency 16); sim:stable 8 (max_concurrency 8), sim:good 8 (8)``."""
    from .providers.slots import RUN_KEY, limit_key

    prefix = limit_key("model", "")
    run = [(peak, limit) for key, peak, limit in usage if key == RUN_KEY]
    models = [(key.removeprefix(prefix), peak, limit) for key, peak, limit in usage
              if key.startswith(prefix)]  # fmt: skip
    if not run and not models:
        return ""
    parts = []
    if run:
        parts.append(f"at most {run[0][0]} calls in flight at once (concurrency {run[0][1]})")
    parts.append(", ".join(
        f"{ref} {peak} ({'max_concurrency ' if i == 0 else ''}{limit})"
        for i, (ref, peak, limit) in enumerate(sorted(models))
    ))
    return "modelrollout limits, shared by the xdist workers: " + "; ".join(p for p in parts if p)


__all__ = [
    "candidate",
    "rollout",
    "stable",
]
