"""Plain records: one per model call, one per check outcome.

Everything downstream (metrics, gates, reports, xdist merge, sharded merge, canary logs) works
on these records as plain dicts, so a pytest session, a merged set of reports and a production
log are judged by exactly the same code.

Outcome of a call (exactly one per request):

* ``success``  -- ``status == "ok"`` and the primary model answered (``fallback`` false)
* ``fallback`` -- ``status == "ok"`` but the configured fallback model answered
* ``error``    -- ``status == "error"`` (after retries and fallback)
* ``timeout``  -- ``status == "timeout"`` (after retries and fallback)

so ``requests == successes + fallbacks + errors + timeouts``.

A session holds one record per call and per check outcome until it ends (tens of thousands in
a large suite), so the record classes use ``__slots__`` (no per-instance ``__dict__``) and
:meth:`to_dict` is a flat field copy (the values are scalars: no ``dataclasses.asdict`` deep
copy). Records rebuilt from dicts (xdist workers' increments, merged reports) share their
strings (:func:`shared`): the test id, pair id, workflow, model, ... of thousands of records
are then one string each, as they are for the records a session makes itself.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Role = Literal["stable", "candidate"]
Status = Literal["ok", "error", "timeout"]
Source = Literal["live", "replay", "shadow", "log"]

ROLES: tuple[Role, Role] = ("stable", "candidate")


def shared(value: Any) -> Any:
    """``value``, as the one shared copy of an equal string (``sys.intern``) when it is one."""
    return sys.intern(value) if type(value) is str else value


@dataclass(slots=True)
class CallRecord:
    """One request to one model, as the rollout metrics see it."""

    call_id: str  # unique in a session: f"{pair_id}:{role}"
    pair_id: str  # f"{test_id}#{ask_index}" -- the stable and candidate call of one ask
    test_id: str
    workflow: str
    role: Role
    model: str  # the model reference that was asked (e.g. "sim:good", "gpt-4o-mini")
    status: Status
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    fallback: bool = False  # the configured fallback model answered
    served_by: str | None = None  # reference that produced the reply (fallback model if used)
    error_kind: str | None = None  # timeout|rate_limit|server|auth|client|bad_response|connection|...
    error: str | None = None  # short, classified, secret-free message
    attempts: int = 1
    source: Source = "live"
    case_id: str | None = None
    ts: float | None = None  # epoch seconds when the request was first sent

    FIELDS: ClassVar[tuple[str, ...]]  # field names in order (set below the class)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        names = cls.FIELDS
        return cls(**{k: shared(v) for k, v in data.items() if k in names})


@dataclass(slots=True)
class CheckRecord:
    """One check outcome on one reply."""

    call_id: str
    pair_id: str
    test_id: str
    workflow: str
    role: Role
    model: str
    check: str  # check name: "json", "json_fenced", "tool_call", "length", "language", ...
    passed: bool
    detail: str | None = None  # one line: what was measured vs the threshold
    value: float | None = None  # measured value when numeric (chars, ms, ratio, ...)

    FIELDS: ClassVar[tuple[str, ...]]  # field names in order (set below the class)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckRecord:
        names = cls.FIELDS
        return cls(**{k: shared(v) for k, v in data.items() if k in names})


CallRecord.FIELDS = tuple(f.name for f in dataclasses.fields(CallRecord))
CheckRecord.FIELDS = tuple(f.name for f in dataclasses.fields(CheckRecord))


@dataclass
class RecordSet:
    """All records of a run (a session, a merged set of shards, or a canary log)."""

    calls: list[CallRecord] = field(default_factory=list)
    checks: list[CheckRecord] = field(default_factory=list)

    def extend(self, other: RecordSet) -> None:
        self.calls.extend(other.calls)
        self.checks.extend(other.checks)

    def sorted(self) -> RecordSet:
        """Deterministic order, so results do not depend on xdist scheduling."""
        return RecordSet(
            calls=sorted(self.calls, key=lambda c: (c.workflow, c.call_id)),
            checks=sorted(self.checks, key=lambda c: (c.workflow, c.call_id, c.check)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": [c.to_dict() for c in self.calls],
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordSet:
        return cls(
            calls=[CallRecord.from_dict(c) for c in data.get("calls", [])],
            checks=[CheckRecord.from_dict(c) for c in data.get("checks", [])],
        )
