"""ModelClient: one model's calls with retries, limits, fallback, kill switch, cost and latency.

* One pooled HTTP client per model (created lazily on the event loop: the asyncio transport,
  or ``httpx.AsyncClient`` where a proxy is set), a concurrency
  gate of ``max_concurrency`` calls in flight, optional ``rpm`` / ``tpm`` token buckets
  (tokens estimated before the send, settled with the usage the answer reports; the
  provider's stated tokens limits too: :mod:`.tokens`). After a 429 the model's effective
  concurrency is halved and its rate slowed for a cool-down period (adaptive back-off).
* Retries on retryable kinds (timeout, rate_limit, server incl. 529, connection) up to
  ``max_retries``: exponential back-off with full jitter (base 0.5 s, cap 20 s) or the server's
  ``retry-after`` (capped at 60 s), all multiplied by ``MODELROLLOUT_BACKOFF_SCALE`` (default 1).
* Then the ``fallback`` model (its own spec, key and base URL) unless it is killed.
* A killed reference is never called: the result is an error with :class:`KilledError`.
* ``latency_ms`` runs from the first send (not from queueing for a slot) to the final answer,
  including retries and fallback, less the time spent opening connections (TCP connect, TLS
  handshake), queueing for the limits before a retry, and from a request turned away with a 429
  to its retry's send (a rate limit is the account's, not the model's). On the asyncio
  transport the send is the request's first write and the answer's time its arrival (the
  kernel's receive timestamp on Linux), not when the event loop got to them
  (:class:`~.transport.WireClock`). ``cost_usd`` = spec prices x tokens (None when unpriced).

:meth:`ModelClient.call` never raises a ProviderError: failures are in the :class:`CallResult`.
The retry attempt (0 for the first send, 1 for the first retry, ...) goes out as header
``x-modelrollout-attempt``, as the simulator expects.
This module does not import pytest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._exceptions import (
    AuthError,
    ClientError,
    KilledError,
    ProviderError,
    RateLimitError,
    TimeoutError_,
)
from .anthropic import DEFAULT_MAX_TOKENS, AnthropicProvider
from .base import (
    CallResult,
    ChatRequest,
    ModelSpec,
    Provider,
    ProviderResponse,
    share_spec,
    split_limit,
)
from .limits import BACKOFF_SCALE_ENV, AdaptiveGate, LearnedPace, TokenBucket, backoff_scale
from .openai import OpenAIProvider, safe_message, scrub
from .presets import PRESETS
from .slots import LIMIT_KINDS, RUN_KEY, limit_key
from .tokens import TOKEN_KINDS, Reservation, TokenLimits, TokenMeter, bucket_capacity
from .transport import (
    WIRE_CLOCK,
    AsyncioTransport,
    WireClock,
    default_ssl_context,
    make_transport,
)

if TYPE_CHECKING:
    import httpx

    from .slots import SlotClient, Step
    from .transport import HTTPClient

_HAS_ASYNCIO_TIMEOUT = hasattr(asyncio, "timeout")
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0
RETRY_AFTER_CAP_S = 60.0
ADAPTIVE_COOLDOWN_S = 10.0

def make_provider(spec: ModelSpec) -> Provider:
    """The provider for a spec's wire format."""
    if spec.wire == "anthropic":
        return AnthropicProvider(spec)
    if spec.wire == "openai":
        return OpenAIProvider(spec)
    raise ValueError(f"unknown wire format {spec.wire!r}")


def backoff_delay(
    failed_attempt: int,
    retry_after: float | None,
    scale: float = 1.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``failed_attempt``-th attempt (1-based) failed."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, RETRY_AFTER_CAP_S) * scale
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, failed_attempt - 1))
    return (rng or random).uniform(0.0, ceiling) * scale


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """The TLS context every model client shares (httpx's default: certifi's CA bundle, or the
    one in ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, read on first use)."""
    return default_ssl_context()


def _httpx_client(
    connections: int, timeout_s: float, verify: ssl.SSLContext | bool, *, trust_env: bool
) -> httpx.AsyncClient:
    """httpx's client with its default transport (which honours the proxy variables)."""
    import httpx

    for attempt in range(3):
        try:
            return httpx.AsyncClient(
                timeout=httpx.Timeout(timeout_s),
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
                trust_env=trust_env,
                follow_redirects=False,
                verify=verify,
            )
        except KeyError:
            # built on the event loop's thread, it reads the proxy variables with
            # os.environ.items(), which raises when pytest deletes PYTEST_CURRENT_TEST on the
            # main thread in between: read them again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def is_loopback(url: str) -> bool:
    """The URL's host is this machine (no proxy applies, plain HTTP is expected)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _with_note(err: ProviderError, note: str, secrets: tuple[str | None, ...]) -> ProviderError:
    msg = Exception.__str__(err)
    return _copy_error(err, safe_message(f"{msg} ({note})", secrets))


def _sanitized(err: ProviderError, secrets: tuple[str | None, ...]) -> ProviderError:
    msg = Exception.__str__(err)
    clean = safe_message(msg, secrets)
    if clean == msg:
        return err
    return _copy_error(err, clean)


def _copy_error(err: ProviderError, message: str) -> ProviderError:
    """``err`` with another message, everything else as it was."""
    new = type(err)(message, status_code=err.status_code, retry_after=err.retry_after)
    new.retryable = err.retryable
    if isinstance(err, RateLimitError) and isinstance(new, RateLimitError):
        new.stated_rpm = err.stated_rpm
        new.stated_tokens = err.stated_tokens
    return new


@dataclass
class _CallState:
    attempts: int = 0
    first_send: float | None = None  # perf_counter of the first send
    sent_at: float | None = None  # epoch seconds of the first send
    setup_s: float = 0.0  # left out of the latency: opening connections (WireClock), ...
    arrived: float | None = None  # perf_counter of the answer's arrival (WireClock), if known
    attempt_sent: float = 0.0  # perf_counter of the last attempt's send
    # perf_counter of the send of an attempt the provider turned away with a 429: the time
    # from there to the next attempt's send is left out of the latency too
    limited_at: float | None = None

    def mark_sent(self) -> None:
        self.attempts += 1
        self.attempt_sent = time.perf_counter()
        if self.first_send is None:
            self.first_send = self.attempt_sent
            self.sent_at = time.time()

    def measured(self, clock: WireClock, answered: bool) -> None:
        """Take in what the transport measured of the attempt just made (:class:`WireClock`)."""
        if self.attempts == 1 and clock.sent is not None and self.first_send is not None:
            # the first request left when its first bytes were written, after any connection
            # was opened for it (and any wait for the event loop or the GIL): start there
            assert self.sent_at is not None
            self.sent_at += clock.sent - self.first_send
            self.first_send = clock.sent
            self.setup_s += clock.seconds - clock.before_send
        elif self.limited_at is not None:
            # a rate limit is the account's, not the model's: its 429, the wait it asked for
            # and the queue for this run's limits before the retry are not the reply's latency
            sent = clock.sent if clock.sent is not None else self.attempt_sent
            self.setup_s += max(0.0, sent - self.limited_at) + clock.seconds - clock.before_send
        else:
            self.setup_s += clock.seconds
        self.limited_at = None
        if clock.sent is not None:
            self.attempt_sent = clock.sent
        # the latency ends when the answer arrived: this attempt's, if the server answered (a
        # timeout or a broken connection ends when the client gave up)
        self.arrived = clock.arrived if answered else None

    def started(self, queued_at: float) -> float:
        """When the request was first sent; when it was asked for if it never was."""
        return queued_at if self.sent_at is None else self.sent_at

    def latency_ms(self) -> float:
        if self.first_send is None:
            return 0.0
        end = time.perf_counter() if self.arrived is None else self.arrived
        return max(0.0, end - self.first_send - self.setup_s) * 1000.0


class ModelClient:
    """Calls one model. Create through :meth:`ModelRegistry.client` (or directly in tests)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        registry: ModelRegistry | None = None,
        env: Mapping[str, str] | None = None,
        killed: Collection[str] | None = None,
        global_limit: asyncio.Semaphore | None = None,
        share: tuple[int, int] | None = None,
        slots: SlotClient | None = None,
        run_limit: int | None = None,
        remembered: Mapping[str, Any] | None = None,
    ) -> None:
        # under xdist (``share``) the limits are the run's: with ``slots`` every attempt takes
        # them from the controller's broker (run_limit: the bound across all models) and the
        # worker's own share below is the fallback; without, the worker keeps to its share
        local = share_spec(spec, share)
        self._workers = share[1] if share is not None else 1
        self.spec = spec if slots is not None else local
        self._slots = slots
        # the broker's keys of this model's limits, and the gates an attempt takes there
        self._slot_key = {kind: limit_key(kind, spec.ref) for kind in LIMIT_KINDS}
        gates = [(self._slot_key["model"], spec.max_concurrency)]
        if run_limit:
            gates.append((RUN_KEY, run_limit))
        # an attempt's steps at the broker: the model's pace, its rates (if any), the gates
        self._slot_pace: Step = ["l", self._slot_key["model"]]
        self._slot_gates: list[Step] = [["g", key, limit] for key, limit in gates]
        self._slot_plain: list[Step] = [self._slot_pace, *self._slot_gates]
        self._slot_gate_keys = [key for key, _ in gates]
        self._registry = registry
        self._env: Mapping[str, str] = env if env is not None else os.environ
        self._killed: Collection[str] = killed if killed is not None else set()
        self._global = global_limit
        self._provider: Provider | None = None
        self._http: HTTPClient | None = None
        self._provider_lock = asyncio.Lock()
        self._warm_cap = local.max_concurrency
        self._gate = AdaptiveGate(local.max_concurrency)
        self._rpm = TokenBucket(local.rpm) if local.rpm else None
        # tokens a minute: the config's tpm and the limits the provider states (this process's
        # buckets at 1/N of them under xdist without the broker)
        anthropic = spec.wire == "anthropic"  # max_tokens 1024 unless set; counts the answer
        self._tokens = TokenLimits(
            spec.tpm, share[1] if share is not None else 1, bank_s=60.0 if anthropic else 1.0,
            meter=TokenMeter(DEFAULT_MAX_TOKENS if anthropic else None,
                             counts_max_tokens=not anthropic))
        # the pace learned from the provider's 429s, this process's own (each xdist worker
        # learns its part of a quota from the replies it gets, and keeps to its share of a
        # limit the provider states when there is no broker to keep the run to it)
        self.pace = LearnedPace(backoff_scale(self._env), workers=self._workers)
        self.requests_sent = 0
        # the limits the provider stated in this run's replies (requests a minute, and tokens
        # a minute by kind), kept for the next run (:meth:`ModelRegistry.stated_limits`)
        self.stated_rpm: float | None = None
        self.stated_tokens: dict[str, float] = {}
        # the limits it stated in an earlier run: kept from the first request (the first
        # burst of a run went over a low quota before the first reply said it)
        self._remembered_rpm: float | None = None
        self._remembered_told = False  # the broker was told it (it keeps the run's pace)
        if remembered:
            self._remember(remembered)

    def _remember(self, remembered: Mapping[str, Any]) -> None:
        rpm = remembered.get("rpm")
        if isinstance(rpm, (int, float)) and not isinstance(rpm, bool) and rpm > 0:
            if self._slots is None:
                self.pace.remember(float(rpm), time.monotonic())
            else:  # the broker's pace, told on the first request (this process's own pace
                # hears of no reply under the broker: it would keep the old limit all along)
                self._remembered_rpm = float(rpm)
        tokens = remembered.get("tokens")
        if isinstance(tokens, Mapping):
            self._tokens.state({str(k): float(v) for k, v in tokens.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)
                                and v > 0})

    # -- state --------------------------------------------------------------------------------

    @property
    def ref(self) -> str:
        return self.spec.ref

    def is_killed(self) -> bool:
        return _ref_killed(self.spec, self._killed)

    @property
    def gate(self) -> AdaptiveGate:
        return self._gate

    def _api_key(self) -> str | None:
        """The key value from the environment, or raise AuthError naming the variable."""
        var = self.spec.api_key_env
        if var:
            value = self._env.get(var)
            if not value:
                raise AuthError(f"API key variable {var} is not set (model {self.spec.ref})")
            return value
        preset = PRESETS.get(self.spec.provider)
        if preset is not None and preset.optional_api_key_env:
            return self._env.get(preset.optional_api_key_env) or None
        return None

    async def _get_provider(self) -> Provider:
        if self._provider is not None:
            return self._provider
        async with self._provider_lock:
            if self._provider is None:
                spec = self.spec
                if not spec.base_url:
                    preset = PRESETS.get(spec.provider)
                    if preset is None or not preset.dynamic_base_url:
                        raise ClientError(f"model {spec.ref}: no base_url configured")
                    try:
                        url = await asyncio.to_thread(preset.resolve_base_url, self._env)
                    except Exception as exc:
                        raise ClientError(
                            safe_message(f"cannot start or reach {spec.provider}: {exc}")
                        ) from None
                    spec = dataclasses.replace(spec, base_url=url)
                self._provider = make_provider(spec)
            return self._provider

    def _http_client(self, base_url: str) -> HTTPClient:
        if self._http is None:
            n = max(1, self.spec.max_concurrency)
            loopback = is_loopback(base_url)
            # plain HTTP on loopback (the simulator, a local server) never uses TLS;
            # everything else verifies with one shared context (loading the CA bundle
            # costs ~50 ms, per client if each built its own)
            verify = False if loopback and base_url.startswith("http://") else _ssl_context()
            # the asyncio transport, used directly (transport.py); httpx's client with its
            # own transport where a proxy is set
            self._http = make_transport(
                verify=verify, max_connections=n, trust_env=not loopback,
                timeout=self.spec.timeout_s,
            ) or _httpx_client(n, self.spec.timeout_s, verify, trust_env=not loopback)
        return self._http

    async def warm(self, connections: int = 0) -> None:
        """Resolve the provider and build the connection pool now, not on the first call; with
        ``connections``, also start opening that many connections (at most
        ``max_concurrency``) for the first calls to use (:meth:`AsyncioTransport.preconnect`;
        not through httpx's transport, behind a proxy)."""
        provider = await self._get_provider()
        http = self._http_client(provider.spec.base_url)
        if connections > 0 and isinstance(http, AsyncioTransport):
            http.preconnect(provider.spec.base_url, min(connections, self._warm_cap))

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    # -- calling ------------------------------------------------------------------------------

    async def call(self, request: ChatRequest) -> CallResult:
        """One logical request: retries, then fallback. Never raises ProviderError."""
        started_at = time.time()
        state = _CallState()
        if self.is_killed():
            return CallResult(
                ref=self.spec.ref,
                status="error",
                response=None,
                error=KilledError(f"model {self.spec.ref} is killed (kill switch): not called"),
                latency_ms=0.0,
                attempts=0,
                fallback=False,
                served_by=self.spec.ref,
                cost_usd=None,
                started_at=started_at,
            )
        response, error, secrets = await self._attempts(request, state)
        if response is not None:
            return self._result(request, state, started_at, response, self.spec, fallback=False)
        assert error is not None
        fb_ref = self.spec.fallback
        if fb_ref and not isinstance(error, KilledError):
            fb = self._fallback_client(fb_ref)
            if isinstance(fb, str):
                error = _with_note(error, fb, secrets)
            else:
                fb_response, fb_error, fb_secrets = await fb._attempts(request, state)
                if fb_response is not None:
                    return self._result(
                        request, state, started_at, fb_response, fb.spec, fallback=True
                    )
                assert fb_error is not None
                error = _with_note(
                    error, f"fallback {fb_ref} failed too: {fb_error.kind}", secrets + fb_secrets
                )
        error = _sanitized(error, secrets)
        return CallResult(
            ref=self.spec.ref,
            status="timeout" if isinstance(error, TimeoutError_) else "error",
            response=None,
            error=error,
            latency_ms=state.latency_ms(),
            attempts=state.attempts,
            fallback=False,
            served_by=self.spec.ref,
            cost_usd=None,
            started_at=state.started(started_at),
        )

    def _fallback_client(self, fb_ref: str) -> ModelClient | str:
        if self._registry is None:
            return f"fallback {fb_ref} unavailable: no registry"
        if self._registry.is_killed(fb_ref):
            return f"fallback {fb_ref} is killed"
        try:
            fb = self._registry.client(fb_ref)
        except Exception as exc:
            return f"fallback {fb_ref} unavailable: {exc}"
        if fb.is_killed():
            return f"fallback {fb_ref} is killed"
        return fb

    def _result(
        self,
        request: ChatRequest,
        state: _CallState,
        started_at: float,
        response: ProviderResponse,
        served: ModelSpec,
        *,
        fallback: bool,
    ) -> CallResult:
        return CallResult(
            ref=self.spec.ref,
            status="ok",
            response=response,
            error=None,
            latency_ms=state.latency_ms(),
            attempts=state.attempts,
            fallback=fallback,
            served_by=served.ref,
            cost_usd=served.cost(response.input_tokens, response.output_tokens),
            started_at=state.started(started_at),
        )

    async def _attempts(
        self, request: ChatRequest, state: _CallState
    ) -> tuple[ProviderResponse | None, ProviderError | None, tuple[str | None, ...]]:
        """Send with retries. Returns (response, None, secrets) or (None, error, secrets)."""
        try:
            api_key = self._api_key()
        except AuthError as exc:
            return None, exc, ()
        secrets: tuple[str | None, ...] = (api_key,)
        try:
            provider = await self._get_provider()
        except ProviderError as exc:
            return None, exc, secrets
        except Exception as exc:  # e.g. an unknown wire format
            return (
                None,
                ClientError(safe_message(f"model {self.spec.ref}: {exc}", secrets)),
                secrets,
            )
        http = self._http_client(provider.spec.base_url)
        scale = backoff_scale(self._env)
        if self._slots is not None and self._slots.rates:
            for kind in TOKEN_KINDS:  # limits its provider stated to other workers
                rate = self._slots.rates.get(self._slot_key[kind])
                if rate is not None:
                    self._tokens.adopt(kind, rate)
        # what the request takes from the tokens limits: from the first attempt after they
        # are known (a limit stated by an answer applies to the calls already queued); under
        # xdist always, for the limits the broker may have learned from other workers
        tokens: Reservation | None = None
        last: ProviderError | None = None
        for i in range(max(0, self.spec.max_retries) + 1):
            queued = time.perf_counter()
            shared, tokens = await self._take_limits(request, tokens)
            if i and state.limited_at is None:
                # queueing for this run's own limits is not the provider's latency
                state.setup_s += time.perf_counter() - queued
            err: ProviderResponse | ProviderError | None = None
            sent = time.monotonic()
            try:
                if self._global is not None and not shared:
                    async with self._global:
                        err = await self._send_once(provider, http, request, api_key, state)
                else:
                    err = await self._send_once(provider, http, request, api_key, state)
            finally:
                await self._give_back(shared, self._reply_seen(err, shared, sent))
            if isinstance(err, ProviderResponse):
                self._tokens_used(err, tokens, shared)
                return err, None, secrets
            assert err is not None
            last = err
            if isinstance(err, RateLimitError):
                state.limited_at = state.attempt_sent
                self._penalize(err.retry_after, scale)
            if not err.retryable or i >= self.spec.max_retries:
                break
            delay = backoff_delay(state.attempts, err.retry_after, scale)
            if delay > 0:
                await asyncio.sleep(delay)
        return None, last, secrets

    def _tokens_used(self, reply: ProviderResponse, tokens: Reservation | None,
                     shared: bool) -> None:
        """The answer's usage: what its request still owes the tokens limits, or what it took
        too much."""
        if tokens is None:
            return
        owed = self._tokens.meter.settle(tokens, reply.input_tokens, reply.output_tokens,
                                         reply.limited_input_tokens)
        if not owed:
            return
        if shared:
            assert self._slots is not None
            # (the broker keeps the limits it knows, including those learned from other
            # workers, and drops the rest)
            self._slots.charge([[self._slot_key[kind], amount] for kind, amount in owed.items()
                                if amount])
        else:
            self._tokens.charge(owed)

    async def _take_limits(
        self, request: ChatRequest, tokens: Reservation | None
    ) -> tuple[bool, Reservation | None]:
        """Wait for this attempt's turn under the limits: the run's, from the xdist
        controller's broker (True), or this process's own (False); and under the pace learned
        from the provider's 429s. With what it took from the tokens limits."""
        pace = self.pace
        while True:
            paced = pace.paced
            await pace.acquire()
            shared, tokens = await self._take_run_limits(request, tokens)
            if paced or not pace.paced:
                return shared, tokens
            # the model got a pace while this waited for a slot (the first 429s): give the
            # slot back and keep to the pace like the requests after it (waiting for the pace
            # while holding the slot would hold up those ahead in the pace's queue)
            await self._give_back(shared)
            if not shared:  # and the rates' tokens: the request did not go out
                self._tokens.refund(tokens)
                if self._rpm is not None:
                    self._rpm.refund(1.0)

    async def _give_back(self, shared: bool, reply: list[Any] | None = None) -> None:
        if shared:
            assert self._slots is not None
            self._slots.release(self._slot_gate_keys, reply)
        else:
            await self._gate.release()

    def _reply_seen(
        self, err: ProviderResponse | ProviderError | None, shared: bool, sent: float
    ) -> list[Any] | None:
        """Tell the model's pace of the attempt's reply (a 429 or an answer; not a timeout or
        a broken connection); with the broker's limits, the broker's pace (the reply goes
        with the slots' release). And its tokens limits of the limits the reply states."""
        if isinstance(err, (RateLimitError, ProviderResponse)):
            if err.stated_rpm:
                self.stated_rpm = err.stated_rpm
            if err.stated_tokens:
                self.stated_tokens.update(err.stated_tokens)
        if isinstance(err, RateLimitError):
            limited, stated = True, err.stated_rpm
            self._tokens.state(err.stated_tokens)
            if sent < self._tokens.changed:
                # sent before the model's tokens limits were known (the first burst, before
                # the answers stated them): no evidence about the pace of its requests
                return None
        elif isinstance(err, ProviderResponse):
            limited, stated = False, err.stated_rpm
            self._tokens.state(err.stated_tokens)
        elif err is not None and err.status_code is not None:
            limited, stated = False, None
        else:
            return None
        now = time.monotonic()
        if shared:
            return [self._slot_key["model"], limited, stated, now - sent]
        self.pace.reply(now, limited, stated, now - sent)
        return None

    async def _take_run_limits(
        self, request: ChatRequest, tokens: Reservation | None
    ) -> tuple[bool, Reservation | None]:
        """The model's slot, then its rates (a request waiting for a slot takes its tokens
        when it is about to go, under the limits known then), then, at the broker, the run's
        slot."""
        if self._slots is not None and self._slots.usable:
            if self._remembered_rpm is not None and not self._remembered_told:
                self._remembered_told = True  # before the first request's steps
                await self._slots.remembered(self._slot_key["model"], self._remembered_rpm)
            if tokens is None:  # the broker may know limits this worker has not seen
                tokens = self._tokens.reserve(request, self.spec.params)
            if await self._slots.acquire(self._slot_steps(tokens)):
                return True, tokens
        if self._remembered_rpm is not None:
            # the broker is out of reach, from the first request or since (the broker was
            # told, but this process's requests go on its own pace now): this process's share
            # of the earlier run's limit, on its own pace (:meth:`_take_limits` waits for it)
            rpm, self._remembered_rpm = self._remembered_rpm, None
            self.pace.remember(rpm, time.monotonic())
        await self._gate.acquire()
        try:
            if tokens is None and self._tokens.active:
                tokens = self._tokens.reserve(request, self.spec.params)
            await self._tokens.acquire(tokens)
            if self._rpm is not None:
                await self._rpm.acquire(1.0)
        except BaseException:  # cancelled while waiting for the rates: the slot is not used
            await self._gate.release()
            raise
        return False, tokens

    def _slot_steps(self, tokens: Reservation | None) -> list[Step]:
        spec, key = self.spec, self._slot_key
        if tokens is None and not spec.rpm:
            return self._slot_plain
        # the same order as without the broker: pace, the model's slot, rates, the run's slot
        steps: list[Step] = [self._slot_pace, self._slot_gates[0]]
        if tokens is not None:
            rates = self._tokens.rates
            for kind in TOKEN_KINDS:
                # a rate not known here is 0: the broker's, if another worker learned one
                rate = rates.get(kind, 0.0)
                capacity = bucket_capacity(rate, self._tokens.bank_s) if rate else 0.0
                if kind in self._tokens.stated:  # learned from the answers: starts short
                    capacity = -capacity
                steps.append(["b", key[kind], rate, capacity, tokens.amounts[kind]])
        if spec.rpm:
            steps.append(["b", key["rpm"], spec.rpm, max(1.0, spec.rpm / 60.0), 1.0])
        return [*steps, *self._slot_gates[1:]]

    async def _send_once(
        self,
        provider: Provider,
        http: HTTPClient,
        request: ChatRequest,
        api_key: str | None,
        state: _CallState,
    ) -> ProviderResponse | ProviderError:
        state.mark_sent()
        self.requests_sent += 1
        secrets = (api_key,)
        send = provider.send(http, request, api_key=api_key, attempt=state.attempts - 1)
        clock = WireClock()
        token = WIRE_CLOCK.set(clock)
        try:
            result = await self._deadline(send, secrets)
        finally:
            WIRE_CLOCK.reset(token)
        answered = isinstance(result, ProviderResponse) or result.status_code is not None
        state.measured(clock, answered)
        return result

    async def _deadline(
        self, send: Awaitable[ProviderResponse], secrets: tuple[str | None, ...]
    ) -> ProviderResponse | ProviderError:
        try:
            # a deadline on the whole attempt (httpx's timeouts are per operation); on 3.11+
            # asyncio.timeout does it without the extra task wait_for creates per call
            if _HAS_ASYNCIO_TIMEOUT:
                async with asyncio.timeout(self.spec.timeout_s):  # type: ignore[attr-defined,unused-ignore]
                    return await send
            return await asyncio.wait_for(send, timeout=self.spec.timeout_s)
        except asyncio.TimeoutError:
            return TimeoutError_(f"no answer within {self.spec.timeout_s:g} s")
        except ProviderError as exc:
            return _sanitized(exc, secrets)
        except Exception as exc:  # a bug or an unexpected library error: never escape
            return ClientError(safe_message(f"unexpected {type(exc).__name__}: {exc}", secrets))

    def _penalize(self, retry_after: float | None, scale: float) -> None:
        if self.pace.paced:
            # the pace keeps to the provider's quota from here: a concurrency halved again
            # and again would only hold it back, then let a burst out when it ends
            return
        if self._tokens.active or (self._slots is not None and any(
                self._slot_key[kind] in self._slots.rates for kind in TOKEN_KINDS)):
            # kept to its tokens limits, settled by every answer: a 429 now and then (an
            # estimate under the provider's count) does not call for half the concurrency and
            # rates for 10 s; 429s that keep coming set a pace of its requests
            return
        cooldown = max(ADAPTIVE_COOLDOWN_S, min(retry_after or 0.0, RETRY_AFTER_CAP_S)) * scale
        if self._slots is not None and self._slots.usable:  # every worker's, at the broker
            self._slots.penalize(self._slot_key["model"], cooldown)
            rates = [*self._tokens.rates, *(("rpm",) if self.spec.rpm else ())]
            for kind in rates:
                self._slots.slow_down(self._slot_key[kind], cooldown)
        self._gate.penalize(cooldown)
        until = time.monotonic() + cooldown
        for bucket in (self._rpm, *self._tokens.buckets.values()):
            if bucket is not None:
                bucket.slow_down(until)


def endpoint_key(spec: ModelSpec) -> str:
    """Where a provider keeps a model's quota (per key, too, which is not kept: a limit of
    another key's is replaced by the first reply that states this one's). Written to pytest's
    cache: a base URL's user and password (a gateway's token in it) are left out."""
    base = spec.base_url
    if "@" in base:
        parts = urllib.parse.urlsplit(base)
        base = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return f"{spec.provider} {base} {spec.model}"


def _ref_killed(spec: ModelSpec, killed: Collection[str]) -> bool:
    return spec.ref in killed or f"{spec.provider}:{spec.model}" in killed


class ModelRegistry:
    """One per session: resolves references and lazily builds one ModelClient per reference.

    ``killed`` is consulted at call time (it may be the session's live set). ``env`` is where
    API keys are read (default: ``os.environ``). ``max_in_flight`` bounds calls in flight
    across all models (``--rollout-concurrency``). ``share`` is ``(worker index, worker
    count)`` under pytest-xdist: with ``slots`` (the xdist controller's broker,
    :mod:`.slots`) every limit (``max_in_flight``, each model's ``max_concurrency``, ``rpm``,
    ``tpm``) is the run's and taken from the broker; without, or once the broker is lost, each
    is split so that the workers together keep to it.
    """

    def __init__(
        self,
        resolve: Callable[[str], ModelSpec],
        killed: Collection[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        max_in_flight: int | None = None,
        share: tuple[int, int] | None = None,
        slots: SlotClient | None = None,
        remembered: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._resolve = resolve
        # endpoint (:func:`endpoint_key`) -> the limits its provider stated in earlier runs
        self.remembered: Mapping[str, Mapping[str, Any]] = remembered or {}
        self.share = share
        self.slots = slots if share is not None else None
        self.run_limit = max_in_flight  # the bound across all models for the whole run
        if max_in_flight and share is not None:
            max_in_flight = split_limit(max_in_flight, *share)
        self.max_in_flight = max_in_flight  # this process's bound on calls in flight, or None
        self.killed: Collection[str] = killed if killed is not None else set()
        self.env: Mapping[str, str] = env if env is not None else os.environ
        self._clients: dict[str, ModelClient] = {}
        self._lock = threading.Lock()
        self._global = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    def paces(self) -> list[tuple[str, LearnedPace]]:
        """Each model's pace, where its provider turned requests away with 429s (this
        process's calls)."""
        return [(ref, c.pace) for ref, c in list(self._clients.items()) if c.pace.limited]

    def token_limits(self) -> dict[str, dict[str, float]]:
        """Each model's tokens-a-minute limits this process kept to (kind -> tokens a minute,
        the whole run's), where it had any."""
        return {ref: dict(c._tokens.rates) for ref, c in list(self._clients.items())
                if c._tokens.rates}

    def stated_limits(self) -> dict[str, dict[str, Any]]:
        """The limits the providers stated in this process's replies, per endpoint
        (:func:`endpoint_key`): ``{"rpm": requests a minute, "tokens": {kind: per minute}}``."""
        out: dict[str, dict[str, Any]] = {}
        for client in list(self._clients.values()):
            if client.stated_rpm or client.stated_tokens:
                entry = out.setdefault(endpoint_key(client.spec), {})
                if client.stated_rpm:
                    entry["rpm"] = client.stated_rpm
                if client.stated_tokens:
                    entry["tokens"] = dict(client.stated_tokens)
        return out

    def is_killed(self, ref: str) -> bool:
        return ref in self.killed

    def spec(self, ref: str) -> ModelSpec:
        return self.client(ref).spec

    def client(self, ref: str) -> ModelClient:
        """The client of a reference (resolving it on first use; may raise ConfigError)."""
        with self._lock:
            client = self._clients.get(ref)
            if client is None:
                spec = self._resolve(ref)
                client = ModelClient(
                    spec,
                    registry=self,
                    env=self.env,
                    killed=self.killed,
                    global_limit=self._global,
                    share=self.share,
                    slots=self.slots,
                    run_limit=self.run_limit if self.slots is not None else None,
                    remembered=self.remembered.get(endpoint_key(spec)),
                )
                self._clients[ref] = client
            return client

    async def call(self, ref: str, request: ChatRequest) -> CallResult:
        """Call a reference. A killed reference is not even resolved."""
        if self.is_killed(ref):
            return CallResult(
                ref=ref,
                status="error",
                response=None,
                error=KilledError(f"model {ref} is killed (kill switch): not called"),
                latency_ms=0.0,
                attempts=0,
                fallback=False,
                served_by=ref,
                cost_usd=None,
                started_at=time.time(),
            )
        return await self.client(ref).call(request)

    def clients(self) -> list[ModelClient]:
        with self._lock:
            return list(self._clients.values())

    async def aclose(self) -> None:
        for client in self.clients():
            await client.aclose()
        if self.slots is not None:
            await self.slots.aclose()


__all__ = [
    "BACKOFF_SCALE_ENV",
    "AdaptiveGate",
    "CallResult",
    "ModelClient",
    "ModelRegistry",
    "TokenBucket",
    "backoff_delay",
    "backoff_scale",
    "make_provider",
    "scrub",
]
