"""Deterministic structural summaries of replies, for snapshot baselines with syrupy.

``structure(reply)`` keeps what a rollout must not change silently and drops what legitimately
varies from call to call: no ids, timings, token counts, model names or free text::

    {"kind": "json", "json_format": "strict",
     "json": {"order_id": "string", "items": [{"sku": "string", "qty": "integer"}]},
     "language": "en", "length": "50-200"}

* ``kind``: ``"json"`` (the whole reply is JSON, possibly in one code fence: ``json_format``
  ``"strict"`` or ``"fenced"``), ``"tool_calls"``, ``"text"`` (including prose with JSON in
  it) or ``"error"``.
* JSON values become JSON Schema type names (``string``, ``integer``, ``number``, ``boolean``,
  ``null``), objects keep their keys, lists become the sorted list of their distinct element
  summaries (``[]`` when empty).
* Tool calls: ``name`` and the summary of ``arguments`` (``"invalid JSON"`` when unparsable),
  sorted so parallel calls in another order give the same structure.
* ``language``: :func:`.language.detect_language` of the text (of the JSON string values for
  JSON replies). ``length``: a band of the text's characters: ``<50``, ``50-200``,
  ``200-1000``, ``>1000``.

Use ``assert reply.structure() == snapshot`` with syrupy's default serializer, or readable JSON
files with ``snapshot.use_extension(StructureSnapshotExtension)`` (which also accepts a Reply).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from syrupy.extensions.json import JSONSnapshotExtension

from .checks import parse_json_reply

if TYPE_CHECKING:
    from .replies import Reply

__all__ = ["StructureSnapshotExtension", "length_band", "structure", "type_summary"]

LENGTH_BANDS: tuple[tuple[int, str], ...] = ((50, "<50"), (200, "50-200"), (1000, "200-1000"))


def length_band(chars: int) -> str:
    for limit, label in LENGTH_BANDS:
        if chars < limit:
            return label
    return ">1000"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def type_summary(value: Any) -> Any:
    """JSON value -> its shape: type names for scalars, keys for objects, element shapes for
    lists (distinct, sorted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return {
            str(k): type_summary(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, (list, tuple)):
        distinct = {_canonical(s): s for s in (type_summary(v) for v in value)}
        return [distinct[k] for k in sorted(distinct)]
    return type(value).__name__


def _strings(value: Any, out: list[str]) -> list[str]:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
    return out


def structure(reply: Reply) -> dict[str, Any]:
    """The structural summary of ``reply`` (see the module docstring)."""
    from .language import detect_language  # lazily, like the checks

    if not reply.ok:
        return {"kind": "error"}
    text = reply.text
    if reply.tool_calls:
        calls = [
            {
                "name": c.name,
                "arguments": type_summary(c.arguments)
                if c.arguments is not None
                else "invalid JSON",
            }
            for c in reply.tool_calls
        ]
        out: dict[str, Any] = {"kind": "tool_calls", "tool_calls": sorted(calls, key=_canonical)}
        if text.strip():
            out["text"] = {"language": detect_language(text), "length": length_band(len(text))}
        return out
    parsed = parse_json_reply(text)
    if parsed.form in ("strict", "fenced"):
        return {
            "kind": "json",
            "json_format": parsed.form,
            "json": type_summary(parsed.data),
            "language": detect_language("\n".join(_strings(parsed.data, []))),
            "length": length_band(len(text)),
        }
    return {"kind": "text", "language": detect_language(text), "length": length_band(len(text))}


class StructureSnapshotExtension(JSONSnapshotExtension):
    """Snapshots as readable, sorted, indented JSON files (``.json``).

    ``assert reply.structure() == snapshot.use_extension(StructureSnapshotExtension)``; a
    :class:`~.replies.Reply` may be given directly and is summarised first.
    """

    def serialize(self, data: Any, **kwargs: Any) -> str | bytes:
        from .replies import Reply

        if isinstance(data, Reply):
            data = structure(data)
        if isinstance(data, dict) and not kwargs.get("matcher"):
            # plain data: canonical JSON, keys sorted at every level, stable across runs
            filtered = self._filter(
                data=data,
                depth=0,
                path=(),
                exclude=kwargs.get("exclude"),
                include=kwargs.get("include"),
            )
            return json.dumps(filtered, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        return super().serialize(data, **kwargs)
