"""Datasets: ``cases(path)`` loads a file into parametrize-ready test cases.

::

    @pytest.mark.parametrize("case", cases("data/refunds.jsonl"))
    def test_refund(rollout, case):
        pair = rollout.ask(case)

Formats by extension:

* ``.jsonl`` -- one JSON object per line; blank lines and lines starting with ``//`` or ``#``
  are skipped.
* ``.json`` -- a list of objects, or ``{"cases": [...]}``.
* ``.csv`` -- a header row; columns ``prompt``, ``id``, ``expected`` (parsed as JSON when it
  looks like JSON), ``system``, ``messages`` / ``meta`` / ``tools`` / ``params`` (JSON),
  ``stable_reply`` (JSON object, or plain text), ``meta.<name>`` columns; any other column goes
  into ``meta``.
* ``.yaml`` / ``.yml`` -- like ``.json``; needs PyYAML (``pip install pytest-modelrollout[yaml]``).

A row is ``{"prompt": "..."}`` or ``{"messages": [...]}`` (OpenAI style; a leading system message
is split out into ``system``), with optional ``id``, ``expected``, ``meta``, ``system``,
``tools``, ``params``, ``response_format`` and ``stable_reply``; other keys go into ``meta``.

Shadow mode: a row may carry the reply the stable model gave in production, either as
``stable_reply`` (``{text, tool_calls: [{name, arguments}], latency_ms, input_tokens,
output_tokens, cost_usd, model, finish_reason, status, error}``), or as an OpenAI request/response
log row ``{"request": {"model", "messages", "tools", ...}, "response": {chat.completion body},
"latency_ms": ...}`` (Anthropic Messages bodies are understood too). Then the stable model is
not called.

Every problem is a one-line :class:`DatasetError` naming the file and the line.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from ._exceptions import DatasetError, ProviderError
from ._records import Status
from .cassettes import error_from_kind
from .providers.base import ChatRequest, ProviderResponse, ToolCall, content_text

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

__all__ = ["Case", "DatasetError", "StableReply", "cases", "load_cases", "sanitize_id"]

_FORMATS = (".jsonl", ".json", ".csv", ".yaml", ".yml")
_ROLES = frozenset(("system", "user", "assistant", "tool", "developer", "function"))
_STATUSES = frozenset(("ok", "error", "timeout"))
_KNOWN_KEYS = frozenset(
    (
        "id",
        "prompt",
        "messages",
        "expected",
        "meta",
        "system",
        "tools",
        "params",
        "response_format",
        "stable_reply",
    )
)
# request fields of a logged request that are not generation parameters
_REQUEST_NON_PARAMS = frozenset(
    (
        "model",
        "messages",
        "system",
        "tools",
        "response_format",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
    )
)


class _RowError(Exception):
    """A problem with one row; turned into ``DatasetError("FILE:LINE: message")``."""


# --------------------------------------------------------------------------------------------
# StableReply


@dataclass(frozen=True)
class StableReply:
    """The reply the stable model gave in production (shadow mode)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    model: str | None = None
    finish_reason: str | None = None
    status: Status = "ok"
    error: str | None = None
    error_kind: str | None = None

    def __hash__(self) -> int:
        return hash((self.text, self.status, self.model, self.latency_ms))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_provider_response(self) -> ProviderResponse:
        """The reply as a parsed provider response (check :attr:`ok` first for failures)."""
        return ProviderResponse(
            text=self.text,
            tool_calls=list(self.tool_calls),
            finish_reason=self.finish_reason,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            model_id=self.model,
        )

    def to_error(self) -> ProviderError | None:
        """The recorded failure as a classified :class:`ProviderError` (None when ok)."""
        if self.status == "ok":
            return None
        kind = self.error_kind or ("timeout" if self.status == "timeout" else None)
        return error_from_kind(kind, self.error or self.status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [t.to_dict() for t in self.tool_calls],
            "latency_ms": self.latency_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "status": self.status,
            "error": self.error,
            "error_kind": self.error_kind,
        }

    @classmethod
    def from_dict(cls, data: Any) -> StableReply:
        """Parse a ``stable_reply`` object (or a plain string: the text); DatasetError if bad."""
        try:
            return _stable_reply(data)
        except _RowError as exc:
            raise DatasetError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# Case


@dataclass(frozen=True)
class Case:
    """One dataset row. Exactly one of ``prompt`` / ``messages`` is set."""

    id: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    expected: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    stable_reply: StableReply | None = None
    index: int = 0
    source: str = ""  # "path/to/file.jsonl:LINE"
    tools: list[dict[str, Any]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None

    def __hash__(self) -> int:
        return hash((self.id, self.source))

    def __repr__(self) -> str:
        text = self.prompt_text()
        if len(text) > 60:
            text = text[:57] + "..."
        return f"Case(id={self.id!r}, prompt={text!r}, source={self.source!r})"

    @property
    def shadow(self) -> bool:
        """The case carries a recorded stable reply: the stable model is not called."""
        return self.stable_reply is not None

    def request_messages(self) -> list[dict[str, Any]]:
        """OpenAI-style messages for the request (without the system prompt: see ``system``).

        A fresh list of fresh dicts: callers may modify it.
        """
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def prompt_text(self) -> str:
        """The prompt, or the text of the last user message."""
        if self.prompt is not None:
            return self.prompt
        for m in reversed(self.messages or []):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return ""

    def to_request(
        self,
        *,
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        params: dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ChatRequest:
        """A :class:`ChatRequest` for this case.

        The arguments are defaults (e.g. from the ``workflow`` marker): the case's own
        ``system`` / ``tools`` / ``response_format`` win, and its ``params`` are merged over
        ``params``.
        """
        merged = dict(params or {})
        merged.update(self.params)
        return ChatRequest(
            messages=self.request_messages(),
            system=self.system if self.system is not None else system,
            tools=self.tools if self.tools is not None else tools,
            params=merged,
            response_format=(
                self.response_format if self.response_format is not None else response_format
            ),
        )


# --------------------------------------------------------------------------------------------
# public entry points


def cases(
    path: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
) -> list[ParameterSet]:
    """Load a dataset as ``pytest.param(case, id=case.id)`` values for ``parametrize``.

    A relative ``path`` resolves against ``base`` (a directory, or a file whose directory is
    used), by default the directory of the calling test file, then the current directory.
    """
    caller_file: str | None = None
    if base is None:
        frame = sys._getframe(1)
        f = frame.f_globals.get("__file__")
        caller_file = f if isinstance(f, str) else None
    with _no_gc():
        loaded = load_cases(path, base=base if base is not None else caller_file)
        param = pytest.param
        return [param(c, id=c.id) for c in loaded]


def load_cases(
    path: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
) -> list[Case]:
    """Load a dataset as a list of :class:`Case` (see :func:`cases` for path resolution)."""
    resolved = _resolve(Path(path), base)
    try:
        st = resolved.stat()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {resolved}: {exc.strerror}") from None
    cache_key = (str(resolved), st.st_mtime_ns, st.st_size)
    hit = _CACHE.get(cache_key)
    if hit is None:
        with _no_gc():
            hit = tuple(_load(resolved))
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[cache_key] = hit
    return list(hit)


_CACHE: dict[tuple[str, int, int], tuple[Case, ...]] = {}
_CACHE_MAX = 32


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Parsing a 100k-row file allocates millions of dicts and strings that all stay alive; with
    the collector running, its generational passes re-traverse them again and again (2-4x the
    parse time). Reference counting still frees garbage meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _resolve(path: Path, base: str | os.PathLike[str] | None) -> Path:
    path = path.expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise DatasetError(f"dataset file not found: {path}")
        return path
    tried: list[Path] = []
    if base is not None:
        b = Path(base)
        if b.is_file() or b.suffix == ".py":
            b = b.parent
        tried.append(b.resolve() / path)
    cwd_candidate = Path.cwd() / path
    if cwd_candidate not in tried:
        tried.append(cwd_candidate)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(t) for t in tried)
    raise DatasetError(f"dataset file not found: {path} (looked for {where})")


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _load(path: Path) -> list[Case]:
    src = _display(path)
    ext = path.suffix.lower()
    if ext not in _FORMATS:
        raise DatasetError(
            f"{src}: unknown dataset format {path.suffix or '(no extension)'!r} "
            f"(use .jsonl, .json, .csv, .yaml or .yml)"
        )
    if ext in (".yaml", ".yml"):
        yaml_mod = _import_yaml(src)  # fail before reading the file
    try:
        if ext == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{src}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {src}: {exc.strerror}") from None

    if ext == ".jsonl":
        rows: Iterable[tuple[int, Any]] = _jsonl_rows(text, src)
    elif ext == ".json":
        rows = _json_rows(text, src)
    elif ext == ".csv":
        rows = _csv_rows(text, src)
    else:
        rows = _yaml_rows(yaml_mod, text, src)
    result = _build(rows, src, path.stem)
    if not result:
        raise DatasetError(f"no cases in {src}")
    return result


# --------------------------------------------------------------------------------------------
# formats -> (line, row) pairs


def _jsonl_rows(text: str, src: str) -> Iterable[tuple[int, Any]]:
    # JSONDecoder.scan_once is what json.loads runs, minus two Python-level calls per line.
    scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    for lineno, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not s or s[0] == "#" or s[:2] == "//":
            continue
        try:
            obj, end = scan(s, 0)
        except (StopIteration, json.JSONDecodeError):
            raise _jsonl_error(s, src, lineno) from None
        if end != len(s):
            raise _jsonl_error(s, src, lineno)
        yield lineno, obj


def _jsonl_error(line: str, src: str, lineno: int) -> DatasetError:
    try:
        json.loads(line)
    except json.JSONDecodeError as exc:
        return DatasetError(f"{src}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})")
    return DatasetError(f"{src}:{lineno}: invalid JSON")  # pragma: no cover


_WS = re.compile(r"[ \t\n\r]*")


def _json_rows(text: str, src: str) -> list[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{src}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    items = _top_level_items(data, src, "JSON")
    try:
        offsets = _json_item_offsets(text, isinstance(data, dict))
    except (ValueError, IndexError):  # pragma: no cover - text is valid JSON
        offsets = []
    if len(offsets) != len(items):  # pragma: no cover
        return [(1, item) for item in items]
    out: list[tuple[int, Any]] = []
    line, last = 1, 0
    for off, item in zip(offsets, items, strict=False):
        line += text.count("\n", last, off)
        last = off
        out.append((line, item))
    return out


def _top_level_items(data: Any, src: str, fmt: str) -> list[Any]:
    if isinstance(data, dict):
        if "cases" not in data:
            raise DatasetError(
                f"{src}:1: expected a {fmt} list of cases or an object with a 'cases' list"
            )
        data = data["cases"]
        if not isinstance(data, list):
            raise DatasetError(f"{src}:1: 'cases' must be a list, got {_tname(data)}")
        return data
    if isinstance(data, list):
        return data
    if data is None:
        return []
    raise DatasetError(
        f"{src}:1: expected a {fmt} list of cases or an object with a 'cases' list, "
        f"got {_tname(data)}"
    )


def _json_item_offsets(text: str, wrapped: bool) -> list[int]:
    """Character offsets of the items of the top-level array (or of the 'cases' array)."""
    dec = json.JSONDecoder()
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if wrapped:
        # walk the top-level object to the value of its (last) "cases" key
        found = -1
        pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        while text[pos] != "}":
            key, pos = dec.raw_decode(text, pos)
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]  # skip ':'
            if key == "cases":
                found = pos
            _, pos = dec.raw_decode(text, pos)
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        pos = found
    if pos < 0 or text[pos] != "[":
        raise ValueError("no array")
    offsets: list[int] = []
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    if text[pos] == "]":
        return offsets
    while True:
        offsets.append(pos)
        _, pos = dec.raw_decode(text, pos)
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        if text[pos] != ",":
            return offsets
        pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]


def _import_yaml(src: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise DatasetError(
            f"{src}: reading YAML datasets needs PyYAML: pip install pyyaml "
            f"(or pip install 'pytest-modelrollout[yaml]')"
        ) from None
    return yaml


def _yaml_rows(yaml: Any, text: str, src: str) -> list[tuple[int, Any]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise DatasetError(f"{src}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{src}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    items = _top_level_items(data, src, "YAML")
    seq = node
    if isinstance(node, yaml.MappingNode):
        seq = None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "cases":
                seq = v
    lines: list[int] = []
    if isinstance(seq, yaml.SequenceNode) and len(seq.value) == len(items):
        lines = [n.start_mark.line + 1 for n in seq.value]
    else:  # pragma: no cover - anchors/merges changing the shape
        lines = [1] * len(items)
    return list(zip(lines, items, strict=False))


_CSV_JSON_COLUMNS = frozenset(("messages", "meta", "tools", "params", "response_format"))


def _csv_rows(text: str, src: str) -> Iterable[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        while not any(h.strip() for h in header):
            header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise DatasetError(f"{src}:{reader.line_num}: invalid CSV: {exc}") from None
    header_line = reader.line_num
    names = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            raise DatasetError(f"{src}:{header_line}: empty column name in the header")
        if name in seen:
            raise DatasetError(f"{src}:{header_line}: duplicate column {name!r} in the header")
        seen[name] = i
    if "prompt" not in seen and "messages" not in seen:
        raise DatasetError(f"{src}:{header_line}: CSV header has no 'prompt' or 'messages' column")
    last = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"{src}:{last + 1}: invalid CSV: {exc}") from None
        line = last + 1
        last = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(names):
            raise DatasetError(
                f"{src}:{line}: row has {len(cells)} fields but the header has {len(names)}"
            )
        try:
            yield line, _csv_row(names, cells)
        except _RowError as exc:
            raise DatasetError(f"{src}:{line}: {exc}") from None


def _csv_row(names: list[str], cells: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, cell in zip(names, cells, strict=False):
        if cell == "" or (not cell.strip() and name != "prompt"):
            continue
        if name == "expected":
            row["expected"] = _maybe_json(cell, "expected")
        elif name in _CSV_JSON_COLUMNS:
            row[name] = _json_cell(cell, name)
        elif name == "stable_reply":
            s = cell.strip()
            row[name] = _json_cell(cell, name) if s.startswith("{") else cell
        elif name.startswith("meta."):
            meta[name[5:]] = cell
        elif name in ("prompt", "id", "system"):
            row[name] = cell
        else:
            extra[name] = cell
    if meta or extra:
        base = row.get("meta")
        if base is not None and not isinstance(base, dict):
            raise _RowError(f"'meta' must be a JSON object, got {_tname(base)}")
        merged = {**extra, **(base or {}), **meta}
        row["meta"] = merged
    return row


def _json_cell(cell: str, name: str) -> Any:
    try:
        return json.loads(cell)
    except json.JSONDecodeError as exc:
        raise _RowError(f"column {name!r} is not valid JSON: {exc.msg}") from None


def _maybe_json(cell: str, name: str) -> Any:
    s = cell.strip()
    if s[:1] in ("{", "[", '"') or s in ("true", "false", "null"):
        try:
            return json.loads(s)
        except json.JSONDecodeError as exc:
            raise _RowError(
                f"column {name!r} looks like JSON but is not valid: {exc.msg} (column {exc.colno})"
            ) from None
    return cell


# --------------------------------------------------------------------------------------------
# rows -> cases

_ID_SPACE = re.compile(r"\s+")
_ID_BAD = re.compile(r"::|[\x00-\x1f\x7f]")
_ID_BRACKETS = str.maketrans({"[": "(", "]": ")"})


def sanitize_id(raw: str) -> str:
    """A case id that is safe in a pytest node id and on the command line.

    Whitespace runs become ``_``, brackets become parentheses, ``::`` and control characters
    become ``_``; letters of every script (e.g. Chinese) are kept.
    """
    if _ID_NEEDS_WORK.search(raw) is None and raw:
        return raw
    s = _ID_SPACE.sub("_", raw.strip())
    s = _ID_BAD.sub("_", s).translate(_ID_BRACKETS)
    return s or "_"


_ID_NEEDS_WORK = re.compile(r"[\s\[\]\x00-\x1f\x7f]|::")
_new_object = object.__new__


def _make_case(fields: dict[str, Any]) -> Case:
    # Case(**fields) goes through object.__setattr__ once per field (frozen dataclass); this is
    # the hot path of a 100k-row dataset, so fill the instance dict directly. ``fields`` always
    # holds every field (see _case_fields).
    case: Case = _new_object(Case)
    case.__dict__.update(fields)
    return case


def _build(rows: Iterable[tuple[int, Any]], src: str, stem: str) -> list[Case]:
    out: list[Case] = []
    append = out.append
    explicit_ids: dict[str, int] = {}
    used: set[str] = set()
    auto_prefix = sanitize_id(stem)
    for line, row in rows:
        index = len(out)
        try:
            fields = _case_fields(row, index, f"{src}:{line}", auto_prefix)
        except _RowError as exc:
            raise DatasetError(f"{src}:{line}: {exc}") from None
        cid: str = fields["id"]
        if row.get("id") is not None:  # an explicit id: must be unique
            first = explicit_ids.get(cid)
            if first is not None:
                raise DatasetError(
                    f"{src}:{line}: duplicate id {cid!r} (first used on line {first})"
                )
            explicit_ids[cid] = line
        final = sanitize_id(cid)
        if final in used:  # e.g. "a b" and "a_b", or an explicit id equal to an automatic one
            n = 2
            while f"{final}-{n}" in used:
                n += 1
            final = f"{final}-{n}"
        used.add(final)
        fields["id"] = final
        append(_make_case(fields))
    return out


def _case_fields(row: Any, index: int, source: str, auto_prefix: str) -> dict[str, Any]:
    if type(row) is not dict:
        raise _RowError(f"row is not a JSON object (got {_tname(row)})")
    get = row.get
    if "request" in row:
        return _log_fields(row, index, source, auto_prefix)

    prompt = get("prompt")
    messages = get("messages")
    system = get("system")
    if system is not None and type(system) is not str:
        raise _RowError(f"'system' must be a string, got {_tname(system)}")
    if prompt is not None:
        if messages is not None:
            raise _RowError("row has both 'prompt' and 'messages' (use one)")
        if type(prompt) is not str:
            raise _RowError(f"'prompt' must be a string, got {_tname(prompt)}")
        if not prompt or prompt.isspace():
            raise _RowError("'prompt' is empty")
    elif messages is None:
        raise _RowError("row has neither 'prompt' nor 'messages'")
    else:
        messages, split_system = _messages(messages, "messages")
        if split_system is not None:
            if system is not None:
                raise _RowError("row has both 'system' and a system message in 'messages'")
            system = split_system

    meta = get("meta")
    if meta is None:
        meta = {}
    elif type(meta) is not dict:
        raise _RowError(f"'meta' must be an object, got {_tname(meta)}")
    if not _KNOWN_KEYS.issuperset(row):  # unknown keys go into meta
        extra = {k: v for k, v in row.items() if k not in _KNOWN_KEYS}
        meta = {**extra, **meta}

    sr = get("stable_reply")
    tools = get("tools")
    params = get("params")
    rf = get("response_format")
    return {
        "id": _row_id(row, index, auto_prefix),
        "prompt": prompt,
        "messages": messages,
        "expected": get("expected"),
        "meta": meta,
        "system": system,
        "stable_reply": _stable_reply(sr) if sr is not None else None,
        "index": index,
        "source": source,
        "tools": _tools(tools) if tools is not None else None,
        "params": _obj(params, "params") if params is not None else {},
        "response_format": _obj(rf, "response_format") if rf is not None else None,
    }


def _row_id(row: dict[str, Any], index: int, auto_prefix: str) -> str:
    rid = row.get("id")
    if rid is None:
        return f"{auto_prefix}-{index}"
    t = type(rid)
    if t is str:
        if not rid.strip():
            raise _RowError("'id' is empty")
        return cast(str, rid)
    if t is int:
        return str(rid)
    raise _RowError(f"'id' must be a string or an integer, got {_tname(rid)}")


def _messages(value: Any, where: str) -> tuple[list[dict[str, Any]], str | None]:
    """Validate OpenAI-style messages; split leading system messages out."""
    if type(value) is not list:
        raise _RowError(f"'{where}' must be a list of messages, got {_tname(value)}")
    if not value:
        raise _RowError(f"'{where}' is empty")
    for i, m in enumerate(value):
        if type(m) is not dict:
            raise _RowError(f"'{where}[{i}]' must be an object, got {_tname(m)}")
        role = m.get("role")
        if role not in _ROLES:
            raise _RowError(
                f"'{where}[{i}].role' must be one of system, user, assistant, tool, got {role!r}"
            )
        content = m.get("content")
        if content is not None and type(content) is not str and type(content) is not list:
            raise _RowError(
                f"'{where}[{i}].content' must be a string, a list of parts or null, "
                f"got {_tname(content)}"
            )
    system: str | None = None
    n = 0
    while n < len(value) and value[n].get("role") == "system":
        n += 1
    if n:
        system = "\n\n".join(content_text(m.get("content")) for m in value[:n])
        value = value[n:]
        if not value:
            raise _RowError(f"'{where}' has only system messages")
    return value, system


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if type(value) is not list or not all(type(t) is dict for t in value):
        raise _RowError("'tools' must be a list of objects (OpenAI function tools)")
    out: list[dict[str, Any]] = []
    for t in value:
        if "input_schema" in t and "function" not in t:  # Anthropic tool -> OpenAI tool
            fn: dict[str, Any] = {"name": t.get("name", "")}
            if t.get("description") is not None:
                fn["description"] = t["description"]
            fn["parameters"] = t["input_schema"]
            out.append({"type": "function", "function": fn})
        else:
            out.append(t)
    return out


def _obj(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise _RowError(f"'{name}' must be an object, got {_tname(value)}")
    return cast(dict[str, Any], value)


def _tname(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# stable replies


def _num(d: dict[str, Any], key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise _RowError(f"'{where}.{key}' must be a non-negative number, got {v!r}")
    return float(v)


def _int(d: dict[str, Any], key: str, where: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        if isinstance(v, float) and v.is_integer() and v >= 0:
            return int(v)
        raise _RowError(f"'{where}.{key}' must be a non-negative integer, got {v!r}")
    return v


def _str(d: dict[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise _RowError(f"'{where}.{key}' must be a string, got {_tname(v)}")
    return v


def _status(d: dict[str, Any], where: str) -> tuple[Status, str | None, str | None]:
    status = d.get("status")
    error = d.get("error")
    if isinstance(error, dict):  # an API error body {"message": ..., "type": ...}
        error = error.get("message") or json.dumps(error, ensure_ascii=False)
    if error is not None and not isinstance(error, str):
        raise _RowError(f"'{where}.error' must be a string, got {_tname(error)}")
    if status is None:
        status = "error" if error else "ok"
    if status not in _STATUSES:
        raise _RowError(f"'{where}.status' must be ok, error or timeout, got {status!r}")
    kind = _str(d, "error_kind", where)
    if status != "ok" and not error:
        error = "timeout" if status == "timeout" else "error (recorded without a message)"
    if status == "timeout" and kind is None:
        kind = "timeout"
    return cast(Status, status), (error if status != "ok" else None), kind


def _tool_call(tc: Any, where: str) -> ToolCall:
    if type(tc) is not dict:
        raise _RowError(f"'{where}' must be an object, got {_tname(tc)}")
    fn = tc.get("function")
    src = fn if type(fn) is dict else tc  # OpenAI wire shape or the flat {name, arguments}
    name = src.get("name")
    if not isinstance(name, str) or not name:
        raise _RowError(f"'{where}.name' must be a non-empty string")
    args = src.get("arguments", src.get("input"))
    tc_id = tc.get("id")
    tc_id = tc_id if isinstance(tc_id, str) else None
    if args is None or type(args) is dict:
        return ToolCall(name=name, arguments=args if args is not None else {}, id=tc_id)
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        return ToolCall(
            name=name,
            arguments=parsed if type(parsed) is dict else None,
            raw_arguments=args,
            id=tc_id,
        )
    raise _RowError(f"'{where}.arguments' must be an object or a JSON string")


_NUMBER_TYPES = (int, float)


def _stable_reply(data: Any, where: str = "stable_reply") -> StableReply:
    if type(data) is str:
        return StableReply(text=data)
    if type(data) is not dict:
        raise _RowError(f"'{where}' must be an object or a string, got {_tname(data)}")
    get = data.get
    text = get("text")
    if text is None:
        text = get("content")
    if text is None:
        text = ""
    elif type(text) is not str:
        text = content_text(text) if type(text) is list else None
        if text is None:
            raise _RowError(f"'{where}.text' must be a string")
    calls = get("tool_calls")
    tool_calls: tuple[ToolCall, ...] = ()
    if calls is not None:
        if type(calls) is not list:
            raise _RowError(f"'{where}.tool_calls' must be a list, got {_tname(calls)}")
        tool_calls = tuple(_tool_call(tc, f"{where}.tool_calls[{i}]") for i, tc in enumerate(calls))
    if get("status") is None and get("error") is None and get("error_kind") is None:
        status: Status = "ok"
        error: str | None = None
        kind: str | None = None
    else:
        status, error, kind = _status(data, where)
    # cheap type checks first; the helpers produce the error message (or convert)
    latency = get("latency_ms")
    if latency is not None and (type(latency) not in _NUMBER_TYPES or latency < 0):
        latency = _num(data, "latency_ms", where)
    cost = get("cost_usd")
    if cost is not None and (type(cost) not in _NUMBER_TYPES or cost < 0):
        cost = _num(data, "cost_usd", where)
    in_tok = get("input_tokens")
    if in_tok is not None and (type(in_tok) is not int or in_tok < 0):
        in_tok = _int(data, "input_tokens", where)
    out_tok = get("output_tokens")
    if out_tok is not None and (type(out_tok) is not int or out_tok < 0):
        out_tok = _int(data, "output_tokens", where)
    model = get("model")
    if model is not None and type(model) is not str:
        model = _str(data, "model", where)
    finish = get("finish_reason")
    if finish is not None and type(finish) is not str:
        finish = _str(data, "finish_reason", where)
    reply: StableReply = _new_object(StableReply)  # all fields set: see _make_case
    reply.__dict__.update(
        {
            "text": text,
            "tool_calls": tool_calls,
            "latency_ms": latency,
            "input_tokens": in_tok,
            "output_tokens": out_tok,
            "cost_usd": cost,
            "model": model,
            "finish_reason": finish,
            "status": status,
            "error": error,
            "error_kind": kind,
        }
    )
    return reply


def _log_fields(row: dict[str, Any], index: int, source: str, auto_prefix: str) -> dict[str, Any]:
    """An OpenAI (or Anthropic) request/response log row -> a shadow case."""
    if "prompt" in row or "messages" in row:
        raise _RowError("row has both 'request' and 'prompt'/'messages' (use one)")
    req = row["request"]
    if type(req) is not dict:
        raise _RowError(f"'request' must be an object, got {_tname(req)}")
    if "messages" not in req:
        raise _RowError("'request' has no 'messages'")
    messages, system = _messages(req["messages"], "request.messages")
    req_system = req.get("system")  # Anthropic
    if req_system is not None:
        if isinstance(req_system, list):
            req_system = content_text(req_system)
        if not isinstance(req_system, str):
            raise _RowError("'request.system' must be a string or a list of text blocks")
        system = req_system if system is None else f"{req_system}\n\n{system}"
    params = {k: v for k, v in req.items() if k not in _REQUEST_NON_PARAMS}
    if "max_tokens" in params and params.get("max_tokens") is None:
        del params["max_tokens"]

    resp = row.get("response")
    reply = _reply_from_body(resp, row, req.get("model"))

    meta = row.get("meta")
    if meta is None:
        meta = {}
    elif type(meta) is not dict:
        raise _RowError(f"'meta' must be an object, got {_tname(meta)}")
    skip = _KNOWN_KEYS | {
        "request",
        "response",
        "latency_ms",
        "cost_usd",
        "status",
        "error",
        "error_kind",
    }
    extra = {k: v for k, v in row.items() if k not in skip}
    if isinstance(req.get("model"), str):
        extra.setdefault("request_model", req["model"])
    if extra:
        meta = {**extra, **meta}
    return {
        "id": _row_id(row, index, auto_prefix),
        "prompt": None,
        "messages": messages,
        "expected": row.get("expected"),
        "meta": meta,
        "system": system,
        "stable_reply": reply,
        "index": index,
        "source": source,
        "tools": _tools(req.get("tools")),
        "params": params,
        "response_format": _obj(req.get("response_format"), "request.response_format"),
    }


def _reply_from_body(resp: Any, row: dict[str, Any], req_model: Any) -> StableReply:
    status, error, kind = _status(row, "row")
    latency = _num(row, "latency_ms", "row")
    cost = _num(row, "cost_usd", "row")
    model = req_model if isinstance(req_model, str) else None
    if resp is None:
        if status == "ok":
            raise _RowError("'response' is missing (give 'status' and 'error' for a failure)")
        return StableReply(
            status=status, error=error, error_kind=kind, latency_ms=latency, model=model
        )
    if type(resp) is not dict:
        raise _RowError(f"'response' must be an object, got {_tname(resp)}")
    if "error" in resp and "choices" not in resp and "content" not in resp:
        err = resp["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        return StableReply(
            status="timeout" if status == "timeout" else "error",
            error=str(msg or error or "error"),
            error_kind=kind,
            latency_ms=latency,
            model=model,
        )
    if isinstance(resp.get("model"), str):
        model = resp["model"]
    usage = resp.get("usage")
    if usage is None:
        usage = {}
    elif type(usage) is not dict:
        raise _RowError(f"'response.usage' must be an object, got {_tname(usage)}")

    calls: list[ToolCall] = []
    if "choices" in resp:  # OpenAI chat.completion
        choices = resp["choices"]
        if type(choices) is not list or not choices or type(choices[0]) is not dict:
            raise _RowError("'response.choices' must be a non-empty list of objects")
        choice = choices[0]
        msg = choice.get("message")
        if type(msg) is not dict:
            raise _RowError("'response.choices[0].message' must be an object")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _RowError("'response.choices[0].message.content' must be a string or null")
        text = content_text(content)
        raw_calls = msg.get("tool_calls") or []
        if type(raw_calls) is not list:
            raise _RowError("'response.choices[0].message.tool_calls' must be a list")
        for i, tc in enumerate(raw_calls):
            calls.append(_tool_call(tc, f"response.choices[0].message.tool_calls[{i}]"))
        fc = msg.get("function_call")  # legacy functions API
        if type(fc) is dict and not calls:
            calls.append(_tool_call(fc, "response.choices[0].message.function_call"))
        finish = choice.get("finish_reason")
        in_tok = _int(usage, "prompt_tokens", "response.usage")
        out_tok = _int(usage, "completion_tokens", "response.usage")
    elif isinstance(resp.get("content"), list):  # Anthropic message
        parts: list[str] = []
        for i, block in enumerate(resp["content"]):
            if type(block) is not dict:
                raise _RowError(f"'response.content[{i}]' must be an object")
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                calls.append(_tool_call(block, f"response.content[{i}]"))
        text = "".join(parts)
        finish = resp.get("stop_reason")
        in_tok = _int(usage, "input_tokens", "response.usage")
        out_tok = _int(usage, "output_tokens", "response.usage")
    else:
        raise _RowError("'response' is neither a chat.completion nor a message body")
    return StableReply(
        text=text,
        tool_calls=tuple(calls),
        latency_ms=latency,
        input_tokens=in_tok,
        output_tokens=out_tok,
        cost_usd=cost,
        model=model,
        finish_reason=finish if isinstance(finish, str) else None,
        status=status,
        error=error,
        error_kind=kind,
    )
