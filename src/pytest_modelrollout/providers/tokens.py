"""What a request counts against a model's tokens-a-minute limits, before it is sent.

A provider counts tokens with its own tokenizer, which the plugin does not have (no vendor
SDKs, and their vocabularies are downloads). Characters / 4 (the usual guess) is about right for
English prose but counts a Chinese, Japanese or Korean character as a quarter of a token where
the tokenizers give it about one (0.6 to 1.5): a Chinese prompt's tokens were estimated at a
third to a quarter of what the provider counted, so a run with ``tpm`` set went over it. And an
answer's tokens, which count too, were left out unless the request set ``max_tokens``.

So :class:`TokenMeter` estimates a request's input as one token per CJK character plus a
quarter of a token per other character of the request as sent (messages, system prompt, tools,
parameters), scaled by what the model's answers have reported so far (the ratio of the input
tokens they report to the estimates of their requests, and by the share of them the limits
count: Anthropic's reads from its prompt cache do not), and its answer as its ``max_tokens``
or, without one, the longest of its last 32 answers (before the first answer: as long as the
prompt). Each answer then settles the difference: what it
reports (prompt and answer; with ``max_tokens`` the answer counts at least that, as OpenAI
counts it) is what the limits are charged, so an estimate that was off is corrected at once, and
the next requests wait for it.

The limits, per model (``TokenLimits``): ``tpm`` in the config (prompt and answer), and the
limits the provider states in its answers' headers, at 95 % of each: OpenAI's
``x-ratelimit-limit-tokens`` (prompt and answer, ``tpm``, the lower of it and the config's),
Anthropic's ``anthropic-ratelimit-input-tokens-limit`` and ``-output-tokens-limit``
(``itpm``, ``otpm``: input and output apart). Each is a :class:`~.limits.TokenBucket` with a
second's worth banked (OpenAI enforces a minute's quota a second at a time), a minute's for an
Anthropic model (:func:`bucket_capacity`), here or, under xdist, at the controller's broker
(:mod:`.slots`).

Plain Python and asyncio, no HTTP stack.
"""

from __future__ import annotations

import collections
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .limits import LearnedPace, TokenBucket

if TYPE_CHECKING:
    from .base import ChatRequest

TOKEN_KINDS = ("tpm", "itpm", "otpm")  # prompt and answer; input; output
STATED_SHARE = LearnedPace.STATED_SHARE  # of a limit the provider states, as for its requests
# Han (with extensions A and the compatibility block), kana, Hangul, full-width forms: about a
# token each in the tokenizers of the models the plugin calls (0.6 to 1.5)
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
# how far the reported tokens may correct the estimate: up, not down (an estimate below what
# the provider counts sends a burst over its limit before the answers settle it; one above
# only holds back tokens until they do)
RATIO_BOUNDS = (1.0, 5.0)
# an answer is reserved as the longest of the model's last RECENT answers (the mean would be
# under half of them, each over it until its answer settles it: bursts over the limit)
RECENT = 32


def raw_estimate(request: ChatRequest) -> float:
    """A request's input tokens before any correction: a token per CJK character, a quarter
    of one per other character of the request as JSON."""
    text = json.dumps(request.canonical(), ensure_ascii=False, default=str)
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk) / 4.0


def max_output(request: ChatRequest, params: Mapping[str, object] | None) -> float | None:
    """The request's ``max_tokens`` (or ``max_completion_tokens``), if it sets one."""
    merged = {**(params or {}), **request.params}
    out = merged.get("max_tokens") or merged.get("max_completion_tokens")
    if isinstance(out, bool) or not isinstance(out, (int, float)) or out <= 0:
        return None
    return float(out)


@dataclass
class Reservation:
    """What one request took from the limits before it was sent, to settle on its answer."""

    raw: float  # the uncorrected input estimate
    amounts: dict[str, float]  # per kind of limit
    max_tokens: float | None


class TokenMeter:
    """A model's token estimates, corrected by the usage its answers report.

    ``default_max``: the ``max_tokens`` its requests go out with when they set none (the
    Anthropic API requires one: 1024), which its provider reserves for the answer until it has
    come. ``counts_max_tokens``: its ``tpm`` counts the answer as at least ``max_tokens`` (as
    OpenAI counts it), rather than as it came (as Anthropic adjusts its count when the answer
    ends)."""

    def __init__(self, default_max: float | None = None, counts_max_tokens: bool = True) -> None:
        self._default_max = default_max
        self._counts_max = counts_max_tokens
        self._raw_sum = 0.0  # the raw estimates of the answered requests that reported usage
        self._input_sum = 0.0  # the input tokens they reported
        self._limited_sum = 0.0  # of which the provider's limits counted (not cache reads)
        self._outputs: collections.deque[int] = collections.deque(maxlen=RECENT)

    @property
    def ratio(self) -> float:
        if self._raw_sum <= 0 or self._input_sum <= 0:
            return 1.0
        low, high = RATIO_BOUNDS
        return min(high, max(low, self._input_sum / self._raw_sum))

    @property
    def limited_share(self) -> float:
        """The share of the input tokens the answers reported that the provider's limits
        counted: below 1 when its prompt cache served some of them (Anthropic)."""
        if self._input_sum <= 0:
            return 1.0
        return min(1.0, max(0.0, self._limited_sum / self._input_sum))

    def reserve(self, request: ChatRequest, params: Mapping[str, object] | None) -> Reservation:
        raw = raw_estimate(request)
        cap = max_output(request, params)
        if cap is None:
            cap = self._default_max
        inp = raw * self.ratio * self.limited_share
        if cap is not None:
            out = cap
        elif self._outputs:
            out = max(self._outputs)
        else:  # before the first answer: as long as the prompt (settled when it comes)
            out = inp
        return Reservation(raw, {"tpm": inp + out, "itpm": inp, "otpm": out}, cap)

    def settle(
        self, res: Reservation, input_tokens: int | None, output_tokens: int | None,
        limited_input: int | None = None,
    ) -> dict[str, float]:
        """The answer reported its usage: learn from it; what each kind of limit is owed
        (positive) or owes back (negative). ``limited_input``: the part of its input tokens
        the provider's limits count, when not all of them (cache reads at Anthropic)."""
        if input_tokens is None or output_tokens is None or input_tokens < 0 or output_tokens < 0:
            return {}
        counted_in = input_tokens
        if limited_input is not None and 0 <= limited_input < input_tokens:
            counted_in = limited_input
        self._raw_sum += res.raw  # the estimate is of the whole prompt, cached or not
        self._input_sum += input_tokens
        self._limited_sum += counted_in
        self._outputs.append(output_tokens)
        counted_out = float(output_tokens)
        if self._counts_max:
            counted_out = max(counted_out, res.max_tokens or 0.0)
        actual = {"tpm": counted_in + counted_out, "itpm": float(counted_in),
                  "otpm": float(output_tokens)}
        return {kind: actual[kind] - res.amounts[kind] for kind in TOKEN_KINDS}


class TokenLimits:
    """A model's tokens-a-minute limits: the config's ``tpm`` and those its provider states.
    ``meter``: how its requests' tokens are counted (:class:`TokenMeter`); ``bank_s``: the
    seconds' worth of tokens its buckets bank (:func:`bucket_capacity`).

    ``share``: the number of xdist workers splitting the limits among them when there is no
    broker (each keeps 1/N); the broker's steps carry the whole limits.
    """

    def __init__(self, configured_tpm: float | None, share: int = 1, *,
                 meter: TokenMeter | None = None, bank_s: float = 1.0) -> None:
        self.meter = meter or TokenMeter()
        self.bank_s = bank_s
        self._configured = float(configured_tpm) if configured_tpm else None
        self._share = max(1, share)
        self.rates: dict[str, float] = {}  # kind -> tokens a minute, the whole run's
        self.stated: dict[str, float] = {}  # kind -> what the provider states
        self.buckets: dict[str, TokenBucket] = {}  # this process's, at rates / share
        self.changed = -1.0  # time.monotonic() when a stated limit last changed a rate
        if self._configured:
            self._set("tpm", self._configured)

    @property
    def active(self) -> bool:
        return bool(self.rates)

    def _set(self, kind: str, per_minute: float, *, empty: bool = False) -> None:
        self.rates[kind] = per_minute
        local = per_minute / self._share
        bucket = self.buckets.get(kind)
        if bucket is None:
            bucket = self.buckets[kind] = TokenBucket(
                local, capacity=bucket_capacity(local, self.bank_s))
            if empty:  # learned from the answers: the requests before it spent some of the bank
                bucket.charge(spent_before(bucket))
        else:
            bucket.rate = local / 60.0
            bucket.capacity = bucket_capacity(local, self.bank_s)

    def adopt(self, kind: str, per_minute: float) -> None:
        """A rate the xdist broker keeps for this model (stated to another worker)."""
        if kind in TOKEN_KINDS and per_minute > 0 and per_minute < self.rates.get(kind, math.inf):
            self._set(kind, per_minute, empty=True)
            self.changed = time.monotonic()

    def state(self, stated: Mapping[str, float] | None) -> bool:
        """An answer stated these limits; True when that changed a rate."""
        if not stated:
            return False
        changed = False
        for kind, limit in stated.items():
            if kind not in TOKEN_KINDS or self.stated.get(kind) == limit:
                continue
            self.stated[kind] = limit
            rate = STATED_SHARE * limit
            if kind == "tpm" and self._configured:
                rate = min(rate, self._configured)
            if self.rates.get(kind) != rate:
                self._set(kind, rate, empty=True)
                changed = True
        if changed:
            self.changed = time.monotonic()
        return changed

    def reserve(self, request: ChatRequest, params: Mapping[str, object] | None) -> Reservation:
        return self.meter.reserve(request, params)

    async def acquire(self, res: Reservation | None) -> None:
        """Wait for this process's own buckets (no broker)."""
        if res is None:
            return
        for kind, bucket in list(self.buckets.items()):
            await bucket.acquire(res.amounts[kind])

    def refund(self, res: Reservation | None) -> None:
        if res is None:
            return
        for kind, bucket in self.buckets.items():
            bucket.refund(res.amounts[kind])

    def charge(self, owed: Mapping[str, float]) -> None:
        for kind, amount in owed.items():
            bucket = self.buckets.get(kind)
            if bucket is not None and amount:
                bucket.charge(amount)


def spent_before(bucket: TokenBucket) -> float:
    """What a bucket made for a limit an answer stated starts without: a second's worth (all
    of a second's bank), spent by the requests sent before the limit was known."""
    return min(bucket.capacity, bucket.rate)


def bucket_capacity(per_minute: float, bank_s: float = 1.0) -> float:
    """What a tokens-a-minute bucket banks: ``bank_s`` seconds' worth, a second's by default
    (OpenAI enforces a minute's quota a second at a time); a minute's for an Anthropic model
    (its buckets fill up to the minute's limit, and an answer's ``max_tokens`` is held against
    it until the answer comes: banked a second's worth, an answer of 1024 tokens at 8,000 a
    minute would leave one request in flight). A request of more waits for a full bucket and
    leaves it owing the rest."""
    return max(1.0, per_minute / 60.0 * bank_s)


__all__ = ["STATED_SHARE", "TOKEN_KINDS", "Reservation", "TokenLimits", "TokenMeter",
           "bucket_capacity", "max_output", "raw_estimate", "spent_before"]
