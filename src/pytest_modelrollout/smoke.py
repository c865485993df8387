"""``--rollout-smoke``: generated smoke checks for every model in use, no user code needed.

For each model in use -- the stable and candidate of every collected workflow test (or the
configured / command-line stable and candidate when there is no workflow test), plus their
fallbacks -- one test item per check is put at the front of the run:

``smoke[REF]::api_key``          the model's API key variable is set (names it, never its value)
``smoke[REF]::reachable``        the base URL answers HTTP at all (any status counts)
``smoke[REF]::model_accepted``   a tiny chat request is accepted (a 404 says "model not found")
``smoke[REF]::response_shape``   the reply parses: text or tool calls, a finish reason
``smoke[REF]::usage_fields``     the reply reports input and output token usage
``smoke[REF]::timeout_honoured`` a deliberately tiny timeout (1 ms) fails quickly, as "timeout"
``smoke[REF]::tool_calling``     only when a workflow of the model declares ``tools=``: the model
                                 calls a declared tool with JSON-object arguments

The smoke items run first, then the suite ("instead of / besides the suite"). They carry the
marker ``rollout_smoke``: ``pytest --rollout-smoke -m rollout_smoke`` (or ``-k smoke``) runs the
smoke checks only. Smoke calls are live HTTP through the session's model registry (cassettes are
not used: the point is to check the endpoint) and are never recorded, so they change no metric
and no verdict. Under pytest-xdist every worker collects the same items, so they distribute like
any other test. A killed model's checks are skipped (the kill switch: it is never called).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ._exceptions import ConfigError, ModelRolloutError
from .providers.base import ChatRequest, ModelSpec
from .providers.client import CallResult, ModelClient, is_loopback
from .providers.presets import PRESETS

if TYPE_CHECKING:
    from .session import RolloutSession

MARKER = "rollout_smoke"
CHECKS = (
    "api_key",
    "reachable",
    "model_accepted",
    "response_shape",
    "usage_fields",
    "timeout_honoured",
)
TOOL_CHECK = "tool_calling"
TINY_TIMEOUT_S = 0.001
TIMEOUT_GRACE_S = 2.0  # giving up on a 1 ms timeout may take at most this long
SIM_PROVIDERS = ("sim", "sim-anthropic")
PROBE_PROMPT = "Smoke test: reply with the single word OK."


async def _timed(call: Awaitable[CallResult]) -> tuple[CallResult, float]:
    """The call's result and the seconds it took, on the event loop's thread."""
    started = time.perf_counter()
    result = await call
    return result, time.perf_counter() - started


def item_name(ref: str, check: str) -> str:
    return f"smoke[{ref}]::{check}"


@dataclasses.dataclass
class SmokeModel:
    """A model in use and the tools its workflows declare (for ``tool_calling``)."""

    ref: str
    tools: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add_tools(self, tools: Any) -> None:
        if not isinstance(tools, (list, tuple)):
            return
        names = {_tool_name(t) for t in self.tools}
        for t in tools:
            if isinstance(t, dict) and _tool_name(t) and _tool_name(t) not in names:
                self.tools.append(dict(t))
                names.add(_tool_name(t))


def _tool_name(tool: Mapping[str, Any]) -> str:
    fn = tool.get("function")
    if isinstance(fn, Mapping):
        return str(fn.get("name") or "")
    return str(tool.get("name") or "")


class SmokeFailure(Exception):
    """A smoke check failed; the message is one line."""


class SmokeItem(pytest.Item):
    """One smoke check of one model."""

    def __init__(self, *, ref: str, check: str, runner: SmokeRunner, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ref = ref
        self.check = check
        self._runner = runner
        self.add_marker(MARKER)

    def runtest(self) -> None:
        message = None
        try:
            self._runner.run_check(self.ref, self.check)
        except SmokeFailure as exc:
            message = str(exc)
        except ModelRolloutError as exc:
            message = f"{type(exc).__name__}: {exc}"
        if message is not None:  # outside the except: no chained traceback
            pytest.fail(message, pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class SmokeRunner:
    """Runs the checks; the probe call of each model is made once and shared by its checks."""

    def __init__(self, session: RolloutSession) -> None:
        self.session = session
        self._probes: dict[str, CallResult] = {}
        self.models: dict[str, SmokeModel] = {}

    # -- helpers ------------------------------------------------------------------------------
    def spec(self, ref: str) -> ModelSpec:
        return self.session.spec(ref)

    def _require_key(self, spec: ModelSpec) -> None:
        var = spec.api_key_env
        if var and not self.session.env.get(var):
            raise SmokeFailure(f"API key variable {var} is not set (model {spec.ref})")

    def base_url(self, spec: ModelSpec) -> str:
        if spec.base_url:
            return spec.base_url
        preset = PRESETS.get(spec.provider)
        if preset is None:
            raise SmokeFailure(f"model {spec.ref}: no base_url configured")
        try:
            return preset.resolve_base_url(self.session.env)
        except Exception as exc:
            raise SmokeFailure(f"cannot start or reach {spec.provider}: {exc}") from None

    def probe(self, ref: str) -> CallResult:
        """One tiny live chat call through the session's registry (cached per model)."""
        result = self._probes.get(ref)
        if result is None:
            request = ChatRequest(messages=[{"role": "user", "content": PROBE_PROMPT}])
            result = self.session.runner.run(self.session.registry.client(ref).call(request))
            self._probes[ref] = result
        return result

    def _probe_ok(self, ref: str) -> CallResult:
        result = self.probe(ref)
        if result.fallback:
            raise SmokeFailure(f"{ref} failed; its fallback {result.served_by} answered instead")
        if not result.ok or result.response is None:
            raise SmokeFailure(f"the probe call failed: {result.error}")
        return result

    # -- the checks ---------------------------------------------------------------------------
    def run_check(self, ref: str, check: str) -> None:
        if check == "models":
            raise SmokeFailure(
                "no models in use: no workflow test was collected and no stable/candidate is "
                "configured (set them in [tool.modelrollout] or pass --stable/--candidate)"
            )
        if self.session.is_killed(ref):
            pytest.skip(f"kill switch: {ref} is killed and never called")
        try:
            spec = self.spec(ref)
        except ConfigError as exc:
            raise SmokeFailure(str(exc)) from None
        if check not in ("api_key", "reachable"):
            self._require_key(spec)
        getattr(self, f"check_{check}")(spec)

    def check_api_key(self, spec: ModelSpec) -> None:
        self._require_key(spec)

    def check_reachable(self, spec: ModelSpec) -> None:
        url = self.base_url(spec)
        timeout = min(max(spec.timeout_s, 1.0), 15.0)
        loopback = is_loopback(url)
        try:
            with httpx.Client(timeout=timeout, trust_env=not loopback) as client:
                client.get(url)  # any HTTP answer proves the base URL is reachable
        except httpx.TimeoutException:
            raise SmokeFailure(f"base URL {url} did not answer within {timeout:g} s") from None
        except Exception as exc:  # httpx.HTTPError (or a raw httpcore error under pytester)
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SmokeFailure(f"base URL {url} is not reachable: {detail}") from None

    def check_model_accepted(self, spec: ModelSpec) -> None:
        result = self.probe(spec.ref)
        if result.ok and not result.fallback:
            return
        if result.fallback:
            raise SmokeFailure(
                f"{spec.ref} failed; its fallback {result.served_by} answered instead"
            )
        err = result.error
        if err is None:
            raise SmokeFailure("the probe call failed without an error")
        if err.kind == "bad_response":
            return  # the server took the model id and answered; response_shape says what's wrong
        if err.status_code == 404:
            raise SmokeFailure(
                f"model not found: the provider rejected model id {spec.model!r} (HTTP 404)"
            )
        raise SmokeFailure(f"model id {spec.model!r} not accepted: {err}")

    def check_response_shape(self, spec: ModelSpec) -> None:
        result = self._probe_ok(spec.ref)
        resp = result.response
        assert resp is not None
        if not isinstance(resp.text, str):
            raise SmokeFailure("reply text is not a string")
        if not resp.text.strip() and not resp.tool_calls:
            raise SmokeFailure("reply has neither text nor tool calls")
        if not resp.finish_reason:
            raise SmokeFailure("reply has no finish reason")

    def check_usage_fields(self, spec: ModelSpec) -> None:
        resp = self._probe_ok(spec.ref).response
        assert resp is not None
        missing = [
            name
            for name, value in (
                ("input_tokens", resp.input_tokens),
                ("output_tokens", resp.output_tokens),
            )
            if not isinstance(value, int) or value < 0
        ]
        if missing:
            raise SmokeFailure(f"reply has no usage: {' and '.join(missing)} missing")

    def check_timeout_honoured(self, spec: ModelSpec) -> None:
        model = spec.model
        if spec.provider in SIM_PROVIDERS:
            # make the persona wait (an explicit latency is never scaled away)
            model += ("&" if "?" in model else "?") + "latency_ms=500&jitter=0"
        tiny = dataclasses.replace(
            spec,
            model=model,
            timeout_s=TINY_TIMEOUT_S,
            max_retries=0,
            fallback=None,
            rpm=None,
            tpm=None,
        )
        client = ModelClient(tiny, env=self.session.env, killed=self.session.killed)
        request = ChatRequest(messages=[{"role": "user", "content": PROBE_PROMPT}])
        runner = self.session.runner
        try:
            # timed on the event loop, from the call's start to its end: not the client's
            # building and closing, nor this thread's wait to be woken (a loaded machine's
            # scheduling, which a run's lowered-priority workers see most of)
            result, elapsed = runner.run(_timed(client.call(request)),
                                         timeout=TIMEOUT_GRACE_S + 30.0)
        finally:
            runner.run(client.aclose())
        if result.ok:
            raise SmokeFailure(
                f"a {TINY_TIMEOUT_S:g} s timeout was not honoured: the call answered after "
                f"{elapsed * 1000:.0f} ms"
            )
        if result.status != "timeout":
            raise SmokeFailure(
                f"a {TINY_TIMEOUT_S:g} s timeout was classified as {result.error_kind}, not "
                f"timeout: {result.error}"
            )
        if elapsed > TIMEOUT_GRACE_S:
            raise SmokeFailure(
                f"a {TINY_TIMEOUT_S:g} s timeout took {elapsed:.1f} s to give up "
                f"(more than {TIMEOUT_GRACE_S:g} s)"
            )

    def check_tool_calling(self, spec: ModelSpec) -> None:
        model = self.models.get(spec.ref)
        tools = model.tools if model is not None else []
        if not tools:
            pytest.skip("no workflow of this model declares tools")
        names = [_tool_name(t) for t in tools]
        request = ChatRequest(
            messages=[{"role": "user", "content": f"Use the {names[0]} tool now."}],
            tools=[dict(t) for t in tools],
            params={"tool_choice": "required"},
        )
        result = self.session.runner.run(self.session.registry.client(spec.ref).call(request))
        if not result.ok or result.response is None:
            raise SmokeFailure(f"the tool call request failed: {result.error}")
        calls = result.response.tool_calls
        if not calls:
            raise SmokeFailure(
                f"no tool call in the reply (tools offered: {', '.join(names)}; "
                "tool_choice=required)"
            )
        call = calls[0]
        if call.name not in names:
            raise SmokeFailure(
                f"called undeclared tool {call.name!r} (declared: {', '.join(names)})"
            )
        if not isinstance(call.arguments, dict):
            raw = (call.raw_arguments or "")[:60]
            raise SmokeFailure(f"tool {call.name!r} arguments are not a JSON object: {raw!r}")


# -- collection --------------------------------------------------------------------------------
def _workflow_models(
    rs: RolloutSession, name: str, mark: pytest.Mark
) -> tuple[str | None, str | None]:
    """The workflow's (stable, candidate), by the precedence of ``RolloutSession.models_for``.

    Computed without registering the workflow: deselected tests must not add workflows.
    """
    wf = rs.cfg.workflows.get(name)
    stable = (
        rs.options.stable
        or mark.kwargs.get("stable")
        or (wf.stable if wf else None)
        or rs.cfg.stable
    )
    candidate = (
        rs.options.candidate
        or mark.kwargs.get("candidate")
        or (wf.candidate if wf else None)
        or rs.cfg.candidate
    )
    return stable, candidate


def models_in_use(rs: RolloutSession, items: list[pytest.Item]) -> dict[str, SmokeModel]:
    """Models in use, in a deterministic order (identical in every xdist worker)."""
    from .plugin import MODEL_FIXTURES

    found: dict[str, SmokeModel] = {}

    def add(ref: str | None, tools: Any = None) -> None:
        if not ref:
            return
        model = found.setdefault(ref, SmokeModel(ref))
        model.add_tools(tools)

    for item in items:
        if isinstance(item, SmokeItem):
            continue
        fixturenames = getattr(item, "fixturenames", ())
        if not any(f in fixturenames for f in MODEL_FIXTURES):
            continue
        mark = item.get_closest_marker("workflow")
        if mark is None:
            continue
        name = mark.args[0] if mark.args else mark.kwargs.get("name")
        if not isinstance(name, str) or not name.strip():
            continue
        stable, candidate = _workflow_models(rs, name.strip(), mark)
        tools = mark.kwargs.get("tools")
        add(stable, tools)
        add(candidate, tools)
    if not found:
        add(rs.options.stable or rs.cfg.stable)
        add(rs.options.candidate or rs.cfg.candidate)
    # fallbacks (transitively); an unresolvable reference fails its own items later
    todo = list(found)
    seen: set[str] = set()
    while todo:
        ref = todo.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        try:
            fb = rs.spec(ref).fallback
        except ModelRolloutError:
            continue
        if fb and fb not in found:
            add(fb)
            todo.append(fb)
    return found


class SmokePlugin:
    """Registered by the plugin when ``--rollout-smoke`` is given."""

    def __init__(self, session: RolloutSession) -> None:
        self.runner = SmokeRunner(session)

    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers", f"{MARKER}: a generated --rollout-smoke check (modelrollout)"
        )

    @pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so they apply to smoke items
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        models = models_in_use(self.runner.session, items)
        self.runner.models = models
        smoke: list[pytest.Item] = []
        for ref, model in models.items():
            checks = CHECKS + ((TOOL_CHECK,) if model.tools else ())
            for check in checks:
                smoke.append(
                    SmokeItem.from_parent(
                        session,
                        name=item_name(ref, check),
                        nodeid=item_name(ref, check),
                        ref=ref,
                        check=check,
                        runner=self.runner,
                    )
                )
        if not smoke:
            smoke.append(
                SmokeItem.from_parent(
                    session,
                    name="smoke::models",
                    nodeid="smoke::models",
                    ref="",
                    check="models",
                    runner=self.runner,
                )
            )
        items[:0] = smoke


__all__ = ["MARKER", "SmokeItem", "SmokePlugin", "SmokeRunner", "item_name", "models_in_use"]
