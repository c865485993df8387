"""The xdist controller's head start: the first requests leave while the workers start.

Under ``pytest -n N`` nothing is called before a worker has started, imported pytest, the
plugins and the config, and collected the suite: half a second with a core to itself, more
with more processes than cores, while the controller waits for them (xdist's controller never
collects). So the controller collects the suite itself, once, as it starts its workers
(beside xdist starting them on pytest 8.4+, just before on older pytest), and sends each
test's first ask that is read in full from the test's source (what a run without xdist sends
ahead without a probe: see :mod:`.prefetch`) with the later asks the test always makes that
are read in full too, in run order, while the workers start, and on while its window has room.
From each test's teardown report it learns what a run without xdist learns when a test ends:
what the test did not take is unused (its room in the window freed), and a function whose
tests take none of it (or not its later asks, or only some of the models) gets no more of it.

The workers ask for what they need from the controller before they send a request: each call
of a test (prefetched or not) first *claims* its request from the controller, by test id,
model role, reference and request key (:mod:`.providers.slots`, the ``q`` message). A claim
for a request the controller sent takes its result (the call's own result, latency included,
as :func:`~.providers.base.result_to_wire` carries it); any other claim is answered at once
with nothing, and the controller never sends anything for that test afterwards. So every
request is sent once, by the controller or by the worker that runs its test, and what a test
gets is what it would have got from its own call.

The controller's collection runs ``pytest --collect-only`` in the controller's process with
the run's own arguments and ini file, its conftest files, and among the installed plugins only
this plugin, xdist and :data:`HARMLESS_PLUGINS` (another plugin loaded from the environment
could write files or start services at the end of a session); ``-p`` plugins and
``pytest_plugins`` are loaded as usual. Anything that makes that collection fail or differ from
the run's — an option of another installed plugin on the command line (``--cov``), a
collection error, a working directory changed since start-up — turns the head start off for
the run: the workers then call everything themselves, as before. Calls that no test claims (a
test deselected by a plugin the controller did not load, a run stopped early, an ask under a
condition) are at most the controller's window ahead: ``AHEAD_FACTOR`` x ``WINDOW_FACTOR`` x
concurrency, and for a test function whose tests all leave theirs, at most what was sent
before two of its tests ended.

Cassettes: the controller reads them as the workers will, and writes none. A role that only
replays (``replay``) is never sent; under ``new`` a request already recorded is not sent (the
worker replays it), a miss is; under ``all`` every request is sent. The worker that claims a
result records it in its cassette, as it records its own calls. Not used when no model is
live or recording everything (``off`` / ``all``): a run whose models all replay or record
their misses (``new``) mostly replays, and the controller's collection would cost the
workers' start-up more than it saves. Nor with ``--dist each`` (every worker runs every
test), with prefetch off, or with ``MODELROLLOUT_HEADSTART=0``.

With a head start the workers on this machine start ``nice`` :data:`WORKER_NICE` steps below
the controller (:meth:`HeadStartPlugin.pytest_xdist_setupnodes`), so that they do not hold back
its calls' event loop while they start.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import os
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .prefetch import (
    AHEAD_FACTOR,
    WINDOW_FACTOR,
    ContextFactory,
    Outcome,
    _planned,
    _source_kwargs,
    function_key,
    is_guess,
    mostly_unused,
    plan_item,
    plan_later,
)
from .providers.base import result_to_wire

if TYPE_CHECKING:
    from .session import RolloutSession

HEADSTART_KEY = "modelrollout_headstart"  # in a worker's workerinput: claim from the controller
HEADSTART_PLUGIN = "modelrollout-headstart"  # its name in the controller's plugin manager
HEADSTART_ENV = "MODELROLLOUT_HEADSTART"
WORKER_NICE_ENV = "MODELROLLOUT_WORKER_NICE"
# how many steps of niceness the workers on this machine start below the controller's CPU
# priority with a head start (-n 4 on 2 cores: 3 and 5 did as little as 0; 10, 15 and 19 the same)
WORKER_NICE = 10
# the installed plugins the controller's own collection loads (the others are not loaded)
COLLECTION_PLUGINS = ("xdist.plugin", "xdist.looponfail", "pytest_modelrollout.plugin")
# and those that only add markers, fixtures and options, loaded there when the run loaded them
# (their options and markers are in many projects' addopts and tests)
HARMLESS_PLUGINS = ("pytest_asyncio", "anyio", "pytest_mock", "pytest_timeout")
Key = tuple[str, str, str, str]  # test id, role, model reference, request key
Planned = tuple[str, str, Any, bool]  # role, model reference, request, of the first ask


OFF_CASSETTES = (
    "every model replays its cassettes (--rollout-record=replay): there is nothing to send"
)


def headstart_off(config: pytest.Config, session: RolloutSession) -> str | None:
    """None when the xdist controller should send requests while its workers start; else
    why not, for ``-v`` ("": nothing to say, the user turned it off or it has no use)."""
    from .prefetch import prefetch_enabled

    if os.environ.get(HEADSTART_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return ""
    if not session.project_configured or not prefetch_enabled(config, session):
        return ""
    if str(config.getvalue("dist")) in ("no", "each"):
        return ""
    # a model that only replays sends nothing. One that records its misses (``new``) may send
    # every request (a suite's first recording) or none: the head start sends only what its
    # cassettes miss (-n 4 on 2 cores, the 200-case suite: nothing recorded, 5.46 s without
    # it and 4.50 s with it, against 3.67 s at -n 0; all recorded, 3.01 s against 2.88 s)
    if all(mode == "replay" for mode in session.record_modes.values()):
        return OFF_CASSETTES
    return None


def worker_nice() -> int:
    """The niceness the head start adds to its local workers' (:data:`WORKER_NICE_ENV`, else
    :data:`WORKER_NICE`; 0: none)."""
    raw = os.environ.get(WORKER_NICE_ENV, "").strip()
    if not raw:
        return WORKER_NICE
    level = int(raw) if raw.isdigit() else -1
    if not 0 <= level <= 19:
        raise pytest.UsageError(
            f"modelrollout: {WORKER_NICE_ENV} must be a whole number from 0 (the workers at the "
            f"controller's CPU priority) to 19, got {raw!r}"
        )
    return level


@dataclass
class HeadStartOff:
    """Registered on the xdist controller in the head start's place when it is off for a
    reason ``-v`` says."""

    off: str
    headstart: None = None
    broker: None = None


class _Items:
    """Takes the items of the controller's own collection (after every plugin's reordering
    and deselection)."""

    def __init__(self) -> None:
        self.items: list[pytest.Item] | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.items = list(items)


def autoload_flag() -> bool:
    """pytest has ``--disable-plugin-autoload`` (8.4 and later): the controller's collection
    can then run beside xdist starting its workers, whose environment the older way
    (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``, for the whole process) would reach."""
    try:
        major, minor = (int(x) for x in pytest.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (8, 4)


def collect_items(config: pytest.Config) -> tuple[list[pytest.Item] | None, str]:
    """The run's items, collected in this process as a run without xdist collects them; or
    None and why not (one line)."""
    params = config.invocation_params
    try:
        if Path.cwd() != Path(params.dir):
            return None, "the working directory changed since pytest started"
    except OSError as exc:
        return None, f"no working directory ({exc})"
    # the cache plugin stays: --lf / --ff / --sw select and order what the workers will run (a
    # collection writes nothing to the cache that the run does not write at its end)
    args = [*params.args, "-n", "0", "--collect-only", "-q", "--capture=no"]
    for plugin in [*COLLECTION_PLUGINS, *_harmless_plugins(config)]:
        args += ["-p", plugin]
    if config.getoption("xmlpath", None):
        args.append(f"--junitxml={os.devnull}")  # it writes its file at the session's end
    grab = _Items()
    out = io.StringIO()
    flag = autoload_flag()
    saved = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    if flag:
        args.append("--disable-plugin-autoload")
    else:
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pytest.main(args, plugins=[grab])
    except Exception as exc:  # never the run's problem: its workers collect as before
        return None, f"the controller's collection failed ({type(exc).__name__}: {exc})"
    finally:
        if not flag:
            if saved is None:
                os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
            else:
                os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = saved
    if code != 0 or grab.items is None:
        return None, f"the controller's collection did not succeed ({_why(out.getvalue(), code)})"
    return grab.items, ""


def _harmless_plugins(config: pytest.Config) -> list[str]:
    """The modules of the run's plugins from :data:`HARMLESS_PLUGINS`."""
    names = []
    for _, plugin in config.pluginmanager.list_name_plugin():
        module = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
        if module and module.split(".")[0] in HARMLESS_PLUGINS:
            names.append(module)
    return sorted(set(names))


def _why(output: str, code: Any) -> str:
    """One line on why a collection failed, from its output."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in lines:
        if "error:" in line:  # a usage error: "prog: error: unrecognized arguments: --cov"
            return line.split("error:", 1)[1].strip()
    for line in reversed(lines):  # "Interrupted: 1 error during collection", "1 error in 0.1s"
        if "error" in line.lower():
            return line.strip("= ")
    return f"exit status {int(code)}"


@dataclass
class HeadStartStats:
    sent: int = 0  # requests the controller sent
    taken: int = 0  # results a worker took for a request it sent ahead itself
    taken_live: int = 0  # results a worker took for a test's own ask
    unused: int = 0  # sent, and no test asked for them


class HeadStart:
    """The controller's calls: planned in run order on a thread of their own, sent on the
    session's event loop, handed to the workers' claims (on the slot broker's loop)."""

    def __init__(
        self,
        session: RolloutSession,
        items: Sequence[pytest.Item],
        context_for: ContextFactory,
        concurrency: int,
    ) -> None:
        self.session = session
        self.items = list(items)
        self.context_for = context_for
        self.window = max(1, WINDOW_FACTOR * concurrency)  # in flight
        self.max_ahead = AHEAD_FACTOR * self.window  # in flight or waiting for a claim
        self.stats = HeadStartStats()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._calls: dict[Key, concurrent.futures.Future[Outcome]] = {}
        self._claimed: set[str] = set()  # tests a worker has claimed: never sent for
        self._in_flight = 0
        # what was learned from the tests that finished, as a run without xdist learns it
        # (:class:`.prefetch.Prefetcher`): sent for each test (key, of its first ask?), the
        # keys a worker took, each test's function
        self._sent_for: dict[str, list[tuple[Key, bool]]] = {}
        self._taken: dict[str, set[Key]] = {}
        self._function: dict[str, str] = {}
        self._off: set[str] = set()  # functions whose tests took nothing: nothing more sent
        self._no_later: set[str] = set()  # functions whose later asks went unused: first only
        self._roles: dict[str, frozenset[str]] = {}  # function -> the models its tests ask
        self._finished_of: collections.Counter[str] = collections.Counter()
        self._unused_of: collections.Counter[str] = collections.Counter()
        self._later_unused_of: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="modelrollout-headstart",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the controller's side --------------------------------------------------------------
    def _run(self) -> None:
        try:
            for item in self.items:
                with self._lock:
                    while not self._closed and (
                        self._in_flight >= self.window or len(self._calls) >= self.max_ahead
                    ):
                        self._room.wait()
                    if self._closed:
                        return
                    if item.nodeid in self._claimed or function_key(item) in self._off:
                        continue
                calls = self._plan(item)
                if calls:
                    self._send(item, calls)
        except Exception:  # never the run's problem: the workers call what is not sent
            return

    def _plan(self, item: pytest.Item) -> list[Planned]:
        """The item's first ask, when it is read in full from the test's source (what a run
        without xdist sends ahead without a probe), and the later asks the test always makes
        that are read in full too, unless its function's tests left them unused."""
        planned = _planned(item)
        if planned is None:
            return []
        ask_kwargs = _source_kwargs(item, planned)
        if ask_kwargs is None or is_guess(item):
            return []  # (a plan that read the environment: its workers probe it)
        fkey = function_key(item)
        with self._lock:
            roles = self._roles.get(fkey)
            later_ok = fkey not in self._no_later
        first = plan_item(item, self.session, self.context_for, ask_kwargs, roles)
        later = plan_later(item, self.session, self.context_for, first) if first and later_ok else []
        out: list[Planned] = [(role, ref, request, True) for role, ref, request in first]
        return out + [(role, ref, request, False) for role, ref, request in later]

    def _recorded(self, item: pytest.Item, role: str, ref: str, request: Any) -> bool:
        """Whether the test's worker replays this call from a cassette rather than sending it
        (a role that only replays; under ``new``, a request already recorded)."""
        mode = self.session.record_modes.get(role, "off")
        if mode in ("off", "all"):
            return False
        if mode == "replay":
            return True
        try:
            store = self.session.store(role, Path(str(item.path)).parent)
            return store.get(ref, request) is not None
        except Exception:  # a corrupt cassette: its test reports it
            return True

    async def _live(self, ref: str, request: Any) -> Outcome:
        """The controller's call: live, never written to a cassette (the worker that claims
        the result records it, as it records its own calls)."""
        return await self.session.registry.client(ref).call(request), "live"

    def _send(self, item: pytest.Item, calls: list[Planned]) -> None:
        runner = self.session.runner
        calls = [c for c in calls if not self._recorded(item, *c[:3])]
        sent = []
        nodeid = item.nodeid
        with self._lock:
            if self._closed or nodeid in self._claimed:
                return  # a worker got there first
            for role, ref, request, first in calls:
                key = (nodeid, role, ref, request.key(ref))
                if key in self._calls:
                    continue  # the same request twice in one test: asked after the first
                future = runner.submit(self._live(ref, request))
                self._calls[key] = future
                self._sent_for.setdefault(nodeid, []).append((key, first))
                self._in_flight += 1
                self.stats.sent += 1
                sent.append(future)
            if sent:
                self._function[nodeid] = function_key(item)
        for future in sent:  # outside the lock: a call already done calls back at once, here
            future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[Outcome]) -> None:
        with self._lock:
            self._in_flight -= 1
            self._room.notify()

    # -- the workers' side --------------------------------------------------------------------
    async def claim(
        self, test_id: str, role: str, ref: str, key: str, ahead: bool
    ) -> dict[str, Any] | None:
        """A worker is about to send a request of ``test_id``: the result of the controller's
        call for it, or None (the worker sends it, and nothing more is sent for that test)."""
        with self._lock:
            self._claimed.add(test_id)
            future = self._calls.pop((test_id, role, ref, key), None)
            if future is not None:
                self._taken.setdefault(test_id, set()).add((test_id, role, ref, key))
                self._room.notify()
        if future is None:
            return None
        try:
            result, _ = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # the broker is closing
            return None  # the run is over
        except Exception:  # the call itself failed to run (not a failed call): the worker's
            return None
        with self._lock:
            if ahead:
                self.stats.taken += 1
            else:
                self.stats.taken_live += 1
        return result_to_wire(result)

    def finished(self, test_id: str) -> None:
        """A worker reported the test's teardown: what it did not take is unused (cancelled
        if still in flight, its room in the window freed), and the controller learns from it
        what a run without xdist learns (:meth:`.prefetch.Prefetcher.release`): once tests
        of a function that took none of its calls are likely more than one in five of them
        (:func:`.prefetch.mostly_unused`), nothing more is sent for that function; likewise
        for its later asks; a
        test that took some of the models of its first ask and not the others: only those."""
        with self._lock:
            self._claimed.add(test_id)
            sent = self._sent_for.pop(test_id, None)
            taken = self._taken.pop(test_id, set())
            fkey = self._function.pop(test_id, None)
            if not sent or fkey is None:
                return
            left = [self._calls.pop(key) for key, _ in sent if key in self._calls]
            self.stats.unused += len(left)
            self._finished_of[fkey] += 1
            first_sent = {key[1] for key, first in sent if first}
            first_taken = {key[1] for key, first in sent if first and key in taken}
            if any(not first and key not in taken for key, first in sent):
                self._later_unused_of[fkey] += 1
                if self._learned_unused(self._later_unused_of, fkey):
                    self._no_later.add(fkey)
            if first_sent and not first_taken:
                self._unused_of[fkey] += 1
                if self._learned_unused(self._unused_of, fkey):
                    self._off.add(fkey)
            elif first_taken and first_taken != first_sent:
                self._roles[fkey] = frozenset(first_taken)
            if left:
                self._room.notify_all()
        for future in left:
            future.cancel()

    def _learned_unused(self, counts: collections.Counter[str], fkey: str) -> bool:
        """Once that is likely of more than one test in five of the function's that ended
        (:func:`.prefetch.mostly_unused`)."""
        return mostly_unused(counts[fkey], self._finished_of[fkey])

    def close(self) -> None:
        """The run is over: cancel what is still in flight; what no test took is unused."""
        with self._lock:
            self._closed = True
            left = list(self._calls.values())
            self.stats.unused += len(left)
            self._calls.clear()
            self._room.notify_all()
        for future in left:
            future.cancel()
        self._thread.join(timeout=5)


class HeadStartPlugin:
    """Registered on the xdist controller when :func:`headstart_off` says nothing against it."""

    def __init__(
        self,
        config: pytest.Config,
        session: RolloutSession,
        context_for: ContextFactory,
        broker: Callable[[], Any],
        nice: int = WORKER_NICE,
    ) -> None:
        self.config = config
        self.nice = nice  # added to the niceness of the workers it starts (0: none)
        self.session = session
        self.context_for = context_for
        self._broker = broker  # the slot broker, started on first use (None: it cannot start)
        self.broker: Any = None
        self.headstart: HeadStart | None = None
        self.off: str = ""  # why the head start is off, when it is (said with -v)
        self._collecting: threading.Thread | None = None
        self._lock = threading.Lock()
        self._finished = False

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionstart(self, session: pytest.Session) -> Any:
        # started before xdist starts its workers (its pytest_sessionstart: half a second and
        # more, the controller waiting for each new interpreter in turn), so that the calls go
        # out while the workers start; beside it where pytest can keep the other plugins out
        # of the collection without the environment the workers inherit
        self.broker = self._broker()
        if self.broker is None:
            self.off = "the slot broker is not running"
        elif autoload_flag():
            self._collecting = threading.Thread(
                target=self.start, name="modelrollout-headstart-collect", daemon=True
            )
            self._collecting.start()
        else:
            self.start()
        return (yield)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, specs: Sequence[Any]) -> None:
        """Start the workers on this machine at a lower CPU priority than the controller (by
        execnet's ``nice`` spec key; one of the user's own ``--tx ...//nice=N`` is kept), so
        that its calls' event loop runs when their replies come in rather than behind the
        workers' start-up: with more processes than cores, each reply a worker's import
        delays holds back the next request of the window (``-n 4`` on 2 cores: 1.16-1.34x the
        ``-n 0`` run's time without, 1.07-1.22x with). Where there are cores enough, nothing
        changes; the workers stay at it after the head start is over."""
        if self.broker is None or not self.nice:
            return
        for spec in specs:
            if spec.popen and not spec.via and spec.nice is None:
                spec.nice = str(self.nice)

    def start(self) -> None:
        broker = self.broker
        rs = self.session
        # the controller's calls take the run's limits from the broker, as the workers' do
        rs.slots_address = broker.address
        rs.headstart_controller = True
        # the HTTP stack imported, the clients built and their first connections opened while
        # the suite is collected, as a run without xdist does (after it, they took the
        # controller's first send 0.12-0.22 s past the end of its collection at -n 4, 2 cores)
        rs.warm(rs.default_roles())
        items, why = collect_items(self.config)
        if items is None:
            self.off = why
            return
        concurrency = rs.options.concurrency or rs.cfg.concurrency
        headstart = HeadStart(rs, items, self.context_for, concurrency)
        with self._lock:
            if self._finished:
                return
            broker.claims = headstart.claim
            self.headstart = headstart
            headstart.start()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        headstart = self.headstart
        if report.when == "teardown" and headstart is not None:
            headstart.finished(report.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        with self._lock:
            self._finished = True
        if self._collecting is not None:  # a run that ends before its collection is done
            self._collecting.join(timeout=5)
        if self.broker is not None:
            self.broker.claims = None
        if self.headstart is not None:
            self.headstart.close()


__all__ = [
    "HEADSTART_ENV",
    "HEADSTART_KEY",
    "HEADSTART_PLUGIN",
    "OFF_CASSETTES",
    "HeadStart",
    "HeadStartOff",
    "HeadStartPlugin",
    "HeadStartStats",
    "collect_items",
    "headstart_off",
]
