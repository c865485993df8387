"""What a test function's first ``ask`` sends, read from its source without running it.

Prefetch sends an item's first request before the test runs, so it has to know that request
at collection time. This module reads the first argument of each ``.ask(...)`` in the test
function's source into an :data:`Expr`, a small hashable expression over the test's
parameters and its module's names, and evaluates it against one item's parameters. Nothing
the user wrote runs: items are read with the built-in types' own methods, attributes from an
instance's ``__dict__`` (never a property or ``__getattr__``), and strings are only built
from ``str``, ``int``, ``float`` and ``bool`` values.

What is read::

    rollout.ask(case)                                     a parameter
    rollout.ask(example["prompt"]), ask(case.prompt)      an item or attribute read from one
    ask(case.prompt, system=SYSTEMS[case.meta["lang"]])   an item whose key is read too
    rollout.ask("Hello"), ask(PROMPT)                     a string; a name of the test's module
    rollout.ask(f"Translate: {text}")                     an f-string of those
    rollout.ask("Summarize: " + case.prompt)              strings added together
    rollout.ask("Customer: %s" % case.prompt)             %-formatting of those
    rollout.ask(case.prompt[:2000])                       a slice with int bounds
    ask(x, system=A if case.meta["lang"] == "en" else B)  a conditional expression, and / or /
    ask(x, system=case.system or DEFAULT)                 not, ==, !=, <, in, is None of plain
                                                          values
    rollout.ask(TEMPLATE.format(question=row["q"]))       str.format and other str methods
    rollout.ask("\\n".join([INTRO, case.prompt]))         ("\\n".join, .strip(), .lower(), ...)
    ask(x, system=case.meta.get("system", DEFAULT))       a dict's get; len(...), str(...)
    rollout.ask(f"{case.prompt!r} ({score:.2f})")         an f-string's conversion and spec
    "\n".join(f"- {t}" for t in case.meta["tags"])       a comprehension, a generator joined,
    ", ".join(f"{k}={v}" for k, v in meta.items())        a dict's items() / keys() / values()
    enumerate(steps, 1), zip(a, b), sorted(tags)          enumerate, zip, reversed, sorted,
                                                          range, list, tuple of those
    sorted(tags, key=str.lower), max(tags, key=len)       min, max; key= len or a str method
    textwrap.dedent(...), json.dumps(case.meta)           the standard library's builders
    os.environ.get("STYLE", "brief"), os.getenv(...)      the environment, as it is now (counted:
                                                          env_reads)
    rollout.ask(build_prompt(case, channel="email"))      a call of a function of the module,
    rollout.ask(prompts.build(case))                      or of a module it imports, worked out
                                                          from that function's source (_run)
    rollout.ask(self.build(case), system=self.SYSTEM)     in a test class: self read as the class
    rollout.ask(SUPPORT.render(q=case.prompt, **case.meta))  a Jinja2 template, a string.Template,
    ask(x, system=(PROMPTS / f"{lang}.txt").read_text())  a prompt file: worked out by the
                                                          library's own code (templates.py)
    rollout.ask([{"role": "user", "content": text}])      a message list written in the test
    prompt = f"Translate: {text}"                         a local name assigned once, at the
    rollout.ask(prompt)                                   top of the body, before the ask
    if lang == "zh": system = ZH  else: system = EN       or again, with +=, under if / else
    prompt += " Answer briefly."                          there: read as it is at each line
    if case.meta["lang"] == "zh": rollout.ask(...)        the ask an item reaches under if /
    else: rollout.ask(...)                                elif / else (reached_ask)
    for text in case.meta["paraphrases"]:                 an ask in a for loop: each iteration's
        rollout.ask(text)                                 (_loop_of; the first, then later_asks)
    [rollout.ask(p).candidate.text for p in PROMPTS]      or in a list comprehension
    for p in items: if not p: continue; rollout.ask(p)    the ifs on the way: the items it asks
    for turn in case.meta["turns"]:                       a conversation's later turns: the list
        messages.append({"role": "user", ...})            with the replies before (known once
        pair = rollout.ask(messages)                      they are in: _conversation_turn);
        messages.append({..., pair.candidate.text})       a reply a name holds (_Reader._reply)

A function the ask calls is read when it is a plain ``def`` (not a closure, a lambda, a
generator, or a decorated function that wraps another) whose body is only a docstring,
``name = value`` / ``name += value``, ``if`` / ``elif`` / ``else``, ``return`` and ``pass``,
each read as above; its arguments, defaults and the names it assigns are its parameters, set
as its statements run. Anything else (a call of another method or a builtin, a name bound
under a condition in the test, a loop that may ``break`` before its ask, a loop in a
function) is not read: that ask is not planned.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import json
import operator
import os
import re
import string
import textwrap
import threading
import types
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NamedTuple, TypeGuard

from . import templates
from ._records import Role

# An expression, as nested tuples:
#   ("param", name)                a parameter of the test function
#   ("global", name)               a name of the test's module (PROMPT, TEMPLATE)
#   ("helper", function, args, kwargs, value)  a value read in the helper the test calls
#   ("model",)                     the model fixture passed to a helper (not read)
#   ("const", value)               a str, int, float, bool or None literal
#   ("attr", expr, name)           expr.name: an instance attribute
#   ("item", expr, key)            expr[key]: a dict's item, a list's or tuple's element
#   ("index", expr, expr)          expr[expr]: the same with a key read too (a str or an int):
#                                  SYSTEMS[case.meta["lang"]]
#   ("slice", expr, (lo, hi, step)) expr[lo:hi:step] of a str, list or tuple (int or None)
#   ("mod", expr, expr, tuple?)    str % value, or str % (value, ...) when tuple? is True
#   ("fstr", (expr, ...))          an f-string: its parts, joined
#   ("add", expr, expr)            str + str, list + list (a list added to), number + number
#   ("div", expr, expr)            path / "name" (a pathlib path: see templates)
#   ("arith", op, expr, expr)      a - b, a * b, a // b of numbers ("-", "*", "//"); a str
#                                  times an int ("=" * 40)
#   ("method", expr, name, (expr, ...), ((name, expr), ...))
#                                  a str method: template.format(...), "\n".join([...]),
#                                  text.strip(), ... (STR_METHODS)
#                                  or a dict's get: case.meta.get("system", DEFAULT)
#                                  or a template's or a path's (templates.METHODS):
#                                  TEMPLATE.render(q=case.prompt, **case.meta), in whose
#                                  keyword arguments a name None is a **mapping
#   ("call", expr, (expr, ...), ((name, expr), ...))
#                                  a call of a function of the module (expr: a "global" or an
#                                  "attr" of one), read from its own source (_returned)
#   ("list", (expr, ...))          a list or tuple display (an item ("star", expr): *a list or
#                                  tuple, its items)
#   ("dict", ((key, expr), ...))   a dict display with string keys (a key None: a **mapping
#                                  merged in, {**case.meta, "q": case.prompt})
#   ("if", test, expr, expr)       expr if test else expr (only the branch taken is read)
#   ("when", test, expr)           expr when test holds, else not known: the ask of a while
#                                  loop entered for some items only (while tries < MAX_TRIES:)
#   ("bool", "and"|"or", (expr, ...))  a and b, a or b: the operand Python returns
#   ("not", expr)                  not expr
#   ("cmp", op, expr, expr)        ==, !=, in, not in, is None, is not None
#   ("each", target, expr, i, expr) the last expr in iteration i of `for target in expr:` (a
#                                  name, or a tuple of names to unpack): an ask in a loop
#   ("turn", ("loop", target, items), j, name, expr)
#                                  expr with name set to the reply of turn j of the
#                                  conversation loop `for target in items:` (known once that
#                                  reply is in: _conversation_turn, REPLIES); or, with
#                                  ("ask", prompt, models) and 0, to the reply of the ask of
#                                  that prompt the body binds name to (_Reader._reply)
#   ("comp", target, expr, expr, (expr, ...))
#                                  [elt for target in items if cond...]: a list (also a
#                                  generator's, as "sep".join's argument)
#   ("added_by", expr, (expr, ...), ((name, expr), ...), index)
#                                  what a function of the module adds to the list it is given
#                                  as its index-th argument (add_question(messages, case)): run
#                                  on an empty list (_adder); that argument's expr unused
#   ("flat", expr)                 the lists of a "comp" joined: a comprehension with more than
#                                  one for ([m for shot in shots for m in (q, a)])
#   ("fmt", expr, conversion, expr?) an f-string's {value!r:spec} (conversion: ord("r"),
#                                  ord("s"), ord("a") or -1; spec: an "fstr", or None)
Expr = tuple[Any, ...]
# an ask's keyword arguments: (name, value), ...; a name None: a **mapping (**GENERATION)
Keywords = tuple[tuple[str | None, Expr], ...]

MISSING: Any = templates.MISSING  # a value not known without running the user's code
_TEXT = (str, int, float, bool)  # what a string is built from (exact types: no user code)
# what a condition may test (exact types: their truth and comparisons run no user code)
_PLAIN = (str, int, float, bool, type(None))
_CONVERSIONS = (-1, ord("s"), ord("r"), ord("a"))  # none, !s, !r, !a
_COMPARED = {ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in",
             ast.Is: "is", ast.IsNot: "is not", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
             ast.GtE: ">="}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_NUMBER = (int, float, bool)
_DEPTH = 64  # how deep an expression (with the local names it reads) may nest
# str methods read from the source: they build (or test) a string from strings and numbers
# only
STR_METHODS = frozenset({
    "format", "join", "strip", "lstrip", "rstrip", "lower", "upper", "replace", "removeprefix",
    "removesuffix", "capitalize", "title", "format_map",
    # and those that cut one into a list of strings (words = case.prompt.split())
    "split", "rsplit", "splitlines",
    # and those that test one, for a condition (`if case.id.endswith("5")`)
    "startswith", "endswith", "isdigit", "isdecimal", "isnumeric", "isalpha", "isalnum",
    "isspace", "islower", "isupper", "isascii",
})  # fmt: skip
# read of a dict: case.meta.get("system", DEFAULT), case.meta.items() (to go over)
DICT_METHODS = frozenset({"get", "items", "keys", "values"})
# a list's or dict's copy: messages = BASE.copy(), then messages.append(...)
_COPY_METHODS = frozenset({"copy"})
_METHODS = STR_METHODS | DICT_METHODS | templates.METHODS | _COPY_METHODS


def is_case(value: Any) -> bool:
    """A case from ``cases()`` (or anything shaped like one, as ``ask`` takes it)."""
    return hasattr(type(value), "request_messages") and hasattr(value, "id")


def is_prompt(value: Any) -> bool:
    """A prompt string or a list of chat messages (what ``ask`` takes besides a case). Told by
    the value's type, with the built-ins' own methods: no subclass's code runs (``isinstance``
    may read an object's ``__class__``)."""
    kind = type(value)
    if issubclass(kind, str):
        return str.__len__(value) > 0
    items = _elements(value)
    return items is not None and bool(items) and all(issubclass(type(m), dict) for m in items)


# -- reading -----------------------------------------------------------------------------------
def _int_or_none(node: ast.expr | None) -> Any:
    """A slice bound written in the source: an int literal (``-3`` too) or nothing; else
    :data:`MISSING`."""
    if node is None:
        return None
    negative = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
    value = node.operand if negative else node  # type: ignore[attr-defined]
    if isinstance(value, ast.Constant) and type(value.value) is int:
        return -value.value if negative else value.value
    return MISSING


class _Reader:
    """Turns expressions of one test function into :data:`Expr`."""

    def __init__(
        self, func: ast.FunctionDef | ast.AsyncFunctionDef, assigned_as_params: bool = False,
        own: Collection[str] = (),
    ) -> None:
        """``assigned_as_params``: the names the body assigns are read as parameters too (a
        module's function run by :func:`_run`, which sets them as it goes); ``own``: its
        parameters it adds to as lists of its own (:func:`_adder`)."""
        a = func.args
        self.args = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)} | {
            x.arg for x in (a.vararg, a.kwarg) if x is not None
        }
        positional = [*a.posonlyargs, *a.args]
        # a method's instance (read as its class: self.build(case) is read from its source)
        self.instance = positional[0].arg if positional and positional[0].arg == "self" else None
        self.bound = _binding_counts(func)
        # how many ``for`` statements of the body bind each name as their target (two loops
        # over the turns, one per model, both ``for turn in ...``)
        self.loop_targets = Counter(n.id for stmt in func.body if isinstance(stmt, ast.For)
                                    for n in ast.walk(stmt.target) if isinstance(n, ast.Name))
        # a local name assigned once, by a statement at the top of the body: its value
        self.single: dict[str, tuple[int, ast.expr]] = {}
        self.assigned: frozenset[str] = frozenset()
        # a list built there (messages = [...]), then added to by statements at the top of
        # the body (messages.append(...)): what it holds after each, read as list + [item]
        self.versions: dict[str, list[tuple[int, ast.expr]]] = {}
        # where such a list is added to in the body of a for loop of the body: (line, the
        # loop's first and last lines); read on the way to an ask in that loop (_way_to)
        self.loop_adds: dict[str, list[tuple[int, int, int]]] = {}
        # the lines of the loop whose later iteration is read: a change anywhere in it is
        # before that iteration's ask
        self.loop_span: tuple[int, int] | None = None
        # a function run by _run: its ``name.append(...)`` / ``.extend(...)`` statements that
        # it runs as ``name = name + [...]`` (:func:`_own_adds`), by id: the name, the items
        self.own_adds: dict[int, tuple[str, ast.expr]] = {}
        if assigned_as_params:
            adds = _own_adds(func, own)
            self.own_adds = {id(stmt): (name, what) for stmt, (name, _, what) in adds}
            self.changes = _changes(func, self.bound, frozenset(id(add[1]) for _, add in adds))
            self.assigned = frozenset(self.bound)
            self.args |= self.assigned
            return
        for stmt in func.body:
            self.single.update(self.set_once(stmt))  # (an if's walrus too: read after it)
        # a list the body builds once and adds to with ``+=`` only in its for loops' bodies
        # (``messages += [{"role": "user", "content": turn}]``): set once too, those its adds
        augmented = Counter(child.target.id for stmt in func.body if isinstance(stmt, ast.For)
                            for child in stmt.body if isinstance(child, ast.AugAssign)
                            and isinstance(child.op, ast.Add)
                            and isinstance(child.target, ast.Name))
        for stmt in func.body:
            name, value = _simple_assignment(stmt)
            if (name is not None and value is not None and name not in self.single
                    and augmented[name] and self.bound.get(name) == 1 + augmented[name]
                    and _fresh_list(value)):
                self.single[name] = (stmt.end_lineno or stmt.lineno, value)
        appended = {n.func.value.id for n in ast.walk(func) if isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute) and n.func.attr in ("append", "extend")
                    and isinstance(n.func.value, ast.Name)}
        # the lists the test builds: a list display, or a list of its own it adds to
        lists = {name for name, (_, value) in self.single.items() if isinstance(value, ast.List)
                 or ((name in appended or name in augmented) and _fresh_list(value))}
        # the dicts the test builds and sets items of (payload["context"] = ...)
        items_set = {n.value.id for n in ast.walk(func) if isinstance(n, ast.Subscript)
                     and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)}
        dicts = {name for name, (_, value) in self.single.items()
                 if name in items_set and _fresh_dict(value)}
        read: set[int] = set()  # the adds read (not changes): their ``name.append`` nodes
        # the values of a name assigned more than once, or under an ``if``, by statements at
        # the top of the body (all its bindings): read as the list's versions are
        values: dict[str, list[tuple[int, ast.expr]]] = {}
        made: Counter[str] = Counter()  # the bindings those statements make
        loops_read: set[int] = set()  # the for loops that only add to lists, read as such
        for stmt in func.body:
            end = stmt.end_lineno or stmt.lineno
            added = _added(stmt, lists)
            if added is not None:  # messages.append(...): what it held before, and the item
                name, node, what = added
                self.versions.setdefault(name, []).append((end, _plus(_load(name, what), what)))
                read.add(id(node))
            handed = _handed_to_adder(stmt, lists)
            if handed is not None:  # add_question(messages, case): what it held, and its adds
                name, node, what = handed
                self.versions.setdefault(name, []).append((end, _plus(_load(name, what), what)))
                read.add(id(node))
            item = _item_set(stmt, dicts)
            if item is not None:  # payload["context"] = ...: what it held, with the item
                name, node, what = item
                self.versions.setdefault(name, []).append((end, _merge(_load(name, what), what)))
                read.add(id(node))
            for target, value in _assigned_names(stmt) or ():  # prompt = ..., += ...
                values.setdefault(target, []).append((end, value))
                made[target] += 1
            branched = _values_under_if(stmt, lists, dicts)
            if branched is not None:  # if case.context: messages.append(...) / system = ...
                for name, value in branched.values.items():
                    (self.versions if name in lists or name in dicts else values).setdefault(
                        name, []).append((end, value))
                read.update(id(node) for node in branched.adds)
                made.update(branched.assigned)
            built = _built_in_a_loop(stmt, lists, self.args)
            if built is not None:  # for doc in case.meta["docs"]: messages.append(...)
                for name, value in built.values.items():
                    (self.versions if name in lists else values).setdefault(name, []).append(
                        (end, value))
                made.update(built.strings)  # (context += ...: a binding of context)
                read.update(id(node) for node in built.adds)
                loops_read.add(id(stmt))
        for name, versions in values.items():
            if name not in self.single and made[name] == self.bound.get(name):
                self.versions[name] = versions
        for stmt in func.body:
            if isinstance(stmt, ast.For) and id(stmt) not in loops_read:
                for child in stmt.body:
                    added = _added(child, lists)
                    if added is not None:
                        self.loop_adds.setdefault(added[0], []).append(
                            (child.lineno, stmt.lineno, stmt.end_lineno or stmt.lineno))
                        read.add(id(added[1]))
        # the lines where something may change what a name holds (:func:`_changes`); a name
        # changed before the line an expression is read at is not read there
        self.changes = _changes(func, self.bound, frozenset(read), lists | dicts)

    def read(self, node: ast.expr, line: int, depth: int = 0) -> Expr | None:
        """``node`` (at source line ``line``) as an Expr, or None when it is not readable."""
        if depth > _DEPTH:
            return None
        sub = functools.partial(self.read, line=line, depth=depth + 1)
        if isinstance(node, ast.Name):
            return self._name(node.id, line, depth)
        if isinstance(node, ast.Constant):
            ok = type(node.value) in _TEXT or node.value is None
            return ("const", node.value) if ok else None
        if isinstance(node, ast.Attribute):
            base = sub(node.value)
            return None if base is None else ("attr", base, node.attr)
        if isinstance(node, ast.Subscript):
            key = node.slice
            base = sub(node.value)
            tuple_display = isinstance(node.value, ast.Tuple)  # sliced, a tuple (read: a list)
            if base is not None and isinstance(key, ast.Slice) and not tuple_display:
                bounds = tuple(_int_or_none(x) for x in (key.lower, key.upper, key.step))
                return None if MISSING in bounds else ("slice", base, bounds)
            if base is None or isinstance(key, (ast.Slice, ast.Tuple)):
                return None
            if isinstance(key, ast.Constant) and type(key.value) in (str, int):
                return ("item", base, key.value)
            index = sub(key)  # a str or int when it runs (evaluate)
            return None if index is None else ("index", base, index)
        if isinstance(node, ast.JoinedStr):
            return self._fstring(node, sub)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = sub(node.left), sub(node.right)
            return None if left is None or right is None else ("add", left, right)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:  # 2 * limit, "-" * 40
            left, right = sub(node.left), sub(node.right)
            return None if left is None or right is None else (
                "arith", _ARITH[type(node.op)], left, right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # PROMPTS / "a.txt"
            left, right = sub(node.left), sub(node.right)
            return None if left is None or right is None else ("div", left, right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "%s: %s" % (a, b)
            left, right = sub(node.left), sub(node.right)
            if left is None or right is None:
                return None
            return ("mod", left, right, isinstance(node.right, ast.Tuple))
        if isinstance(node, ast.NamedExpr):  # (lang := case.meta["lang"]): its value
            return sub(node.value)
        if isinstance(node, _AddedBy):  # add_question(messages, case): what it adds
            callee = sub(node.call.func)
            args = [("const", None) if i == node.index else sub(a)
                    for i, a in enumerate(node.call.args)]
            kwargs = [(k.arg, sub(k.value)) for k in node.call.keywords]
            if callee is None or not _module_name(callee) or None in args or any(
                    k is None or v is None for k, v in kwargs):
                return None
            return ("added_by", callee, tuple(args), tuple(kwargs), node.index)
        if isinstance(node, ast.IfExp):
            parts = [sub(node.test), sub(node.body), sub(node.orelse)]
            return None if None in parts else ("if", *parts)
        if isinstance(node, ast.BoolOp):
            values = [sub(x) for x in node.values]
            op = "and" if isinstance(node.op, ast.And) else "or"
            return None if None in values else ("bool", op, tuple(values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            operand = sub(node.operand)
            return None if operand is None else ("not", operand)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            compared = _COMPARED.get(type(node.ops[0]))
            right_node = node.comparators[0]
            if compared in ("is", "is not") and not (
                isinstance(right_node, ast.Constant) and right_node.value is None
            ):
                return None  # only `is None` / `is not None`
            left, right = sub(node.left), sub(right_node)
            if compared is None or left is None or right is None:
                return None
            return ("cmp", compared, left, right)
        if isinstance(node, ast.Call):
            return self._call(node, sub, line, depth)
        if isinstance(node, ast.ListComp):
            return self._comprehension(node, sub, line, depth)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [_starred(sub(x.value)) if isinstance(x, ast.Starred) else sub(x)
                     for x in node.elts]  # ([*case.meta["history"], {...}])
            return ("list", tuple(items)) if all(x is not None for x in items) else None
        if isinstance(node, ast.Dict):
            pairs = []
            for k, v in zip(node.keys, node.values, strict=True):
                if k is not None and not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
                    return None  # a computed key
                value = sub(v)
                if value is None:
                    return None
                pairs.append((None if k is None else k.value, value))  # (None: **mapping)
            return ("dict", tuple(pairs))
        return None

    def _name(self, name: str, line: int, depth: int) -> Expr | None:
        changed = self.changes.get(name)
        span = self.loop_span
        if changed is not None and (changed[0] <= line or (
                span is not None and any(span[0] <= at <= span[1] for at in changed))):
            return None  # (messages.sort() before rollout.ask(messages))
        for at, start, end in self.loop_adds.get(name, ()):
            if (at < line and not start <= line <= end) or (
                    span is not None and span[0] <= at <= span[1]):
                return None  # added to as many times as the loop went round
        version = next((v for v in reversed(self.versions.get(name, ())) if v[0] < line), None)
        if version is not None:  # (messages.append(...) before rollout.ask(messages))
            return self.read(version[1], version[0], depth + 1)
        single = self.single.get(name)
        if single is not None and single[0] < line:
            value = single[1]  # what it reads, it reads where it is assigned
            if _is_ask(value):  # first = rollout.ask(messages): its reply, once it is in
                return self._reply(name, value, depth)
            if changed is not None and self.shares_module_value(value, 0):
                return None  # (messages = BASE, then messages.append(...) after the ask)
            return self.read(value, value.lineno, depth + 1)
        if name in self.args:
            return ("param", name)
        if name in self.bound:
            return None  # a local name bound some other way (a loop, a condition, ...)
        if changed is not None:
            return None  # a module's value the test changes: changed for every test after
        return ("global", name)

    def _reply(self, name: str, ask: ast.Call, depth: int) -> Expr | None:
        """The reply of an ask of the body's, by the name it is bound to once (``first =
        rollout.candidate.ask(messages)``, then ``first.text`` in a follow-up's list): a
        ``("turn", ("ask", prompt, models), 0, name, ("param", name))``, known once the reply
        to that prompt is in (prefetch sends the follow-up then)."""
        prompt = self.read(ask.args[0], ask.lineno, depth + 1) if len(ask.args) == 1 else None
        roles = _receiver_roles(ask.func, self)
        if prompt is None or not roles:
            return None
        return ("turn", ("ask", prompt, roles), 0, name, ("param", name))

    def shares_module_value(self, value: ast.expr, depth: int) -> bool:
        """Whether ``value`` may be, or hold, a value of the module's: it reads a name of the
        module, itself or through a local name set once to such a value, other than in a
        ``copy.deepcopy(...)`` (a list display or a shallow copy holds the module's items:
        ``list(BASE)[0]["content"] = ...`` changes ``BASE``'s). A change to it, even after
        the ask, changes what the next test asks."""
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and (
                value.func.attr == "deepcopy" and isinstance(value.func.value, ast.Name)
                and value.func.value.id == "copy"):
            return False
        for node in ast.walk(value):
            if not isinstance(node, ast.Name) or node.id in self.args:
                continue
            single = self.single.get(node.id)
            if node.id not in self.bound or (single is not None and depth < _DEPTH
                                             and self.shares_module_value(single[1], depth + 1)):
                return True
        return False

    def _fstring(self, node: ast.JoinedStr, sub: Any) -> Expr | None:
        parts: list[Expr] = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(("const", value.value))
                continue
            if not isinstance(value, ast.FormattedValue) or value.conversion not in _CONVERSIONS:
                return None
            part = sub(value.value)
            spec = value.format_spec
            spec_expr = None if spec is None else (
                self._fstring(spec, sub) if isinstance(spec, ast.JoinedStr) else None)
            if part is None or (spec is not None and spec_expr is None):
                return None
            if value.conversion != -1 or spec_expr is not None:  # {score:.2f}, {name!r}
                part = ("fmt", part, value.conversion, spec_expr)
            parts.append(part)
        return ("fstr", tuple(parts))

    def set_once(self, stmt: ast.stmt) -> list[tuple[str, tuple[int, ast.expr]]]:
        """The names the statement sets that the function binds nowhere else, and the
        :attr:`single` entry each makes where it is on the way to an ask: ``name = value``,
        or a walrus in an ``if``'s condition that always runs (``if (lang :=
        case.meta["lang"]) == "zh":``, read in its branches as set there)."""
        name, value = _simple_assignment(stmt)
        found = [(name, value)] if name is not None and value is not None else (
            _walruses(stmt.test) if isinstance(stmt, ast.If) else [])
        return [(name, (stmt.lineno if isinstance(stmt, ast.If) else stmt.end_lineno
                        or stmt.lineno, value))
                for name, value in found if self.bound.get(name) == 1]

    def spanning(self, loop: ast.stmt) -> _Reader:
        """A reader of a later iteration of ``loop`` (or of one its conditions may reach after
        skipping items): what the loop changes anywhere, it may have changed before."""
        inner = copy.copy(self)
        inner.loop_span = (loop.lineno, loop.end_lineno or loop.lineno)
        return inner

    def scoped(self, target: str | tuple[str, ...]) -> _Reader:
        """A reader of a loop's or a comprehension's body: its target's names read as
        parameters (set for each iteration), not as what the test assigns them elsewhere."""
        names = {target} if isinstance(target, str) else set(target)
        inner = copy.copy(self)
        inner.args = self.args | names
        inner.single = {k: v for k, v in self.single.items() if k not in names}
        return inner

    def _comprehension(self, node: ast.ListComp | ast.GeneratorExp, sub: Any, line: int,
                       depth: int) -> Expr | None:
        """``[elt for target in items if cond]``, its ``if``s read as conditions; with more
        than one ``for`` (``[m for shot in shots for m in (q(shot), a(shot))]``), each later
        one read in the scope of those before it, and the lists it makes for each item
        joined (``"flat"``)."""
        generator, rest = node.generators[0], node.generators[1:]
        if generator.is_async or len(node.generators) > 3:
            return None
        target = _target_names(generator.target, self, scoped=True)
        items = sub(generator.iter)
        if target is None or items is None:
            return None
        inner = self.scoped(target)
        element = inner.read(node.elt, line, depth + 1) if not rest else inner._comprehension(
            ast.ListComp(elt=node.elt, generators=rest),
            functools.partial(inner.read, line=line, depth=depth + 2), line, depth + 1)
        conditions = [inner.read(c, line, depth + 1) for c in generator.ifs]
        if element is None or any(c is None for c in conditions):
            return None
        comp = ("comp", target, items, element, tuple(conditions))
        return ("flat", comp) if rest else comp

    def _call(self, node: ast.Call, sub: Any, line: int, depth: int) -> Expr | None:
        """``text.method(...)`` for a method in :data:`STR_METHODS`, ``mapping.get(...)``, or
        a call of a function named in the module (``build_prompt(case)``,
        ``prompts.build(case)``): positional and keyword arguments, no ``*`` / ``**`` (but a
        ``**mapping`` for a template: ``TEMPLATE.render(**case.meta)``)."""
        func = node.func
        if (
            isinstance(func, ast.Attribute) and func.attr == "join" and len(node.args) == 1
            and isinstance(node.args[0], ast.GeneratorExp)
        ):  # "\n".join(f"- {tag}" for tag in tags): its generator read as a list
            items = self._comprehension(node.args[0], sub, line, depth)
            receiver = sub(func.value)
            if items is None or receiver is None or node.keywords:
                return None
            return ("method", receiver, "join", (items,), ())
        args = [sub(a) for a in node.args]
        kwargs = [(k.arg, sub(k.value)) for k in node.keywords]
        starred = isinstance(func, ast.Attribute) and (
            func.attr in templates.STARRED or func.attr == "format")  # TEMPLATE.format(**row)
        if (
            any(a is None for a in args)
            or any(v is None or (k is None and not starred) for k, v in kwargs)
        ):
            return None  # not read, or a *args (k None: a **kwargs)
        if isinstance(func, ast.Attribute) and func.attr in _METHODS and not (
                func.attr in _COPY_METHODS and (args or kwargs)):  # (copy.copy(x): a call)
            receiver = sub(func.value)
            if receiver is None:
                return None
            return ("method", receiver, func.attr, tuple(args), tuple(kwargs))
        callee = sub(func)
        method = callee is not None and callee[0] == "attr" and callee[1] == (
            "param", self.instance)
        if callee is None or not (_module_name(callee) or method):
            return None  # a parameter's method, a reply's, ...: not read
        return ("call", callee, tuple(args), tuple(kwargs))


def _starred(expr: Expr | None) -> Expr | None:
    return None if expr is None else ("star", expr)


# the methods of the built-in lists, dicts and sets that change them in place
_CHANGERS = frozenset({
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update",
    "setdefault", "popitem", "add", "discard", "difference_update", "intersection_update",
    "symmetric_difference_update", "__setitem__", "__delitem__", "__iadd__",
})  # fmt: skip
_CONTAINERS = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)


def _fresh_list(value: ast.expr) -> bool:
    """Whether ``value`` makes a list of its own, that nothing else holds: a list display or
    comprehension, ``list(...)``, ``sorted(...)``, ``copy.copy(...)`` / ``copy.deepcopy(...)``,
    ``BASE.copy()``, ``BASE[:]``, or a sum with a list display (``BASE + [turn]``). Not a name
    or an item (``messages = BASE``, ``case.meta["history"]``): an add to it would change the
    module's list, or the case's, for every test after."""
    if isinstance(value, (ast.List, ast.ListComp)):
        return True
    if isinstance(value, ast.Subscript):
        return isinstance(value.slice, ast.Slice)
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
        return any(isinstance(side, (ast.List, ast.ListComp)) for side in (value.left, value.right))
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    if isinstance(func, ast.Name):
        return func.id in ("list", "sorted")
    return isinstance(func, ast.Attribute) and (
        (func.attr == "copy" and not value.args and not value.keywords)
        or (func.attr in ("copy", "deepcopy") and isinstance(func.value, ast.Name)
            and func.value.id == "copy"))


def _added(stmt: ast.stmt, lists: Collection[str]) -> tuple[str, ast.Name, ast.expr] | None:
    """``name.append(item)`` / ``name.extend(items)`` / ``name += items`` as a statement, of
    one of ``lists``: the name, its node, and what it adds as a list (``[item]`` /
    ``items``); None otherwise."""
    if (isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add)
            and isinstance(stmt.target, ast.Name) and stmt.target.id in lists):
        return stmt.target.id, stmt.target, stmt.value  # (a list's += extends it in place)
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    func = call.func if isinstance(call, ast.Call) else None
    if not (isinstance(call, ast.Call) and isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name) and func.value.id in lists
            and func.attr in ("append", "extend") and len(call.args) == 1
            and not call.keywords and not isinstance(call.args[0], ast.Starred)):
        return None
    item = call.args[0]
    what = item if func.attr == "extend" else ast.copy_location(
        ast.List(elts=[item], ctx=ast.Load()), item)
    return func.value.id, func.value, what


def _own_adds(func: ast.FunctionDef | ast.AsyncFunctionDef, params: Collection[str] = (),
              ) -> list[tuple[ast.stmt, tuple[str, ast.Name, ast.expr]]]:
    """In a function of the suite (run by :func:`_run`), the statements ``name.append(item)``
    / ``name.extend(items)``, anywhere in its body, of a list it makes itself and hands to
    nothing but its ``return``: every assignment of the name makes a list of its own
    (:func:`_fresh_list`: ``messages = [...]``, ``list(BASE)``), and the name is read
    nowhere else as a value that goes on (assigned to another name, put in a list or dict,
    passed to a call other than a read-only one; returned, it may be): adding to it then
    changes nothing but what the function returns, so each such statement runs as ``name =
    name + [...]``; and of the ``params`` the caller runs it on an empty list for
    (:func:`_adder`). Each statement, and what :func:`_added` reads of it."""
    own: dict[str, bool] = dict.fromkeys(params, True)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(func):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            fresh = isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and (
                _fresh_list(node.value))
            for target in targets:
                for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                    own[name] = own.get(name, True) and fresh and isinstance(target, ast.Name)
        elif isinstance(node, (ast.For, ast.comprehension, ast.With, ast.ExceptHandler)):
            for name in (n.id for n in ast.walk(getattr(node, "target", node))
                         if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)):
                own[name] = False
    found: list[tuple[ast.stmt, tuple[str, ast.Name, ast.expr]]] = []
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and own.get(node.id):
            if _handed_on_at(node, parents) is None:
                continue
            own[node.id] = False  # handed on: an add to it may change another's value
    for node in ast.walk(func):
        if isinstance(node, ast.Expr) and not isinstance(parents.get(node), ast.Module):
            added = _added(node, [name for name, ok in own.items() if ok])
            if added is not None:
                found.append((node, added))
    return found


def _walruses(test: ast.expr) -> list[tuple[str, ast.expr]]:
    """The walruses of a condition that run whenever it does (not in the operands an ``and``
    / ``or`` may skip, a branch of ``... if ... else ...``, the later links of a chained
    comparison, a comprehension or a ``lambda``): each one's name and value."""
    found: list[tuple[str, ast.expr]] = []
    todo: list[ast.AST] = [test]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.NamedExpr):
            found.append((node.target.id, node.value))
            todo.append(node.value)
        elif isinstance(node, ast.BoolOp):
            todo.append(node.values[0])
        elif isinstance(node, ast.IfExp):
            todo.append(node.test)
        elif isinstance(node, ast.Compare):
            todo.extend([node.left, node.comparators[0]])
        elif isinstance(node, (ast.UnaryOp, ast.BinOp, ast.Call, ast.Attribute, ast.Subscript,
                               ast.keyword, ast.JoinedStr, ast.FormattedValue, ast.List,
                               ast.Tuple, ast.Dict, ast.Starred)):
            todo.extend(ast.iter_child_nodes(node))
    return found


class _AddedBy(ast.expr):
    """What a call of a function of the suite adds to a list it is given, as an expression of
    the test (a version of the list is ``messages + <this>``): the call, and the index of the
    list among its positional arguments (:func:`_handed_to_adder`)."""

    _fields = ("call",)

    def __init__(self, call: ast.Call, index: int) -> None:
        super().__init__()
        self.call = call
        self.index = index
        ast.copy_location(self, call)


def _handed_to_adder(stmt: ast.stmt, lists: Collection[str]) -> tuple[str, ast.Name, ast.expr] | None:
    """``add_question(messages, case)`` as a statement: a call of a function of the module
    (a name, or a module's attribute: ``prompts.add_question``) given one of ``lists`` as a
    positional argument, once; the list's name, its node, and what the call adds to it
    (:class:`_AddedBy`, worked out from the function's source when it only adds to it:
    :func:`_adder`). None otherwise."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if not isinstance(call, ast.Call) or _is_ask(call) or not isinstance(
            call.func, (ast.Name, ast.Attribute)):
        return None
    handed = [(i, a) for i, a in enumerate(call.args)
              if isinstance(a, ast.Name) and a.id in lists]
    named = [n for n in ast.walk(call) if isinstance(n, ast.Name) and n.id in lists]
    if len(handed) != 1 or len(named) != 1 or any(
            isinstance(a, ast.Starred) for a in call.args):
        return None  # (the list twice, or in another argument: not read)
    index, node = handed[0]
    assert isinstance(node, ast.Name)
    return node.id, node, _AddedBy(call, index)


def _item_set(stmt: ast.stmt, dicts: Collection[str]) -> tuple[str, ast.Name, ast.expr] | None:
    """``name["key"] = value`` as a statement, of one of ``dicts``: the name, its node, and
    what it puts in as a dict display (``{"key": value}``); None otherwise."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
        return None
    target = stmt.targets[0]
    if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
            and target.value.id in dicts and isinstance(target.slice, ast.Constant)
            and type(target.slice.value) is str):
        return None
    what = ast.copy_location(ast.Dict(keys=[target.slice], values=[stmt.value]), stmt.value)
    return target.value.id, target.value, what


def _merge(before: ast.expr, what: ast.expr) -> ast.expr:
    """``{**before, **what}`` (a dict with an item set), located where ``what`` is."""
    return ast.copy_location(ast.Dict(keys=[None, None], values=[before, what]), what)


def _fresh_dict(value: ast.expr) -> bool:
    """Whether ``value`` makes a dict of its own (:func:`_fresh_list`'s, for a dict): a dict
    display or comprehension, ``dict(...)``, or a copy."""
    if isinstance(value, (ast.Dict, ast.DictComp)):
        return True
    if not isinstance(value, ast.Call):
        return False
    if isinstance(value.func, ast.Name):
        return value.func.id == "dict"
    return _fresh_list(value)  # BASE.copy(), copy.copy(BASE), copy.deepcopy(BASE)


def _assigned(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """``name = value`` / ``name: T = value`` (name, value), or ``name += value`` (name,
    ``name + value``: ``name`` read as it was before); (None, None) otherwise."""
    if (isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add)
            and isinstance(stmt.target, ast.Name)):
        name = stmt.target.id
        return name, ast.copy_location(ast.BinOp(
            left=_load(name, stmt.value), op=ast.Add(), right=stmt.value), stmt.value)
    return _simple_assignment(stmt)


class _IfValues(NamedTuple):
    """What an ``if`` of the body's top level leaves in the names it assigns and the lists it
    adds to (:func:`_values_under_if`)."""

    values: dict[str, ast.expr]  # name -> ``<after its body> if <test> else <after its else>``
    assigned: Counter[str]  # the bindings it makes
    adds: list[ast.Name]  # the ``name`` nodes of its ``name.append(...)`` / ``.extend(...)``


def _values_under_if(stmt: ast.stmt, lists: Collection[str],
                     dicts: Collection[str] = ()) -> _IfValues | None:
    """An ``if`` (``elif``, ``else``) whose branches only add to some of ``lists``
    (:func:`_added`) or set items of some of ``dicts`` (:func:`_item_set`), assign names
    (:func:`_assigned`, tuples of names too), hold ``if``s
    that do, or ``pass``: what each name and list holds after it, written with what they held
    before it (the statement is read where it ends, where those are read as they were before
    it): on each way through, a name set on the way is read as it was set there (``ctx =
    case.meta["context"]``, then ``messages.append({"content": ctx})``), ``+=`` adds to the
    value so far, and an ``if`` on the way is ``<after its body> if <test> else <after its
    else>``. None otherwise (or when a comprehension or ``lambda`` in it binds one of those
    names: what it reads there is its own)."""
    if not isinstance(stmt, ast.If):
        return None
    assigned: Counter[str] = Counter()
    adds: list[ast.Name] = []

    def walk(block: list[ast.stmt], values: dict[str, ast.expr]) -> dict[str, ast.expr] | None:
        values = dict(values)
        for child in block:
            added = _added(child, lists)
            item_set = _item_set(child, dicts)
            pairs = _assigned_names(child)
            found = added if added is not None else item_set
            if found is not None:
                name, node, what = found
                item = _substituted(what, values)
                if item is None:
                    return None
                before = values.get(name) or _load(name, what)
                values[name] = _plus(before, item) if added else _merge(before, item)
                adds.append(node)
            elif pairs is not None:
                if any(target in lists or target in dicts for target, _ in pairs):
                    return None
                news: dict[str, ast.expr] = {}
                for target, value in pairs:  # (a, b = b, a: the values before the statement)
                    aug = isinstance(child, ast.AugAssign)
                    read = _substituted(_right(child) if aug else value, values)
                    if read is None:
                        return None
                    news[target] = ast.copy_location(ast.BinOp(
                        left=values.get(target) or _load(target, read), op=ast.Add(),
                        right=read), read) if aug else read
                    assigned[target] += 1
                values.update(news)
            elif isinstance(child, ast.If):
                test = _substituted(child.test, values)
                body, orelse = walk(child.body, values), walk(child.orelse, values)
                if test is None or body is None or orelse is None:
                    return None
                for name in dict.fromkeys([*body, *orelse]):
                    before = values.get(name) or _load(name, child.test)
                    values[name] = ast.copy_location(ast.IfExp(
                        test=test, body=body.get(name, before), orelse=orelse.get(name, before)
                    ), child.test)
            elif not isinstance(child, ast.Pass):
                return None
        return values

    after = walk([stmt], {})
    if not after:
        return None
    return _IfValues(after, assigned, adds)


class _LoopValues(NamedTuple):
    """What a ``for`` loop that only adds leaves in the lists and strings it adds to
    (:func:`_built_in_a_loop`)."""

    values: dict[str, ast.expr]  # name -> ``name + [<item> for ...]`` / ``name + "".join(...)``
    strings: list[str]  # each ``+=`` of a name it adds to (bindings, as :class:`_Reader` counts)
    adds: list[ast.Name]  # the ``name`` nodes of its appends and extends


_EACH = "_modelrollout_each"  # the name a turn's items are gone over by (_built_in_a_loop)


def _built_in_a_loop(stmt: ast.stmt, lists: Collection[str],
                     params: Collection[str]) -> _LoopValues | None:
    """A ``for`` loop (no ``else``) whose body only adds to some of ``lists`` (``.append`` /
    ``.extend``: a few-shot example's question and answer, ``for doc in case.meta["docs"]:
    messages.append(...)``) or to names with ``+=`` (``context += f"- {doc}\\n"``), sets names
    it reads later in the same turn (``q = shot["q"].strip()``), under ``if`` / ``else`` too,
    and maybe skips the rest of a turn (``if not doc: continue``): what the loop leaves in each
    name it adds to, written with what it held before: a list, ``name + [<item> for doc in
    <items> if <condition>]`` (a turn that adds more than one item, or a list: ``name + [each
    for doc in <items> for each in <what the turn adds>]``); a ``+=``, ``name +
    "".join([<what the turn adds> for ...])``, which is what it does to a string (and not known
    for anything else). None for any other loop: one that asks, binds a parameter or its own
    target, or whose items or adds read what the loop changes (a name it adds to or sets in an
    earlier turn: it reads it as it is at that turn)."""
    if not isinstance(stmt, ast.For) or stmt.orelse or _has_ask(stmt):
        return None
    targets = {n.id for n in ast.walk(stmt.target) if isinstance(n, ast.Name)}
    inside = _bindings_in(stmt.body)  # (each += too, and the names the turn sets)
    if inside.keys() & (targets | set(params)) or _EACH in inside or _EACH in targets:
        return None
    strings: list[str] = []
    nodes: list[ast.Name] = []
    adding: set[str] = set()  # the names the loop adds to
    setting: set[str] = set()  # the names a turn sets

    def empty(name: str, at: ast.AST) -> ast.expr:
        return ast.copy_location(
            ast.List(elts=[], ctx=ast.Load()) if name in lists else ast.Constant(value=""), at)

    def local(values: dict[str, ast.expr]) -> dict[str, ast.expr]:
        """The names the turn has set so far, and their values (not what it has added)."""
        return {name: value for name, value in values.items() if name not in adding}

    def walk(block: list[ast.stmt], values: dict[str, ast.expr]) -> dict[str, ast.expr] | None:
        """What one turn has added to each name by the end of ``block`` (or set it to)."""
        values = dict(values)
        for index, child in enumerate(block):
            added = _added(child, lists)
            if added is not None:  # messages.append(item) / .extend(items)
                name, node, what = added
                item = _substituted(what, local(values))
                if item is None:
                    return None
                values[name] = item if name not in values else _plus(values[name], item)
                adding.add(name)
                nodes.append(node)
            elif (isinstance(child, ast.AugAssign) and isinstance(child.op, ast.Add)
                  and isinstance(child.target, ast.Name) and child.target.id not in lists):
                name = child.target.id  # context += ...
                item = _substituted(child.value, local(values))
                if item is None or (name in values and name not in adding):
                    return None  # (set in the turn, then added to: not read)
                values[name] = item if name not in values else _plus(values[name], item)
                adding.add(name)
                strings.append(name)
            elif isinstance(child, ast.If) and len(child.body) == 1 and (
                    isinstance(child.body[0], ast.Continue)):  # if not doc: continue (elif ...)
                rest = ast.copy_location(ast.If(test=_negated(child.test), body=[
                    *child.orelse, *block[index + 1:]], orelse=[]), child)
                return walk([rest], values) if rest.body else values
            elif isinstance(child, ast.If):
                test = _substituted(child.test, local(values))
                body, orelse = walk(child.body, values), walk(child.orelse, values)
                if test is None or body is None or orelse is None:
                    return None
                for name in dict.fromkeys([*body, *orelse]):
                    before = values.get(name) or (
                        empty(name, child) if name in adding else _load(name, child))
                    values[name] = ast.copy_location(ast.IfExp(
                        test=test, body=body.get(name, before), orelse=orelse.get(name, before)
                    ), child.test)
            elif not isinstance(child, ast.Pass):
                target, value = _simple_assignment(child)  # q = shot["q"]: read where it is
                if target is None or value is None or target in lists:
                    return None
                read = _substituted(value, local(values))
                if read is None or target in adding:
                    return None
                values[target] = read
                setting.add(target)
        return values

    turn = walk(stmt.body, {})
    if not turn or not adding or adding & setting:  # (set in one branch, added to in another)
        return None
    # a name the loop adds to or sets, or that it changes (an add the walk did not take),
    # read by its items or by what a turn adds: as it was at that turn, not before the loop
    changed = adding | inside.keys()
    if any(isinstance(n, ast.Name) and n.id in changed for node in (
            stmt.iter, *(turn[name] for name in adding)) for n in ast.walk(node)):
        return None
    values: dict[str, ast.expr] = {}
    for name in adding:
        each, conditions = turn[name], []
        if isinstance(each, ast.IfExp) and ast.dump(each.orelse) == ast.dump(empty(name, each)):
            conditions, each = [each.test], each.body  # if ...: messages.append(item)
        if name in lists and isinstance(each, ast.List) and len(each.elts) == 1 and (
                not isinstance(each.elts[0], ast.Starred)):
            generators = [ast.comprehension(target=stmt.target, iter=stmt.iter,
                                            ifs=conditions, is_async=0)]
            element = each.elts[0]
        elif name in lists:  # a turn's items, gone over
            generators = [
                ast.comprehension(target=stmt.target, iter=stmt.iter, ifs=conditions,
                                  is_async=0),
                ast.comprehension(target=ast.Name(id=_EACH, ctx=ast.Store()), iter=each,
                                  ifs=[], is_async=0)]
            element = ast.Name(id=_EACH, ctx=ast.Load())
        else:
            generators = [ast.comprehension(target=stmt.target, iter=stmt.iter,
                                            ifs=conditions, is_async=0)]
            element = each
        made: ast.expr = ast.copy_location(ast.ListComp(elt=element, generators=generators),
                                           each)
        if name not in lists:
            made = ast.copy_location(ast.Call(
                func=ast.Attribute(value=ast.Constant(value=""), attr="join", ctx=ast.Load()),
                args=[made], keywords=[]), each)
        values[name] = _plus(_load(name, stmt), made)
    return _LoopValues(values, strings, nodes)


def _assigned_names(stmt: ast.stmt) -> list[tuple[str, ast.expr]] | None:
    """The names a statement assigns and their values: :func:`_assigned`'s, or ``a, b = x,
    y`` (a tuple or list of names, of as many values, no ``*``); None for any other."""
    target, value = _assigned(stmt)
    if target is not None and value is not None:
        return [(target, value)]
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], (ast.Tuple, ast.List))
            and isinstance(stmt.value, (ast.Tuple, ast.List))
            and len(stmt.targets[0].elts) == len(stmt.value.elts)
            and all(isinstance(t, ast.Name) for t in stmt.targets[0].elts)
            and not any(isinstance(v, ast.Starred) for v in stmt.value.elts)):
        names = [t.id for t in stmt.targets[0].elts if isinstance(t, ast.Name)]
        if len(set(names)) == len(names):
            return list(zip(names, stmt.value.elts, strict=True))
    return None


def _right(stmt: ast.stmt) -> ast.expr:
    """What an assignment reads: its value (for ``+=``, the right side only)."""
    value = getattr(stmt, "value", None)
    assert isinstance(value, ast.expr)
    return value


def _substituted(node: ast.expr, values: dict[str, ast.expr]) -> ast.expr | None:
    """``node`` with the names of ``values`` read replaced by their values; None when a
    comprehension or ``lambda`` in it binds one of them."""
    if not values or not any(isinstance(n, ast.Name) and n.id in values for n in ast.walk(node)):
        return node
    if _bindings_in([ast.Expr(value=node)]).keys() & values.keys():
        return None

    class Put(ast.NodeTransformer):
        def visit_Name(self, name: ast.Name) -> ast.expr:
            value = values.get(name.id) if isinstance(name.ctx, ast.Load) else None
            return name if value is None else value

    return Put().visit(copy.deepcopy(node))  # type: ignore[no-any-return]


def _load(name: str, at: ast.AST) -> ast.Name:
    """``name`` read, located at ``at`` (read at the line the value it is in is read at: what
    it held before that statement)."""
    return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), at)


def _plus(before: ast.expr, what: ast.expr) -> ast.expr:
    """``before + what`` (a list added to), located where ``what`` is."""
    return ast.copy_location(ast.BinOp(left=before, op=ast.Add(), right=what), what)


def _changes(func: ast.FunctionDef | ast.AsyncFunctionDef, bound: dict[str, int],
             read: frozenset[int], lists: Collection[str] = ()) -> dict[str, list[int]]:
    """The lines (sorted) where the function may change what a name holds, in place: an item
    or attribute of it (or of a part of it) set or deleted (``row["lang"] = "en"``, ``del
    meta["k"]``), or a method of it (or of a part of it) of :data:`_CHANGERS` called
    (``messages.append(...)``, ``case.meta.update(...)``, ``HISTORY.append(...)``; not
    ``json.dumps(...)``, which changes nothing of ``json``); and for a local name the
    function sets to a list, dict or set it builds (``messages = [...]``, or one of ``lists``:
    ``messages = list(BASE)``, then ``messages.append(...)``), where that value is
    handed on: passed to a call other than an ask, a builtin of :data:`_READ_ONLY_CALLS` or a
    method of :data:`_READ_ONLY_METHODS` (``add_turn(messages, ...)``), or assigned or
    yielded, itself or in another list, dict or set (``history = messages``), after which a
    change to it is not seen. (A name bound some other way is not read anyway:
    :class:`_Reader`.) Not the adds to a list that are read (``read``: the ids of
    their ``name`` nodes; :attr:`_Reader.versions`)."""
    parents: dict[ast.AST, ast.AST] = {}
    built: set[str] = set()  # local names set to a list, dict or set they build
    for node in ast.walk(func):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, _CONTAINERS):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            built.update(t.id for t in targets if isinstance(t, ast.Name))
    built.update(lists)
    out: dict[str, list[int]] = {}
    for node in ast.walk(func):
        if not isinstance(node, ast.Name) or not isinstance(node.ctx, ast.Load) or (
                id(node) in read):
            continue
        line = _changed_at(node, parents)
        if line is None and node.id in built and node.id in bound:
            line = _handed_on_at(node, parents)
        if line is not None:
            out.setdefault(node.id, []).append(line)
    return {name: sorted(lines) for name, lines in out.items()}


def _changed_at(node: ast.Name, parents: dict[ast.AST, ast.AST]) -> int | None:
    """The line where the name's value, or a part of it, is changed in place there (an item
    or attribute set or deleted, a method of :data:`_CHANGERS` called on it); None if not."""
    top: ast.expr = node
    while True:
        parent = parents.get(top)
        if isinstance(parent, (ast.Attribute, ast.Subscript)) and parent.value is top:
            if not isinstance(parent.ctx, ast.Load):
                return parent.lineno  # row["lang"] = ..., del row["k"], row.text += ...
            top = parent
        elif isinstance(parent, ast.Call) and parent.func is top and top is not node:
            if isinstance(top, ast.Attribute) and top.attr in _CHANGERS:
                return parent.lineno
            if _is_ask(parent):
                return None
            top = parent  # (what it returns may be a part of it: meta.get("turns").append)
        else:
            return None


def _handed_on_at(node: ast.Name, parents: dict[ast.AST, ast.AST]) -> int | None:
    """The line where the name's value itself is handed on there: passed to a call that is
    not an ask, a builtin of :data:`_READ_ONLY_CALLS` or a method of :data:`_READ_ONLY_METHODS`,
    assigned, yielded, or put in a list, dict or set (or an ``and`` / ``or`` / ``... if ...
    else ...`` that is); None if not (a ``return`` too: nothing of the function runs after
    it)."""
    child: ast.AST = node
    parent = parents.get(node)
    while isinstance(parent, (ast.BoolOp, ast.IfExp, ast.List, ast.Tuple, ast.Set, ast.Dict,
                              ast.Starred, ast.keyword)) and not (
            isinstance(parent, ast.IfExp) and parent.test is child):
        child, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Call) and parent.func is not child:
        if _is_ask(parent) or (isinstance(parent.func, ast.Name)
                               and parent.func.id in _READ_ONLY_CALLS) or (
                isinstance(parent.func, ast.Attribute)
                and parent.func.attr in _READ_ONLY_METHODS):
            return None
        return parent.lineno
    if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr,
                           ast.Yield, ast.YieldFrom)) and getattr(
            parent, "value", None) is child:
        return parent.lineno  # (not a return: nothing of the function runs after it)
    return None


def _module_name(expr: Expr) -> bool:
    """A name of the module, or an attribute of one (``prompts.build``)."""
    return expr[0] == "global" or (expr[0] == "attr" and _module_name(expr[1]))


def _simple_assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """``name = value`` / ``name: T = value``: (name, value); otherwise (None, None)."""
    if (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    ):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id, stmt.value
    return None, None


def _binding_counts(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, int]:
    """How many times the function's body binds each name: assigned (``=``, ``+=``, ``for``,
    ``with ... as``, ``:=``, ``del``), imported, defined, caught, matched, declared global, or
    a parameter of a function or lambda defined in it."""
    return _bindings_in(func.body)


def _bindings_in(statements: Sequence[ast.stmt]) -> dict[str, int]:
    """How many times ``statements`` bind each name (:func:`_binding_counts`)."""
    counts: dict[str, int] = {}
    for node in (n for stmt in statements for n in ast.walk(stmt)):
        names: list[str] = []
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names = [node.id]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names = list(node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names = [node.name]
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names = [node.rest]
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _children(expr: Expr) -> tuple[Expr, ...]:
    kind = expr[0]
    if kind in ("attr", "item", "star", "flat"):
        return (expr[1],)
    if kind == "index":
        return (expr[1], expr[2])
    if kind == "slice":
        return (expr[1],)
    if kind == "mod":
        return (expr[1], expr[2])
    if kind == "if":
        return (expr[1], expr[2], expr[3])
    if kind == "when":
        return (expr[1], expr[2])
    if kind == "bool":
        return tuple(expr[2])
    if kind == "not":
        return (expr[1],)
    if kind == "cmp":
        return (expr[2], expr[3])
    if kind in ("fstr", "list"):
        return tuple(expr[1])
    if kind in ("add", "div"):
        return (expr[1], expr[2])
    if kind == "arith":
        return (expr[2], expr[3])
    if kind == "each":
        return (expr[2], expr[4])
    if kind == "turn":
        return (expr[4],)
    if kind == "comp":
        return (expr[2], expr[3], *expr[4])
    if kind == "fmt":
        return (expr[1],) if expr[3] is None else (expr[1], expr[3])
    if kind == "method":
        return (expr[1], *expr[3], *(value for _, value in expr[4]))
    if kind == "call":
        return (expr[1], *expr[2], *(value for _, value in expr[3]))
    if kind == "added_by":
        return (expr[1], *expr[2], *(value for _, value in expr[3]))
    if kind == "helper":  # (its value reads the helper's parameters, not the test's)
        return (expr[1], *expr[2], *(value for _, value in expr[3]))
    if kind == "dict":
        return tuple(value for _, value in expr[1])
    return ()  # param, global, const


def params_read(expr: Expr) -> set[str]:
    """The parameters ``expr`` reads."""
    if expr[0] == "param":
        return {expr[1]}
    if expr[0] in ("each", "comp"):  # the loop's target is no parameter of the test
        target = {expr[1]} if isinstance(expr[1], str) else set(expr[1])
        inside = set().union(*(params_read(child) for child in _children(expr)[1:]))
        return params_read(expr[2]) | (inside - target)
    if expr[0] == "turn":  # (nor is the name of a turn's reply)
        return params_read(expr[4]) - {expr[3]}
    return set().union(*(params_read(child) for child in _children(expr)))


@functools.lru_cache(maxsize=256)
def _function_def(func: Any) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The function's definition, parsed from its source (once: every reading shares it)."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    for _ in range(3):
        try:
            tree = ast.parse(source)
            break
        except SyntaxError:
            return None
        except SystemError:  # CPython 3.11's AST builder, run by two threads at once (an
            continue  # import's assertion rewriting in another): "recursion depth mismatch"
    else:
        return None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return defs[0] if defs else None


Asks = tuple[tuple[tuple[Expr, Keywords | None], ...], frozenset[str]]


@functools.lru_cache(maxsize=256)
def source_asks(func: Any) -> Asks:
    """:func:`read_asks` of the test function's source; for one without an ask of its own,
    the first ask of the helper it calls first (:func:`_helper_ask`)."""
    fdef = _function_def(func)
    asks, rebound = read_asks(fdef)
    helper = _helper_of(func)
    return ((helper[:2],) if helper is not None else asks), rebound


@functools.lru_cache(maxsize=256)
def _helper_of(func: Any) -> tuple[Expr, Keywords | None, tuple[Role, ...]] | None:
    """:func:`_helper_ask` of a test function without an ask of its own."""
    fdef = _function_def(func)
    if fdef is None or _ask_nodes(fdef):
        return None
    return _helper_ask(fdef, module_names(func))


class _HelperCall(NamedTuple):
    """A call of a helper whose asks are read (:func:`_helper_call`)."""

    function: Any  # a types.FunctionType (so typed, mypy would read it as a method)
    head: tuple[Any, ...]  # ("helper", callee, args, kwargs): an ask's value is added to it
    passed: dict[str, Any]  # the helper's parameter -> the test's argument (an ast.expr)
    reader: _Reader  # the test's


def _statement_call(stmt: ast.stmt) -> ast.Call | None:
    """The call a statement is (``x = f(...)``, ``f(...)``), or an ``assert`` on what it
    returns (``assert f(...).ok``, ``assert f(...) is not None``, ``assert
    f(...).candidate.text != ""``, ``assert not f(...)``: the call is what the statement does
    first); None otherwise."""
    value = getattr(stmt, "value", None) if isinstance(stmt, _STATEMENTS) else (
        stmt.test if isinstance(stmt, ast.Assert) else None)
    while True:
        if isinstance(value, (ast.Attribute, ast.Subscript)):
            value = value.value  # assert ask_with(rollout.candidate, case).ok: the call's
        elif isinstance(value, ast.Compare) and isinstance(stmt, ast.Assert):
            value = value.left  # (its left side is worked out first)
        elif isinstance(value, ast.UnaryOp) and isinstance(stmt, ast.Assert):
            value = value.operand
        else:
            return value if isinstance(value, ast.Call) else None


def _model_fixture(node: ast.expr, reader: _Reader) -> bool:
    """Whether ``node`` is a model fixture of the test (``rollout``, ``rollout.candidate``,
    ``stable``, ...)."""
    return bool(_receiver_roles(ast.Attribute(value=node, attr="ask", ctx=ast.Load()), reader))


def _helper_call(call: ast.Call, reader: _Reader, names: Any) -> _HelperCall | None:
    """The call of a function of the module (or one it imports) that asks
    (:func:`_helper_fdef`), with every argument read (a model fixture read as
    ``("model",)``: not a value known ahead, nothing read of it is) and bound as the call
    binds them; None otherwise (a ``*args`` or ``**kwargs`` among them)."""
    callee = reader.read(call.func, call.lineno)
    if callee is None or not _module_name(callee):
        return None
    function = evaluate(callee, {}, names)
    if type(function) is not types.FunctionType or _helper_fdef(function) is None:
        return None
    model: Expr = ("model",)
    args = [model if _model_fixture(a, reader) else reader.read(a, call.lineno)
            for a in call.args]
    kwargs = [(k.arg, model if _model_fixture(k.value, reader) else reader.read(
        k.value, call.lineno)) for k in call.keywords]
    if any(a is None for a in args) or any(k is None or v is None for k, v in kwargs):
        return None
    try:
        passed = inspect.signature(function).bind(
            *call.args, **{k.arg: k.value for k in call.keywords if k.arg})
    except TypeError:
        return None
    return _HelperCall(function, ("helper", callee, tuple(args), tuple(kwargs)),
                       dict(passed.arguments), reader)


def _helper_roles(helper: _HelperCall, receiver: tuple[str, str | None]) -> tuple[Role, ...]:
    """The models a helper's ask on ``receiver`` (its parameter, and ``"stable"`` /
    ``"candidate"`` of ``model.candidate.ask``, or None) asks: those of the model fixture the
    test passes that parameter; () when it is passed something else."""
    model = helper.passed.get(receiver[0])
    if not isinstance(model, ast.expr):
        return ()
    on = model if receiver[1] is None else ast.Attribute(
        value=model, attr=receiver[1], ctx=ast.Load())
    return _receiver_roles(ast.Attribute(value=on, attr="ask", ctx=ast.Load()), helper.reader)


def _in_helper(helper: _HelperCall, prompt: Expr, keywords: Keywords | None,
               ) -> tuple[Expr, Keywords | None]:
    """A helper's ask's prompt and keyword arguments as the test's expressions."""
    head = helper.head
    return (*head, prompt), None if keywords is None else tuple(
        (k, (*head, v)) for k, v in keywords)


def _helper_ask(fdef: ast.FunctionDef | ast.AsyncFunctionDef,
                names: Any) -> tuple[Expr, Keywords | None, tuple[Role, ...]] | None:
    """The first ask of the function of the module the test calls first (``pair =
    ask_support(rollout, case, style="brief")``, ``assert ask_with(rollout.candidate,
    case).ok``): a statement of the test's body, with only statements before it that call
    nothing of a module's name (or a builtin) and may not end the test; whose arguments are
    read; a plain ``def`` (:func:`_helper_asks_first`) that asks a model fixture the test
    passes it. Read as ``("helper", function, args, kwargs, value)``: the helper's ``value``,
    its parameters bound to the arguments as a call binds them; with the models it asks.
    None otherwise."""
    helper = _first_helper_call(fdef, names)
    found = _helper_asks_first(helper[0].function) if helper is not None else None
    if helper is None or found is None:
        return None
    roles = _helper_roles(helper[0], found[2])
    if not roles:
        return None  # what it asks is not a model fixture of the test's
    return (*_in_helper(helper[0], found[0], found[1]), roles)


def _first_helper_call(fdef: ast.FunctionDef | ast.AsyncFunctionDef,
                       names: Any) -> tuple[_HelperCall, int] | None:
    """The test's first call of a function of a module, when it is a helper that asks
    (:func:`_helper_call`), in a statement of the test's body with only statements before it
    that call nothing of a module's name (or a builtin) and may not end the test, but for an
    ``if`` that passes no model to a call (one that ends the test is read for each item:
    :func:`ends_before_asking`); with the index of that statement. None otherwise."""
    reader = _Reader(fdef)
    for index, stmt in enumerate(fdef.body):
        call = _statement_call(stmt)
        callee = reader.read(call.func, call.lineno) if call is not None else None
        if call is not None and callee is not None and _module_name(callee):
            helper = _helper_call(call, reader, names)
            return None if helper is None else (helper, index)
        guard = isinstance(stmt, ast.If) and not _has_ask(stmt)  # read for each item
        if (not (isinstance(stmt, (*_STATEMENTS, ast.Assert)) or guard)
                or (_may_end_early(stmt) and not guard) or (
                    _passes_a_model(stmt, reader) if guard else _calls_a_module(stmt, reader))):
            return None  # it may not get to the call, or another call of the module's asks
    return None


def _calls_a_module(stmt: ast.stmt, reader: _Reader) -> bool:
    """Whether the statement calls a function of a module's name (or a builtin)."""
    return any(isinstance(c, ast.Call) and _module_name(
        reader.read(c.func, c.lineno) or ("const", None)) for c in ast.walk(stmt))


def _passes_a_model(stmt: ast.stmt, reader: _Reader) -> bool:
    """Whether the statement calls something with a model fixture of the test (an argument,
    or a method of it): a call that may ask. A call given none cannot."""
    return any(
        isinstance(c, ast.Call) and any(_model_fixture(a, reader) for a in (
            *c.args, *(k.value for k in c.keywords),
            *([c.func.value] if isinstance(c.func, ast.Attribute) else [])))
        for c in ast.walk(stmt))


@functools.lru_cache(maxsize=256)
def _helper_branching(func: Any) -> tuple[_HelperCall, Branching, bool] | None:
    """For a test function without an ask of its own whose first call of a module's function
    (:func:`_first_helper_call`) is a helper whose first ask is under an ``if``
    (:func:`_branching_of`) and whose every ask is on a model the test passes it: that call,
    the helper's branching, and whether the test may ask after it (:func:`_may_ask_after`:
    then a branch that asks nothing does not make the test ask nothing). None otherwise."""
    found = _test_helper(func)
    if found is None:
        return None
    helper, asks_after, (helper_def, helper_reader, _) = found
    branching = _branching_of(helper_def)
    if branching is None or not all(
            (receiver := _param_receiver(call, helper_reader)) is not None
            and _helper_roles(helper, receiver) for call in _ask_nodes(helper_def)):
        return None
    return helper, branching, asks_after


@functools.lru_cache(maxsize=256)
def _test_helper(
    func: Any,
) -> tuple[_HelperCall, bool, tuple[ast.FunctionDef, _Reader, list[ast.Call]]] | None:
    """For a test function without an ask of its own: its first call of a helper that asks
    (:func:`_first_helper_call`), whether the test may ask after it (:func:`_may_ask_after`),
    and the helper's definition (:func:`_helper_fdef`); None when it has no such call."""
    fdef = _function_def(func)
    if fdef is None or _ask_nodes(fdef):
        return None
    found = _first_helper_call(fdef, module_names(func))
    helper_def = _helper_fdef(found[0].function) if found is not None else None
    if found is None or helper_def is None:
        return None
    return found[0], _may_ask_after(fdef, found[1], found[0].reader), helper_def


def _may_ask_after(fdef: ast.FunctionDef | ast.AsyncFunctionDef, index: int,
                   reader: _Reader) -> bool:
    """Whether a statement of the test's body after the one at ``index`` may ask: it passes
    a model to a call (:func:`_passes_a_model`)."""
    return any(_passes_a_model(stmt, reader) for stmt in fdef.body[index + 1:])


def _helper_reached(func: Any, params: dict[str, Any], names: Any) -> Any:
    """:func:`reached_ask` of a test whose first ask is a helper's under an ``if``
    (:func:`_helper_branching`): the helper's ask this item reaches, as the test's
    expressions; :data:`UNTOLD` when the branch it takes cannot be told (or what the helper is
    passed is not known); None when the helper's ask there is not read."""
    found = _helper_branching(func)
    if found is None:
        return None
    helper, branching, asks_after = found
    bound = _helper_params(helper.head, params, names)
    if bound is MISSING:
        return UNTOLD
    reached = reached_in(branching, bound[1], bound[0].__globals__)
    if reached is NOT_ASKED:
        return None if asks_after else NOT_ASKED
    if reached is None or reached is UNTOLD:
        return reached
    receiver = _param_receiver(reached[2], branching[0])
    roles = _helper_roles(helper, receiver) if receiver is not None else ()
    return (*_in_helper(helper, *reached[:2]), frozenset(roles) or None)


def _helper_fdef(function: types.FunctionType,
                 ) -> tuple[ast.FunctionDef, _Reader, list[ast.Call]] | None:
    """A helper's definition, its reader and its asks (:func:`_ask_calls`), when it is a
    plain ``def`` (no decorator, no free names, not a generator) that asks and binds none of
    its parameters again; None otherwise."""
    fdef = _function_def(function)
    if (
        not isinstance(fdef, ast.FunctionDef) or fdef.decorator_list
        or function.__code__.co_freevars
        or any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(fdef))
    ):
        return None
    calls = _ask_calls(fdef)
    reader = _Reader(fdef)
    if not calls or reader.args & reader.bound.keys():
        return None
    return fdef, reader, calls


def _param_receiver(call: ast.Call, reader: _Reader) -> tuple[str, str | None] | None:
    """The parameter an ask is on (``model`` of ``model.ask``; ``("rollout", "candidate")``
    of ``rollout.candidate.ask``); None when it is on something else."""
    receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
    which = None
    if isinstance(receiver, ast.Attribute) and receiver.attr in ("stable", "candidate"):
        which = receiver.attr  # rollout.candidate.ask
        receiver = receiver.value
    if isinstance(receiver, ast.Name) and receiver.id in reader.args:
        return receiver.id, which
    return None


@functools.lru_cache(maxsize=256)
def _helper_asks_first(
    function: types.FunctionType,
) -> tuple[Expr, Keywords | None, tuple[str, str | None]] | None:
    """A helper's first ask, read from its source, when the helper makes it whatever happens,
    and the parameter it asks (:func:`_param_receiver`): a plain ``def``
    (:func:`_helper_fdef`) whose ask is a statement of its body (``return model.ask(...)``,
    ``pair = model.ask(...)``), or in a loop of its body read as a test's (:func:`_loop_of`:
    its first iteration's; a ``while`` retry loop, :func:`_in_a_loop`), on a parameter (or
    its ``.stable`` / ``.candidate``), with only ``name = value`` statements (or a docstring)
    before it. None otherwise."""
    found = _helper_fdef(function)
    if found is None:
        return None
    fdef, reader, calls = found
    first = calls[0]
    receiver = _param_receiver(first, reader)
    if receiver is None:
        return None
    loop = _loop_of(fdef, reader, first)
    for stmt in fdef.body:
        value = getattr(stmt, "value", None) if isinstance(stmt, (*_STATEMENTS, ast.Return)) else None
        if value is first:
            prompt = reader.read(first.args[0], first.lineno)
            return None if prompt is None else (prompt, _keywords(reader, first), receiver)
        if (loop is not None and stmt is loop.stmt) or (
                isinstance(stmt, ast.While) and any(n is first for n in ast.walk(stmt))):
            read = _read_ask(fdef, reader, first, 0)  # its first iteration's, as a test's
            return None if read is None else (*read, receiver)
        if not (_is_docstring(stmt) or _simple_assignment(stmt)[0] is not None) or (
                _may_end_early(stmt)):
            return None
    return None


@functools.lru_cache(maxsize=256)
def _helper_later(
    function: types.FunctionType,
) -> tuple[tuple[tuple[str, str | None], Expr, Keywords], ...]:
    """A helper's asks after its first one that it always makes once it gets there, read as
    a test's (:func:`_later_in`; a ``return model.ask(...)`` among them), each with the
    parameter it asks (:func:`_param_receiver`); () when its first ask is not read."""
    found = _helper_fdef(function)
    if found is None or _helper_asks_first(function) is None:
        return ()
    fdef, reader, calls = found
    out = []
    for call, prompt, keywords in _later_in(fdef, reader, calls, (*_STATEMENTS, ast.Return)):
        receiver = _param_receiver(call, reader)
        if receiver is not None:
            out.append((receiver, prompt, keywords))
    return tuple(out)


def _helper_asks(helper: _HelperCall, first: bool) -> list[LaterAsk]:
    """The asks of a helper's call read in full (with its first one when ``first``), as the
    test's, each with the models it asks (none left out: one on anything else than a model
    the test passes is not)."""
    found = _helper_asks_first(helper.function)
    asks: list[tuple[tuple[str, str | None], Expr, Keywords | None]] = []
    if first and found is not None:
        asks.append((found[2], found[0], found[1]))
    asks.extend(_helper_later(helper.function))
    out: list[LaterAsk] = []
    for receiver, prompt, keywords in asks:
        roles = _helper_roles(helper, receiver)
        expr, read = _in_helper(helper, prompt, keywords)
        if roles and read is not None:
            out.append((roles, expr, read))
    return out


def read_asks(fdef: ast.FunctionDef | ast.AsyncFunctionDef | None) -> Asks:
    """From a test function's definition: what each ``.ask(...)`` passes first when it can be
    read, in source order, once each with the keyword arguments of the first ask on it (None
    when it passes more than the prompt and keywords, or a keyword that cannot be read); and
    the parameters the function binds again (then what it asks may not be what was read)."""
    if fdef is None:
        return (), frozenset()
    reader = _Reader(fdef)
    first: dict[Expr, Keywords | None] = {}
    for node in _ask_calls(fdef):
        read = _read_ask(fdef, reader, node, 0)
        if read is not None and read[0] not in first:
            first[read[0]] = read[1]
    # (a parameter assigned only at the top of the body, or under an if there, is read as
    # it is at each line: not one of these)
    rebound = frozenset(reader.args & reader.bound.keys() - reader.single.keys()
                        - reader.versions.keys())
    return tuple(first.items()), rebound


def _read_ask(fdef: ast.FunctionDef | ast.AsyncFunctionDef, reader: _Reader, node: ast.Call,
              iteration: int) -> tuple[Expr, Keywords | None] | None:
    """An ask's prompt and keyword arguments (:func:`_keywords`), read in the iteration
    ``iteration`` of the loop it is in when it is in one (:func:`_loop_of`); None when its
    prompt is not read."""
    found = _loop_of(fdef, reader, node)
    if found is None:
        guards: list[Expr] = []
        if _in_a_loop(fdef, node, guards):
            return None  # a loop not read: it may not make the ask (nor more than once)
        expr = reader.read(node.args[0], node.lineno)
        if expr is None:
            return None
        for guard in guards:  # a while loop entered for some items only
            expr = ("when", guard, expr)
        return expr, _keywords(reader, node)
    if iteration and not found.conditions:
        turn = _conversation_turn(reader, found, node, iteration)
        if turn is not None:  # a conversation's later turn: its list holds the turns before
            return turn
    if iteration or found.conditions:  # a later iteration, or the first one that passes the
        # loop's conditions: anything the loop changes, it may have changed before
        reader = reader.spanning(found.stmt)
        found = found._replace(reader=found.reader.spanning(found.stmt))
    items = _loop_items(reader, found)
    target, inner = found.target, found.reader
    expr = inner.read(node.args[0], node.lineno)
    if items is None or expr is None:
        return None
    keywords = _keywords(inner, node)

    def each(value: Expr) -> Expr:
        return ("each", target, items, iteration, value)

    return each(expr), None if keywords is None else tuple((k, each(v)) for k, v in keywords)


REPLIES = "\0replies"  # the parameter a later turn's replies are read from (:func:`_turn`)
# REPLIES when counting the calls a test may make: each turn whose replies it reads is there
ANY_REPLY: Any = object()


def _conversation_turn(reader: _Reader, found: _Loop, node: ast.Call,
                       iteration: int) -> tuple[Expr, Keywords | None] | None:
    """The ask ``node`` in the iteration ``iteration`` (> 0) of a conversation: a ``for``
    loop (no ``else``, no conditions) that asks one list of the test's own (``messages``) on
    each turn and whose body only adds to it (``messages.append(...)`` / ``.extend(...)``)
    before and after the ask, the ask's reply bound to a name once (``pair =
    rollout.ask(messages)``, ``reply = candidate.ask(messages)``) that the adds after it may
    read (``{"role": "assistant", "content": pair.candidate.text}``), names it sets once
    (``text = pair.candidate.text``, read where the adds read them), and statements that
    leave the list alone (:func:`_leaves_alone`: the reply's checks, ``assert``). What it
    asks is the list as the loop found it, then each earlier turn's adds, then this turn's
    adds before the ask; an add after the ask that reads the reply is read as a ``("turn",
    loop, j, name, value)`` of the turn ``j``'s reply (only known once that reply is in:
    prefetch sends it then). None for any other loop, or an add that reads the list, the
    turn's reply before it is asked, or a name the loop binds or changes."""
    loop = found.stmt
    if (not isinstance(loop, ast.For) or loop.orelse or len(node.args) != 1
            or not isinstance(node.args[0], ast.Name)):
        return None
    name = node.args[0].id
    if name not in reader.loop_adds or sum(_is_ask(n) for n in ast.walk(loop)) != 1:
        return None
    target = found.target
    targets = {target} if isinstance(target, str) else set(target)
    before: list[ast.expr] = []
    after: list[ast.expr] = []
    result: str | None = None  # the name the ask binds its reply to
    asked = False
    local: dict[str, ast.expr] = {}  # the names the turn sets (``text = pair.candidate.text``)
    for child in loop.body:
        if isinstance(child, _STATEMENTS) and getattr(child, "value", None) is node:
            result = None if isinstance(child, ast.Expr) else _simple_assignment(child)[0]
            if result is None and not isinstance(child, ast.Expr):
                return None  # (bound to a tuple, an attribute, several names)
            asked = True
            continue
        added = _added(child, (name,))
        set_to, value = _simple_assignment(child)
        if added is not None:  # (what it adds, with the names the turn set read as set)
            what = _substituted(added[2], local)
            if what is None:
                return None
            (after if asked else before).append(what)
        elif set_to is not None and value is not None:
            value = _substituted(value, local)
            if value is None or reader.bound.get(set_to) != 1 or set_to in reader.args or (
                    set_to in targets or set_to == name) or _may_end_early(child) or any(
                    (isinstance(n, ast.Name) and n.id == name)
                    or (isinstance(n, ast.Attribute) and n.attr in _CHANGERS)
                    for n in ast.walk(value)):
                return None  # (bound elsewhere too, or it may change what the turns read)
            local[set_to] = value
        elif not _leaves_alone(child, name):
            return None
    if not asked or (result is not None and (
            reader.bound.get(result) != 1 or result in reader.args or result in targets
            or result == name)):
        return None
    for what in (*before, *after):  # (an add that reads the list reads it as it is then)
        if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(what)):
            return None
    if result is not None and any(isinstance(n, ast.Name) and n.id == result
                                  for what in before for n in ast.walk(what)):
        return None  # the turn before's reply, read before this turn's ask
    inner = found.reader.spanning(loop)  # (what the loop changes, its adds do not read)
    items = _loop_items(reader.spanning(loop), found)
    base = reader.read(ast.copy_location(ast.Name(id=name, ctx=ast.Load()), loop), loop.lineno)
    keywords = _keywords(inner, node)
    if items is None or base is None:
        return None
    replied = inner.scoped(result) if result is not None else inner
    read_before = [inner.read(what, what.lineno) for what in before]
    read_after = [replied.read(what, what.lineno) for what in after]
    if any(expr is None for expr in (*read_before, *read_after)):
        return None
    key = ("loop", target, items)

    def each(turn: int, value: Expr) -> Expr:
        return ("each", target, items, turn, value)

    parts: list[Expr] = [("star", base)]
    for turn in range(iteration):
        parts.extend(("star", each(turn, expr)) for expr in read_before if expr is not None)
        for expr in read_after:
            assert expr is not None
            if result is not None and result in params_read(expr):
                expr = ("turn", key, turn, result, expr)
            parts.append(("star", each(turn, expr)))
    parts.extend(("star", expr) for expr in read_before if expr is not None)
    asks = each(iteration, ("list", tuple(parts)))
    return asks, None if keywords is None else tuple((k, each(iteration, v)) for k, v in keywords)


def _leaves_alone(stmt: ast.stmt, name: str) -> bool:
    """Whether a statement of a conversation's turn leaves its list ``name`` as it is and
    binds nothing: ``pass``, an ``assert`` (no walrus, no method of the list that changes
    it), a call that is not given the list (``pair.expect_language(...)``,
    ``time.sleep(...)``), does not end the test and is no method that changes a list, a dict
    or a set (``turns.append(...)``), or an ``if`` of only those. (What else it may change,
    the turns' adds and items are read as if it did: :meth:`_Reader.spanning`.)"""
    if isinstance(stmt, ast.Pass):
        return True
    if any(isinstance(n, ast.NamedExpr) for n in ast.walk(stmt)):
        return False
    if isinstance(stmt, ast.If):  # checks on some turns only (``if i == len(turns) - 1:``)
        return all(_leaves_alone(s, name) for s in (*stmt.body, *stmt.orelse))
    if isinstance(stmt, ast.Assert):
        return not any(isinstance(n, ast.Attribute) and n.attr in _CHANGERS
                       and isinstance(n.value, ast.Name) and n.value.id == name
                       for n in ast.walk(stmt))
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    return (isinstance(call, ast.Call) and not _may_end_early(stmt)
            and not (isinstance(call.func, ast.Attribute) and call.func.attr in _CHANGERS)
            and not any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(stmt)))


def replies_read(expr: Expr) -> set[tuple[Any, int]]:
    """The earlier asks whose replies ``expr`` reads, as ``(ask, turn)``: a conversation's
    turn (``("loop", target, items)``, its iteration: :func:`_conversation_turn`), or the ask
    of a prompt (``("ask", prompt, models)``, 0: :meth:`_Reader._reply`)."""
    if expr[0] == "turn":
        return {(expr[1], expr[2])} | replies_read(expr[4])
    return set().union(*(replies_read(child) for child in _children(expr)))


_LOOP_STATEMENTS = (ast.For, ast.AsyncFor, ast.While)
_LOOPS = (*_LOOP_STATEMENTS, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _in_a_loop(fdef: ast.FunctionDef | ast.AsyncFunctionDef, node: ast.Call,
               guards: list[Expr] | None = None) -> bool:
    """Whether the ask is in the body or the ``else`` of a ``for`` or ``while`` loop or in a
    comprehension's element or ``if``; but the first iteration's ask of a ``while`` whose
    condition is read as it is when the test gets to it (``while True:``, ``while tries < 3:``
    after ``tries = 0``, ``while tries < MAX_TRIES:``: see :func:`_entry_condition`), made with
    nothing before it that may end the test or the loop, under no condition (a retry loop),
    which is read as if it were not in a loop. That loop's condition, when it holds only for
    some items (it reads the case or the module's names), is added to ``guards``."""
    reader: _Reader | None = None  # (one, for the while loops)
    for loop in ast.walk(fdef):
        if isinstance(loop, ast.While):
            reader = reader or _Reader(fdef)
            entry = _first_iteration_asks(fdef, loop, node, reader)
            if entry is not None:
                if entry != _ALWAYS and guards is not None:
                    guards.append(entry)
                continue
        if isinstance(loop, _LOOP_STATEMENTS):  # (its else runs once, but only once the
            parts: list[ast.AST] = [*loop.body, *loop.orelse]  # loop has made its asks)
        elif isinstance(loop, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            parts = [loop.elt, *(c for g in loop.generators for c in g.ifs)]
        elif isinstance(loop, ast.DictComp):
            parts = [loop.key, loop.value, *(c for g in loop.generators for c in g.ifs)]
        else:
            continue
        if any(n is node for part in parts for n in ast.walk(part)):
            return True
    return False


def _first_iteration_asks(fdef: ast.FunctionDef | ast.AsyncFunctionDef, loop: ast.While,
                          node: ast.Call, reader: _Reader) -> Expr | None:
    """When the ``while`` loop makes the ask ``node`` on its first iteration once it is
    entered, whatever happens (the ask is a statement of its body, under no condition, with
    nothing before it that may end the test or the loop), the condition under which it is
    entered (:func:`_entry_condition`); None otherwise."""
    conditions: list[ast.expr] = []
    if _way_to(loop.body, node, reader, reader.scoped(()), conditions) is None or conditions:
        return None
    return _entry_condition(fdef, loop)  # (worked out only for the loop that holds the ask)


_ALWAYS: Expr = ("const", True)


def _entry_condition(fdef: ast.FunctionDef | ast.AsyncFunctionDef, loop: ast.While,
                     ) -> Expr | None:
    """The condition of ``loop`` as it is when the test first gets to it: :data:`_ALWAYS`
    when it holds for every item (``while True:``, ``while tries < 3:`` after ``tries = 0``);
    a condition that reads the test's parameters or the module's names (``while tries <
    MAX_TRIES:``, ``while tries < case.meta["tries"]:``), to be worked out for each item
    (:func:`evaluate`); ``("const", False)`` when it never holds (``tries = 3`` then ``while
    tries < 3:``: the ask is never made); None when it is not read.

    Read (:class:`_Reader`) for a ``while`` that is a statement of the test's body, from
    literals, the names the body sets before the loop in statements of their own (``tries =
    0``, ``done = False``), each bound nowhere else before it, the test's parameters that the
    body does not bind before the loop, and names of the module that the function binds
    nowhere (Python would read its own local name there)."""
    if isinstance(loop.test, ast.Constant) and loop.test.value is True:
        return _ALWAYS
    index = next((i for i, stmt in enumerate(fdef.body) if stmt is loop), None)
    if index is None:
        return None
    before = copy.copy(fdef)  # the body up to the loop: a counter bound again in it reads as
    before.body = fdef.body[:index]  # it is when the test gets there
    reader = _Reader(before)
    condition = reader.read(loop.test, loop.lineno)
    if condition is None or _globals_read(condition) & _binding_counts(fdef).keys() or (
            params_read(condition) & reader.bound.keys()):
        return None  # a local name bound later (or in the loop), a parameter bound before it
    holds = _truth(evaluate(condition, {}, None))
    if holds is MISSING:
        return condition  # (for each item)
    return _ALWAYS if holds else ("const", False)


def _globals_read(expr: Expr) -> set[str]:
    """The names of the module ``expr`` reads (as :func:`params_read` the parameters)."""
    if expr[0] == "global":
        return {expr[1]}
    return set().union(*(_globals_read(child) for child in _children(expr)))


# how many iterations of a loop of asks go ahead (its later asks, :func:`later_asks`)
LOOP_AHEAD = 16


class _Loop(NamedTuple):
    """A loop of the test's body that makes an ask on each of its iterations (:func:`_loop_of`)."""

    stmt: ast.stmt  # the statement of the test's body it is (a for, or the comprehension's)
    items: ast.expr  # what it goes over
    line: int
    reader: _Reader  # its target's names read as parameters, and the names its body assigns
    target: str | tuple[str, ...]  # a name, or the names a tuple target unpacks
    # the items it asks for: a comprehension's ifs; in a for, the ifs the ask is under and
    # the conditions of the `if ...: continue` before it (read as `not ...`)
    conditions: tuple[ast.expr, ...] = ()


def _loop_of(fdef: ast.FunctionDef | ast.AsyncFunctionDef, reader: _Reader,
             node: ast.Call) -> _Loop | None:
    """The loop of the test's body that makes the ask ``node`` on each of its iterations that
    passes its conditions; None when the ask is not in such a loop. That is a ``for``
    statement of the body (its ``else``, if any, runs after its last iteration, as the
    statements after it: ``for ...: ... break`` / ``else: pytest.fail(...)``, a retry loop)
    whose ask is a statement of its own body, or of
    the body or the ``else`` of an ``if`` there (of ``if``s in ``if``s), with nothing before it
    on the way that may end the test or the loop but ``if <condition>: continue`` (the names
    assigned once on the way read as they set them); or a list comprehension that is the value
    of a statement of the body (``pairs = [rollout.ask(p) for p in case.meta["paraphrases"] if
    p]``), of one ``for`` (and its ``if``s), whose element is the ask (or an attribute or item
    of its reply). Its target is a name or a tuple of names: a ``for`` statement's bound
    nowhere else and not a parameter (a comprehension's are its own, whatever else the test
    binds to them). A ``for`` whose ask is under a condition may end the test or itself
    (``return``, ``pytest.skip``, ``break``, ...) only after the ask, in the ask's own block:
    elsewhere it may end on an item before the first it asks for."""
    for stmt in fdef.body:
        if not any(n is node for n in ast.walk(stmt)):
            continue
        comprehension = getattr(stmt, "value", None) if isinstance(stmt, _STATEMENTS) else None
        if isinstance(comprehension, ast.ListComp):
            generator = comprehension.generators[0]
            element = comprehension.elt
            while isinstance(element, (ast.Attribute, ast.Subscript)):
                element = element.value  # rollout.ask(p).candidate.text: the ask's reply
            if len(comprehension.generators) > 1 or element is not node:
                return None
            target = _target_names(generator.target, reader, scoped=True)
            if target is None:
                return None  # (its element sees its own target, whatever else binds it)
            return _Loop(stmt, generator.iter, stmt.lineno, reader.scoped(target), target,
                         tuple(generator.ifs))
        if not isinstance(stmt, ast.For):
            return None
        target = _target_names(stmt.target, reader, scoped=False)
        if target is None:
            return None
        inner = reader.scoped(target)
        conditions: list[ast.expr] = []
        after = _way_to(stmt.body, node, reader, inner, conditions)
        if after is None:
            return None
        if conditions and any(  # an item it does not ask for may end the test or the loop
            _may_end_early(s) or _breaks(s) for s in _besides(stmt.body, after)
        ):
            return None
        return _Loop(stmt, stmt.iter, stmt.lineno, inner, target, tuple(conditions))
    return None


def _way_to(block: list[ast.stmt], node: ast.Call, reader: _Reader, inner: _Reader,
            conditions: list[ast.expr]) -> list[ast.stmt] | None:
    """Follows the statements of a loop's ``block`` to the statement that makes the ask
    ``node``, through ``if``s (their conditions, or ``not`` them for an ``else``, added to
    ``conditions``, as are ``not`` those of an ``if ...: continue`` on the way) and into the
    body of a ``try`` or a ``with`` that holds the ask, recording the names assigned once on
    the way in ``inner``; returns the statements after the ask in its own block (its
    iteration's, once it asked); None when the way cannot be followed (a statement before the
    ask that may end the test or the loop, the ask in an ``except``, a loop, an
    expression)."""
    for index, child in enumerate(block):
        if isinstance(child, _STATEMENTS) and getattr(child, "value", None) is node:
            return block[index + 1 :]
        if any(n is node for n in ast.walk(child)):
            if isinstance(child, (ast.Try, ast.With)) and any(
                    n is node for s in child.body for n in ast.walk(s)):
                # (a retry's try: ... except ...: its body runs first; a with's body runs)
                return _way_to(child.body, node, reader, inner, conditions)
            if not isinstance(child, ast.If):
                return None
            in_body = any(n is node for s in child.body for n in ast.walk(s))
            conditions.append(child.test if in_body else _negated(child.test))
            return _way_to(child.body if in_body else child.orelse, node, reader, inner,
                           conditions)
        if _is_continue_guard(child):
            assert isinstance(child, ast.If)
            conditions.append(_negated(child.test))
            continue
        if _may_end_early(child) or _breaks(child) or any(
                isinstance(n, ast.Continue) for n in ast.walk(child)):
            return None
        for name, entry in reader.set_once(child):
            inner.single[name] = entry
        added = _added(child, reader.loop_adds)
        if added is not None:  # messages.append(...) on the way, in the loop's iteration
            name = added[0]
            versions = inner.versions.get(name, [])
            version = (child.end_lineno or child.lineno, _plus(_load(name, child), added[2]))
            inner.versions = {**inner.versions, name: sorted([*versions, version],
                                                             key=lambda v: v[0])}
    return None


def _negated(test: ast.expr) -> ast.expr:
    """``not <test>``, at the test's place in the source (read where the test is)."""
    return ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=test), test)


def _is_continue_guard(stmt: ast.stmt) -> bool:
    """``if <condition>: continue`` (nothing else, no ``else``)."""
    return (isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1
            and isinstance(stmt.body[0], ast.Continue))


def _breaks(stmt: ast.stmt) -> bool:
    """Whether the statement has a ``break`` (of the loop it is in, or of one in it)."""
    return any(isinstance(n, ast.Break) for n in ast.walk(stmt))


def _besides(block: list[ast.stmt], after: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a loop's body (in its ``if``s too) but those in ``after`` (the ask's
    own block, after it) and the ``if``s holding others: the ones that may run on an
    iteration that does not ask."""
    kept = {id(s) for s in after}
    for stmt in block:
        if id(stmt) in kept:
            continue
        if isinstance(stmt, ast.If):
            yield ast.copy_location(ast.Expr(value=stmt.test), stmt)
            yield from _besides(stmt.body, after)
            yield from _besides(stmt.orelse, after)
        else:
            yield stmt


def _loop_items(reader: _Reader, loop: _Loop) -> Expr | None:
    """What the loop's iterations go over, read: for a comprehension with ``if``s, the items
    that pass them (``[p for p in items if cond]``, so that iteration ``i`` is the ``i``-th
    ask); None when any of it is not read."""
    items = reader.read(loop.items, loop.line)
    if items is None or not loop.conditions:
        return items
    conditions = [loop.reader.read(c, c.lineno) for c in loop.conditions]  # names set before
    if any(c is None for c in conditions):
        return None
    target = loop.target
    element = ("param", target) if isinstance(target, str) else (
        "list", tuple(("param", name) for name in target))
    return ("comp", target, items, element, tuple(conditions))


def _target_names(target: ast.expr, reader: _Reader,
                  scoped: bool) -> str | tuple[str, ...] | None:
    """A loop's target: a name, or a tuple of names; of a ``for`` statement of the body (not
    ``scoped``, as a comprehension's are), each bound nowhere else in the test but as the
    target of another such statement (each loop's body reads its own), and not one of its
    parameters; None for anything else."""
    names = [target] if isinstance(target, ast.Name) else (
        target.elts if isinstance(target, ast.Tuple) else [])
    if not names or not all(
        isinstance(n, ast.Name)
        and (scoped or (n.id not in reader.args
                        and reader.bound.get(n.id) == max(1, reader.loop_targets[n.id])))
        for n in names
    ):
        return None
    ids = tuple(n.id for n in names if isinstance(n, ast.Name))
    return ids[0] if isinstance(target, ast.Name) else ids


def _is_ask(node: ast.AST) -> TypeGuard[ast.Call]:
    """Whether the node is a call of an ``.ask(...)`` method."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "ask"
    )


def _ask_nodes(fdef: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.Call]:
    """The function body's ``.ask(...)`` calls."""
    return [node for stmt in fdef.body for node in ast.walk(stmt) if _is_ask(node)]


def _ask_calls(fdef: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.Call]:
    """The function body's ``.ask(...)`` calls with a positional argument, in source order."""
    return sorted(
        (node for node in _ask_nodes(fdef) if node.args),
        key=lambda node: (node.lineno, node.col_offset),
    )


# which models an ask's receiver asks: rollout.ask, rollout.stable.ask, candidate.ask, ...
_RECEIVERS: dict[str, tuple[Role, ...]] = {
    "rollout": ("stable", "candidate"),
    "stable": ("stable",),
    "candidate": ("candidate",),
}
LaterAsk = tuple[tuple[Role, ...], Expr, Keywords]  # (models asked, prompt, keyword arguments)


@functools.lru_cache(maxsize=1024)  # asked for each item of a function
def asked_roles(func: Any, expr: Expr | None = None) -> frozenset[Role] | None:
    """The models the test function can ask, read from the receivers of every ``.ask(...)``
    in its source: ``rollout.ask`` both, ``rollout.candidate.ask`` and ``candidate.ask`` the
    candidate, ``rollout.stable.ask`` and ``stable.ask`` the stable; with ``expr``, of the
    asks whose prompt reads as ``expr`` (the first ask planned: in a loop, its first
    iteration's), when there are such. None when the source has no ask or an ask whose
    receiver is not a model fixture itself (a local name, a helper's parameter): then the
    fixtures the test requests say."""
    fdef = _function_def(func)
    calls = _ask_nodes(fdef) if fdef is not None else []
    helper = _helper_of(func)
    if helper is not None:
        return frozenset(helper[2])  # the models the helper it calls asks
    branching = _helper_branching(func)
    if branching is not None:  # (each item's own: reached_ask's; here, all of the helper's)
        return _helper_roles_of(branching[0])
    if fdef is None or not calls:
        return None
    reader = _Reader(fdef)
    roles: set[Role] = set()
    of_expr: set[Role] = set()
    for call in calls:
        found = _receiver_roles(call.func, reader)
        if not found:
            return None
        roles.update(found)
        if expr is not None and call.args:
            read = _read_ask(fdef, reader, call, 0)
            if read is not None and read[0] == expr:
                of_expr.update(found)
    return frozenset(of_expr or roles)


def _helper_roles_of(helper: _HelperCall) -> frozenset[Role] | None:
    """The models of a helper's asks, each on a model the test passes it; None when one is
    on something else."""
    found = _helper_fdef(helper.function)
    if found is None:
        return None
    _, reader, calls = found
    roles: set[Role] = set()
    for call in calls:
        receiver = _param_receiver(call, reader)
        asks = _helper_roles(helper, receiver) if receiver is not None else ()
        if not asks:
            return None
        roles.update(asks)
    return frozenset(roles)


@functools.lru_cache(maxsize=256)
def later_asks(func: Any) -> tuple[LaterAsk, ...]:
    """The asks after the test function's first one that it always makes once it gets there,
    read in full from its source (:func:`_later_in`), on a model fixture (``rollout.ask``,
    ``rollout.candidate.ask``, ``stable.ask``); and those of the helpers it calls
    (:func:`_helper_call`) in statements of its body after its first ask, with nothing before
    them that may end the test early: the helper's later asks (:func:`_helper_later`) for the
    helper whose first ask is the test's (:func:`_helper_ask`), every ask it makes in full for
    one called after."""
    fdef = _function_def(func)
    if fdef is None:
        return ()
    calls = _ask_calls(fdef)
    helper = _helper_of(func)
    if not calls and helper is None:
        return ()
    reader, names = _Reader(fdef), module_names(func)
    out: list[LaterAsk] = []
    for call, prompt, keywords in _later_in(fdef, reader, calls, _STATEMENTS) if calls else ():
        roles = _receiver_roles(call.func, reader)
        if roles:
            out.append((roles, prompt, keywords))
    first_line = calls[0].lineno if calls else None
    for stmt in fdef.body:
        called = _statement_call(stmt)
        helped = _helper_call(called, reader, names) if called is not None else None
        if helped is not None and first_line is None:  # the helper of the test's first ask
            out.extend(_helper_asks(helped, first=False))
            first_line = stmt.lineno
        elif helped is not None and first_line is not None and stmt.lineno > first_line:
            out.extend(_helper_asks(helped, first=True))
        if _may_end_early(stmt) and first_line is not None and (
                stmt.end_lineno or stmt.lineno) >= first_line:
            break  # (one before the first ask ends the test before any: nothing to lose)
    return tuple(out)


def _later_in(fdef: ast.FunctionDef | ast.AsyncFunctionDef, reader: _Reader,
              calls: list[ast.Call], statements: tuple[type[ast.stmt], ...],
              ) -> list[tuple[ast.Call, Expr, Keywords]]:
    """The asks (``calls``: :func:`_ask_calls`) after the function's first one that it always
    makes once it gets there, read in full: statements of the body itself (of the kinds
    ``statements``; not under a condition), or of a loop read as :func:`_loop_of` reads it
    (each iteration's, up to :data:`LOOP_AHEAD`), with nothing between the first ask and them
    that may end the function early (``return``, ``raise``, ``pytest.skip``; a failing
    ``assert`` still can).
    An ask whose prompt reads an earlier reply is not read (its local name's value is a
    call). ``(call, prompt, keyword arguments)``, in order."""
    first, out = calls[0], []

    def later(call: ast.Call, iteration: int) -> None:
        read = _read_ask(fdef, reader, call, iteration)
        if read is not None and read[1] is not None:
            out.append((call, read[0], read[1]))

    loops = {id(call): loop for call in calls if (loop := _loop_of(fdef, reader, call))}
    for stmt in fdef.body:
        if not _may_end_early(stmt) and not _breaks(stmt):  # each iteration's asks of a loop
            asks = [c for c in calls if id(c) in loops and loops[id(c)].stmt is stmt]
            for iteration in range(LOOP_AHEAD if asks else 0):
                for ask in asks:
                    if ask is not first or iteration:
                        later(ask, iteration)
        call = getattr(stmt, "value", None) if isinstance(stmt, statements) else None
        if call is not None and call is not first and call in calls and call.lineno > first.lineno:
            later(call, 0)
        if _may_end_early(stmt) and (stmt.end_lineno or stmt.lineno) >= first.lineno:
            break  # (one before the first ask ends the function before any: nothing to lose)
    return out


_STATEMENTS = (ast.Expr, ast.Assign, ast.AnnAssign)


def _receiver_roles(func: ast.expr, reader: _Reader) -> tuple[Role, ...]:
    """The models ``<receiver>.ask`` asks, when the receiver is a model fixture itself."""
    receiver = func.value if isinstance(func, ast.Attribute) else None
    if (
        isinstance(receiver, ast.Name)
        and receiver.id in reader.args
        and receiver.id not in reader.bound
    ):
        return _RECEIVERS.get(receiver.id, ())
    if (
        isinstance(receiver, ast.Attribute)
        and receiver.attr in ("stable", "candidate")
        and isinstance(receiver.value, ast.Name)
        and receiver.value.id == "rollout"
        and "rollout" in reader.args
        and "rollout" not in reader.bound
    ):
        return _RECEIVERS[receiver.attr]
    return ()


def _may_end_early(stmt: ast.stmt) -> bool:
    """Whether the statement may end the test (``return``, ``raise``, ``pytest.skip/xfail/
    fail``) or leave the body some other way (``break`` does not reach here)."""
    for node in ast.walk(stmt):
        if isinstance(node, (ast.Return, ast.Raise)):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _ENDING
        ):
            return True
    return False


def _ends(stmt: ast.stmt) -> bool:
    """Whether the statement ends the function whatever happens: ``return``, ``raise``, or a
    ``pytest.skip/xfail/fail/exit(...)`` statement."""
    return isinstance(stmt, (ast.Return, ast.Raise)) or (
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and stmt.value.func.attr in _ENDING)


_ENDING = frozenset({"skip", "xfail", "fail", "exit"})  # pytest's: each ends the test


NOT_ASKED: Any = object()  # reached_ask: the branch taken has no ask (nor does what follows)
# reached_ask: the first ask is under an if whose way this item takes cannot be told (a
# condition not read or not known, or a branch taken whose ask is not read): the asks read in
# source order are a guess for it (another branch's ask, maybe), to be confirmed by a probe
UNTOLD: Any = object()


def _has_ask(node: ast.AST) -> bool:
    return any(_is_ask(n) for n in ast.walk(node))


Branching = tuple["_Reader", frozenset[str], list[ast.stmt]]


def _branching_of(fdef: ast.FunctionDef | ast.AsyncFunctionDef | None) -> Branching | None:
    """The reader, the rebound parameters and the body of a test function whose first ask is
    under an ``if`` (the first statement with an ask is an ``if``), or after an ``if`` that
    may end it (``if not case.meta.get("expected"): pytest.skip(...)``); None otherwise."""
    if fdef is None:
        return None
    first = next((i for i, stmt in enumerate(fdef.body) if _has_ask(stmt)), None)
    if first is None:
        return None
    guarded = any(isinstance(stmt, ast.If) and _may_end_early(stmt) for stmt in fdef.body[:first])
    if not isinstance(fdef.body[first], ast.If) and not guarded:
        return None
    return _Reader(fdef), read_asks(fdef)[1], list(fdef.body)


@functools.lru_cache(maxsize=256)
def _branching(func: Any) -> Branching | None:
    return _branching_of(_function_def(func))


def reached_ask(func: Any, params: dict[str, Any], names: Any) -> Any:
    """For a test function whose first ask (its own, or that of the helper it calls first) is
    under an ``if`` or after one that may end it: the ask this item reaches first, as
    ``(prompt Expr, Keywords or None, the models it asks or None when its receiver is not a
    model fixture)``, following the branches whose conditions are read and known for it (see
    :func:`evaluate`); :data:`NOT_ASKED` when the branches it takes have no ask, or it ends
    before it asks (:func:`ends_before_asking`); :data:`UNTOLD` when the branch it takes
    cannot be told (a condition not read or not known for it), or the ask in that branch is
    not read; None when the first ask is not under an ``if``, or is in a loop, a ``with`` or a
    ``try`` after one that may end the test: then the asks are read in source order."""
    if ends_before_asking(func, params, names):
        return NOT_ASKED
    branching = _branching(func)
    if branching is None:
        return _helper_reached(func, params, names)
    found = reached_in(branching, params, names)
    if found is None or found is NOT_ASKED or found is UNTOLD:
        return found
    return (*found[:2], frozenset(_receiver_roles(found[2].func, branching[0])) or None)


@functools.lru_cache(maxsize=256)
def _before_asking(func: Any) -> tuple[_Reader, list[ast.stmt]] | None:
    """The test function's reader and the statements of its body before the first that asks
    or passes a model to a call (a helper that may ask); None when none is before."""
    fdef = _function_def(func)
    if fdef is None:
        return None
    reader = _Reader(fdef)
    before = []
    for stmt in fdef.body:
        if _has_ask(stmt) or _passes_a_model(stmt, reader):
            break
        before.append(stmt)
    return (reader, before) if before else None


def ends_before_asking(func: Any, params: dict[str, Any], names: Any) -> bool:
    """Whether the test ends before it asks anything, for these parameters: an ``if`` before
    its first ask (or its first call given a model) whose condition is read and taken ends it
    (``if case.expected is None: pytest.skip(...)``, ``if not len(case.meta["answers"]):``, a
    ``return``, a ``raise``)."""
    found = _before_asking(func)
    return found is not None and _walk_to_ask(found[1], found[0], params, names) is _ENDS


def reached_in(branching: Branching | None, params: dict[str, Any], names: Any) -> Any:
    """:func:`reached_ask` of a function's :func:`_branching_of`, with the ask's call in place
    of the models it asks."""
    if branching is None:
        return None
    reader, rebound, body = branching
    found = _walk_to_ask(body, reader, params, names)
    if found is _ENDS:
        return NOT_ASKED  # it returns, raises or skips before it asks
    if found is None or found is NOT_ASKED or found is UNTOLD:
        return found
    expr, keywords, call = found
    reads = params_read(expr).union(*(params_read(v) for _, v in keywords or ()))
    return (expr, None if rebound & reads else keywords, call)


_ENDS: Any = object()  # _walk_to_ask: the function ends (returns, raises, skips) before it asks


def _walk_to_ask(stmts: list[ast.stmt], reader: _Reader, params: dict[str, Any],
                 names: Any) -> Any:
    """The first ask the statements reach for these parameters, ``(prompt, keywords, call)``,
    following each ``if`` with an ask, or that may end the function, whose condition is read
    and known (a name a branch taken sets once on the way read as it sets it);
    :data:`NOT_ASKED` when they reach none, :data:`_ENDS` when the function ends before (a
    ``return``, ``raise`` or ``pytest.skip(...)`` reached); :data:`UNTOLD` when an ``if`` with
    an ask has a condition not read or not known, or the branch taken reaches an ask that is
    not read (or one in a loop, a ``with`` or a ``try``); None when the statements themselves
    reach such an ask. An ``if`` without an ask whose condition is not known is passed over
    (what follows is planned: when it ends the function, that is a call sent and not used)."""
    for stmt in stmts:
        asks = _has_ask(stmt)
        once = [(name, entry) for name, entry in reader.set_once(stmt)
                if name not in reader.single]
        if once:  # on the way, in the branch taken
            reader = copy.copy(reader)
            reader.single = {**reader.single, **dict(once)}
        if isinstance(stmt, ast.If) and (asks or _may_end_early(stmt)):
            test = reader.read(stmt.test, stmt.lineno)
            taken = MISSING if test is None else _truth(evaluate(test, params, names))
            if taken is MISSING:
                if not asks:
                    continue
                return UNTOLD
            found = _walk_to_ask(stmt.body if taken else stmt.orelse, reader, params, names)
            if found is NOT_ASKED:
                continue  # the branch taken asks nothing: what follows the if may
            return UNTOLD if found is None else found
        if not asks:
            if _ends(stmt):
                return _ENDS
            continue
        if not isinstance(stmt, (*_STATEMENTS, ast.Assert, ast.Return)):
            return None  # a loop, a with, a try, ...: not followed
        call = min((n for n in ast.walk(stmt) if _is_ask(n)),
                   key=lambda n: (n.lineno, n.col_offset))
        if not call.args:
            return None
        expr = reader.read(call.args[0], call.lineno)
        return None if expr is None else (expr, _keywords(reader, call), call)
    return NOT_ASKED


def first_ask_unread(func: Any) -> str | None:
    """What in the function's first ``.ask(...)`` cannot be read — in its prompt, else in its
    other arguments — as the end of a sentence: its source and its line in the file
    (```build_prompt(case)` at line 12 cannot be read without running it``), with the
    statement that is not read when it is in a function of the module the ask calls; None
    when all of it can be read, or the function has no ask. Tells a user what to change for
    the test to be sent ahead."""
    first = _first_ask(func)
    if first is None:
        return None
    reader, ask, parts = first
    loop = _unread_loop(func, ask)
    if loop is not None:
        head = ast.unparse(loop).splitlines()[0]
        return (
            f"`{head}` at line {_line(func, loop.lineno)} is not read (a loop is read when it"
            " is a `for` of the test's body, a list comprehension that is a"
            " statement's value, or a `while` of the test's body that asks first and whose"
            " condition is read as it is when the test gets to it (`while True:`, `while tries"
            " < 3:` after `tries = 0`, `while tries < MAX_TRIES:`), and nothing before its ask"
            " may end it or the test)"
        )
    node = next((n for p in parts if (n := _unread(reader, p, ask.lineno)) is not None), None)
    detail = ""
    if node is None:
        starred = next((k for k in ask.keywords if k.arg is None), None)
        node = None if starred is None else starred.value  # a **kwargs
    if node is None:
        found = _unread_function(reader, parts, ask.lineno, module_names(func))
        if found is None:
            return None
        node, detail = found
    return _cannot_read(func, node) + detail


def first_ask_call(func: Any) -> str | None:
    """The first call of a function of the module (or of a template's or a path's method) in
    the function's first ``.ask(...)``, as :func:`first_ask_unread` says it, with what of a
    Jinja2 template's setup is not read (for an ask that reads in full but whose value is not
    known: what the call returns depends on something not read)."""
    first = _first_ask(func)
    if first is None:
        return None
    reader, ask, parts = first
    call = next((c for p in parts for c in _calls_in(reader, p, ask.lineno)), None)
    if call is None:
        return None
    expr = reader.read(call, ask.lineno)
    why = None
    if expr is not None and expr[0] == "method":  # a template's: what of its setup is not read
        why = templates.why_not(evaluate(expr[1], {}, module_names(func)), expr[2])
    return _cannot_read(func, call) + ("" if why is None else f" ({why})")


def _first_ask(func: Any) -> tuple[_Reader, ast.Call, list[ast.expr]] | None:
    """The reader of the test function, its first ``.ask(...)`` and that ask's arguments (but
    a ``**kwargs``), after what the loop it is in goes over; None when it has no ask."""
    fdef = _function_def(func)
    asks = _ask_calls(fdef) if fdef is not None else []
    if fdef is None or not asks:
        return None
    ask, reader = asks[0], _Reader(fdef)
    parts = [*ask.args, *(k.value for k in ask.keywords if k.arg is not None)]
    loop = _loop_of(fdef, reader, ask)
    if loop is not None:  # what its loop goes over; its target and names read as it sets them
        reader, parts = loop.reader, [loop.items, *loop.conditions, *parts]
    return reader, ask, parts


def _unread_loop(func: Any, ask: ast.Call) -> ast.stmt | ast.expr | None:
    """The innermost loop the ask is in (:func:`_in_a_loop`) when it is not read as one
    (:func:`_loop_of`); None otherwise."""
    fdef = _function_def(func)
    if fdef is None or not _in_a_loop(fdef, ask) or _loop_of(fdef, _Reader(fdef), ask):
        return None
    loops: list[ast.stmt | ast.expr] = [
        n for n in ast.walk(fdef) if isinstance(n, _LOOPS) and any(m is ask for m in ast.walk(n))
    ]
    return loops[-1] if loops else None  # (ast.walk goes outermost first)


def _cannot_read(func: Any, node: ast.expr) -> str:
    return f"`{ast.unparse(node)}` at line {_line(func, node.lineno)} cannot be read without " \
           "running it"


def _line(func: Any, line: int) -> int:
    """A line of the function's source (1: its first) as a line of its file."""
    try:
        code: types.CodeType = inspect.unwrap(func).__code__
    except (AttributeError, ValueError):
        return line
    return code.co_firstlineno + line - 1


def _calls_in(reader: _Reader, node: ast.expr, line: int) -> Iterator[ast.Call]:
    """The calls of the module's functions and the templates' and paths' methods in ``node``
    (in the values of the local names it reads, too), outermost first."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            single = reader.single.get(sub.id)
            if single is not None and single[0] < line:
                yield from _calls_in(reader, single[1], single[1].lineno)
        elif isinstance(sub, ast.Call):
            expr = reader.read(sub, line)
            if expr is not None and (
                expr[0] == "call" or (expr[0] == "method" and expr[2] in templates.METHODS)
            ):
                yield sub


def _unread_function(
    reader: _Reader, parts: list[ast.expr], line: int, names: Any
) -> tuple[ast.Call, str] | None:
    """A call in ``parts`` of a function of the module whose body is not read, and what in it
    is not, as ``" (in build_prompt, `for ...` at line 5 is not read)"``."""
    for call in (c for p in parts for c in _calls_in(reader, p, line)):
        expr = reader.read(call, line)
        function = MISSING if expr is None else evaluate(expr[1], {}, names)
        if type(function) is not types.FunctionType or _function(function) is not None:
            continue
        fdef = _function_def(function)
        if fdef is None or not isinstance(fdef, ast.FunctionDef):
            return call, f" (`{function.__name__}` is not read: its source is not found)"
        body = _body(fdef.body, _Reader(fdef, assigned_as_params=True))
        if not isinstance(body, ast.stmt):  # not a plain function: a closure, a generator, ...
            return call, f" (`{function.__name__}` is not a plain function of its module)"
        code = ast.unparse(body).splitlines()[0]
        where = str(_line(function, body.lineno))
        if function.__globals__ is not names:
            where += f" of {os.path.basename(function.__code__.co_filename)}"
        return call, f" (in `{function.__name__}`, `{code}` at line {where} is not read)"
    return None


def _unread(reader: _Reader, node: ast.expr, line: int) -> ast.expr | None:
    """The innermost part of ``node`` that cannot be read (inside the value of a local name
    it reads, too); None when all of it can."""
    if reader.read(node, line) is not None:
        return None
    if isinstance(node, ast.Name):
        single = reader.single.get(node.id)
        if single is not None and single[0] < line:
            return _unread(reader, single[1], single[1].lineno) or node
        return node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr) and (found := _unread(reader, child, line)) is not None:
            return found
    return node


def _keywords(reader: _Reader, node: ast.Call) -> Keywords | None:
    """An ask's keyword arguments (a ``**mapping`` among them: ``**GENERATION``, a dict of
    the module), or None when it passes more than one positional argument or a keyword that
    cannot be read."""
    if len(node.args) != 1:
        return None
    out: list[tuple[str | None, Expr]] = []
    for keyword in node.keywords:
        value = reader.read(keyword.value, node.lineno)
        if value is None:
            return None
        out.append((keyword.arg, value))
    return tuple(out)


def asked(func: Any) -> list[Expr]:
    """What ``.ask(...)`` calls pass first in the function's source, in source order."""
    return [expr for expr, _ in source_asks(func)[0]]


@functools.lru_cache(maxsize=256)
def asked_through(func: Any, names: frozenset[str]) -> str | None:
    """For a test function with no ``.ask(...)`` in its source, nor in a helper that is read
    (it asks through an object a fixture made: ``pair = bot.answer(question)``): of its
    parameters ``names``, the one it most likely asks with. The only one; of several, the one
    the first statement that passes one of them to a call passes (``question``, with
    ``expected`` only read in an ``assert`` after it). None otherwise: a test whose ask is
    not read (``ask(urgent(question))``) does not ask the question as it is."""
    fdef = _function_def(func)
    if fdef is None or _ask_nodes(fdef) or source_asks(func)[0]:
        return None
    if len(names) == 1:
        return next(iter(names))
    for stmt in fdef.body:
        passed = {
            n.id
            for call in ast.walk(stmt) if isinstance(call, ast.Call)
            for arg in (*call.args, *(k.value for k in call.keywords))
            for n in ast.walk(arg) if isinstance(n, ast.Name) and n.id in names
        }
        if passed:
            return passed.pop() if len(passed) == 1 else None
    return None


@functools.lru_cache(maxsize=1024)  # asked for each item of a function
def first_ask_keywords(func: Any, expr: Expr) -> Keywords | None:
    """The keyword arguments (``system=``, ``response_format=``, ``temperature=``, ...) of the
    first ``.ask(...)`` on ``expr`` in the test function's source, ``()`` for none; None when
    they cannot all be read, or the function binds again a parameter they or ``expr`` read
    (then the planned request may not be the one it sends)."""
    asks, rebound = source_asks(func)
    keywords = dict(asks).get(expr)
    if keywords is None:
        return None
    reads = params_read(expr).union(*(params_read(value) for _, value in keywords))
    return None if rebound & reads else keywords


class _Request:
    """What a parametrized fixture's ``request`` is read as: its ``param`` only."""

    def __init__(self, param: Any) -> None:
        self.param = param


@functools.lru_cache(maxsize=256)
def _fixture_body(func: Any) -> tuple[Body, frozenset[str]] | None:
    """A fixture's statements up to what it gives the test, as :func:`_run` runs them (its
    ``yield`` read as a ``return``: what follows it is teardown), and the names they read that
    they do not assign (its parameters and the module's names); None when one is not read
    (see :func:`_body`)."""
    fdef = _function_def(func)
    if fdef is None:
        return None
    stmts = list(fdef.body)
    for index, stmt in enumerate(stmts):
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Yield):
            returned = ast.Return(stmt.value.value, lineno=stmt.lineno, col_offset=0)
            stmts = [*stmts[:index], returned]  # the value it yields; after it, its teardown
            break
    reader = _Reader(fdef, assigned_as_params=True)
    body = _body(stmts, reader)
    if isinstance(body, ast.stmt):
        return None
    a = fdef.args
    own = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    # what it assigns is no parameter of it, unless it is one (`text = text.strip()`)
    reads = set().union(*(params_read(expr) for expr in _exprs(body))) - (reader.assigned - own)
    return body, frozenset(reads)


def _exprs(body: Body) -> Iterator[Expr]:
    """The expressions of a function's statements (:func:`_body`)."""
    for stmt in body:
        if stmt[0] in ("let", "add"):
            yield stmt[2]
        elif stmt[0] in ("continue", "break"):
            continue
        elif stmt[0] == "for":
            yield stmt[2]
            yield from _exprs(stmt[3])
        elif stmt[0] == "return":
            if stmt[1] is not None:
                yield stmt[1]
        else:
            yield stmt[1]
            yield from _exprs(stmt[2])
            yield from _exprs(stmt[3])


def _fixture_result(func: Any, params: dict[str, Any], allowed: set[str]) -> Any:
    """What the fixture gives when its parameters are ``params``, when it reads no other
    parameter than ``allowed``; :data:`MISSING` otherwise, or when that cannot be known."""
    read = _fixture_body(func)
    if read is None or not read[1] <= allowed:
        return MISSING
    try:
        value = _run(read[0], dict(params), module_names(func))
    except _RAISED:
        return MISSING
    return MISSING if value is _FELL_THROUGH or type(value) is _View else value


def fixture_value(func: Any, param: Any) -> Any:
    """What the fixture ``func`` gives a test for ``request.param == param`` (``return
    request.param``, ``return "Q: " + request.param["text"]``, ...), or :data:`MISSING` when
    that cannot be known without running it."""
    return _fixture_result(func, {"request": _Request(param)}, {"request"})


def fixture_made(func: Any, params: dict[str, Any]) -> Any:
    """What a fixture that is not parametrized gives a test whose parameters are ``params``:
    ``return SYSTEM_PROMPTS["support"]``, ``return build_system(lang)`` of a parameter ``lang``
    of the test, ``text = ...`` then ``yield text`` and its teardown; :data:`MISSING` when it
    reads ``request`` or another fixture, or cannot be known without running it."""
    return _fixture_result(func, params, set(params) - {"request"})


# -- evaluating --------------------------------------------------------------------------------
def module_names(func: Any) -> Any:
    """The names of the module the test function's source is in (a decorated function's own,
    as :func:`inspect.getsource` reads the function it wraps)."""
    try:
        return getattr(inspect.unwrap(func), "__globals__", None)
    except ValueError:  # a cycle of __wrapped__
        return None


def evaluate(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """The value of ``expr`` for an item with these parameters, the test's module's names
    being ``names`` (its ``__globals__``); :data:`MISSING` when it cannot be known without
    running code."""
    try:
        value = _evaluate(expr, params, names)
    except _RAISED:
        return MISSING  # str.format with a field its arguments do not have, say
    return MISSING if type(value) is _View else value  # a view is only gone over, not passed


# what evaluating raises where the code it reads would raise too (the value is then not known)
_RAISED = (KeyError, IndexError, ValueError, TypeError, AttributeError)


def _evaluate(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    kind = expr[0]
    if kind == "param":
        return params.get(expr[1], MISSING)
    if kind == "global":
        return dict.get(names, expr[1], MISSING) if type(names) is dict else MISSING
    if kind == "const":
        return expr[1]
    if kind in ("list", "dict"):
        keys = [k for k, _ in expr[1]] if kind == "dict" else None
        values = [_evaluate(child, params, names) for child in _children(expr)]
        if any(v is MISSING or type(v) is _View for v in values):
            return MISSING  # (a view is only gone over)
        if keys is not None:
            return _merged(keys, values)
        if any(item[0] == "star" for item in expr[1]):
            out: list[Any] = []
            for item, value in zip(expr[1], values, strict=True):
                if item[0] != "star":
                    out.append(value)
                elif type(value) in (list, tuple):  # (its items only: no user code runs)
                    out.extend(value)
                else:
                    return MISSING
            return out
        return values
    if kind == "star":
        return _evaluate(expr[1], params, names)  # (the list it is in takes its items)
    if kind in ("attr", "item"):
        base = _evaluate(expr[1], params, names)
        if base is MISSING:
            return MISSING
        return _item(base, expr[2]) if kind == "item" else _attribute(base, expr[2])
    if kind == "index":
        base, key = (_evaluate(child, params, names) for child in _children(expr))
        if base is MISSING or type(key) not in (str, int):
            return MISSING  # an exact str or int: its hash and comparison run no user code
        return _item(base, key)
    if kind == "slice":
        base = _evaluate(expr[1], params, names)
        if type(base) is str:
            return str.__getitem__(base, slice(*expr[2]))
        items = _elements(base)
        if items is None:
            return MISSING
        part = items[slice(*expr[2])]
        return tuple(part) if issubclass(type(base), tuple) else part  # as the base's slice is
    if kind == "mod":
        template, value = _evaluate(expr[1], params, names), _evaluate(expr[2], params, names)
        if expr[3]:  # a tuple written in the source (evaluated as a list)
            values = value if type(value) is list else MISSING
        else:
            values = value if type(value) in _TEXT else MISSING
        if type(template) is not str or values is MISSING or _wide_percent(template):
            return MISSING
        if type(values) is not list:
            return str.__mod__(template, values)
        if any(type(v) not in _TEXT for v in values):
            return MISSING  # strings and numbers only: their formatting runs no user code
        return str.__mod__(template, tuple(values))
    if kind in ("if", "bool", "not", "cmp"):
        return _condition(expr, params, names)
    if kind == "when":  # (the loop the ask is in is not entered: its ask is not made)
        holds = _truth(_evaluate(expr[1], params, names))
        return _evaluate(expr[2], params, names) if holds is True else MISSING
    if kind == "each":
        return _iteration(expr, params, names)
    if kind == "turn":
        return _turn(expr, params, names)
    if kind == "comp":
        return _comprehension(expr, params, names)
    if kind == "flat":
        made = _evaluate(expr[1], params, names)
        if made is MISSING or sum(len(part) for part in made) > _COMPREHENDED:
            return MISSING
        return [value for part in made for value in part]
    if kind == "fmt":
        return _formatted(expr, params, names)
    if kind == "call":
        return _returned(expr, params, names)
    if kind == "added_by":
        return _added_by(expr, params, names)
    if kind == "helper":
        return _helper_value(expr, params, names)
    if kind == "model":
        return _MODEL
    if kind == "div":
        return templates.divide(*(_evaluate(child, params, names) for child in _children(expr)))
    if kind == "arith":
        return _arithmetic(expr[1], *(_evaluate(child, params, names) for child in _children(expr)))
    if kind == "method" and expr[2] in templates.METHODS:
        receiver, *values = (_evaluate(child, params, names) for child in _children(expr))
        if receiver is MISSING or any(value is MISSING for value in values):
            return MISSING
        n = len(expr[3])
        keywords = list(zip((k for k, _ in expr[4]), values[n:], strict=True))
        return templates.method(receiver, expr[2], values[:n],
                                {k: v for k, v in keywords if k is not None},
                                [v for k, v in keywords if k is None])
    if kind == "method" and expr[2] in _VIEWS:  # d.items(): what a loop or a join goes over
        mapping = _evaluate(expr[1], params, names)
        if expr[3] or expr[4] or not issubclass(type(mapping), dict) or _lookup(
                type(mapping), expr[2]) is not getattr(dict, expr[2]):
            return MISSING
        return _View(tuple(getattr(dict, expr[2])(mapping)))
    if kind == "method" and expr[2] in _COPY_METHODS:  # BASE.copy(): a list's or a dict's own
        value = _evaluate(expr[1], params, names)
        base = next((b for b in (list, dict) if issubclass(type(value), b)), None)
        if expr[3] or expr[4] or base is None or _lookup(type(value), "copy") is not base.copy:
            return MISSING
        return base.copy(value)
    if kind == "method" and expr[2] in DICT_METHODS:
        mapping, key, *rest = (_evaluate(child, params, names) for child in _children(expr))
        if any(value is MISSING for value in rest):
            return MISSING  # the default is evaluated (and may raise) when the key is there too
        if expr[4] or len(rest) > 1 or type(key) not in _PLAIN:
            return MISSING  # d.get(key) / d.get(key, default), of a str, number or None key
        if mapping is os.environ and expr[2] == "get":
            return _environ(key, *rest)
        if not issubclass(type(mapping), dict) or _lookup(type(mapping), "get") is not dict.get:
            return MISSING  # not a dict, or one whose get is its own
        return dict.get(mapping, key, *rest)
    texts = [_evaluate(child, params, names) for child in _children(expr)]
    if kind == "add" and all(type(t) is list for t in texts):
        return texts[0] + texts[1]  # a message list added to (messages.append(...))
    if kind == "method" and expr[2] == "join" and len(texts) == 2 and type(texts[1]) in (
            list, _View):  # "sep".join([...]) of strings, or of a dict's keys
        parts = texts[1].items if type(texts[1]) is _View else texts[1]
        ok = type(texts[0]) is str and all(type(t) is str for t in parts)
        return str.join(texts[0], parts) if ok else MISSING
    if kind == "method" and expr[2] == "format" and any(k is None for k, _ in expr[4]):
        return _format_mapping(expr, texts)
    if kind == "method" and expr[2] == "format_map":  # TEMPLATE.format_map(case.meta)
        mapping = texts[1] if len(texts) == 2 and not expr[4] else None
        if type(texts[0]) is not str or type(mapping) is not dict or _wide_format(texts[0]) or (
                not all(type(k) is str and _plain_data(v, 0) for k, v in mapping.items())):
            return MISSING  # a dict of plain data: looking its keys up runs no user code
        return str.format_map(texts[0], mapping)
    if any(type(t) not in _TEXT for t in texts):
        return MISSING  # strings and numbers only: their formatting runs no user code
    if kind == "fstr":
        return "".join(format(t) for t in texts)
    if kind == "add" and all(type(t) in _NUMBER for t in texts):
        return texts[0] + texts[1]  # (i + 1: numbers' own addition)
    if kind == "add":
        return str.__add__(*texts) if all(type(t) is str for t in texts) else MISSING
    # "method": the string, then the method's positional and keyword arguments
    text, n = texts[0], len(expr[3])
    if expr[2] == "format" and type(text) is str and _wide_format(text):
        return MISSING
    kwargs = dict(zip((k for k, _ in expr[4]), texts[1 + n :], strict=True))
    return (
        getattr(str, expr[2])(text, *texts[1 : 1 + n], **kwargs) if type(text) is str else MISSING
    )


_ARITH: dict[type, str] = {ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//"}
_REPEATED = 100_000  # the longest string a str * int is worked out to


def _arithmetic(op: str, left: Any, right: Any) -> Any:
    """``left <op> right`` of numbers (exact types: their arithmetic runs no user code), or a
    string repeated (``"-" * 40``, at most :data:`_REPEATED` characters); :data:`MISSING`
    otherwise (and for a division by zero, which raises when the test runs)."""
    if type(left) in _NUMBER and type(right) in _NUMBER:
        if op == "//" and right == 0:
            return MISSING
        return left - right if op == "-" else left * right if op == "*" else left // right
    if op == "*" and {type(left), type(right)} == {str, int}:
        text, times = (left, right) if type(left) is str else (right, left)
        return text * times if len(text) * max(times, 0) <= _REPEATED else MISSING
    return MISSING


def _merged(keys: list[str | None], values: list[Any]) -> Any:
    """A dict display's value: each key with its value, a key None a ``**mapping`` merged in
    (a dict whose keys are plain: putting them in runs no code of the user's; anything else
    is not known)."""
    out: dict[Any, Any] = {}
    for key, value in zip(keys, values, strict=True):
        if type(value) is _View:
            return MISSING  # (a view is only gone over)
        if key is not None:
            out[key] = value
        elif type(value) is dict and all(type(k) in _PLAIN for k in value):
            out.update(value)
        else:
            return MISSING  # (a TypeError in Python for a non-mapping)
    return out


def _format_mapping(expr: Expr, texts: list[Any]) -> Any:
    """``TEMPLATE.format(..., **mapping)`` (``texts``: the template, then the arguments'
    values): a dict of str keys and plain data (:func:`_plain_data`: formatting it, or an item
    of it, runs no user code); a key given twice is a TypeError in Python, MISSING here."""
    text, n = texts[0], len(expr[3])
    args, kwargs = texts[1 : 1 + n], {}
    for (key, _), value in zip(expr[4], texts[1 + n :], strict=True):
        items = value.items() if key is None and type(value) is dict else [(key, value)]
        for k, v in items:
            if type(k) is not str or k in kwargs or not _plain_data(v, 0):
                return MISSING
            kwargs[k] = v
    if type(text) is not str or _wide_format(text) or not all(_plain_data(a, 0) for a in args):
        return MISSING
    try:
        return str.format(text, *args, **kwargs)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        return MISSING  # as Python would raise it: the test asks nothing


def asks_nothing(func: Any, params: dict[str, Any], names: Any) -> bool:
    """Whether every ``.ask(...)`` of the test function is in a loop (:func:`_loop_of`) that,
    for an item with these parameters, goes over nothing (``for text in
    case.meta["paraphrases"]:`` of a case without any): then the test asks nothing."""
    loops = _ask_loops(func)
    if not loops:
        return False
    return all(_iterated(_gone_over_value(items, params, names)) == [] for items in loops)


def _gone_over_value(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """What a loop goes over, as :func:`evaluate` gives it but a dict's view kept."""
    try:
        return _evaluate(expr, params, names)
    except _RAISED:
        return MISSING


@functools.lru_cache(maxsize=256)
def _ask_loops(func: Any) -> tuple[Expr, ...] | None:
    """What the loops making the function's asks go over, when each of its asks is in one
    (read in full); for a test without an ask of its own whose first ask is its helper's
    (:func:`_helper_ask`) and that may not ask after it (:func:`_may_ask_after`), those of
    the helper's asks, as the test's expressions. None otherwise."""
    fdef = _function_def(func)
    if fdef is None:
        return None
    if _ask_nodes(fdef) or _helper_of(func) is None:
        return _loops_of_asks(fdef)
    found = _test_helper(func)
    loops = _loops_of_asks(found[2][0]) if found is not None else None
    if found is None or loops is None or found[1]:
        return None
    return tuple((*found[0].head, items) for items in loops)


def _loops_of_asks(fdef: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[Expr, ...] | None:
    """What the loops making a function's asks go over, when each of its asks is in one (read
    in full); a ``while`` loop entered for some items only (:func:`_entry_condition`) as a
    loop over one item when its condition holds, and over none when it does not. None
    otherwise."""
    calls = _ask_nodes(fdef)
    if not calls:
        return None
    reader, out = _Reader(fdef), []
    for call in calls:
        found = _loop_of(fdef, reader, call) if call.args else None
        items = None if found is None else _loop_items(reader, found)
        guards: list[Expr] = []
        if found is None and call.args and not _in_a_loop(fdef, call, guards) and guards:
            items = ("if", guards[0], ("list", (("const", True),)), ("list", ()))
        if items is None:
            return None
        out.append(items)
    return tuple(out)


_NO_ITEM: Any = object()  # _item_at: the loop has no such iteration


def _item_at(value: Any, index: int) -> Any:
    """What ``for`` sets its target to in iteration ``index`` over what :func:`_iterated`
    goes over; :data:`_NO_ITEM` when it has fewer items, :data:`MISSING` for anything else."""
    items = _iterated(value)
    if items is None:
        return MISSING
    return items[index] if index < len(items) else _NO_ITEM


def _iteration(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """``("each", target, items, i, value)``: ``value`` with the loop's target set to the
    ``i``-th item of a list, a tuple or a dict (its keys), as ``for`` sets it; :data:`MISSING`
    when there is no such item (the loop asks no more), or it cannot be unpacked."""
    element = _item_at(_evaluate(expr[2], params, names), expr[3])
    bound = None if element is MISSING or element is _NO_ITEM else _bind(expr[1], element)
    return MISSING if bound is None else _evaluate(expr[4], {**params, **bound}, names)


def _turn(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """``("turn", ask, j, name, value)``: ``value`` with ``name`` set to the reply of the
    ask (:func:`replies_read`), from :data:`REPLIES` (prefetch sets it once that reply is in);
    :data:`MISSING` before. Counting (:data:`ANY_REPLY`), with a reply of empty text."""
    replies = params.get(REPLIES)
    if replies is ANY_REPLY:
        reply: Any = _EmptyReply()
    else:
        reply = replies.get((expr[1], expr[2]), MISSING) if type(replies) is dict else MISSING
    if reply is MISSING:
        return MISSING
    return _evaluate(expr[4], {**params, expr[3]: reply}, names)


class _EmptyReply:
    """A reply (or a pair of them: ``.stable``, ``.candidate``) when counting the asks a test
    may make (:data:`ANY_REPLY`)."""

    def __init__(self, pair: bool = True) -> None:
        self.text = ""
        self.tool_calls: list[Any] = []
        if pair:
            self.stable = self.candidate = _EmptyReply(pair=False)


def _bind(target: str | tuple[str, ...], element: Any) -> dict[str, Any] | None:
    """What a loop's target is set to for one item (a tuple target unpacks a list or a tuple
    of as many); None when it cannot be."""
    if isinstance(target, str):
        return {target: element}
    parts = _elements(element)
    if parts is None or len(parts) != len(target):
        return None  # a ValueError when it runs
    return dict(zip(target, parts, strict=True))


_COMPREHENDED = 10_000  # the most items a comprehension is worked out over


def _comprehension(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """``("comp", target, items, element, conditions)``: the list it makes, as Python does."""
    target, items, element, conditions = expr[1:]
    values = _iterated(_evaluate(items, params, names))
    if values is None or len(values) > _COMPREHENDED:
        return MISSING
    out = []
    for value in values:
        bound = _bind(target, value)
        if bound is None:
            return MISSING
        local = {**params, **bound}
        kept = True
        for condition in conditions:
            test = _truth(_evaluate(condition, local, names))
            if test is MISSING:
                return MISSING
            if not test:
                kept = False
                break
        if kept:
            made = _evaluate(element, local, names)
            if made is MISSING or type(made) is _View:
                return MISSING
            out.append(made)
    return out


def _formatted(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """``("fmt", value, conversion, spec)``: an f-string's ``{value!r:spec}`` of a string,
    number, bool or None (their ``repr`` and ``format`` are the built-ins')."""
    value = _evaluate(expr[1], params, names)
    spec = "" if expr[3] is None else _evaluate(expr[3], params, names)
    if type(value) not in _PLAIN or type(spec) is not str or _wide(spec):
        return MISSING
    conversion = _CONVERTED.get(expr[2])
    return format(value if conversion is None else conversion(value), spec)


_CONVERTED: dict[int, Callable[[Any], str]] = {ord("s"): str, ord("r"): repr, ord("a"): ascii}

# The widest field and the longest precision a plan formats: a width read from the data
# (f"{text:{width}}") could ask for gigabytes; the test would then fail on its own, but
# collecting must not. Past this the ask is not planned.
_WIDEST = 10_000
_DIGITS = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


def _wide(spec: str) -> bool:
    """Whether a format spec asks for a field or precision wider than :data:`_WIDEST`."""
    return any(len(run) > 5 or int(run) > _WIDEST for run in _DIGITS.findall(spec))


def _wide_format(template: str) -> bool:
    """:func:`_wide` of a ``str.format`` template's fields, or a field's spec that takes a
    width from the arguments (``{:{}}``); a template that does not parse is for ``format`` to
    refuse."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return False
    return any(spec is not None and ("{" in spec or _wide(spec)) for _, _, spec, _ in fields)


def _wide_percent(template: str) -> bool:
    """The same for a ``%`` template (``*`` takes a width from the values)."""
    for match in _PERCENT_SPEC.finditer(template.replace("%%", "")):
        for part in match.groups():
            if part and (part == "*" or _wide(part)):
                return True
    return False


class _View:
    """A dict's ``keys()``, ``values()`` or ``items()``, or what ``enumerate``, ``zip``,
    ``reversed`` and ``range`` give: for what goes over it (a loop, a comprehension,
    ``join``; ``len`` of a view or a range, ``sized``); never indexed or passed on."""

    __slots__ = ("items", "sized")

    def __init__(self, items: tuple[Any, ...], sized: bool = True) -> None:
        self.items = items
        self.sized = sized


_VIEWS = frozenset({"items", "keys", "values"})


def _iterated(value: Any) -> list[Any] | None:
    """The items ``for`` goes over in a list, a tuple, a dict (its keys) or a dict's view;
    None for anything else."""
    if type(value) is _View:
        return list(value.items)
    if issubclass(type(value), dict):
        return list(dict.__iter__(value))
    return _elements(value)


# -- the module's functions --------------------------------------------------------------------
Body = tuple[tuple[Any, ...], ...]  # a function's statements, as _body reads them
_CALLS_DEEP = 16  # how deep calls of the module's functions may nest (a recursion stops there)
_nesting = threading.local()
_FELL_THROUGH: Any = object()  # _run: the statements ended without a return
_CONTINUE: Any = object()  # _run: a continue in a loop's body
_BREAK: Any = object()  # _run: a break in a loop's body


def _returned(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """What a call of a function of the module returns, worked out from its source (see
    :func:`_function`) with the arguments evaluated; :data:`MISSING` when that cannot be
    known without running it."""
    function = _evaluate(expr[1], params, names)
    builtin = function is MISSING and expr[1][0] == "global" and expr[1][1] in _BUILTINS
    args = [_evaluate(a, params, names) for a in expr[2]]
    kwargs = {k: _key_function(v, names) if builtin and k == "key" else _evaluate(v, params, names)
              for k, v in expr[3]}
    if any(a is MISSING for a in args) or any(v is MISSING for v in kwargs.values()):
        return MISSING
    if builtin:
        return _builtin(expr[1][1], args, kwargs)  # len(...), str(...): not the module's own
    if issubclass(type(function), type):  # Path(...), string.Template(...): of the library
        return templates.construct(function, args, kwargs)
    if function in _pure_functions():  # textwrap.dedent(...), json.dumps(...)
        return _pure(function, args, kwargs)
    if function is os.getenv:  # os.getenv("STYLE", "brief"), os.getenv("STYLE", default=...)
        try:
            bound = inspect.signature(os.getenv).bind(*args, **kwargs)
        except TypeError:
            return MISSING
        return _environ(*bound.args, **bound.kwargs)
    if function is MISSING and expr[1][0] == "attr" and expr[1][1][0] == "param":
        # self.build(case) in a test class: self is read as the class (see prefetch), and a
        # plain function in it is the method, called with the class for self
        cls = _evaluate(expr[1][1], params, names)
        found = _lookup(cls, expr[1][2]) if issubclass(type(cls), type) else MISSING
        if type(found) is types.FunctionType:
            function, args = found, [cls, *args]
    read = _function(function) if type(function) is types.FunctionType else None
    if read is None:
        return MISSING  # a class, a builtin, a decorated or nested function, ...
    value, _ = _called(function, *read, args, kwargs)
    return None if value is _FELL_THROUGH else value


def _called(function: types.FunctionType, signature: inspect.Signature, body: Body,
            args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """What the function's statements return when it is called with these arguments
    (:func:`_run`, at most :data:`_CALLS_DEEP` calls deep), and its names when they are done;
    :data:`MISSING` when the call would raise (a ``TypeError`` binding its arguments) or nests
    too deep."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return MISSING, {}  # it raises when it runs: the test does not ask
    bound.apply_defaults()
    depth = getattr(_nesting, "depth", 0)
    if depth >= _CALLS_DEEP:
        return MISSING, {}
    _nesting.depth = depth + 1
    local = dict(bound.arguments)
    try:
        return _run(body, local, function.__globals__), local
    finally:
        _nesting.depth = depth


def _added_by(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """``("added_by", ...)``: what the function adds to the list it is given, worked out by
    running its statements (:func:`_adder`) on an empty list in its place (its adds make new
    lists: nothing the test has is changed); :data:`MISSING` when that cannot be known."""
    function = _evaluate(expr[1], params, names)
    read = _adder(function, expr[4]) if type(function) is types.FunctionType else None
    if read is None:
        return MISSING
    args = [[] if i == expr[4] else _evaluate(a, params, names) for i, a in enumerate(expr[2])]
    kwargs = {k: _evaluate(v, params, names) for k, v in expr[3]}
    if any(a is MISSING for a in args) or any(v is MISSING for v in kwargs.values()):
        return MISSING
    signature, body, param = read
    ran, local = _called(function, signature, body, args, kwargs)
    added = local.get(param, MISSING)  # (the list's name: what it has added, when it is done)
    return MISSING if ran is MISSING or type(added) is not list else added


_MODEL: Any = object()  # ("model",): the model fixture a helper is passed (nothing to read)


def _helper_value(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """``("helper", function, args, kwargs, value)``: ``value`` read in the helper (see
    :func:`_helper_ask`), its parameters bound to the arguments as the call binds them (its
    defaults too), its names its module's."""
    bound = _helper_params(expr, params, names)
    if bound is MISSING:
        return MISSING
    return _evaluate(expr[4], bound[1], bound[0].__globals__)


def _helper_params(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """The helper of ``("helper", function, args, kwargs, ...)`` and its parameters, bound to
    the arguments (evaluated for the item) as the call binds them, its defaults too;
    :data:`MISSING` when an argument is not known or the call would raise."""
    function = _evaluate(expr[1], params, names)
    args = [_evaluate(a, params, names) for a in expr[2]]
    kwargs = {k: _evaluate(v, params, names) for k, v in expr[3]}
    if type(function) is not types.FunctionType or any(
            v is MISSING for v in (*args, *kwargs.values())):
        return MISSING  # (identity only: an argument's own == is never called)
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return MISSING  # it raises when it runs: the test does not ask
    bound.apply_defaults()
    return function, dict(bound.arguments)


_BUILTINS = frozenset({"len", "str", "enumerate", "zip", "reversed", "range", "sorted", "list",
                       "tuple", "min", "max", "dict"})
# the sort keys that run no code of the user's on a str (str's own methods), and len
_STR_KEYS = frozenset({"lower", "upper", "casefold", "strip", "lstrip", "rstrip", "title",
                       "swapcase"})
# builtins that change nothing of what they are passed (:func:`_changes`): those evaluated,
# and others a test calls on its values
_READ_ONLY_CALLS = _BUILTINS | frozenset({
    "repr", "bool", "int", "float", "print", "set", "frozenset", "dict", "sum", "any", "all",
    "isinstance", "hash", "id", "type",
})  # fmt: skip
# methods that read what they are given and keep no hold of it: " ".join(parts),
# json.dumps(messages), copy.deepcopy(messages), "{}".format(messages)
_READ_ONLY_METHODS = frozenset({"join", "dumps", "deepcopy", "format"})


def _key_function(expr: Expr, names: Any) -> Any:
    """A ``key=`` of ``sorted`` / ``min`` / ``max`` that is ``len`` or a method of ``str`` in
    :data:`_STR_KEYS` (the builtins', not a name of the module's own); :data:`MISSING` for
    any other (a function of the user's: not called ahead)."""
    if type(names) is not dict:
        return MISSING
    if expr == ("global", "len") and "len" not in names:
        return len
    if (
        expr[0] == "attr" and expr[1] == ("global", "str") and expr[2] in _STR_KEYS
        and "str" not in names
    ):
        return getattr(str, expr[2])
    return MISSING


def _sort_keys(items: list[Any], key: Any) -> list[Any] | None:
    """The keys ``key`` (from :func:`_key_function`, or None) gives ``items``, when working
    them out runs no code of the user's: ``len`` of a str, list, tuple or dict of their own
    types, a str method of a str; the items themselves, for no key. None otherwise."""
    if key is None:
        return items
    if key is len:
        keys = [_builtin("len", [x], {}) for x in items]
        return None if any(k is MISSING for k in keys) else keys
    return [key(x) for x in items] if all(type(x) is str for x in items) else None


def _comparable(values: list[Any]) -> bool:
    """Compared as they are only: strings, or numbers (their own types, not subclasses)."""
    return all(type(x) in _NUMBER for x in values) or all(type(x) is str for x in values)


_RANGE = 10_000  # the longest range(...) gone over


@functools.lru_cache(maxsize=1)
def _pure_functions() -> frozenset[Any]:
    """Functions of the standard library that build a prompt from strings (and ``json.dumps``
    from plain data) and run no code of the user's: called as they are."""
    return frozenset({textwrap.dedent, textwrap.indent, inspect.cleandoc, json.dumps, copy.copy,
                      copy.deepcopy})


_JSON_OPTIONS = {"ensure_ascii": (bool,), "sort_keys": (bool,), "indent": (int, str, type(None)),
                 "separators": (list, tuple)}


def _pure(function: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``textwrap.dedent(text)``, ``inspect.cleandoc(text)``, ``textwrap.indent(text,
    prefix)`` of strings; ``json.dumps(data, ensure_ascii=..., indent=..., sort_keys=...,
    separators=...)`` of strings, numbers, None, lists, tuples and dicts (its ``default``
    would call code of the user's); ``copy.copy(data)`` / ``copy.deepcopy(data)`` of those
    (a message list the test copies before adding to it)."""
    if function in (copy.copy, copy.deepcopy):
        ok = len(args) == 1 and not kwargs and _plain_data(args[0], 0)
        return function(args[0]) if ok else MISSING
    if function is json.dumps:
        ok = (
            len(args) == 1 and _plain_data(args[0], 0)
            and all(type(v) in _JSON_OPTIONS.get(k, ()) for k, v in kwargs.items())
            and all(type(x) is str for x in kwargs.get("separators", ()))
        )
        return json.dumps(args[0], **kwargs) if ok else MISSING
    wanted = 2 if function is textwrap.indent else 1
    if kwargs or len(args) != wanted or any(type(a) is not str for a in args):
        return MISSING
    return function(*args)


def _plain_data(value: Any, depth: int) -> bool:
    """Strings, numbers, None, and lists, tuples and dicts of those (exact types)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if depth > _DEPTH:
        return False
    if kind in (list, tuple):
        return all(_plain_data(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) in _PLAIN and _plain_data(v, depth + 1) for k, v in value.items())
    return False


def _builtin(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``len(x)`` of a str, list, tuple or dict; ``str(x)`` of a str, number, bool or None;
    what goes over a list, a tuple, a dict or a view: ``enumerate(x, start)``, ``zip(a, b,
    ...)``, ``reversed(x)`` (a list or a tuple), ``sorted(x, reverse=...)`` of strings or of
    numbers, ``list(x)``, ``tuple(x)``; ``range(...)`` of ints; ``dict(mapping, key=value)``
    of a dict whose keys are plain, with keyword arguments or without."""
    if name == "dict":
        if len(args) > 1:
            return MISSING  # (a TypeError in Python)
        return _merged([*([None] if args else []), *kwargs], [*args, *kwargs.values()])
    if name in _GOING_OVER:
        return _gone_over(name, args, kwargs)
    if name in ("min", "max"):
        return _extreme(name, args, kwargs)
    if kwargs or len(args) != 1:
        return MISSING
    value = args[0]
    if name == "str":
        return str(value) if type(value) in _PLAIN else MISSING
    kind = type(value)
    if kind is _View:
        return len(value.items) if value.sized else MISSING  # len(enumerate(x)): a TypeError
    for base in (str, dict, list, tuple):  # its own __len__, not a subclass's
        if issubclass(kind, base) and _lookup(kind, "__len__") is base.__len__:
            return base.__len__(value)
    return MISSING


_GOING_OVER = frozenset({"enumerate", "zip", "reversed", "range", "sorted", "list", "tuple"})


def _gone_over(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The builtins of :func:`_builtin` that go over their arguments, as Python does."""
    if name == "range":
        if kwargs or not 1 <= len(args) <= 3 or any(type(a) is not int for a in args):
            return MISSING
        try:
            numbers = range(*args)
        except ValueError:  # a step of 0
            return MISSING
        return _View(tuple(numbers)) if len(numbers) <= _RANGE else MISSING
    if name == "enumerate":  # enumerate(x), enumerate(x, 1), enumerate(x, start=1)
        if not 1 <= len(args) <= 2 or set(kwargs) - {"start"} or (len(args) == 2 and kwargs):
            return MISSING
        start, items = kwargs.get("start", args[1] if len(args) == 2 else 0), _iterated(args[0])
        if type(start) is not int or items is None:
            return MISSING
        return _View(tuple(enumerate(items, start)), sized=False)
    gone_over = [_iterated(a) for a in args]
    if not gone_over or any(i is None for i in gone_over):
        return MISSING  # nothing to go over, or not a list, a tuple, a dict or a view
    if name == "zip":
        return _View(tuple(zip(*gone_over, strict=False)), sized=False) if not kwargs else MISSING
    first: list[Any] = gone_over[0] or []
    if len(args) != 1:
        return MISSING
    if name == "reversed":  # a list's, a tuple's, a dict's or a view's (not an iterator's)
        if kwargs or (type(args[0]) is _View and not args[0].sized):
            return MISSING
        return _View(tuple(reversed(first)), sized=False)
    if name == "sorted":
        reverse, key = kwargs.get("reverse", False), kwargs.get("key")
        if set(kwargs) - {"reverse", "key"} or type(reverse) is not bool:
            return MISSING
        keys = _sort_keys(first, key)
        if keys is None or not _comparable(keys):
            return MISSING  # a key of the user's, or what is compared runs code of the user's
        return sorted(first, key=key, reverse=reverse)
    if kwargs:
        return MISSING
    return list(first) if name == "list" else tuple(first)


def _extreme(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """``min`` / ``max`` of one list, tuple, dict (its keys) or view, or of two arguments or
    more, with ``key=`` (:func:`_key_function`) and, of one, ``default=``; of strings or of
    numbers, as :func:`_gone_over`'s ``sorted``; :data:`MISSING` when it raises (nothing to
    compare) or when comparing would run code of the user's."""
    key = kwargs.get("key")
    if set(kwargs) - {"key", "default"} or not args or (len(args) > 1 and "default" in kwargs):
        return MISSING
    items = _iterated(args[0]) if len(args) == 1 else list(args)
    if items is None:
        return MISSING
    if not items:
        return kwargs.get("default", MISSING)  # a ValueError without one
    keys = _sort_keys(items, key)
    if keys is None or not _comparable(keys):
        return MISSING
    return (min if name == "min" else max)(items, key=key)


@functools.lru_cache(maxsize=256)
def _function(function: types.FunctionType) -> tuple[inspect.Signature, Body] | None:
    """A function of the module as :func:`_run` runs it: its signature and its statements
    (:func:`_body`); None when it is not a plain ``def`` whose statements are all read
    (a docstring, ``name = value``, ``if`` / ``elif`` / ``else``, ``for`` loops, adds to a
    list of its own, ``return``, ``pass``), or when what it reads is not all its arguments,
    the names it assigns and its module's names (a nested function's free names, ``*args``)."""
    found = _plain_def(function)
    if found is None:
        return None
    signature, fdef = found
    body = _body(fdef.body, _Reader(fdef, assigned_as_params=True))
    return None if isinstance(body, ast.stmt) else (signature, body)


@functools.lru_cache(maxsize=256)
def _adder(function: types.FunctionType, index: int) -> tuple[inspect.Signature, Body, str] | None:
    """A function of the module that adds to the list it is given as its ``index``-th
    positional argument (``def add_question(messages, case): messages.append({...})``), as
    :func:`_run` runs it: its signature, its statements and that parameter's name. The
    parameter is bound nowhere in it and read only as what it adds to (``messages.append``
    / ``.extend`` statements), so that running it on an empty list gives what it adds; None
    otherwise (or when its statements are not all read, as for :func:`_function`)."""
    found = _plain_def(function)
    if found is None:
        return None
    signature, fdef = found
    positional = [*fdef.args.posonlyargs, *fdef.args.args]
    if index >= len(positional):
        return None
    param = positional[index].arg
    adds = _own_adds(fdef, (param,))
    receivers = {id(node) for _, (name, node, _) in adds if name == param}
    if param in _binding_counts(fdef) or any(
            isinstance(n, ast.Name) and n.id == param and id(n) not in receivers
            for n in ast.walk(fdef)):
        return None  # bound again, or read: not what an empty list would give
    body = _body(fdef.body, _Reader(fdef, assigned_as_params=True, own=(param,)))
    return None if isinstance(body, ast.stmt) else (signature, body, param)


def _plain_def(function: types.FunctionType,
               ) -> tuple[inspect.Signature, ast.FunctionDef] | None:
    """A plain ``def`` of a module (no closure, generator, coroutine, ``*args``, ``**kwargs``
    or decorator's wrapper), its signature and definition; None otherwise."""
    code = function.__code__
    if (
        code.co_freevars
        or code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE
                            | inspect.CO_ASYNC_GENERATOR | inspect.CO_VARARGS
                            | inspect.CO_VARKEYWORDS)
        or "__wrapped__" in function.__dict__
        or "__signature__" in function.__dict__
    ):  # fmt: skip
        return None
    fdef = _function_def(function)
    if not isinstance(fdef, ast.FunctionDef) or fdef.name != code.co_name:
        return None  # a lambda, or a source that is not this function's
    try:
        signature = inspect.signature(function, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    return signature, fdef


def _body(stmts: list[ast.stmt], reader: _Reader, loop: bool = False) -> Body | ast.stmt:
    """Statements as ``("let", name, Expr)``, ``("return", Expr or None)``, ``("if", Expr,
    Body, Body)``, ``("add", name, Expr)`` (an add to a list of its own, :func:`_own_adds`:
    the items as a list), ``("for", target, Expr, Body)`` (a ``for`` loop, no ``else``, over
    what :func:`_iterated` goes over), ``("continue",)`` and ``("break",)`` (in a ``loop``);
    the first statement that is not read, when one is not."""
    out: list[tuple[Any, ...]] = []
    for index, stmt in enumerate(stmts):
        if isinstance(stmt, ast.Pass) or (index == 0 and _is_docstring(stmt)):
            continue
        if isinstance(stmt, (ast.Continue, ast.Break)) and loop:
            out.append(("continue",) if isinstance(stmt, ast.Continue) else ("break",))
            continue
        if id(stmt) in reader.own_adds:
            name, what = reader.own_adds[id(stmt)]
            items = reader.read(what, stmt.lineno)
            if items is None:
                return stmt
            out.append(("add", name, items))
            continue
        if isinstance(stmt, ast.For) and not stmt.orelse:
            target = _target_names(stmt.target, reader, scoped=True)
            items = reader.read(stmt.iter, stmt.lineno)
            inner = _body(stmt.body, reader, loop=True)
            if target is None or items is None:
                return stmt
            if isinstance(inner, ast.stmt):
                return inner
            out.append(("for", target, items, inner))
            continue
        if isinstance(stmt, ast.Return):
            value = None if stmt.value is None else reader.read(stmt.value, stmt.lineno)
            if stmt.value is not None and value is None:
                return stmt
            out.append(("return", value))
            continue
        if isinstance(stmt, ast.If):
            test = reader.read(stmt.test, stmt.lineno)
            if test is None:
                return stmt
            body, orelse = _body(stmt.body, reader, loop), _body(stmt.orelse, reader, loop)
            for branch in (body, orelse):
                if isinstance(branch, ast.stmt):
                    return branch
            out.append(("if", test, body, orelse))
            continue
        target, node = _simple_assignment(stmt)
        if (
            isinstance(stmt, ast.AugAssign)
            and isinstance(stmt.op, ast.Add)
            and isinstance(stmt.target, ast.Name)
        ):  # text += "..."
            target, node = stmt.target.id, ast.BinOp(stmt.target, ast.Add(), stmt.value)
            node.lineno = stmt.lineno
        if target is None or node is None or target not in reader.assigned:
            return stmt  # a loop, a call for its effect, ...
        value = reader.read(node, stmt.lineno)
        if value is None:
            return stmt
        out.append(("let", target, value))
    return tuple(out)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _run(body: Body, params: dict[str, Any], names: Any) -> Any:
    """The value a function's statements return, run on ``params`` (its arguments, then the
    names it assigns, in order); :data:`_FELL_THROUGH` when they end without a return
    (:data:`_CONTINUE` / :data:`_BREAK` in a loop's body, for the loop)."""
    for stmt in body:
        if stmt[0] == "let":
            value = _evaluate(stmt[2], params, names)
            if value is MISSING:
                return MISSING
            params[stmt[1]] = value
        elif stmt[0] == "return":
            return None if stmt[1] is None else _evaluate(stmt[1], params, names)
        elif stmt[0] == "add":  # messages.append(...) of its own list: a new list, not changed
            before, items = params.get(stmt[1], MISSING), _evaluate(stmt[2], params, names)
            if type(before) is not list or type(items) not in (list, tuple):
                return MISSING  # (not known, or not what Python would add: a dict's keys...)
            if len(before) + len(items) > _COMPREHENDED:
                return MISSING
            params[stmt[1]] = [*before, *items]
        elif stmt[0] in ("continue", "break"):
            return _CONTINUE if stmt[0] == "continue" else _BREAK
        elif stmt[0] == "for":
            values = _iterated(_evaluate(stmt[2], params, names))
            if values is None or len(values) > _COMPREHENDED:
                return MISSING
            for element in values:
                bound = _bind(stmt[1], element)
                if bound is None:
                    return MISSING
                params.update(bound)
                value = _run(stmt[3], params, names)
                if value is _BREAK:
                    break
                if value is not _FELL_THROUGH and value is not _CONTINUE:
                    return value  # a return in the loop (or MISSING)
        else:
            taken = _truth(_evaluate(stmt[1], params, names))
            if taken is MISSING:
                return MISSING
            value = _run(stmt[2] if taken else stmt[3], params, names)
            if value is not _FELL_THROUGH:
                return value
    return _FELL_THROUGH


def _truth(value: Any) -> Any:
    """``bool(value)`` for a value whose truth runs no user code (a str, number, None, or a
    plain list, tuple or dict); else :data:`MISSING`."""
    if type(value) in _PLAIN or type(value) in (list, tuple, dict):
        return bool(value)
    return MISSING


def _condition(expr: Expr, params: dict[str, Any], names: Any) -> Any:
    """A conditional expression, ``and`` / ``or``, ``not`` or a comparison, evaluated as Python
    does (an ``and`` / ``or`` returns an operand; only the branch taken is evaluated), where
    the values tested are plain (:func:`_truth`) and compared values plain too."""
    kind = expr[0]
    if kind == "if":
        test = _truth(_evaluate(expr[1], params, names))
        if test is MISSING:
            return MISSING
        return _evaluate(expr[2] if test else expr[3], params, names)
    if kind == "bool":
        value: Any = MISSING
        for operand in expr[2]:
            value = _evaluate(operand, params, names)
            test = _truth(value)
            if test is MISSING:
                return MISSING
            if test is (expr[1] == "or"):
                return value  # `or`: the first true operand; `and`: the first false one
        return value
    if kind == "not":
        test = _truth(_evaluate(expr[1], params, names))
        return MISSING if test is MISSING else not test
    op, left, right = expr[1], _evaluate(expr[2], params, names), _evaluate(expr[3], params, names)
    if type(left) not in _PLAIN:
        return MISSING
    if op in ("is", "is not"):  # only `is None` is read
        return (left is None) is (op == "is")
    if op in ("==", "!="):
        if type(right) not in _PLAIN:
            return MISSING
        return (left == right) is (op == "==")
    if op in _ORDER:  # numbers with numbers, strings with strings (else a TypeError, as it runs)
        comparable = (type(left) is str and type(right) is str) or (
            type(left) in _NUMBER and type(right) in _NUMBER)
        return _ORDER[op](left, right) if comparable else MISSING
    if type(right) is str:
        found = left in right  # a TypeError for a non-str left, as when it runs
    elif type(right) is dict:
        found = dict.__contains__(right, left)
    else:
        items = _elements(right)
        if items is None or any(type(x) not in _PLAIN for x in items):
            return MISSING
        found = left in items
    return found is (op == "in")


# how many times this thread read the environment for a plan (env_reads)
_ENV_READS = threading.local()


def env_reads() -> int:
    """How many times this thread has read ``os.environ`` working out a value: a plan that
    read it may not be what the test asks (a fixture may set the variable first), so prefetch
    probes it."""
    return int(getattr(_ENV_READS, "count", 0))


def _environ(key: Any, default: Any = None) -> Any:
    """``os.environ.get(key, default)`` (also what ``os.environ[key]`` and ``os.getenv(key,
    default)`` are read as) of a str key and a str or None default, counted
    (:func:`env_reads`); :data:`MISSING` for anything else."""
    if type(key) is not str or (type(default) not in (str, type(None)) and default is not MISSING):
        return MISSING
    _ENV_READS.count = env_reads() + 1
    return os.environ.get(key, default)


class _Row(NamedTuple):
    field: str


# fields kept in the object and read by C code: __slots__ and namedtuple fields
_FIELDS: tuple[type, ...] = (types.MemberDescriptorType, type(_Row.__dict__["field"]))


def _attribute(base: Any, name: str) -> Any:
    """``base.name`` as Python reads it, where that runs none of the user's code: an instance
    attribute, a ``__slots__`` or namedtuple field, a module's name, a plain class attribute.
    Never a property or another descriptor, never ``__getattr__``, and nothing of an object
    whose class reads its attributes its own way (a ``__getattribute__`` in Python)."""
    if issubclass(type(base), type):  # not isinstance: it may read base.__class__
        return _class_attribute(base, name)
    if type(base) is _View:
        return MISSING  # a view has no attributes but its methods
    if templates.is_path(base):  # PROMPTS.parent, path.stem: pathlib's own properties
        return templates.path_attribute(base, name)
    cls = type(base)
    if not isinstance(cls.__getattribute__, types.WrapperDescriptorType):
        return MISSING  # the class reads attributes its own way: a Python __getattribute__
    found = _lookup(cls, name)
    if issubclass(type(found), _FIELDS):
        field: Any = found
        try:
            return field.__get__(base, cls)
        except AttributeError:  # a slot that was never set
            return MISSING
    if found is not MISSING and _is_data_descriptor(found):
        return MISSING  # a property: it would run code
    try:
        own = object.__getattribute__(base, "__dict__")
    except AttributeError:
        own = None
    if type(own) is dict and name in own:
        return dict.__getitem__(own, name)
    if found is MISSING or hasattr(type(found), "__get__"):
        return MISSING  # not there, or a method
    return found  # a plain attribute of its class


def _class_attribute(cls: type, name: str) -> Any:
    """``cls.name`` for a plain (not a descriptor) attribute of the class or a base class."""
    meta = type(cls)
    if (
        not isinstance(meta.__getattribute__, types.WrapperDescriptorType)
        or _lookup(meta, name) is not MISSING
    ):
        return MISSING  # a metaclass's own lookup, or one of its attributes (__name__, ...)
    found = _lookup(cls, name)
    return MISSING if found is MISSING or hasattr(type(found), "__get__") else found


def _lookup(cls: type, name: str) -> Any:
    """What the class or a base class defines under ``name`` (its ``__dict__`` entry)."""
    for klass in cls.__mro__:
        namespace = klass.__dict__
        if name in namespace:
            return namespace[name]
    return MISSING


def _is_data_descriptor(value: Any) -> bool:
    kind = type(value)
    return hasattr(kind, "__set__") or hasattr(kind, "__delete__")


def _item(base: Any, key: Any) -> Any:
    """``base[key]`` with the built-in's own lookup: no ``__missing__``, no subclass's
    ``__getitem__``; ``os.environ[key]`` (:func:`_environ`)."""
    if issubclass(type(base), dict):
        return dict.get(base, key, MISSING)
    if base is os.environ:
        return _environ(key, MISSING)
    items = _elements(base)
    if items is None or type(key) is not int or not -len(items) <= key < len(items):
        return MISSING
    return items[key]


def _elements(value: Any) -> list[Any] | None:
    """A list's or tuple's elements, read with the built-in's own methods (not a subclass's
    ``__iter__``, ``__len__`` or ``__getitem__``); None for anything else."""
    kind = type(value)
    if issubclass(kind, list):
        return list(list.__iter__(value))
    if issubclass(kind, tuple):
        return list(tuple.__iter__(value))
    return None
