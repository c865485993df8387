"""Prefetch: send the known requests of upcoming tests ahead of time, concurrently.

A dataset-driven workflow test (``@pytest.mark.parametrize("case", cases(...))`` plus the
``workflow`` marker's fixed ``system`` / ``tools`` / ``params``) has a first request that is
known before it runs: ``ask(case)`` with no extra arguments. For every item that will run, in
run order, the prefetcher builds that request with the very :meth:`TestContext.build_request`
the fixture uses (through the same ``context_for`` factory as the fixture), and submits
``session.acall(ref, request, role)`` to the session's event loop: the calls go through the
cassette store (replay hits are free, recording happens), the model's ``max_concurrency``,
``rpm`` / ``tpm`` buckets, adaptive 429 back-off and the session-wide ``--rollout-concurrency``
bound, exactly like a live call. Latency is measured per request from its first send.

Each prefetched call is a *slot* owned by one test (``nodeid``), keyed by role, model reference
and the canonical request key ``ChatRequest.key(ref)``. When the test asks, ``take`` hands over
the slot whose key equals the request the test actually built; anything else runs live. Records
are only created by the test (``TestContext.make_reply``), so a prefetched result that is not
consumed is never recorded; it is dropped (and cancelled if still in flight) when its test ends.

Memory is bounded by a sliding window: at most ``window`` calls (default 4 x concurrency) are
held ahead of the running test; the window advances as tests start.

xdist: the controller's :class:`Prefetcher` never runs (it runs no tests); while its workers
start, the controller sends what it reads in full itself (:mod:`.headstart`), and the workers
claim those results before sending. A worker only knows the items already handed to it: at
each ``pytest_runtest_protocol`` it prefetches the current item, ``nextitem`` and the indices in
xdist's own pending queue (``WorkerInteractor.torun``), which under ``--dist load / loadscope /
loadfile / loadgroup / each`` are never taken back (except when a worker crashes). Under
``--dist worksteal`` queued items may be stolen by another worker, so only the current item and
``nextitem`` (already popped from the queue) are prefetched. Every item is planned at most once,
so no request is sent twice.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import inspect
import os
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from ._records import Role
from .asked import (
    ANY_REPLY,
    MISSING,
    NOT_ASKED,
    REPLIES,
    UNTOLD,
    Expr,
    Keywords,
    asked,
    asked_roles,
    asked_through,
    asks_nothing,
    env_reads,
    evaluate,
    first_ask_call,
    first_ask_keywords,
    first_ask_unread,
    fixture_made,
    fixture_value,
    is_case,
    is_prompt,
    later_asks,
    module_names,
    params_read,
    reached_ask,
    replies_read,
    source_asks,
)
from .handles import CASE_PROMPT, WRAPPED
from .progress import Progress, progress_wanted
from .providers.base import CallResult, ChatRequest, split_limit, worker_share
from .replies import Pair, Reply
from .session import reply_fields

if TYPE_CHECKING:
    from .handles import TestContext
    from .session import RolloutSession

Outcome = tuple[CallResult, str]
AskKwargs = dict[str, Any]  # system, tools, response_format, params of a first ask(case, ...)
ContextFactory = Callable[[pytest.Item], "TestContext"]
WINDOW_FACTOR = 4  # requests in flight (or queued for a slot) ahead of the tests: × concurrency
# requests sent ahead in all, replies waiting for their tests included: × the window. A test
# stuck on a slow reply no longer stalls the calls behind it until this many are done.
AHEAD_FACTOR = 4
# how long the first requests may take to go out before the language model is loaded
SETTLE_S = 0.25
# a function stops being prefetched (or having its later asks sent ahead) once at least
# UNUSED_LIMIT of its tests took nothing sent ahead for them and, at UNUSED_CONFIDENCE, more
# than one in UNUSED_SHARE of its tests do (see mostly_unused)
UNUSED_LIMIT = 2
UNUSED_SHARE = 5
UNUSED_CONFIDENCE = 0.90


def mostly_unused(unused: int, finished: int) -> bool:
    """Whether a function's tests leave too much of what is sent ahead for them: ``unused`` of
    its ``finished`` tests took none of it (skipped inside the test, an ask under a condition,
    a first ask that is not the planned one, an assert failing before a later ask).

    Each such test wastes a call per model; sent ahead, the others are not each a model latency
    in a row. So sending goes on while the share that wastes is likely small: it stops once
    at least :data:`UNUSED_LIMIT` tests wasted and the lower end of the Wilson interval of that
    share (at :data:`UNUSED_CONFIDENCE`) is above one in :data:`UNUSED_SHARE`. Every test
    wasting stops it at the second; half of them within about six tests; a function that
    skips one case in ten keeps going (with a plain count, two in the first twenty stopped it:
    86 % of such functions, 34 % at one in twenty)."""
    if unused < UNUSED_LIMIT:
        return False
    from .stats import wilson_interval

    low, _ = wilson_interval(unused, max(unused, finished), UNUSED_CONFIDENCE)
    return low > 1.0 / UNUSED_SHARE


# why a test function runs live (the -v summary)
LIVE_UNKNOWN = "its first ask's request is not known before the test runs"
LIVE_LONE = (
    "its first ask passes arguments not known before the test runs, and no other test learns them"
)
LIVE_MISMATCH = "its first ask is not the same from one test to the next"
LIVE_UNUSED = "its tests took none of what was sent ahead for them"
# after LIVE_UNUSED, for a function whose plan read the environment, or whose first ask is
# under an if it cannot tell
LIVE_ENV = ": its plan read the environment, which a fixture may set before the test reads it"
LIVE_UNTOLD = ": the condition of the `if` its first ask is under is not read"
# the probes of a function whose first ask is under an if it cannot tell (asked.UNTOLD), or is
# not read (its case is planned: a guess), that must match before the rest of its tests are
# sent ahead: one test taking the branch planned, or asking for its case as it is, says little
# of the next one (its condition, or what is done to its case, may differ from case to case)
UNTOLD_PROBES = 3
SHOWN_LIVE = 10  # functions listed in the summary
WORKER_STATS_KEY = "modelrollout_prefetch"  # an xdist worker's counts, in its workeroutput
SAFE_DIST_MODES = ("load", "loadscope", "loadfile", "loadgroup", "each")
MODEL_FIXTURES: tuple[Role, ...] = ("stable", "candidate")
# the function of the fixture pytest makes for a directly parametrized argument (7.4 to 9)
DIRECT_PARAM_FIXTURE = "get_direct_param_fixture_func"


@dataclass
class Slot:
    role: Role
    ref: str
    key: str | None  # None: an ask holding earlier replies, until they are in (``worked``)
    future: concurrent.futures.Future[Outcome]
    held: bool = True  # not yet taken by its test, released or dropped
    ready: bool = False  # its reply is in
    first: bool = True  # of the test's first ask (else of a later one: :func:`plan_later`)
    worked: _Worked | None = None  # what such an ask's request is worked out from


@dataclass
class PrefetchStats:
    planned_items: int = 0
    submitted: int = 0
    done: int = 0
    errors: int = 0
    used: int = 0
    unused: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_done: float | None = None
    last_done: float | None = None

    def rate(self) -> float:
        """Completed calls per second since the first submission."""
        end = self.last_done if self.last_done is not None else time.perf_counter()
        elapsed = end - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


# -- planning ----------------------------------------------------------------------------------
def _skipped_statically(item: pytest.Item) -> bool:
    """True when the item may be skipped (or not run) before its test body runs.

    Conservative: a ``skipif`` with a string condition or ``xfail(run=False)`` counts as
    skipped (the test then simply runs live if it does run).
    """
    if item.get_closest_marker("skip") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        conds = list(mark.args) or (
            [mark.kwargs["condition"]] if "condition" in mark.kwargs else []
        )
        if not conds or any(not isinstance(c, bool) or c for c in conds):
            return True
    return any(mark.kwargs.get("run", True) is False for mark in item.iter_markers("xfail"))


def _roles(item: pytest.Item) -> list[Role]:
    names = getattr(item, "fixturenames", ()) or ()
    if "rollout" in names:
        return ["stable", "candidate"]
    return [r for r in MODEL_FIXTURES if r in names]


def _planned(item: pytest.Item) -> tuple[Expr, Any] | None:
    """What the item's first ask sends, when known before it runs: the expression read from
    the test's source, and its value for this item (a case, a prompt string or a message list).

    The first ``.ask(...)`` in the function's source whose first argument can be read (see
    :mod:`.asked`: a parameter, an item or attribute of one, a string or a name of the module,
    an f-string, a sum, ``str.format`` or another str method of those, a message list, a local
    name assigned once from one) and is, for this item, a case from ``cases()``, a prompt string or a chat message
    list. Otherwise a guess (:func:`_guess`): the item's case from ``cases()``, under any
    parameter name, if it has exactly one, or the prompt it is parametrized with when it asks
    through an object (sent as a probe: see :class:`Prefetcher`).

    Worked out once per item, when it is first planned (the test compares what it asks with it).
    """
    if _PLANNED in item.stash:
        return item.stash[_PLANNED]
    with _reading_the_environment(item):
        item.stash[_PLANNED] = _work_out_plan(item)
    return item.stash[_PLANNED]


def _work_out_plan(item: pytest.Item) -> tuple[Expr, Any] | None:
    """:func:`_planned`, worked out (it sets the item's other stash keys)."""
    params = _params(item)
    func = getattr(item, "function", None)
    planned: tuple[Expr, Any] | None = None
    reached = reached_ask(func, params, module_names(func)) if func is not None else None
    if reached is NOT_ASKED:  # its branches ask nothing for this item: nothing to send
        item.stash[_NOT_ASKED] = True
        return None
    if reached is UNTOLD:  # the branch it takes is not known: what follows is a guess
        item.stash[_UNTOLD] = True
    elif reached is not None:  # the ask under the if it reaches: its prompt, keywords, models
        value = evaluate(reached[0], params, module_names(func))
        if is_case(value) or is_prompt(value):
            item.stash[_REACHED_KEYWORDS] = reached[1]
            if reached[2] is not None:
                item.stash[_REACHED_ROLES] = reached[2]
            return reached[0], value
    for index, expr in enumerate(asked(func) if func is not None else ()):
        value = evaluate(expr, params, module_names(func))
        if is_case(value) or is_prompt(value):
            planned = expr, value
            # the test's first ask in source, not under an if nor in a loop (and read:
            # _first_read): its later asks (asked.later_asks) never list it again, so one of
            # the same request is the test asking it again (sent after its reply: plan_later)
            item.stash[_REPEATS] = index == 0 and reached is None and expr[0] not in _LOOPED
            break
    else:
        if func is not None and asks_nothing(func, params, module_names(func)):
            item.stash[_NOT_ASKED] = True  # its loops of asks go over nothing for this item
            return None
        guess = _guess(item, params)
        planned = (("param", guess), params[guess]) if guess is not None else None
        item.stash[_GUESSED] = True  # (its first ask is not read: what is planned is a guess)
    return planned


def _guess(item: pytest.Item, params: dict[str, Any]) -> str | None:
    """For an item whose first ask is not read: the parameter it most likely asks with. Its
    one case from ``cases()``, under any name; without one, for a test that asks through an
    object a fixture made (``bot.answer(question)``), the parameter of its parametrization
    (``@parametrize("question", QUESTIONS)``, a fixture's ``params``) that is a prompt string
    or message list, of several the one it passes on first (:func:`.asked.asked_through`).
    None when there is no such parameter, or it cannot be told which."""
    cases = [name for name, value in params.items() if is_case(value)]
    if cases:
        return cases[0] if len(cases) == 1 else None
    func = getattr(item, "function", None)
    callspec = getattr(item, "callspec", None)
    prompts = frozenset(name for name in (callspec.params if callspec is not None else ())
                        if name in params and is_prompt(params[name]))
    return asked_through(func, prompts) if func is not None and prompts else None


_PLANNED = pytest.StashKey[tuple[Expr, Any] | None]()
# the keywords of the ask under an if that the item reaches (reached_ask); None: not read
_REACHED_KEYWORDS = pytest.StashKey[Keywords | None]()
_NOT_ASKED = pytest.StashKey[bool]()  # the branches it takes ask nothing
# the branch its first ask is under cannot be told (asked.UNTOLD): the ask planned in source
# order may be another branch's, so it is a probe's
_UNTOLD = pytest.StashKey[bool]()
# its first ask is not read, and its case (or prompt parameter) is planned (a probe's guess)
_GUESSED = pytest.StashKey[bool]()
# working out its plan (or its parameters, or its first ask's arguments) read os.environ: a
# fixture may set the variable before the test reads it, so the plan is a probe's
_ENV = pytest.StashKey[bool]()
_REACHED_ROLES = pytest.StashKey[frozenset[Role]]()  # the models the ask it reaches asks
_PARAMS = pytest.StashKey[dict[str, Any]]()
# a later ask of the same request as its first is the test asking it again (_work_out_plan)
_REPEATS = pytest.StashKey[bool]()
_GROUP = pytest.StashKey[str]()  # a guessed item's group of its function (Prefetcher._key)
_LOOPED = ("each", "comp", "flat")  # an ask's prompt in a loop's iteration or comprehension


@contextlib.contextmanager
def _reading_the_environment(item: pytest.Item) -> Iterator[None]:
    """Marks the item (``_ENV``) when what is worked out inside reads ``os.environ``."""
    before = env_reads()
    try:
        yield
    finally:
        if env_reads() != before:
            item.stash[_ENV] = True


def is_guess(item: pytest.Item) -> bool:
    """Whether the item's plan may not be what its test asks, so that its function is probed
    until :data:`UNTOLD_PROBES` of its tests asked what was planned: its first ask is under an
    ``if`` that cannot be told, or is not read (its case or prompt is a guess), or the plan
    read the environment."""
    return any(item.stash.get(key, False) for key in (_UNTOLD, _GUESSED, _ENV))


def _params(item: pytest.Item) -> dict[str, Any]:
    """The item's parameters as its test function receives them (worked out once per item)."""
    if _PARAMS not in item.stash:
        with _reading_the_environment(item):
            item.stash[_PARAMS] = _read_params(item)
    return item.stash[_PARAMS]


def _read_params(item: pytest.Item) -> dict[str, Any]:
    """The item's parameters as its test function receives them. One that a fixture turns into
    what the test gets (parametrized ``indirect``-ly, or a fixture's own ``params``) is what
    that fixture returns when that can be read from its source (``return request.param``),
    and is left out otherwise. The test's other fixtures are there too when what they return
    is read the same way (``return SYSTEM``, ``return SYSTEMS[lang]`` of a parameter)."""
    callspec = getattr(item, "callspec", None)
    params = dict(callspec.params) if callspec is not None else {}
    indirect_names: set[str] = set()  # what a fixture makes when pytest's fixture info is gone
    for mark in item.iter_markers("parametrize"):
        indirect = mark.kwargs.get("indirect", False)
        if indirect is True:
            names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
            indirect = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        indirect_names.update(indirect or ())
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", None) or {}
    for name, value in list(params.items()):
        fixturedefs = defs.get(name)
        func = getattr(fixturedefs[-1], "func", None) if fixturedefs else None
        # pytest turns a direct parameter into a fixture of its own that returns it as it is
        direct = getattr(func, "__name__", "") == DIRECT_PARAM_FIXTURE
        if (func is None and name in indirect_names) or (func is not None and not direct):
            made = MISSING if func is None else fixture_value(func, value)
            if made is MISSING:
                del params[name]
            else:
                params[name] = made
    # a test method's `self`, read as its class: `self.SYSTEM` is a plain class attribute (one
    # that setup_method sets on the instance is not known: the plan may then be wrong, which
    # costs calls, never a result)
    cls, func = getattr(item, "cls", None), getattr(item, "function", None)
    code = getattr(func, "__code__", None)
    if cls is not None and code is not None and code.co_argcount and not isinstance(
        inspect.getattr_static(cls, getattr(func, "__name__", ""), None), staticmethod
    ):
        params.setdefault(code.co_varnames[0], cls)
    # the test's other fixtures, when what one returns is read from its source and reads
    # nothing but the module's names and the test's parameters (`return SYSTEM`)
    direct = dict(params)
    for name in getattr(getattr(item, "_fixtureinfo", None), "argnames", ()):
        fixturedefs = defs.get(name)
        if name in params or name in ("rollout", *MODEL_FIXTURES, "request") or not fixturedefs:
            continue
        fixture = getattr(fixturedefs[-1], "func", None)
        if fixture is not None and getattr(fixturedefs[-1], "params", None) is None:
            made = fixture_made(fixture, direct)
            if made is not MISSING:
                params[name] = made
    return params


def planned_prompt(item: pytest.Item) -> Any:
    """The prompt string or message list (not a case) the item's first ask is planned with."""
    planned = _planned(item)
    return None if planned is None or is_case(planned[1]) else planned[1]


def guessed_case_prompt(item: pytest.Item) -> str | None:
    """When the item's case is planned as a guess (its first ask is not read): the case's
    prompt string, which the test may ask instead of the case (``model.ask(case.prompt,
    ...)`` in an object's method); a probe's test asking it teaches that (:data:`CASE_PROMPT`).
    None otherwise (a case of chat messages too)."""
    planned = _planned(item)
    if planned is None or not item.stash.get(_GUESSED, False) or not is_case(planned[1]):
        return None
    case = planned[1]
    prompt = getattr(case, "prompt", None)
    return prompt if getattr(case, "messages", None) is None and type(prompt) is str else None


def _text_of(value: Any) -> str | None:
    """The text a planned prompt (a prompt string, a case, a chat message list) asks: the
    string, the case's prompt, or its messages' last user message's text. None without one."""
    if is_case(value):
        prompt = getattr(value, "prompt", None)
        value = getattr(value, "messages", None) or prompt
    if type(value) is str:
        return value
    if type(value) in (list, tuple):
        for message in reversed(value):
            if type(message) is dict and message.get("role") == "user":
                content = message.get("content")
                return content if type(content) is str else None
    return None


def prefetchable(item: pytest.Item) -> int:
    """How many calls the item's default first ask would make (0: not prefetchable).

    Cheap (no request is built): used for the progress total.
    """
    planned = _planned(item)
    if planned is None or not _asks_models(item):
        return 0
    case = planned[1]
    roles = _roles(item)
    if getattr(item, "callspec", None) is None and _source_kwargs(item, planned) is None:
        return 0  # a test on its own is not probed (Prefetcher.submit_item)
    later = _later_count(item)
    if getattr(case, "stable_reply", None) is not None and "stable" in roles:
        return len(roles) - 1 + later
    return len(roles) + later


def _source_kwargs(item: pytest.Item, planned: tuple[Expr, Any] | None) -> AskKwargs | None:
    """What the item's first ask passes besides the prompt (``system``, ``tools``,
    ``response_format``, ``params``), when it is all read from the test's source and known for
    this item (none: the marker's); None otherwise."""
    func = getattr(item, "function", None)
    if planned is None or func is None or item.stash.get(_UNTOLD, False):
        return None
    if _REACHED_KEYWORDS in item.stash:
        keywords = item.stash[_REACHED_KEYWORDS]
    else:
        keywords = first_ask_keywords(func, planned[0])
    if keywords is None:
        return None
    params = _params(item)
    with _reading_the_environment(item):
        return _evaluated_kwargs(keywords, params, module_names(func))


def _evaluated_kwargs(keywords: Keywords, params: dict[str, Any], names: Any) -> AskKwargs | None:
    """An ask's keyword arguments read from the source, evaluated for an item, in the form
    ``TestContext.ask`` splits them into; None when one is not known."""
    kw: dict[str, Any] = {}
    for name, expr in keywords:
        value = evaluate(expr, params, names)
        if value is MISSING:
            return None
        # a **mapping: a dict of str keys, none given twice (a TypeError in Python)
        items = value.items() if name is None and type(value) is dict else [(name, value)]
        for key, item in items:
            if type(key) is not str or key in kw:
                return None
            kw[key] = item
    return {
        "system": kw.pop("system", None),
        "tools": kw.pop("tools", None),
        "response_format": kw.pop("response_format", None),
        "params": kw,
    }


def _request(ctx: TestContext, prompt: Any, ask_kwargs: AskKwargs | None) -> ChatRequest:
    """The request ``ask(prompt, **ask_kwargs)`` builds in the test (None: no arguments); of
    the case's prompt string, when the function's tests were learned to ask that
    (:data:`CASE_PROMPT`), with the text they were learned to put around it
    (:data:`WRAPPED`)."""
    kw = ask_kwargs or {}
    if kw.get(CASE_PROMPT) and is_case(prompt):
        prompt = prompt.prompt
    wrapped = kw.get(WRAPPED)
    if wrapped and type(prompt) is str:  # Customer: {question}, learned from a test
        prompt = wrapped[0] + prompt + wrapped[1]
    request, _ = ctx.build_request(
        prompt,
        system=kw.get("system"),
        tools=kw.get("tools"),
        response_format=kw.get("response_format"),
        params=dict(kw.get("params") or {}),
    )
    return request


def _why_unknown(item: pytest.Item) -> str:
    """Why the item's first request is not known before it runs, as the end of the -v line:
    what a user can change for it to be sent ahead ("" when there is nothing more to say)."""
    func = getattr(item, "function", None)
    if func is None:
        return ""
    unread = first_ask_unread(func)
    if unread is not None:
        return f": {unread}"
    asks = source_asks(func)[0]
    if not asks:
        return (": no `.ask(...)` in its source, nor in a helper it calls first (read when the"
                " helper asks first or under an `if` it reads, a model the test passes it)")
    expr, keywords = asks[0]
    reads = params_read(expr).union(*(params_read(value) for _, value in keywords or ()))
    missing = sorted(reads - _params(item).keys())
    if missing:
        return f": `{missing[0]}` is what a fixture returns, not known without running it"
    call = first_ask_call(func)  # read, but what it returns depends on what is not
    return "" if call is None else f": {call}"


def _asks_models(item: pytest.Item) -> bool:
    """A workflow test with a model fixture, that is not skipped before it runs."""
    return (
        item.get_closest_marker("workflow") is not None
        and bool(_roles(item))
        and not _skipped_statically(item)
    )


def function_key(item: pytest.Item) -> str:
    """The test function an item belongs to: its node id without the parametrization."""
    name = item.name
    original = getattr(item, "originalname", None) or name
    nodeid = item.nodeid
    return nodeid[: len(nodeid) - len(name)] + original if nodeid.endswith(name) else nodeid


def plan_item(
    item: pytest.Item,
    session: RolloutSession,
    context_for: ContextFactory,
    ask_kwargs: AskKwargs | None = None,
    only_roles: frozenset[str] | None = None,
) -> list[tuple[Role, str, ChatRequest]]:
    """The calls of the item's first ``ask(case)``: ``(role, ref, request)``; [] if unknown.

    ``ask_kwargs``: the ``system`` / ``tools`` / ``response_format`` / params of its first
    ``ask(case, ...)``, read from the source or learned from another item of the same test
    function (None: none, the marker's).
    ``only_roles``: the models the function's tests turned out to ask (None: those its asks'
    receivers name in its source, :func:`.asked.asked_roles`, else its fixtures'); for an
    item whose first ask is the one under an ``if`` it reaches, that ask's models instead.
    """
    planned = _planned(item)
    if planned is None or not _asks_models(item):
        return []
    case = planned[1]
    roles = _roles(item)
    reached_roles = item.stash.get(_REACHED_ROLES, None)
    if reached_roles is not None:  # the ask under the if it reaches: exactly its models
        only_roles = reached_roles
    elif only_roles is None:
        func = getattr(item, "function", None)
        only_roles = asked_roles(func, planned[0]) if func is not None else None
    try:
        ctx = context_for(item)
        request = _request(ctx, case, ask_kwargs)
    except Exception:  # a marker or case problem: the test reports it when it runs
        return []
    calls: list[tuple[Role, str, ChatRequest]] = []
    for role in roles:
        ref = ctx.ref(role)
        if session.is_killed(ref):
            return []  # the kill switch skips the whole item
        if role == "stable" and getattr(case, "stable_reply", None) is not None:
            continue  # shadow row: the stable reply is recorded, never asked
        if only_roles is not None and role not in only_roles:
            continue  # e.g. rollout.candidate.ask(case): the stable is never asked
        calls.append((role, ref, request))
    return calls


def plan_later(
    item: pytest.Item,
    session: RolloutSession,
    context_for: ContextFactory,
    first: Sequence[tuple[Role, str, ChatRequest]],
) -> list[tuple[Role, str, ChatRequest]]:
    """The calls of the asks after the item's first one that the test always makes and that
    are read in full from its source (:func:`.asked.later_asks`): ``(role, ref, request)``;
    not a request the test already makes before (the same ask again, to compare the replies),
    nor a conversation's turn that reads an earlier reply (:func:`later_calls` has those)."""
    return [(call.role, call.ref, call.request)
            for call in later_calls(item, session, context_for, first)
            if call.request is not None]


class LaterCall(NamedTuple):
    role: Role
    ref: str
    request: ChatRequest | None  # None: worked out from earlier replies (``worked``)
    turn: tuple[Any, int]  # the ask it is of, as a later ask names it (:func:`_turn_of`)
    worked: _Worked | None = None


def _turn_of(expr: Expr) -> tuple[Any, int]:
    """The ask of a prompt, as a later ask names the one whose reply it reads (``("turn",
    ask, j, ...)``: :mod:`.asked`): the loop and iteration of an ask in a loop (a
    conversation's turn), else the prompt itself (``first = rollout.ask(messages)``; its
    models aside, :func:`_source`)."""
    return (("loop", expr[1], expr[2]), expr[3]) if expr[0] == "each" else (("ask", expr), 0)


def _source(read: tuple[Any, int], roles: tuple[Role, ...]) -> tuple[tuple[Any, int], tuple[Role, ...]]:
    """Of a reply a later ask reads: the ask's key among the item's calls (:func:`_turn_of`),
    and the models it asks (the reply is theirs: a pair of both, or one model's)."""
    (ask, turn) = read
    if ask[0] == "ask":  # ("ask", prompt, models)
        return (ask[:2], turn), ask[2]
    return read, roles  # a conversation's turn: the models the later turn asks too


def later_calls(
    item: pytest.Item,
    session: RolloutSession,
    context_for: ContextFactory,
    first: Sequence[tuple[Role, str, ChatRequest]],
    *,
    chained: bool = False,
) -> list[LaterCall]:
    """:func:`plan_later`'s calls, with the ask each is of (:func:`_turn_of`). With
    ``chained``, also the ones sent after an earlier reply: a request the test already makes
    before, when the item's first ask is one whose later asks are known not to list it again
    (:data:`_REPEATS`; sent after the earlier one's reply, as the test asks it: :func:`_after`);
    and an ask that holds earlier replies, a conversation's later turn or a follow-up (sent
    once they are in: :class:`_Worked`)."""
    func = getattr(item, "function", None)
    asks = later_asks(func) if func is not None else ()
    if not asks:
        return []
    params, names = _params(item), module_names(func)
    repeats = chained and item.stash.get(_REPEATS, False)  # (and _first_read, when one is)
    seen = {(role, ref, request.key(ref)) for role, ref, request in first}
    try:
        ctx = context_for(item)
    except Exception:
        return []
    calls: list[LaterCall] = []
    for roles, expr, keywords in asks:
        value = evaluate(expr, params, names)
        kw = _evaluated_kwargs(keywords, params, names)
        if kw is None:
            continue
        if value is MISSING and chained and (read := replies_read(expr)) and evaluate(
                expr, {**params, REPLIES: ANY_REPLY}, names) is not MISSING:
            worked = _Worked(expr, params, names, ctx, kw, read, roles)
            calls.extend(LaterCall(role, ctx.ref(role), None, _turn_of(expr), worked)
                         for role in roles if not session.is_killed(ctx.ref(role)))
            continue
        if not (is_case(value) or is_prompt(value)):
            continue
        try:
            request = _request(ctx, value, kw)
        except Exception:  # the test reports it when it asks
            continue
        for role in roles:
            ref = ctx.ref(role)
            key = (role, ref, request.key(ref))
            shadow = role == "stable" and getattr(value, "stable_reply", None) is not None
            if session.is_killed(ref) or shadow or (
                    key in seen and not (repeats and _first_read(func))):
                continue
            seen.add(key)
            calls.append(LaterCall(role, ref, request, _turn_of(expr)))
    return calls


class _NotSent(Exception):
    """An ask holding earlier replies not sent: one of them failed or was dropped, or what it
    asks cannot be worked out from them."""


class _Worked:
    """An ask holding earlier replies (a conversation's later turn, a follow-up): what it asks
    is its expression (with :mod:`.asked`'s ``"turn"`` parts) evaluated once the replies it
    reads are in, the same for each model it asks. Worked out once, on whichever thread wants
    it first: the runner's loop, to send it, or the test's, taking it (its test may ask before
    the loop gets to it)."""

    def __init__(self, expr: Expr, params: dict[str, Any], names: Any, ctx: TestContext,
                 kw: AskKwargs | None, read: set[tuple[Any, int]], roles: tuple[Role, ...]) -> None:
        self.expr, self.params, self.names, self.ctx, self.kw = expr, params, names, ctx, kw
        self.read, self.roles = read, roles
        self.sources: dict[tuple[Any, int], tuple[tuple[Role, ...], list[Slot]]] | None = None
        self.sent: set[Role] = set()  # the models it was sent to (the others never were)
        self._lock = threading.Lock()
        self._done = False
        self._request: ChatRequest | None = None

    def bind(self, turns: dict[tuple[Any, int], dict[Role, Slot | None]]) -> list[Slot] | None:
        """The slots of the earlier asks it reads the replies of (of the item's, sent ahead in
        this plan, once: :func:`_turn_of`); None when one is not (it is then not sent
        ahead)."""
        if self.sources is None:
            sources = {}
            for read in self.read:
                key, roles = _source(read, self.roles)
                sent = turns.get(key, {})
                slots = [slot for role in roles if (slot := sent.get(role)) is not None]
                if len(slots) != len(roles):
                    return None
                sources[read] = (roles, slots)
            self.sources = sources
        return [slot for _, slots in self.sources.values() for slot in slots]

    def request(self, final: bool = True) -> ChatRequest | None:
        """The request, once the replies it reads are in; None when it cannot be worked out
        (or, not ``final``, when they are not all in yet)."""
        with self._lock:
            if self._done:
                return self._request
            sources = self.sources or {}
            futures = [slot.future for _, slots in sources.values() for slot in slots]
            if not all(f.done() for f in futures) and not final:
                return None
            self._done = True
            if not futures or any(not f.done() or f.cancelled() or f.exception() is not None
                                  for f in futures):
                return None
            replies: dict[tuple[Any, int], Any] = {}
            for read, (roles, slots) in sources.items():
                made = {slot.role: Reply(model=slot.ref, **reply_fields(slot.future.result()[0]))
                        for slot in slots}
                replies[read] = (Pair(made["stable"], made["candidate"]) if len(roles) == 2
                                 else made[roles[0]])
            value = evaluate(self.expr, {**self.params, REPLIES: replies}, self.names)
            if is_prompt(value):
                try:
                    self._request = _request(self.ctx, value, self.kw)
                except Exception:  # the test reports it when it asks
                    self._request = None
            return self._request

    def key(self, ref: str) -> str | None:
        """The request's key for ``ref``, once it can be worked out."""
        request = self.request(final=False)
        return request.key(ref) if request is not None else None


async def _worked_out(
    sources: Sequence[concurrent.futures.Future[Outcome]],
    worked: _Worked,
    role: Role,
    send: Callable[[ChatRequest], Awaitable[Outcome]],
) -> Outcome:
    """An ask holding earlier replies (:class:`_Worked`), sent once they are in, as its test
    asks it after them."""
    _read_out_when_done()
    for source in sources:
        try:
            await asyncio.wrap_future(source)
        except BaseException:
            if source.done():  # it failed, or was dropped (this call itself was not)
                raise _NotSent() from None
            raise
    request = worked.request()
    if request is None:
        raise _NotSent()
    worked.sent.add(role)
    return await send(request)


@functools.lru_cache(maxsize=256)
def _first_read(func: Any) -> bool:
    """Whether the function's first ``.ask(...)`` in source is read in full (once per
    function: reading what is not read costs ~0.5 ms)."""
    return first_ask_unread(func) is None


async def _after(earlier: concurrent.futures.Future[Outcome], call: Awaitable[Outcome]) -> Outcome:
    """``call`` once ``earlier`` (the same request, asked before it in the test) has its reply:
    a test that asks the same again to compare the replies asks it after the first reply, and
    the provider sees the same order (a prompt cache, say). Not sent if ``earlier`` failed or
    was dropped: the test would not have got there."""
    _read_out_when_done()
    try:
        await asyncio.wrap_future(earlier)
    except BaseException:
        if inspect.iscoroutine(call):
            call.close()
        raise
    return await call


def _read_out_when_done() -> None:
    """Has the running call's exception read when it finishes: one raised as its future was
    cancelled (its test ended) would otherwise be logged as never retrieved (a chained call
    that finds it will not be sent, :func:`_after`, :func:`_worked_out`)."""
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda done: done.cancelled() or done.exception())


def _later_count(item: pytest.Item) -> int:
    """How many calls :func:`plan_later` may send for the item (for the progress total)."""
    func = getattr(item, "function", None)
    planned = _planned(item)
    if func is None or planned is None or _source_kwargs(item, planned) is None:
        return 0
    seen = {(planned[0], first_ask_keywords(func, planned[0]))}
    count = 0
    params: dict[str, Any] | None = None
    for roles, expr, keywords in later_asks(func):
        if expr[0] in ("each", "helper"):  # a loop's iteration, a helper's ask: if the item has it
            params = _params(item) if params is None else params
            value = evaluate(expr, params, module_names(func))
            if value is MISSING and replies_read(expr):  # (a conversation's later turn)
                value = evaluate(expr, {**params, REPLIES: ANY_REPLY}, module_names(func))
            if value is MISSING:
                continue
        if (expr, keywords) not in seen:  # a repeat is asked after the first reply
            seen.add((expr, keywords))
            count += len(roles)
    return count


# -- the prefetcher ------------------------------------------------------------------------
class Prefetcher:
    """Owns the slots; driven from the pytest main thread, results land on the runner loop.

    What an item's first ask sends is read from the function's source and the item's
    parameters (:func:`_planned`). A function whose first ask on it passes nothing else
    (``ask(case)``, ``ask(prompt)``) is prefetched as far as the window allows. For any other
    parametrized function only its first item is sent ahead (the *probe*), and planning stops at
    its next item until that test has asked: if the probe was the request it asked for, the
    function is confirmed; if not, the arguments of its ``ask(case, ...)`` (``response_format``,
    ``system``, ``tools``, params) are learned and the next item is the probe; a learned plan
    that is wrong again turns prefetch off for the function. So a function that asks
    differently from the plan costs one wasted call per model (two if its arguments differ from
    case to case), never a window of them. A test that is not parametrized is never probed.
    A function whose first ask is under an ``if`` it cannot tell (:data:`.asked.UNTOLD`), or
    is not read at all (its case or prompt parameter is planned, a guess), or whose plan read
    the environment, is probed until :data:`UNTOLD_PROBES` of its tests have asked what was
    planned (:func:`is_guess`): its tests may take another branch, or do something else to
    their case, from case to case; one of its probes that its test neither takes nor learns
    arguments from turns it off. A function whose tests keep taking nothing sent for them is
    turned off too (:meth:`_unused`). A function whose prompt is a guess is learned, probed,
    confirmed and turned off by groups of its tests, by the script of their guessed prompt
    (:meth:`_key`); what ``-v`` says of a group is said of its function.
    """

    def __init__(
        self,
        session: RolloutSession,
        context_for: ContextFactory,
        *,
        window: int,
        progress: Progress | None = None,
        items: Iterable[pytest.Item] = (),
    ) -> None:
        self.session = session
        self.context_for = context_for
        self.window = max(1, window)
        self.max_ahead = AHEAD_FACTOR * self.window
        self.progress = progress
        # set by the plugin for the running test: plans the next items (pytest's thread only)
        self.refill: Callable[[], None] | None = None
        self.refill_thread: int | None = None
        self.stats = PrefetchStats()
        if progress is not None:
            progress.stats = self.stats
        self._slots: dict[str, list[Slot]] = {}
        self._held = 0  # slots sent ahead and not yet taken by their tests
        self._ready = 0  # of those, the ones whose replies are in
        self._wake: concurrent.futures.Future[None] | None = None  # a waiting test's alarm
        self._planned: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        # per test function (function_key)
        self._confirmed: set[str] = set()  # the plan is what its tests ask: no limit
        self._learned: dict[str, AskKwargs] = {}  # the arguments its first ask passes
        self._off: set[str] = set()  # never prefetched again
        self._probe: dict[str, str] = {}  # function -> test id of its probe in flight
        # functions whose first ask is under an if they cannot tell, or is not read (their
        # plans are guesses), and how many of their probes matched
        self._untold: collections.Counter[str] = collections.Counter()
        self._taught: set[str] = set()  # probes' tests that taught their function's arguments
        self._guessed_why: dict[str, str] = {}  # function -> why its plan is a guess (for -v)
        # items pulled from the run order but not planned yet: the first one may wait for its
        # function's probe (planning stops there, so the window is not filled with later items
        # that would be run only after the waiting ones)
        self._pending: collections.deque[pytest.Item] = collections.deque()
        self._function: dict[str, str] = {}  # planned test id -> function
        self._finished: set[str] = set()  # tests that have run: never planned again
        # function (never a group of one: _key) -> the models its tests ask
        self._roles: dict[str, frozenset[str]] = {}
        self._taken: dict[str, set[str]] = {}  # test id -> roles of its slots it took
        self._settled: set[str] = set()  # functions one of whose tests has finished
        # planned tests of each function that finished, and those that took none of their calls
        self._finished_of: collections.Counter[str] = collections.Counter()
        self._unused_of: collections.Counter[str] = collections.Counter()
        # functions whose later asks (plan_later) went unused too often: first asks only
        self._no_later: set[str] = set()
        self._later_unused_of: collections.Counter[str] = collections.Counter()
        # test functions that run live, and why (shown with -v)
        self.live: dict[str, str] = {}
        # a function whose prompt is a guess is learned by groups of its tests (_key): each
        # group's function, each function's groups, and what its first group to teach taught
        self._name: dict[str, str] = {}
        self._groups: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self._taught_of: dict[str, AskKwargs] = {}
        self._shared: collections.Counter[str] = collections.Counter()  # their matched probes
        # parametrized tests per function in the run (a function with one has no use for a probe)
        self._size = collections.Counter(
            function_key(item) for item in items if getattr(item, "callspec", None) is not None
        )

    # window -------------------------------------------------------------------------------
    @property
    def held(self) -> int:
        return self._held

    def room(self) -> int:
        """How many more requests may be sent ahead now: at most ``window`` whose replies are
        not in yet, and at most ``max_ahead`` in all (replies waiting for their tests
        included)."""
        return min(self.window - (self._held - self._ready), self.max_ahead - self._held)

    def advance(self, upcoming: Iterator[pytest.Item], *, while_waiting: bool = False) -> None:
        """Plan and submit upcoming items (in run order) until the window is full, or until an
        item has to wait for its function's probe. ``while_waiting`` (a test is waiting for its
        replies): only items of functions one of whose tests has finished, so that what was
        learned from it (which models it asks, with which arguments) applies to them."""
        # check the window before pulling the next item: a pulled item is never skipped
        while not self._closed and self.room() > 0:
            if not self._pending:
                item = next(upcoming, None)
                if item is None:
                    return
                self._pending.append(item)
            if self.submit_item(self._pending[0], while_waiting=while_waiting) == "wait":
                return
            self._pending.popleft()

    def submit_item(self, item: pytest.Item, *, while_waiting: bool = False) -> str:
        """Plan the item's calls and send them: ``"sent"``, ``"skip"`` (nothing to send, or
        already planned) or ``"wait"`` (its function's probe has not asked yet)."""
        nodeid = item.nodeid
        if self._closed or nodeid in self._finished or nodeid in self._planned:
            return "skip"
        name = function_key(item)
        if name in self._off:
            self._planned.add(nodeid)
            return "skip"
        planned = _planned(item)
        fkey = self._key(item, name, planned)  # the function, or its group (_key)
        if fkey in self._off:
            self._planned.add(nodeid)
            return "skip"
        if while_waiting and fkey not in self._settled:
            return "wait"
        if planned is None and item.stash.get(_NOT_ASKED, False):
            self._planned.add(nodeid)  # its branches ask nothing: nothing to send or to learn
            return "skip"
        learned = self._learned.get(fkey)
        if learned is None and fkey != name:
            # a group's first probes: with what another group of its function taught, once
            # one has (a bot passes the same arguments for every language, mostly); while
            # the first probe of another group is out, wait for what it teaches
            learned = self._taught_of.get(name)
            if learned is None and not self._shared[name] and fkey not in self._probe and any(
                    group in self._probe for group in self._groups[name]):
                return "wait"
        # what the first ask passes besides the prompt: learned from a test, or read
        ask_kwargs = learned if learned is not None else _source_kwargs(item, planned)
        guess = is_guess(item)
        if guess and fkey not in self._untold:
            self._untold[fkey] = 0
            # what to say with -v if its probes go untaken: why it was a guess
            self._guessed_why[fkey] = (
                LIVE_UNTOLD if item.stash.get(_UNTOLD, False)
                else _why_unknown(item) if item.stash.get(_GUESSED, False) else LIVE_ENV
            )
        if fkey not in self._confirmed:
            if learned is None and ask_kwargs is not None and not guess:
                self._confirmed.add(fkey)
            elif fkey in self._probe:
                return "wait"
            elif getattr(item, "callspec", None) is None or self._size.get(name, 2) < 2:
                # a test on its own: a probe would teach nothing for later tests, only cost
                self._planned.add(nodeid)
                if planned is not None:
                    self._live(fkey, LIVE_LONE + _why_unknown(item))
                elif _asks_models(item):
                    self._live(fkey, LIVE_UNKNOWN + _why_unknown(item))
                return "skip"
        self._planned.add(nodeid)
        calls = plan_item(item, self.session, self.context_for, ask_kwargs, self._roles.get(name))
        if not calls:
            if _asks_models(item) and planned is None:
                self._live(fkey, LIVE_UNKNOWN + _why_unknown(item))
            return "skip"
        later = (
            later_calls(item, self.session, self.context_for, calls, chained=True)
            if fkey in self._confirmed and fkey not in self._no_later
            else []
        )
        if fkey not in self._confirmed:
            self._probe[fkey] = nodeid
        self._function[nodeid] = fkey
        self.stats.planned_items += 1
        runner = self.session.runner
        slots: list[Slot] = []
        where = Path(str(item.path)).parent  # cassettes beside the test file
        last: dict[tuple[str, str, str], Slot] = {}  # a request's key -> its last slot
        # an ask (a conversation's turn, a prompt) -> its slot for each model, None when two
        # asks share the key (what a later ask that reads its reply is worked out from; kept
        # only for an item that has such an ask: its keys hash the asks' expressions)
        turns: dict[tuple[Any, int], dict[Role, Slot | None]] = {}
        chained = any(call.worked is not None for call in later)
        first_turn = _turn_of(planned[0]) if planned is not None and chained else (("ask", None), 0)
        for i, (role, ref, request, turn, worked) in enumerate(
                [*(LaterCall(*call, first_turn) for call in calls), *later]):
            if request is None:  # it holds earlier replies: sent once they are in
                assert worked is not None
                sources = worked.bind(turns)
                if sources is None:
                    continue
                send = functools.partial(self._ahead, ref, role, where, nodeid)
                future = runner.submit(
                    _worked_out([s.future for s in sources], worked, role, send))
                slot = Slot(role, ref, None, future, first=False, worked=worked)
            else:
                key = request.key(ref)
                call = self._ahead(ref, role, where, nodeid, request)
                earlier = last.get((role, ref, key))
                future = runner.submit(call if earlier is None else _after(earlier.future, call))
                slot = last[(role, ref, key)] = Slot(role, ref, key, future, first=i < len(calls))
            slots.append(slot)
            if chained:
                sent = turns.setdefault(turn, {})
                sent[role] = None if role in sent else slot
        with self._lock:
            self._slots[nodeid] = slots
            self._held += len(slots)
            self.stats.submitted += len(slots)
        for slot in slots:  # held before counted as ready (a done future calls back at once)
            slot.future.add_done_callback(functools.partial(self._on_done, slot, nodeid))
        return "sent"

    def _ahead(self, ref: str, role: Role, where: Path, test_id: str,
               request: ChatRequest) -> Coroutine[Any, Any, Outcome]:
        """A call sent ahead of its test (cassettes beside the test file, ``where``)."""
        return self.session.acall(ref, request, role, where, test_id=test_id, ahead=True)

    def _on_done(self, slot: Slot, test_id: str,
                 future: concurrent.futures.Future[Outcome]) -> None:
        if future.cancelled():
            return
        now = time.perf_counter()
        exc = future.exception()
        wake = None
        if isinstance(exc, _NotSent):  # an ask holding replies, never sent: as if not planned
            with self._lock:
                held = self._slots.get(test_id, [])
                if any(s is slot for s in held):
                    held[:] = [s for s in held if s is not slot]
                    self.stats.submitted -= self._drop((slot,))
                    if not held:
                        del self._slots[test_id]
            return
        with self._lock:
            st = self.stats
            st.done += 1
            if exc is not None or not future.result()[0].ok:
                st.errors += 1
            if st.first_done is None:
                st.first_done = now
            st.last_done = now
            slot.ready = True
            if slot.held:
                self._ready += 1
            # a test waiting for its own replies plans more once a quarter of the window is
            # free (waking it for every reply would take the GIL from the loop ~100 times/s)
            if self._wake is not None and self.room() >= max(1, self.window // 4):
                wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _drop(self, slots: Iterable[Slot]) -> int:
        """No longer held (taken, released or dropped); under the lock. Returns the count."""
        n = 0
        for slot in slots:
            if slot.held:
                slot.held = False
                n += 1
                if slot.ready:
                    self._ready -= 1
        self._held -= n
        return n

    def _discard(self, slots: Sequence[Slot]) -> None:
        """Drop slots their tests will not take (:meth:`_drop`), counted as unused; under the
        lock. An ask holding earlier replies not sent yet never will be: not counted at all."""
        unsent = sum(slot.held and slot.worked is not None and slot.role not in slot.worked.sent
                     for slot in slots)
        self.stats.submitted -= unsent
        self.stats.unused += self._drop(slots) - unsent

    def wait(
        self, futures: Sequence[concurrent.futures.Future[Any]], timeout: float | None = None
    ) -> list[concurrent.futures.Future[Any]]:
        """Wait up to ``timeout`` for ``futures`` (a test's own prefetched replies) and return
        those not done. Meanwhile the calls behind keep flowing: whenever the window has room,
        the next items are planned and sent, as far as ``max_ahead`` allows. Only on the
        thread that runs the tests; elsewhere this is ``concurrent.futures.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [f for f in futures if not f.done()]
        if self.refill is None or threading.get_ident() != self.refill_thread:
            return list(concurrent.futures.wait(pending, timeout=timeout)[1])
        while pending and not self._closed:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            # armed before planning: a reply that frees room from now on wakes this wait
            wake: concurrent.futures.Future[None] = concurrent.futures.Future()
            with self._lock:
                self._wake = wake
            try:
                if self.room() > 0:
                    self.refill()
                concurrent.futures.wait(
                    [*pending, wake], timeout=left, return_when=concurrent.futures.FIRST_COMPLETED
                )
            finally:
                with self._lock:
                    self._wake = None
            pending = [f for f in pending if not f.done()]
        return pending

    def waiter(self) -> Callable[[Sequence[concurrent.futures.Future[Any]]], object]:
        """What a test waits for its prefetched replies with: :meth:`wait`, through the
        progress display on a terminal."""
        progress = self.progress
        if progress is not None:
            return lambda futures: progress.wait(futures, self.wait)
        return self.wait

    # consuming ----------------------------------------------------------------------------
    def take(
        self,
        test_id: str,
        calls: Sequence[tuple[str, ChatRequest, str]],
        first_ask: AskKwargs | None = None,
    ) -> list[concurrent.futures.Future[Outcome] | None]:
        """For each ``(ref, request, role)``: the prefetched future for exactly that request.

        ``first_ask``: the arguments of the test's first ``ask(case, ...)`` when this is that
        ask; it confirms the test's function, or teaches it (see the class docstring).
        """
        out: list[concurrent.futures.Future[Outcome] | None] = [None] * len(calls)
        with self._lock:
            slots = self._slots.get(test_id)
            if not slots:
                return out
            matched = False
            for i, (ref, request, role) in enumerate(calls):
                key = request.key(ref)  # once per call, not per slot compared
                for slot in slots:
                    if slot.key is None and slot.worked is not None:  # (an ask holding
                        slot.key = slot.worked.key(slot.ref)  # replies: once they are in)
                    if slot.role == role and slot.ref == ref and slot.key == key:
                        slots.remove(slot)
                        self._drop((slot,))
                        self.stats.used += 1
                        out[i] = slot.future
                        if slot.first:  # what its first ask asks: the roles to plan
                            self._taken.setdefault(test_id, set()).add(slot.role)
                        matched = True
                        break
            if not slots:
                del self._slots[test_id]
        if matched or first_ask is not None:
            self._asked(test_id, matched, first_ask)
        return out

    def _asked(self, test_id: str, matched: bool, first_ask: AskKwargs | None) -> None:
        fkey = self._function.get(test_id)
        if fkey is None:
            return
        if self._probe.get(fkey) == test_id:
            del self._probe[fkey]  # the items waiting for it may be planned now
        if matched and fkey in self._untold:
            self._untold[fkey] += 1
            seen = self._untold[fkey]
            name = self._name.get(fkey)
            if name is not None and self._sharing(fkey):
                # the groups of a function asked with the same arguments: their probes that
                # matched add up, and confirm each of them that has had one of its own
                self._shared[name] += 1
                if self._shared[name] >= UNTOLD_PROBES:
                    self._confirmed.update(group for group in self._groups[name]
                                           if self._untold[group] and self._sharing(group))
            elif seen >= UNTOLD_PROBES:
                self._confirmed.add(fkey)
            # else the next item probes too
        elif matched:
            self._confirmed.add(fkey)
        elif first_ask is None:
            return
        elif fkey in self._learned or fkey in self._confirmed:
            self._live(fkey, LIVE_MISMATCH)
            self._turn_off(fkey)  # even the learned plan is not what the tests ask
        else:
            self._learned[fkey] = first_ask  # the next item is the probe of the learned plan
            self._taught.add(test_id)
            name = self._name.get(fkey)
            if name is not None and not self._shared[name]:
                # a group, the first to teach before any asked as written: the others' probes
                # start from what it taught (one that did ask as written keeps to that)
                self._taught_of.setdefault(name, first_ask)

    def _turn_off(self, fkey: str) -> None:
        """Never prefetch this function again; drop what is planned for it (before it is sent,
        for what still waits for a slot)."""
        self._off.add(fkey)
        with self._lock:
            tests = [t for t, f in self._function.items() if f == fkey and t in self._slots]
            dropped = [self._slots.pop(t) for t in tests]
            for slots in dropped:
                self._discard(slots)
        for slots in dropped:
            for slot in slots:
                slot.future.cancel()

    def release(self, test_id: str) -> None:
        """The test is over: drop (and cancel) what it did not consume. Never recorded.

        A probe whose test never asked (skipped inside the test, say) hands over to the next
        waiting item of its function.
        """
        self._finished.add(test_id)
        fkey = self._function.pop(test_id, None)
        if fkey is not None:
            self._settled.add(fkey)
            self._finished_of[fkey] += 1
        taken = self._taken.pop(test_id, None)
        if fkey is not None and self._probe.get(fkey) == test_id:
            del self._probe[fkey]  # it never asked: the next item of its function probes
        with self._lock:
            slots = self._slots.pop(test_id, None)
            if not slots:
                return
            self._discard(slots)
        if fkey is not None and any(not slot.first for slot in slots):
            self._later_unused(fkey)
        if fkey is not None and taken and any(slot.first for slot in slots):
            # it asked some of the planned models and never the others: plan only those
            self._roles[self._name.get(fkey, fkey)] = frozenset(taken)  # (of its function)
        elif fkey is not None and not taken:
            if fkey in self._untold and fkey not in self._confirmed and (
                    test_id not in self._taught):
                # a probe of a guess that its test did not take, and that taught nothing: the
                # guess is not what the function's tests ask, for some of them at least
                self._live(fkey, LIVE_UNUSED + self._guessed_why.get(fkey, ""))
                self._off.add(fkey)
            self._unused(fkey)
        for slot in slots:
            slot.future.cancel()

    def _later_unused(self, fkey: str) -> None:
        """A test of the function did not make one of the later asks sent ahead for it (an
        assert failed before it, say): once that is likely of more than one test in five
        (:func:`mostly_unused`), only its first asks are sent ahead."""
        self._later_unused_of[fkey] += 1
        if mostly_unused(self._later_unused_of[fkey], self._finished_of[fkey]):
            self._no_later.add(fkey)

    def _unused(self, fkey: str) -> None:
        """A test of the function took none of the calls sent ahead for it: its first ask is
        not the planned one (``ask(case.prompt.strip())``, an ask under a condition) or it
        did not ask (skipped inside the test). Once that is likely of more than one test in
        five (:func:`mostly_unused`), nothing more is sent ahead for it (what is in flight
        stays for its tests)."""
        self._unused_of[fkey] += 1
        if mostly_unused(self._unused_of[fkey], self._finished_of[fkey]):
            self._live(fkey, LIVE_UNUSED)
            self._off.add(fkey)

    def _live(self, fkey: str, reason: str) -> None:
        self.live.setdefault(self._name.get(fkey, fkey), reason)

    def _sharing(self, key: str) -> bool:
        """Whether the group ``key`` is planned with what its function's first group to teach
        taught (or, before any taught, with what its source says): what the others are."""
        own = self._learned.get(key)
        return own is None or own is self._taught_of.get(self._name[key])

    def _key(self, item: pytest.Item, name: str, planned: tuple[Expr, Any] | None) -> str:
        """What the prefetcher learns and probes by: the test function ``name``; for a function
        whose first ask is not read (its prompt a guess: a bot a fixture made, say), a group of
        its tests by the script of the guessed prompt (:func:`.language.script_group`: Chinese,
        Latin, Japanese, ...). A bot that words its request by language (a template, a system
        prompt per language) is then learned per language, as a function of its own: the
        other groups' first probes start from what the first group taught."""
        if planned is None or not item.stash.get(_GUESSED, False):
            return name
        key = item.stash.get(_GROUP, None)
        if key is None:
            text = _text_of(planned[1])
            if text is None:
                return name
            from .language import script_group

            key = item.stash[_GROUP] = f"{name} [{script_group(text)}]"
        if key not in self._name:
            self._name[key] = name
            self._groups[name].add(key)
        return key

    def pending(self, test_id: str) -> list[concurrent.futures.Future[Outcome]]:
        """The test's prefetched futures that are not done yet."""
        with self._lock:
            return [s.future for s in self._slots.get(test_id, ()) if not s.future.done()]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            slots = [s for group in self._slots.values() for s in group]
            self._discard(slots)
            self._slots.clear()
            wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)
        for slot in slots:
            slot.future.cancel()


def awaitable(future: concurrent.futures.Future[Outcome]) -> asyncio.Future[Outcome]:
    """A prefetched result as an awaitable on the runner's loop (call it on that loop)."""
    return asyncio.wrap_future(future)


# -- xdist ---------------------------------------------------------------------------------
def _worker_interactor(config: pytest.Config) -> Any:
    for plugin in config.pluginmanager.get_plugins():
        if hasattr(plugin, "torun") and hasattr(plugin, "nextitem_index"):
            return plugin
    return None


def _queued_indices(interactor: Any) -> list[int]:
    """Indices xdist has handed to this worker and not run yet, in run order."""
    try:
        with interactor.torun.lock() as queue:
            return [i for i in queue if isinstance(i, int)]
    except Exception:  # a changed xdist internal: only prefetch the next item
        return []


def prefetch_enabled(config: pytest.Config, session: RolloutSession) -> bool:
    """Prefetch is on: config ``prefetch``, no ``--rollout-no-prefetch``, not collect-only."""
    if not session.cfg.prefetch or config.getoption("--rollout-no-prefetch", False):
        return False
    if getattr(config.option, "collectonly", False):
        return False
    return os.environ.get("MODELROLLOUT_PREFETCH") != "0"


def make_load_scheduler(config: pytest.Config, log: Any, concurrency: int) -> Any:
    """xdist's ``--dist load`` scheduler, keeping each worker's queue as deep as its window.

    xdist's own load scheduler hands a worker a quarter of its share at first, then, once tests
    take 0.1 s or more (a test waiting for a model does), only tops the queue up when two items
    are left: the worker then knows two upcoming items and prefetches four calls at a time. This
    scheduler does what ``load`` does (items are handed out in collection order, never taken
    back) but keeps at least ``2 x WINDOW_FACTOR x concurrency / workers`` items queued on every
    worker (the window in items, with room for tests that make a single call).
    """
    from xdist.scheduler import LoadScheduling

    class PrefetchLoadScheduling(LoadScheduling):  # type: ignore[misc]
        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            nodes = max(1, int(self.numnodes))
            self.depth = max(2, -(-2 * WINDOW_FACTOR * concurrency // nodes))
            self.collection: list[str] | None
            self.early: Any = None  # the worker that started before the others had collected
            self.refused: set[Any] = set()  # workers that collected other tests

        def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
            super().add_node_collection(node, collection)
            if self.collection is None and not self.collection_is_completed and collection:
                # the first worker to have collected starts at once, while the others are
                # still starting (0.1-0.4 s of a -n 4 run here): with the run's limits shared
                # (providers/slots.py) its calls may use all of them meanwhile. The others
                # join once xdist has every collection (schedule), if theirs is the same.
                self.early = node
                self.collection = list(collection)
                self.pending[:] = range(len(self.collection))
                self._announce()
                self._top_up(node, min(self.depth, self._fair()), initial=True)

        def _announce(self) -> None:
            """The line xdist writes when output is not a terminal once every worker has
            collected ("4 workers [200 items]"), but not when tests are already out: written
            here, before the first test's outcome."""
            dsession = self.config.pluginmanager.getplugin("dsession")
            trdist: Any = getattr(dsession, "trdist", None)
            if getattr(dsession, "terminal", None) is None or getattr(trdist, "_isatty", True):
                return
            with contextlib.suppress(Exception):
                from xdist.dsession import WorkerStatus, get_workers_status_line

                assert self.collection is not None
                done = [(WorkerStatus.CollectionDone, len(self.collection))] * int(self.numnodes)
                verbose = self.config.option.verbose >= 0
                trdist.write_line(get_workers_status_line(done) if verbose else trdist.getstatus())
                dsession.terminal.write_line("")

        def _fair(self) -> int:
            assert self.collection is not None
            return -(-len(self.collection) // max(1, int(self.numnodes), len(self.nodes)))

        def schedule(self) -> None:
            if self.early is not None:
                self._join_the_early_start()
                return
            first = self.collection is None
            super().schedule()
            if first and self.collection is not None and self.pending:
                fair = self._fair()
                for node in self.nodes:  # the same depth for every worker from the start
                    self._top_up(node, min(self.depth, fair), initial=True)

        def _join_the_early_start(self) -> None:
            """Every worker has collected: the others join the one that started, each with
            the same tests or none (a worker that collected others is reported, as xdist
            does, and shut down; the tests run on the rest)."""
            early, self.early = self.early, None
            others = [n for n in self.node2collection if n is not early]
            differ = [n for n in others if self.node2collection[n] != self.collection]
            if differ:
                self._check_nodes_have_same_collection()  # reports each difference
                for node in differ:
                    self.refused.add(node)
                    node.shutdown()
            fair = self._fair()
            for node in self.nodes:
                if node is not early and node not in self.refused:
                    self._top_up(node, min(self.depth, fair), initial=True)
            for node in self.nodes:
                self.check_schedule(node)

        def _top_up(self, node: Any, target: int, initial: bool = False) -> bool:
            if node.shutting_down or not self.pending:
                return False
            missing = target - len(self.node2pending[node])
            if missing <= 0:
                return False
            if not initial:  # never more than a fair part of what is left
                missing = min(missing, -(-len(self.pending) // max(1, len(self.node2pending))))
            self._send_tests(node, missing)
            return True

        def check_schedule(self, node: Any, duration: float = 0) -> None:
            if node in self.refused or (
                node not in self.node2collection and not self.collection_is_completed
            ):
                return  # not collected yet: it gets its tests once every worker has
            if not self._top_up(node, self.depth):
                super().check_schedule(node, duration)

    return PrefetchLoadScheduling(config, log)


# -- the pytest side -----------------------------------------------------------------------
class PrefetchPlugin:
    """Registered by the modelrollout plugin; drives a :class:`Prefetcher` over the run loop."""

    def __init__(
        self, config: pytest.Config, session: RolloutSession, context_for: ContextFactory
    ) -> None:
        self.config = config
        self.session = session
        self.context_for = context_for
        self.prefetcher: Prefetcher | None = None
        self._items: list[pytest.Item] = []
        self._next = 0  # sequential runs: next index of session.items to plan
        self._worker = hasattr(config, "workerinput")
        self._interactor: Any = None
        # xdist sets dist = "no" on its workers; the controller passes the real mode along
        workerinput = getattr(config, "workerinput", None) or {}
        self._dist = str(workerinput.get("modelrollout_dist") or "no")
        self.progress: Progress | None = None
        self._warmed = False
        self._workers: list[dict[str, Any]] = []  # the xdist controller: each worker's counts

    def enabled(self) -> bool:
        if not prefetch_enabled(self.config, self.session):
            return False
        # the xdist controller runs no tests: its workers prefetch their own items
        return not self.config.pluginmanager.has_plugin("dsession")

    def window(self) -> int:
        concurrency = self.session.options.concurrency or self.session.cfg.concurrency
        share = worker_share(os.environ) if self._worker else None
        if share is not None and not self.session.slots_address:
            concurrency = split_limit(concurrency, *share)  # the worker's part of the bound
        return WINDOW_FACTOR * concurrency

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, Any, None]:
        if not self.enabled() or not self.session.workflows or not session.items:
            yield
            return
        self._items = list(session.items)
        if self._worker:
            self._interactor = _worker_interactor(self.config)
        elif progress_wanted(self.config):
            self.progress = Progress(self.config, total=sum(prefetchable(i) for i in self._items))
        self.prefetcher = Prefetcher(
            self.session,
            self.context_for,
            window=self.window(),
            progress=self.progress,
            items=self._items,
        )
        self.session.prefetch = self.prefetcher
        try:
            if not self._worker:
                self.prefetcher.advance(self._sequential())
                self._warm_checks()
                if self.progress is not None:
                    self.progress.show_until_first(self.prefetcher, self._items[0].nodeid)
            yield
        finally:
            self.session.prefetch = None
            self.prefetcher.close()

    def _warm_checks(self) -> None:
        """Once calls are in flight, load what the first checks need (the language model):
        the main thread would otherwise only wait for the first replies."""
        if self._warmed or self.prefetcher is None or not self.prefetcher.stats.submitted:
            return
        self._warmed = True
        # loading the language model holds the GIL throughout (~40 ms): let the first
        # requests go out before, not after it
        self.session.runner.settle(SETTLE_S)
        from . import language

        language.warm()
        if not self._worker:  # the xdist controller builds the summary, not its workers
            self.session.preload_end()

    def _sequential(self) -> Iterator[pytest.Item]:
        while self._next < len(self._items):
            item = self._items[self._next]
            self._next += 1
            yield item

    def _upcoming_worker(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Iterator[pytest.Item]:
        yield item
        if nextitem is not None:
            yield nextitem
        if self._interactor is None or self._dist not in SAFE_DIST_MODES:
            return
        items = self._items
        for index in _queued_indices(self._interactor):
            if 0 <= index < len(items):
                yield items[index]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, None]:
        pf = self.prefetcher
        if pf is None:
            yield
            return
        if self._worker:
            pf.submit_item(item)  # the running item first, whatever the window
            pf.advance(self._upcoming_worker(item, nextitem))
            pf.refill = lambda: pf.advance(
                self._upcoming_worker(item, nextitem), while_waiting=True
            )
        else:
            pf.advance(self._sequential())
            pf.refill = lambda: pf.advance(self._sequential(), while_waiting=True)
        pf.refill_thread = threading.get_ident()
        if self._worker:
            self._warm_checks()
        try:
            yield
        finally:
            pf.refill = None
            pf.release(item.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """An xdist worker hands its counts and its run-live list to the controller."""
        pf = self.prefetcher
        output = getattr(self.config, "workeroutput", None)
        if pf is None or output is None:
            return
        st = pf.stats
        output[WORKER_STATS_KEY] = {
            "submitted": st.submitted, "used": st.used, "unused": st.unused,
            "errors": st.errors, "rate": st.rate(), "live": dict(pf.live),
        }  # fmt: skip

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = (getattr(node, "workeroutput", None) or {}).get(WORKER_STATS_KEY)
        if data:
            self._workers.append(dict(data))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        pf = self.prefetcher
        if pf is not None:
            stats, rate, live, workers = pf.stats, pf.stats.rate(), pf.live, 0
        elif self._workers:  # the xdist controller: its workers' counts, added up
            stats = PrefetchStats(**{k: sum(int(w.get(k, 0)) for w in self._workers)
                                     for k in ("submitted", "used", "unused", "errors")})  # fmt: skip
            rate = sum(float(w.get("rate", 0.0)) for w in self._workers)
            live = {}
            for w in self._workers:
                for fkey, reason in dict(w.get("live", {})).items():
                    live.setdefault(str(fkey), str(reason))
            workers = len(self._workers)
        else:
            return
        from .headstart import HEADSTART_PLUGIN

        headstart = self.config.pluginmanager.get_plugin(HEADSTART_PLUGIN)
        hs = getattr(headstart, "headstart", None)
        if hs is not None:  # the controller's own calls: the ones its workers did not send
            stats.submitted += hs.stats.taken_live + hs.stats.unused
            stats.used += hs.stats.taken_live
            stats.unused += hs.stats.unused
        if stats.submitted == 0 and not live:
            return
        if self.progress is not None or self.config.getoption("verbose") > 0:
            terminalreporter.write_line(Progress.summary_line(stats, rate=rate, workers=workers))
            if headstart is not None:
                terminalreporter.write_line(_headstart_line(headstart))
            shown = sorted(live.items())
            for fkey, reason in shown[:SHOWN_LIVE]:
                terminalreporter.write_line(f"  run live: {fkey} ({reason})")
            if len(shown) > SHOWN_LIVE:
                terminalreporter.write_line(
                    f"  run live: {len(shown) - SHOWN_LIVE} more test functions"
                )


def _headstart_line(plugin: Any) -> str:
    """With -v under xdist: what the controller sent while its workers started, or why not."""
    hs = plugin.headstart
    if hs is None:
        return f"  xdist controller's head start: off ({plugin.off or 'not started'})"
    st = hs.stats
    return (
        f"  xdist controller's head start: {st.sent} of them sent by the controller, "
        f"{st.taken + st.taken_live} taken by its workers, {st.unused} unused"
    )


__all__ = [
    "PrefetchPlugin",
    "PrefetchStats",
    "Prefetcher",
    "Slot",
    "awaitable",
    "function_key",
    "make_load_scheduler",
    "plan_item",
    "prefetch_enabled",
    "prefetchable",
]
