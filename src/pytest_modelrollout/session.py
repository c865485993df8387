"""RolloutSession: the one owner object of a test session.

It resolves models, owns the async runner and the model registry, makes the calls (through the
cassette store when recording), collects the records that fixtures hand it, merges the records
of xdist workers, and at the end builds the summary that every report renders.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigError, KilledError, ModelRolloutError
from ._records import CallRecord, CheckRecord, RecordSet, Role, shared
from .config import RolloutConfig, check_api_key, resolve_model
from .providers.base import CallResult, ChatRequest, ModelSpec, ProviderResponse, worker_share
from .runner import Runner

if TYPE_CHECKING:
    from .prefetch import Prefetcher
    from .providers.client import ModelRegistry
    from .providers.limits import LearnedPace


@dataclass
class Options:
    """Command-line options that the session needs (already validated)."""

    stable: str | None = None
    candidate: str | None = None
    report: str | None = None
    markdown: str | None = None
    html: str | None = None
    gates: list[Any] = field(default_factory=list)  # parsed Gate objects from --rollout-gate
    record: str | None = None
    killed: list[str] = field(default_factory=list)
    smoke: bool = False
    strict: bool = False
    no_gate: bool = False
    allow_inconclusive: bool = False
    exit: str | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class WorkflowModels:
    workflow: str
    stable: str
    candidate: str


class RolloutSession:
    def __init__(
        self,
        cfg: RolloutConfig,
        options: Options,
        *,
        rootdir: Path,
        config_path: str | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.options = options
        self.rootdir = rootdir
        self.config_path = config_path
        self.env: Mapping[str, str] = os.environ if env is None else env
        from .config import killed_models

        self.killed: set[str] = killed_models(cfg, options.killed, self.env)
        self.strict = options.strict or cfg.strict
        self.exit_mode = options.exit or cfg.exit
        self.records = RecordSet()
        self._lock = threading.Lock()
        self._specs: dict[str, ModelSpec] = {}
        self._runner: Runner | None = None
        self._registry: ModelRegistry | None = None
        self.started = time.time()
        # an xdist worker (set by the plugin): its limits are its share of the run's. Not read
        # from PYTEST_XDIST_WORKER alone, which a pytest run inside a worker inherits
        self.xdist_worker = False
        # the xdist controller's slot broker (providers/slots.py), given to a worker
        self.slots_address: str | None = None
        # an xdist worker whose controller sends requests while it starts (headstart.py): every
        # call of a test is claimed from the controller first
        self.headstart = False
        # the xdist controller making those calls (its limits are the broker's, as a worker's)
        self.headstart_controller = False
        self._slot_client: Any = None
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._preloaded = False
        self.workflows: dict[str, WorkflowModels] = {}
        self.crashed_workers: list[str] = []
        # endpoint -> the limits its provider stated: in earlier runs (read from pytest's
        # cache by the plugin), and in this run's workers' replies (merged from them)
        self.remembered_limits: dict[str, dict[str, Any]] = {}
        self._workers_limits: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] | None = None
        self.report_errors: list[str] = []
        from .cassettes import resolve_record_modes

        self.record_modes: dict[str, str] = {
            str(k): str(v) for k, v in resolve_record_modes(cfg.record, options.record).items()
        }
        self._stores: dict[tuple[str, Path], Any] = {}
        self.marker_gates: dict[str, dict[str, Any]] = {}
        self._sent = (0, 0)  # xdist worker: (calls, checks) already sent to the controller
        self.prefetch: Prefetcher | None = None  # set by prefetch.PrefetchPlugin while running

    # -- models -----------------------------------------------------------------------------
    def spec(self, ref: str) -> ModelSpec:
        spec = self._specs.get(ref)
        if spec is None:
            spec = resolve_model(self.cfg, ref)
            if spec.fallback is not None:
                self.spec(spec.fallback)  # validate the fallback reference too
            self._specs[ref] = spec
        return spec

    def models_for(self, workflow: str, marker_stable: str | None, marker_candidate: str | None) -> WorkflowModels:
        """Precedence: --candidate/--stable > marker > workflow config > top-level config."""
        wf = self.cfg.workflows.get(workflow)
        stable = (
            self.options.stable
            or marker_stable
            or (wf.stable if wf else None)
            or self.cfg.stable
        )
        candidate = (
            self.options.candidate
            or marker_candidate
            or (wf.candidate if wf else None)
            or self.cfg.candidate
        )
        if not stable:
            raise ConfigError(
                f"workflow {workflow!r}: no stable model (set --stable, stable in "
                "[tool.modelrollout] or the workflow marker)"
            )
        if not candidate:
            raise ConfigError(
                f"workflow {workflow!r}: no candidate model (set --candidate, candidate in "
                "[tool.modelrollout] or the workflow marker)"
            )
        self.spec(stable)
        self.spec(candidate)
        models = WorkflowModels(workflow, stable, candidate)
        known = self.workflows.get(workflow)
        if known is not None and known != models:
            raise ConfigError(
                f"workflow {workflow!r}: tests disagree on its models "
                f"({known.stable} -> {known.candidate} vs {stable} -> {candidate})"
            )
        self.workflows[workflow] = models
        return models

    def check_keys(self) -> None:
        """Every model that will be called live must have its API key variable set."""
        seen: set[str] = set()
        for wm in self.workflows.values():
            for role, ref in (("stable", wm.stable), ("candidate", wm.candidate)):
                if self.record_modes.get(role) == "replay":
                    continue
                todo = [ref]
                while todo:
                    r = todo.pop()
                    if r in seen or r in self.killed:
                        continue
                    seen.add(r)
                    spec = self.spec(r)
                    check_api_key(spec, self.env)
                    if spec.fallback:
                        todo.append(spec.fallback)

    def is_killed(self, ref: str) -> bool:
        return ref in self.killed

    @property
    def project_configured(self) -> bool:
        """A modelrollout config file was found or models were given on the command line (the
        plugin is not merely installed in a project that does not use it)."""
        return self.config_path is not None or bool(self.options.stable or self.options.candidate)

    # -- calling ----------------------------------------------------------------------------
    @property
    def runner(self) -> Runner:
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    limit = self.options.concurrency or self.cfg.concurrency
                    # the HTTP stack is imported here, where calls are to be made (on the xdist
                    # controller only for its head start, on its thread, as the workers start)
                    from .providers.client import ModelRegistry

                    share = worker_share(self.env) if self.xdist_worker else None
                    if self.headstart_controller or (
                        self.xdist_worker and share is None and self.slots_address
                    ):
                        # all of every limit, taken from the broker: the controller's head
                        # start, or the only worker of -n 1 (whose calls it claims from there)
                        share = (0, 1)
                    slots = None
                    if share is not None and self.slots_address:
                        from .providers.slots import SlotClient

                        slots = SlotClient(self.slots_address)
                    self._slot_client = slots
                    self._registry = ModelRegistry(
                        self.spec, self.killed, self.env, max_in_flight=limit, share=share,
                        slots=slots, remembered=self.remembered_limits,
                    )
                    runner = Runner()
                    runner.register(self._registry)
                    self._runner = runner
        return self._runner

    def default_roles(self) -> dict[str, str | None]:
        """The models every workflow uses unless it says otherwise (role -> reference)."""
        return {"stable": self.options.stable or self.cfg.stable,
                "candidate": self.options.candidate or self.cfg.candidate}

    def warm(self, roles: Mapping[str, str | None]) -> None:
        """Build the clients of the models of ``roles`` (role -> reference) on the event loop
        now, in the background, and start opening their first connections.

        Called when the run starts: resolving the providers, starting the loop thread, building
        the connection pools and connecting (TCP and TLS: two or three round trips to a distant
        provider) then overlap with collection instead of delaying the first calls. As many
        connections as calls may be in flight at once to each model (its ``max_concurrency``
        and the run's ``concurrency``), none for a role that replays cassettes only. Never
        raises and never calls a model; a reference that cannot be resolved, or a connection
        that cannot be opened, is reported later, where it is used.
        """
        wanted: dict[str, bool] = {}  # reference -> whether it may be called live
        for role, ref in roles.items():
            if ref and not self.is_killed(ref):
                wanted[ref] = wanted.get(ref, False) or self.record_modes.get(role) != "replay"
        if not wanted:
            return
        try:
            registry = self.registry
        except Exception:  # a broken config is reported at collection, one line
            return
        connections = registry.max_in_flight or 1 << 16  # the model's max_concurrency caps it
        _import_launchers(registry, wanted)

        async def build() -> None:
            for ref, live in wanted.items():
                with contextlib.suppress(Exception):
                    await registry.client(ref).warm(connections if live else 0)

        with contextlib.suppress(Exception):
            self.runner.submit(build())

    @property
    def registry(self) -> ModelRegistry:
        _ = self.runner
        assert self._registry is not None
        return self._registry

    def store(self, role: str, where: Path | None = None) -> Any:
        """The cassette store for a role, under ``where`` (the test file's directory)."""
        mode = self.record_modes.get(role, "off")
        if mode == "off":
            return None
        root = self.cassette_root(where)
        store = self._stores.get((mode, root))
        if store is None:
            from .cassettes import CassetteStore

            store = CassetteStore(root, mode)
            self._stores[(mode, root)] = store
        return store

    def cassette_root(self, where: Path | None = None) -> Path:
        """``cassette_dir`` beside the test file (or the rootdir), unless it is absolute."""
        root = Path(self.cfg.cassette_dir)
        if root.is_absolute():
            return root
        return (where if where is not None else self.rootdir) / root

    async def acall(
        self,
        ref: str,
        request: ChatRequest,
        role: str,
        where: Path | None = None,
        *,
        test_id: str | None = None,
        ahead: bool = False,
    ) -> tuple[CallResult, str]:
        """One call through the cassette store beside the test file (``where``).

        On an xdist worker whose controller has a head start (:mod:`.headstart`), a call of a
        test (``test_id``; ``ahead``: sent ahead of it) is first claimed from the controller:
        if the controller sent that very request, its result is this call's (and is recorded
        as this call's would be). A cassette that has the request is read first: the
        controller read the cassettes before sending and sent none of those."""
        store = self.store(role, where)
        if store is not None:
            entry = store.lookup(ref, request)  # a miss in replay mode raises CassetteError
            if entry is not None:
                return _result_from_entry(ref, entry), "replay"
        result: CallResult | None = None
        if self.headstart and test_id is not None:
            result = await self._claim(test_id, role, ref, request, ahead)
        if result is None:
            result = await self.registry.client(ref).call(request)
        if store is not None and store.records and result.error is None:
            from .cassettes import CassetteEntry

            # written (and fsync'ed) in a thread: on the loop, each write held up every
            # other call's sends and replies for as long as the disk took (0.35 ms here, a few
            # ms on a CI runner's network disk); the call still returns once it is on disk
            entry = CassetteEntry.from_call_result(result)
            await asyncio.get_running_loop().run_in_executor(
                None, store.put, ref, request, entry)
        return result, "live"

    async def _claim(
        self, test_id: str, role: str, ref: str, request: ChatRequest, ahead: bool
    ) -> CallResult | None:
        _ = self.runner  # the client that speaks to the controller
        client = self._slot_client
        if client is None or not client.usable:
            return None
        data = await client.claim(test_id, role, ref, request.key(ref), ahead)
        if data is None:
            return None
        from .providers.base import result_from_wire

        try:
            return result_from_wire(data)
        except ValueError:  # not from this version of the plugin: the request is sent here
            return None

    def call_many(
        self,
        calls: list[tuple[str, ChatRequest, str]],
        *,
        test_id: str | None = None,
        where: Path | None = None,
        first_ask: dict[str, Any] | None = None,
    ) -> list[tuple[CallResult, str] | BaseException]:
        """Make the calls concurrently. With ``test_id``, a call that was prefetched for that
        test with exactly this model and request takes the prefetched result instead
        (``first_ask``: the arguments of the test's first ``ask(case, ...)``, see
        :meth:`Prefetcher.take`)."""
        pf = self.prefetch
        ahead = (
            pf.take(test_id, calls, first_ask) if pf is not None and test_id is not None else None
        )
        if ahead and all(fut is not None for fut in ahead):
            # everything was sent ahead: wait for those futures here, no trip through the loop,
            # sending the next items meanwhile (Prefetcher.wait); on a terminal, a long wait
            # shows the prefetch counts while it lasts
            assert pf is not None
            return _results([fut for fut in ahead if fut is not None], pf.waiter())

        async def gather() -> list[tuple[CallResult, str] | BaseException]:
            from .prefetch import awaitable

            return await asyncio.gather(
                *(
                    self.acall(ref, req, role, where, test_id=test_id)
                    if fut is None
                    else awaitable(fut)
                    for fut, (ref, req, role) in zip(ahead or [None] * len(calls), calls, strict=True)
                ),
                return_exceptions=True,
            )

        return self.runner.run(gather())

    # -- records ----------------------------------------------------------------------------
    def add_call(self, rec: CallRecord) -> None:
        rec.error = shared(rec.error)  # classified messages repeat; one copy of each
        with self._lock:
            self.records.calls.append(rec)

    def add_check(self, rec: CheckRecord) -> None:
        rec.detail = shared(rec.detail)  # "reply en, prompt en", ...: one copy of each
        with self._lock:
            self.records.checks.append(rec)

    def merge_worker(self, data: Mapping[str, Any] | None, worker: str) -> None:
        if not data:
            # a crashed worker sends no final payload; what it sent with each finished test's
            # report is already merged (see merge_increment), only its last test is lost
            self.crashed_workers.append(worker)
            return
        self.merge_increment(data)

    def merge_increment(self, data: Mapping[str, Any]) -> None:
        """Merge records (and workflow models, marker gates) sent by an xdist worker."""
        rs = RecordSet.from_dict(dict(data.get("records", {})))
        with self._lock:
            self.records.extend(rs)
            limits = data.get("stated_limits")
            if isinstance(limits, dict):
                for key, entry in limits.items():
                    if isinstance(entry, dict):
                        self._workers_limits.setdefault(str(key), {}).update(entry)
            for name, (st, ca) in dict(data.get("workflows", {})).items():
                self.workflows.setdefault(name, WorkflowModels(name, st, ca))
            for name, gates in dict(data.get("marker_gates", {})).items():
                self.marker_gates.setdefault(name, dict(gates))

    def drain_new_records(self) -> dict[str, Any] | None:
        """On an xdist worker: the records added since the last drain, or None.

        Sent with each test's teardown report, so that a worker that crashes later loses at
        most the test it was running (the final payload only carries what is left).
        """
        with self._lock:
            n_calls, n_checks = self._sent
            calls = self.records.calls[n_calls:]
            checks = self.records.checks[n_checks:]
            self._sent = (len(self.records.calls), len(self.records.checks))
        if not calls and not checks:
            return None
        return {
            "records": RecordSet(calls=list(calls), checks=list(checks)).to_dict(),
            "workflows": {n: [w.stable, w.candidate] for n, w in self.workflows.items()},
            "marker_gates": dict(self.marker_gates),
        }

    def worker_payload(self) -> dict[str, Any]:
        rest = self.drain_new_records()
        return {
            "records": rest["records"] if rest else RecordSet().to_dict(),
            "workflows": {n: [w.stable, w.candidate] for n, w in self.workflows.items()},
            "marker_gates": dict(self.marker_gates),
            "stated_limits": self.stated_limits(),
        }

    def stated_limits(self) -> dict[str, dict[str, Any]]:
        """The limits the providers stated in this run's replies (this process's and, on the
        xdist controller, its workers'), per endpoint; for the next run."""
        with self._lock:
            out = {k: dict(v) for k, v in self._workers_limits.items()}
        registry = self._registry
        if registry is not None:
            for key, entry in registry.stated_limits().items():
                out.setdefault(key, {}).update(entry)
        return out

    # -- gates and the end ---------------------------------------------------------------------
    def set_marker_gates(self, workflow: str, gates: Any) -> None:
        if not isinstance(gates, dict):
            raise ConfigError(f"workflow {workflow!r}: marker gates must be a dict")
        from .gates import gates_from_config

        gates_from_config(gates, source="marker")  # validate now, at collection
        self.marker_gates[workflow] = dict(gates)

    def gates_for(self, workflow: str) -> list[Any]:
        from .gates import default_gates, gates_from_config, merge_gates

        layers: list[list[Any]] = [default_gates(), gates_from_config(self.cfg.gates, "config")]
        wf = self.cfg.workflows.get(workflow)
        if wf is not None and wf.gates:
            layers.append(gates_from_config(wf.gates, "workflow"))
        if workflow in self.marker_gates:
            layers.append(gates_from_config(self.marker_gates[workflow], "marker"))
        layers.append(list(self.options.gates))
        return merge_gates(*layers)

    def decision_settings(self) -> tuple[float, str]:
        """``confidence`` / ``decision``: top level, or set in ``[tool.modelrollout.gates]``."""
        from .gates import parse_gates_config

        table = parse_gates_config(self.cfg.gates, "config")
        confidence = table.confidence if table.confidence is not None else self.cfg.confidence
        decision = table.decision if table.decision is not None else self.cfg.decision
        return confidence, decision

    def headline_models(self) -> tuple[str, str]:
        wfs = sorted(self.workflows.values(), key=lambda w: w.workflow)
        stable = self.options.stable or self.cfg.stable or (wfs[0].stable if wfs else "")
        candidate = (
            self.options.candidate or self.cfg.candidate or (wfs[0].candidate if wfs else "")
        )
        return stable, candidate

    def build_summary(self, *, complete: bool) -> dict[str, Any]:
        from ._version import __version__
        from .summary import build_summary

        stable, candidate = self.headline_models()
        confidence, decision = self.decision_settings()
        return build_summary(
            self.records,  # compute() puts the records in a total order itself
            stable=stable,
            candidate=candidate,
            workflow_models={n: (w.stable, w.candidate) for n, w in self.workflows.items()},
            gates_by_workflow={n: self.gates_for(n) for n in self.workflows},
            killed=set(self.killed),
            confidence=confidence,
            decision=decision,
            # a crashed xdist worker may have lost its running test's calls: not complete
            complete=complete and not self.crashed_workers,
            started_at=self.started_at,
            duration_s=round(time.time() - self.started, 3),
            plugin_version=__version__,
            extra={
                "workers": {"crashed": list(self.crashed_workers)},
                "killed": sorted(self.killed),
            },
        )

    def preload_end(self) -> None:
        """Import what :meth:`finish` and the terminal summary use (summary, gates, statistics,
        the report writers, tabulate): ~0.1 s that would otherwise come after the last test.
        Called once the first calls are in flight, while the main thread only waits for them."""
        if self._preloaded:
            return
        self._preloaded = True
        from . import summary  # noqa: F401
        from .report import jsonreport, markdown, terminal  # noqa: F401

        if self.options.html:
            with contextlib.suppress(ImportError):  # reported where the report is written
                from .report import html  # noqa: F401

    def finish(self, *, complete: bool) -> None:
        """Build the summary and write every requested report (atomically)."""
        try:
            self.summary = self.build_summary(complete=complete)
        except ModelRolloutError as exc:
            self.report_errors.append(str(exc))
            return
        self.write_reports()

    def write_reports(self) -> None:
        summary = self.summary
        if summary is None:
            return
        from .report import jsonreport, markdown

        opts = self.options
        if opts.report:
            try:
                # the writer sorts the records and streams them to the file (no copy here)
                jsonreport.write_json_report(Path(opts.report), summary, self.records)
            except (OSError, ModelRolloutError) as exc:
                self.report_errors.append(str(exc))
        if opts.markdown:
            try:
                markdown.write_markdown(Path(opts.markdown), summary)
            except (OSError, ModelRolloutError) as exc:
                self.report_errors.append(str(exc))
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            try:
                markdown.append_step_summary(summary)
            except OSError as exc:
                self.report_errors.append(f"cannot append to $GITHUB_STEP_SUMMARY: {exc}")
        if opts.html:
            try:
                from .report import html

                html.write_html(Path(opts.html), summary)
            except (OSError, ModelRolloutError, ImportError) as exc:
                self.report_errors.append(str(exc))

    def terminal_lines(self, *, verbose: bool = False) -> list[str]:
        if self.summary is None:
            return []
        from .report.terminal import render_terminal

        return render_terminal(self.summary, verbose=verbose)

    def verdict_fails(self) -> bool:
        if self.summary is None:
            return False
        verdict = self.summary.get("verdict")
        if verdict == "INCONCLUSIVE":
            return not self.options.allow_inconclusive
        return verdict != "READY"

    def exit_status(self, current: int) -> int | None:
        """The session's exit status once the verdict is known (None: leave it)."""
        if self.summary is None or self.options.no_gate:
            return None
        bad = self.verdict_fails()
        if self.exit_mode == "verdict":
            if current in (0, 1):
                return 1 if bad else 0
            return None
        if bad and current == 0:
            return 1
        return None

    def paces(self) -> list[tuple[str, LearnedPace]]:
        """Each model's pace, where its provider turned requests away with 429s, in this
        process (none before a call was made)."""
        registry = self._registry
        return registry.paces() if registry is not None else []

    def token_limits(self) -> dict[str, dict[str, float]]:
        """Each model's tokens-a-minute limits this process kept to (kind -> per minute)."""
        registry = self._registry
        return registry.token_limits() if registry is not None else {}

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
            self._registry = None


def _import_launchers(registry: ModelRegistry, refs: Collection[str]) -> None:
    """What resolving the base URLs of ``refs`` imports (the simulator's launcher), imported
    here on the main thread before the event loop's thread resolves them
    (:meth:`.providers.presets.Preset.prepare`)."""
    from .providers.presets import PRESETS

    for ref in refs:
        with contextlib.suppress(Exception):  # reported where the model is used
            spec = registry.spec(ref)
            preset = PRESETS.get(spec.provider)
            if preset is not None and not spec.base_url:
                preset.prepare()


def _results(
    futures: list[concurrent.futures.Future[tuple[CallResult, str]]],
    waiter: Callable[[list[concurrent.futures.Future[tuple[CallResult, str]]]], object]
    | None = None,
) -> list[tuple[CallResult, str] | BaseException]:
    """The outcomes of prefetched calls, like ``asyncio.gather(..., return_exceptions=True)``;
    Ctrl-C while waiting cancels them. ``waiter`` waits first (the progress display)."""
    out: list[tuple[CallResult, str] | BaseException] = []
    try:
        if waiter is not None:
            with contextlib.suppress(Exception):  # a display never fails a test
                waiter(futures)
        for fut in futures:
            try:
                out.append(fut.result())
            except Exception as exc:  # concurrent.futures.CancelledError included
                out.append(exc)
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        raise
    return out


def _result_from_entry(ref: str, entry: Any) -> CallResult:
    """A recorded reply as a CallResult (recorded latency and usage are kept)."""
    return CallResult(
        ref=ref,
        status=entry.status,
        response=entry.response,
        error=entry.to_error(),
        latency_ms=entry.latency_ms or 0.0,
        attempts=1,
        fallback=entry.fallback,
        served_by=entry.served_by or ref,
        cost_usd=entry.cost_usd,
        started_at=0.0,
    )


def reply_fields(result: CallResult) -> dict[str, Any]:
    """The Reply/CallRecord fields that come from a CallResult."""
    resp: ProviderResponse | None = result.response
    return {
        "text": resp.text if resp is not None else "",
        "tool_calls": list(resp.tool_calls) if resp is not None else [],
        "finish_reason": resp.finish_reason if resp is not None else None,
        "input_tokens": resp.input_tokens if resp is not None else None,
        "output_tokens": resp.output_tokens if resp is not None else None,
        "latency_ms": result.latency_ms,
        "cost_usd": result.cost_usd,
        "fallback": result.fallback,
        "served_by": result.served_by,
        "attempts": result.attempts,
        "error": str(result.error) if result.error is not None else None,
    }


def call_record(
    result: CallResult,
    *,
    source: str,
    pair_id: str,
    test_id: str,
    workflow: str,
    role: Role,
    model: str,
    case_id: str | None,
) -> CallRecord:
    kind = result.error.kind if result.error is not None else None
    fields = reply_fields(result)
    return CallRecord(
        call_id=f"{pair_id}:{role}",
        pair_id=pair_id,
        test_id=test_id,
        workflow=workflow,
        role=role,
        model=model,
        status=result.status,
        latency_ms=None if isinstance(result.error, KilledError) else fields["latency_ms"],
        input_tokens=fields["input_tokens"],
        output_tokens=fields["output_tokens"],
        cost_usd=fields["cost_usd"],
        fallback=result.fallback,
        served_by=result.served_by,
        error_kind=kind,
        error=fields["error"],
        attempts=result.attempts,
        source=source,  # type: ignore[arg-type]
        case_id=case_id,
        ts=result.started_at,
    )
