"""What a prompt template or a prompt file gives, worked out for prefetch without the user's code.

Prompts are often kept out of the test: in a Jinja2 template (``TEMPLATE.render(question=
case.prompt)``, ``env.get_template("support.j2").render(**case.meta)``), in a
:class:`string.Template` (``TEMPLATE.substitute(name=case.meta["name"])``) or in a file next to
the tests (``(PROMPTS / f"{case.meta['task']}.txt").read_text(encoding="utf-8")``). Prefetch
(:mod:`.asked`) reads such a call from the test's source; this module works out its value for one
item, by the library's own code, where that runs none of the user's:

- a :mod:`pathlib` path (the exact standard classes): ``/``, ``joinpath``, ``with_name``,
  ``with_suffix``, ``parent``, ``name``, ``stem``, ``suffix``, and ``read_text`` of a regular
  file of at most :data:`MAX_FILE` bytes (never a pipe or a device, which could block);
- a :class:`string.Template` (or a subclass that keeps its methods): ``substitute`` and
  ``safe_substitute`` with strings and numbers for the names the template uses;
- a Jinja2 template of an environment that is Jinja2's own, as configured with its own parts
  (:func:`environment_problem`: the default filters, tests and globals, Jinja2's loaders,
  undefined types and extensions that call nothing of the user's, no bytecode cache, not
  async): ``render``, and an environment's ``get_template`` / ``from_string``. The template is
  rendered on copies of the values passed (strings, numbers, lists, dicts and the dataset's
  cases), so that nothing it does can change the test's own.

Anything else is :data:`~.asked.MISSING` (not known): that request is not planned, and the test
sends it itself when it runs, as without prefetch. A plan only ever costs calls: a test takes a
result sent ahead only for the request it makes itself.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import pathlib
import stat
import string
import sys
from collections.abc import Mapping
from typing import Any

MISSING: Any = object()  # the same object as asked.MISSING (asked imports it from here)
MAX_FILE = 1 << 20  # the largest prompt file read ahead (bytes)
_TEXT = (str, int, float, bool)
_PLAIN = (str, int, float, bool, type(None))
_PATHS = (pathlib.PurePosixPath, pathlib.PurePath, pathlib.PureWindowsPath, pathlib.Path,
          pathlib.PosixPath, pathlib.WindowsPath)  # fmt: skip
_CONCRETE = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath)
PATH_ATTRIBUTES = frozenset({"parent", "name", "stem", "suffix"})
_PATH_METHODS = frozenset({"joinpath", "with_name", "with_suffix", "read_text"})
_STRING_METHODS = frozenset({"substitute", "safe_substitute"})
_JINJA_METHODS = frozenset({"render", "get_template", "from_string"})
METHODS = _PATH_METHODS | _STRING_METHODS | _JINJA_METHODS
# what a template may take a **mapping for: render(**case.meta), substitute(**row)
STARRED = _STRING_METHODS | {"render"}
_DEEP = 32  # how deeply a value passed to a template may nest


class _Unknown(Exception):
    """A value the template reads that cannot be passed to it without the user's code."""


# -- classes called in the test -------------------------------------------------------------------
def construct(cls: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``Path("prompts")``, ``string.Template("Hi $name")``, ``jinja2.Template("Hi {{ n }}")``
    called with plain values; :data:`MISSING` for any other class or arguments."""
    if cls in _PATHS:
        ok = not kwargs and all(type(a) is str or type(a) in _PATHS for a in args)
        return cls(*args) if ok else MISSING
    if cls is string.Template:
        return string.Template(args[0]) if _one_str(args, kwargs) else MISSING
    jinja = sys.modules.get("jinja2")
    if jinja is not None and cls is jinja.Template and _one_str(args, kwargs):
        return jinja.Template(args[0])  # Jinja2's shared default environment
    return MISSING


def _one_str(args: list[Any], kwargs: dict[str, Any]) -> bool:
    return not kwargs and len(args) == 1 and type(args[0]) is str


def is_path(value: Any) -> bool:
    return type(value) in _PATHS


def divide(left: Any, right: Any) -> Any:
    """``path / "name"`` of a standard path and a str or path."""
    if type(left) in _PATHS and (type(right) is str or type(right) in _PATHS):
        return left / right
    return MISSING


def path_attribute(path: Any, name: str) -> Any:
    """``path.parent``, ``.name``, ``.stem``, ``.suffix`` of a standard path."""
    if type(path) in _PATHS and name in PATH_ATTRIBUTES:
        return getattr(path, name)
    return MISSING


# -- methods --------------------------------------------------------------------------------------
def method(receiver: Any, name: str, args: list[Any], kwargs: dict[str, Any],
           starred: list[Any]) -> Any:
    """``receiver.name(*args, **kwargs, **starred...)`` for the methods above, where the
    receiver is of a type named there; :data:`MISSING` otherwise, or when it would raise."""
    kind = type(receiver)
    if kind in _PATHS:
        return _path_method(receiver, name, args, kwargs) if not starred else MISSING
    if name in _STRING_METHODS and _is_string_template(kind):
        return _substitute(receiver, name, args, kwargs, starred)
    jinja = sys.modules.get("jinja2")
    if jinja is None:
        return MISSING
    if name == "render" and kind is jinja.Template:
        return _render(receiver, args, kwargs, starred)
    if name in ("get_template", "from_string") and not starred:
        if not _one_str(args, kwargs) or environment_problem(receiver) is not None:
            return MISSING
        try:
            return getattr(receiver, name)(args[0])
        except Exception:  # not found, a syntax error: the test would raise
            return MISSING
    return MISSING


def _path_method(path: Any, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if name == "read_text":
        return _read_text(path, args, kwargs)
    if name == "joinpath":
        ok = not kwargs and all(type(a) is str or type(a) in _PATHS for a in args)
        return path.joinpath(*args) if ok else MISSING
    if name in ("with_name", "with_suffix") and _one_str(args, kwargs):
        try:
            return getattr(path, name)(args[0])
        except ValueError:  # an empty name, a suffix without its dot
            return MISSING
    return MISSING


def _read_text(path: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``path.read_text(encoding=..., errors=...)`` of a regular file no larger than
    :data:`MAX_FILE`; a file is read once while it stays the same (:func:`_file_text`)."""
    if type(path) not in _CONCRETE:
        return MISSING
    try:
        encoding, errors = _read_text_arguments(*args, **kwargs)
    except TypeError:
        return MISSING
    if not all(v is None or type(v) is str for v in (encoding, errors)):
        return MISSING
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
            return MISSING  # a pipe or a device could block; a large file is no prompt
        return _file_text(os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns,
                          encoding, errors)
    except (OSError, ValueError, LookupError):  # not there, not decoded, no such encoding
        return MISSING


@functools.lru_cache(maxsize=256)
def _file_text(path: str, inode: int, size: int, mtime_ns: int, encoding: str | None,
               errors: str | None) -> str:
    """A prompt file's text, read once while it stays the same (its inode, size and time)."""
    return pathlib.Path(path).read_text(encoding=encoding, errors=errors)


def _read_text_arguments(encoding: Any = None, errors: Any = None) -> tuple[Any, Any]:
    """The arguments of ``Path.read_text``, bound as it binds them."""
    return encoding, errors


def _is_string_template(kind: type) -> bool:
    """:class:`string.Template` or a subclass that keeps its methods and attribute access
    (its own delimiter or pattern is fine: compiled by the library when the class is made)."""
    if not issubclass(kind, string.Template) or kind.__getattribute__ is not \
            object.__getattribute__:
        return False
    return all(getattr(kind, n) is getattr(string.Template, n) for n in _STRING_METHODS)


class _TextOnly(Mapping[str, Any]):
    """What ``substitute`` looks names up in: the keyword arguments, then the mappings, as
    :class:`string.Template` does; a value that is not a str or a number raises
    :class:`_Unknown` (its ``str()`` could run the user's code)."""

    def __init__(self, layers: list[dict[str, Any]]) -> None:
        self.layers = layers

    def __getitem__(self, key: str) -> Any:
        for layer in self.layers:
            if key in layer:
                value = layer[key]
                if type(value) not in _TEXT:
                    raise _Unknown(key)
                return value
        raise KeyError(key)

    def __iter__(self) -> Any:
        return iter({k: None for layer in self.layers for k in layer})

    def __len__(self) -> int:
        return len({k for layer in self.layers for k in layer})


def _merged(kwargs: dict[str, Any], starred: list[Any]) -> dict[str, Any] | None:
    """The keyword arguments with those of each ``**mapping`` (read with the dict's own
    methods); None when one is not a dict or gives a name twice (a TypeError when it runs)."""
    out = dict(kwargs)
    for mapping in starred:
        if not issubclass(type(mapping), dict):
            return None
        for key, value in dict.items(mapping):
            if key in out:
                return None
            out[key] = value
    return out


def _substitute(template: Any, name: str, args: list[Any], kwargs: dict[str, Any],
                starred: list[Any]) -> Any:
    """``substitute(mapping, **kws)`` / ``safe_substitute``: the keywords win over the
    mapping, as :class:`string.Template` looks them up."""
    keywords = _merged(kwargs, starred)
    if keywords is None or len(args) > 1 or type(template.template) is not str:
        return MISSING
    layers = [keywords]
    if args:
        if not issubclass(type(args[0]), dict):
            return MISSING
        layers.append(dict(dict.items(args[0])))
    try:
        return getattr(string.Template, name)(template, _TextOnly(layers))
    except (_Unknown, KeyError, ValueError):  # a name it lacks, a bad placeholder
        return MISSING


# -- Jinja2 ---------------------------------------------------------------------------------------
def _render(template: Any, args: list[Any], kwargs: dict[str, Any], starred: list[Any]) -> Any:
    """``template.render(...)`` on copies of plain values, when its environment and globals
    are Jinja2's own (:func:`why_not`)."""
    if why_not(template, "render") is not None:
        return MISSING
    keywords = _merged(kwargs, starred)
    if keywords is None or len(args) > 1 or (args and not issubclass(type(args[0]), dict)):
        return MISSING
    try:  # render(mapping, **kws) renders dict(mapping, **kws)
        context = _copy({**(dict(dict.items(args[0])) if args else {}), **keywords}, 0)
    except _Unknown:
        return MISSING
    try:
        text = template.render(context)
    except Exception:  # an undefined name (StrictUndefined), a bad filter use...
        return MISSING
    return str.__str__(text) if issubclass(type(text), str) else MISSING


def _copy(value: Any, depth: int) -> Any:
    """A copy of a value passed to a template: strings and numbers as they are, lists, tuples
    and dicts (with str keys) copied, a dataset's case copied with its fields; anything else
    raises :class:`_Unknown`."""
    if depth > _DEEP:
        raise _Unknown("too deep")
    kind = type(value)
    if kind in _PLAIN:
        return value
    if issubclass(kind, dict):
        out = {}
        for key, item in dict.items(value):
            if type(key) not in _PLAIN:
                raise _Unknown(key)
            out[key] = _copy(item, depth + 1)
        return out
    if issubclass(kind, list):
        return [_copy(item, depth + 1) for item in list.__iter__(value)]
    if kind is tuple:  # a namedtuple's fields are read by name: not a plain tuple
        return tuple(_copy(item, depth + 1) for item in tuple.__iter__(value))
    from .datasets import Case, StableReply
    from .providers.base import ToolCall

    if kind in (Case, StableReply, ToolCall):  # this plugin's own (frozen) dataclasses
        return kind(**{f.name: _copy(getattr(value, f.name), depth + 1)
                       for f in dataclasses.fields(value)})
    raise _Unknown(kind.__name__)


# parts of an environment set on the instance by Jinja2's own __init__ (anything else was set
# by the user: a context class, a concat of its own...)
_ENVIRONMENT_FIELDS = frozenset({
    "block_start_string", "block_end_string", "variable_start_string", "variable_end_string",
    "comment_start_string", "comment_end_string", "line_statement_prefix", "line_comment_prefix",
    "trim_blocks", "lstrip_blocks", "newline_sequence", "keep_trailing_newline", "undefined",
    "optimized", "finalize", "autoescape", "filters", "tests", "globals", "loader", "cache",
    "bytecode_cache", "auto_reload", "policies", "extensions", "is_async", "shared",
    "overlayed", "linked_to",
})  # fmt: skip
# extensions that call nothing of the user's ({% break %}, {% do %}, {% debug %})
_EXTENSIONS = frozenset({"jinja2.ext.LoopControlExtension", "jinja2.ext.ExprStmtExtension",
                         "jinja2.ext.DebugExtension"})


def environment_problem(env: Any) -> str | None:
    """What in a Jinja2 environment may run code of the user's when a template renders, said
    for ``-v`` (``"its environment has a filter of its own (`shout`)"``); None when nothing
    does: an environment of Jinja2's own class (or its sandboxes), its default filters, tests
    and globals, an undefined type, loader and autoescape of Jinja2's, no finalize, bytecode
    cache or extension that calls out, not async."""
    jinja = sys.modules.get("jinja2")
    if jinja is None:
        return "Jinja2 is not imported"
    if type(env) not in (jinja.Environment, *_sandboxes()):
        return f"its environment is a `{type(env).__name__}`, not one of Jinja2's own classes"
    own_extensions = sorted(set(env.extensions) - _EXTENSIONS)
    if own_extensions:  # (an extension may set attributes of the environment too)
        return f"its environment has the extension `{own_extensions[0]}`"
    fields = _ENVIRONMENT_FIELDS
    if type(env) is not jinja.Environment:  # a sandbox: its operators, copied from its class
        fields |= {"binop_table", "unop_table"}
        for table in ("binop_table", "unop_table"):
            own, default = getattr(env, table), getattr(type(env), "default_" + table)
            if type(own) is not dict or any(v is not default.get(k) for k, v in own.items()):
                return f"its environment has an operator of its own (`{table}`)"
    extra = sorted(set(vars(env)) - fields)
    if extra:
        return f"its environment sets `{extra[0]}` of its own"
    defaults = sys.modules["jinja2.defaults"]
    for what, table, default in (("filter", env.filters, defaults.DEFAULT_FILTERS),
                                 ("test", env.tests, defaults.DEFAULT_TESTS)):
        if type(table) is not dict:
            return f"its environment's {what}s are not a dict"
        own = sorted(k for k, v in table.items() if v is not default.get(k))
        if own:
            return f"its environment has a {what} of its own (`{own[0]}`)"
    problem = globals_problem(env.globals)
    if problem is not None:
        return f"its environment has {problem}"
    undefined = {jinja.Undefined, jinja.StrictUndefined, jinja.ChainableUndefined,
                 jinja.DebugUndefined}
    policies = env.policies
    checks = (
        (env.undefined not in undefined, "its undefined type is not one of Jinja2's"),
        (env.finalize is not None, "its environment has a finalize function"),
        (env.bytecode_cache is not None, "its environment has a bytecode cache"),
        (env.is_async is not False, "its environment is async"),
        (type(policies) is not dict or policies.get("json.dumps_function") is not None,
         "its environment's `tojson` dumps with a function of its own"),
        (not _jinja_autoescape(env.autoescape), "its autoescape is a function of its own"),
        (not _jinja_loader(env.loader, jinja, 0),
         f"its loader is a `{type(env.loader).__name__}`"),
    )
    return next((say for bad, say in checks if bad), None)


def globals_problem(names: Any) -> str | None:
    """``"a global of its own (`helper`)"`` when a template sees a global that is not one of
    Jinja2's defaults (``range``, ``dict``, ``lipsum``, ``cycler``, ``joiner``, ``namespace``;
    a sandbox's own ``range``); None when it sees none."""
    defaults = sys.modules["jinja2.defaults"].DEFAULT_NAMESPACE
    own_range = getattr(sys.modules.get("jinja2.sandbox"), "safe_range", None)
    layers = names.maps if type(names) is collections.ChainMap else [names]
    if not all(type(layer) is dict for layer in layers):
        return "globals that are not a dict"
    for layer in layers:
        for k, v in layer.items():
            if not (v is defaults.get(k) or (k == "range" and v is own_range is not None)):
                return f"a global of its own (`{k}`)"
    return None


def why_not(receiver: Any, name: str) -> str | None:
    """Why ``receiver.name(...)`` is not worked out ahead, when the receiver is a Jinja2
    template or environment whose setup may run the user's code; None otherwise."""
    jinja = sys.modules.get("jinja2")
    if jinja is None:
        return None
    if name == "render" and type(receiver) is jinja.Template:
        problem = environment_problem(receiver.environment)
        if problem is None:
            own = globals_problem(receiver.globals)
            problem = None if own is None else f"the template has {own}"
        return problem
    if name in ("get_template", "from_string") and type(receiver) in (
            jinja.Environment, *_sandboxes()):
        return environment_problem(receiver)
    return None


def _sandboxes() -> tuple[type, ...]:
    sandbox = sys.modules.get("jinja2.sandbox")
    if sandbox is None:
        return ()
    return (sandbox.SandboxedEnvironment, sandbox.ImmutableSandboxedEnvironment)


def _jinja_autoescape(value: Any) -> bool:
    """``autoescape`` as True / False, or what :func:`jinja2.select_autoescape` returns."""
    if type(value) is bool:
        return True
    return bool(getattr(value, "__module__", None) == "jinja2.utils"
                and getattr(value, "__qualname__", None) == "select_autoescape.<locals>.autoescape")


def _jinja_loader(loader: Any, jinja: Any, depth: int) -> bool:
    """No loader, or one of Jinja2's that reads files, a package's data or a dict of strings
    (and the loaders that choose among those); not a function loader or a module loader."""
    if loader is None:
        return True
    kind = type(loader)
    if depth > _DEEP:
        return False
    if kind in (jinja.FileSystemLoader, jinja.PackageLoader):
        return True
    if kind is jinja.DictLoader:
        return type(loader.mapping) is dict
    if kind is jinja.ChoiceLoader:
        return type(loader.loaders) is list and all(
            _jinja_loader(x, jinja, depth + 1) for x in loader.loaders)
    if kind is jinja.PrefixLoader:
        return type(loader.mapping) is dict and all(
            _jinja_loader(x, jinja, depth + 1) for x in loader.mapping.values())
    return False
