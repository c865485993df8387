"""Prompts from templates and files, worked out ahead by prefetch (``templates.py``).

What prefetch plans must be exactly what the test's expression gives when it runs, and where
working it out could run the user's code (a filter, a loader, a global of its own, a value's
``__str__``) or block (a pipe), nothing is planned: the test sends its own request.
"""

from __future__ import annotations

import os
import pathlib
import string
import threading
from typing import Any

import jinja2
import jinja2.sandbox
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_prefetch import _planned_value as _planned  # what prefetch plans for rollout.ask(<call>)

from pytest_modelrollout.asked import MISSING, first_ask_call
from pytest_modelrollout.datasets import Case
from pytest_modelrollout.templates import MAX_FILE


def _ran(call: str, names: dict[str, Any], **params: Any) -> Any:
    return eval(call, {**names}, params)  # the test's own expression


@pytest.fixture
def prompts(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "support.j2").write_text(
        "{% extends 'base.j2' %}{% block body %}{{ question | trim }}"
        "{% for tag in tags %} #{{ tag | upper }}{% endfor %}{% endblock %}",
        encoding="utf-8",
    )
    (folder / "base.j2").write_text(
        "{% if lang == 'zh' %}客户：{% else %}Customer: {% endif %}{% block body %}{% endblock %}"
        "\n{{ signature | default('Acme support') }}\n",
        encoding="utf-8",
    )
    (folder / "system_en.txt").write_text("Answer in English.\n", encoding="utf-8")
    (folder / "system_zh.txt").write_text("请用中文回答。\n", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("Café".encode("latin-1"))
    return folder


def _names(prompts: pathlib.Path) -> dict[str, Any]:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(prompts), keep_trailing_newline=True)
    return {
        "PROMPTS": prompts,
        "ENV": env,
        "SUPPORT": env.get_template("support.j2"),
        "INLINE": jinja2.Template("{{ case.prompt }} [{{ case.meta.lang }}] {{ case.id }}"),
        "SANDBOXED": jinja2.sandbox.SandboxedEnvironment().from_string(
            "{% for i in range(n) %}{{ i }}{% endfor %}"),
        "NOTE": string.Template("Note for $name: $message"),
        "Path": pathlib.Path,
        "jinja2": jinja2,
        "string": string,
        "__file__": str(prompts / "test_suite.py"),
    }


CASE = Case(id="c7", prompt="  Where is my order?  ",
            meta={"lang": "zh", "name": "安", "tags": ["late", "vip"], "n": 3})
PLANNED = [
    "SUPPORT.render(question=case.prompt, **case.meta)",
    "SUPPORT.render(case.meta, question=case.prompt, lang='en')",  # the keywords win
    "SUPPORT.render({'question': case.prompt, 'tags': [], 'signature': 'Bo'})",
    "ENV.get_template('support.j2').render(question=case.prompt, tags=(), lang=lang)",
    "ENV.from_string('{{ a }}-{{ b|length }}').render(a=case.id, b=case.meta['tags'])",
    "INLINE.render(case=case)",
    "SANDBOXED.render(n=case.meta['n'])",
    "jinja2.Template('Hi {{ name }}!').render(name=case.meta['name'])",
    "NOTE.substitute(case.meta, message=case.prompt.strip())",
    "NOTE.substitute(name=case.id, message=lang)",
    "NOTE.safe_substitute(message=lang)",
    "string.Template('$lang: $$5').substitute(lang=lang)",
    "(PROMPTS / f'system_{lang}.txt').read_text(encoding='utf-8')",
    "(PROMPTS / 'latin1.txt').read_text('latin-1')",
    "PROMPTS.joinpath('system_zh.txt').read_text(encoding='utf-8').strip()",
    "(Path(__file__).parent / 'prompts').name",
    "PROMPTS.with_name('other').stem",
    "(PROMPTS / 'system_en.txt').with_suffix('.md').suffix",
]


@pytest.mark.parametrize("call", PLANNED)
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_what_is_planned_is_what_the_call_gives(
    prompts: pathlib.Path, call: str, lang: str
) -> None:
    names = _names(prompts)
    planned = _planned(call, names, case=CASE, lang=lang)
    assert planned is not MISSING
    assert planned == _ran(call, names, case=CASE, lang=lang)
    assert type(planned) in (str, type(pathlib.Path()))


class _Shouty:
    def __str__(self) -> str:
        raise AssertionError("the user's __str__ ran")

    __html__ = __str__


def _loader(name: str) -> str:
    raise AssertionError("the user's loader ran")


class _OwnTemplate(string.Template):
    def substitute(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        raise AssertionError("the user's substitute ran")


class _OwnPath(type(pathlib.Path())):  # type: ignore[misc]
    def read_text(self, *args: Any, **kwargs: Any) -> str:
        raise AssertionError("the user's read_text ran")


def _with(**changes: Any) -> jinja2.Environment:
    env = jinja2.Environment()
    for name, value in changes.items():
        setattr(env, name, value)
    return env


def _filtered() -> jinja2.Environment:
    env = jinja2.Environment()
    env.filters["shout"] = lambda text: text.upper()
    return env


def _with_global() -> jinja2.Environment:
    env = jinja2.Environment()
    env.globals["helper"] = lambda: "x"
    return env


def _sandbox_with_operator() -> jinja2.Environment:
    env = jinja2.sandbox.SandboxedEnvironment()
    env.binop_table["+"] = lambda a, b: "x"
    return env


class _Environment(jinja2.Environment):
    pass


REFUSED = {
    "a filter of its own": (_filtered(), "its environment has a filter of its own (`shout`)"),
    "a global of its own": (_with_global(), "its environment has a global of its own (`helper`)"),
    "a function loader": (jinja2.Environment(loader=jinja2.FunctionLoader(_loader)),
                          "its loader is a `FunctionLoader`"),
    "an environment class of its own": (
        _Environment(), "its environment is a `_Environment`, not one of Jinja2's own classes"),
    "i18n": (jinja2.Environment(extensions=["jinja2.ext.i18n"]),
             "its environment has the extension `jinja2.ext.InternationalizationExtension`"),
    "finalize": (jinja2.Environment(finalize=lambda v: v),
                 "its environment has a finalize function"),
    "async": (jinja2.Environment(enable_async=True), "its environment is async"),
    "autoescape": (jinja2.Environment(autoescape=lambda name: True),
                   "its autoescape is a function of its own"),
    "tojson": (_with(policies={"json.dumps_function": lambda v, **kw: "x"}),
               "its environment's `tojson` dumps with a function of its own"),
    "a bytecode cache": (jinja2.Environment(bytecode_cache=jinja2.FileSystemBytecodeCache()),
                         "its environment has a bytecode cache"),
    "a context class": (_with(context_class=dict),
                        "its environment sets `context_class` of its own"),
    "a sandbox's operator": (_sandbox_with_operator(),
                             "its environment has an operator of its own (`binop_table`)"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_an_environment_that_may_run_the_users_code_is_not_rendered_ahead(case: Any) -> None:
    env, why = case
    template = env.from_string("{{ q }}")
    names = {"T": template, "ENV": env}
    assert _planned("T.render(q=q)", names, q="hi") is MISSING
    assert _planned("ENV.from_string('{{ q }}').render(q=q)", names, q="hi") is MISSING
    assert _planned("ENV.get_template('x.j2')", names) is MISSING
    from pytest_modelrollout.templates import why_not

    assert why_not(template, "render") == why


def test_what_else_could_run_the_users_code_is_not_worked_out(tmp_path: pathlib.Path) -> None:
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello", encoding="utf-8")
    template_with_global = jinja2.Environment().from_string("{{ q }}", globals={"f": len})
    names = {"T": jinja2.Template("{{ q }}"), "S": string.Template("$q"),
             "OWN": _OwnTemplate("$q"), "P": prompt, "OWN_PATH": _OwnPath(prompt),
             "TG": template_with_global}
    assert _planned("T.render(q=q)", names, q=_Shouty()) is MISSING  # its __str__
    assert _planned("T.render(q=q)", names, q=[_Shouty()]) is MISSING
    assert _planned("S.substitute(q=q)", names, q=_Shouty()) is MISSING
    assert _planned("S.substitute(q=q)", names, q=[1]) is MISSING  # str() of a list: not read
    assert _planned("S.substitute(q=1)", names) == "1"
    assert _planned("OWN.substitute(q=q)", names, q="x") is MISSING
    assert _planned("OWN_PATH.read_text()", names) is MISSING
    assert _planned("P.read_text()", names) == "hello"
    assert _planned("TG.render(q=q)", names, q="x") is MISSING
    from pytest_modelrollout.templates import why_not

    assert why_not(template_with_global, "render") == "the template has a global of its own (`f`)"
    # raises when it runs, so the test does not ask: nothing planned
    assert _planned("S.substitute()", names) is MISSING  # KeyError
    assert _planned("S.substitute(x, q=1)", names, x="not a mapping") is MISSING
    assert _planned("T.render(q=1, **m)", names, m={"q": 2}) is MISSING  # q twice: TypeError
    strict = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string("{{ nope }}")
    assert _planned("T.render()", {"T": strict}) is MISSING  # UndefinedError
    assert _planned("(P / 'missing.txt').read_text()", names) is MISSING
    big = tmp_path / "big.txt"
    big.write_text("x" * (MAX_FILE + 1), encoding="utf-8")
    assert _planned("P.read_text()", {"P": big}) is MISSING  # too large to be a prompt
    assert _planned("P.read_text(encoding='nope')", names) is MISSING  # no such encoding
    assert _planned("P.read_text(encoding=1)", names) is MISSING


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_is_not_read_ahead(tmp_path: pathlib.Path) -> None:
    """Reading a named pipe would block until a writer comes: it is never read ahead."""
    pipe = tmp_path / "prompt.txt"
    os.mkfifo(pipe)
    found: list[Any] = []
    reader = threading.Thread(target=lambda: found.append(_planned("P.read_text()", {"P": pipe})),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert found == [MISSING]


def test_a_template_cannot_change_the_values_it_is_given() -> None:
    """The template renders on copies: what it does to them (``{% do %}``) is not seen by the
    test, which renders on its own values when it runs."""
    env = jinja2.Environment(extensions=["jinja2.ext.do"])
    template = env.from_string(
        "{% do case.meta.update(lang='xx') %}{% do tags.append('more') %}{{ case.meta.lang }}"
        "{{ tags | join(',') }}")
    case = Case(id="c1", prompt="p", meta={"lang": "en"})
    tags = ["a"]
    planned = _planned("T.render(case=case, tags=tags)", {"T": template}, case=case, tags=tags)
    assert planned == "xxa,more"
    assert case.meta == {"lang": "en"} and tags == ["a"]
    assert template.render(case=case, tags=tags) == planned  # as the test renders it


_SHOUTY = jinja2.Environment()
_SHOUTY.filters["shout"] = str.upper
_SHOUTY_TEMPLATE = _SHOUTY.from_string("{{ q | shout }}")


def _asks_shouty(rollout, case):  # type: ignore[no-untyped-def]
    rollout.ask(_SHOUTY_TEMPLATE.render(q=case.prompt))


def test_verbose_says_what_of_a_template_is_not_read() -> None:
    line = _asks_shouty.__code__.co_firstlineno + 1
    assert first_ask_call(_asks_shouty) == (
        f"`_SHOUTY_TEMPLATE.render(q=case.prompt)` at line {line} cannot be read without running "
        "it (its environment has a filter of its own (`shout`))"
    )


# -- generated templates -------------------------------------------------------------------------
_TEXT = st.text(alphabet="ab中 \n'{}$", max_size=6)
_VALUES = st.one_of(_TEXT, st.integers(-5, 5), st.booleans(), st.none(),
                    st.lists(_TEXT, max_size=3))
_FIELDS = ("a", "b", "items")
_FRAGMENTS = st.sampled_from([
    "{{ a }}", "{{ b }}", "{{ a | upper }}", "{{ b | default('d') }}", "{{ items | length }}",
    "{% for x in items %}[{{ x | trim }}]{% endfor %}", "{% if a %}yes{% else %}no{% endif %}",
    "{{ items | join('/') }}", "{{ a ~ b }}", "{{ nope }}", "{{ a.b }}", "{{ items[0] }}",
    "{% if b is string %}s{% endif %}", "{{ (a or '') | replace('a', 'A') }}", "text 中文 ",
    "{{ a | tojson }}", "{{ items | sort | first }}",
])  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.lists(_FRAGMENTS, min_size=1, max_size=5).map("".join),
       values=st.fixed_dictionaries({}, optional=dict.fromkeys(_FIELDS, _VALUES)),
       strict=st.booleans())
def test_a_generated_template_is_planned_as_it_renders(
    source: str, values: dict[str, Any], strict: bool
) -> None:
    """A template of Jinja2's filters, tests, loops and conditions over generated values: what
    is planned is exactly what rendering gives, or nothing when rendering raises."""
    undefined = jinja2.StrictUndefined if strict else jinja2.Undefined
    template = jinja2.Environment(undefined=undefined).from_string(source)
    planned = _planned("T.render(**values)", {"T": template}, values=values)
    event("planned" if planned is not MISSING else "not planned")
    try:
        expected = template.render(**values)
    except Exception:  # the test would raise: nothing to plan
        assert planned is MISSING
    else:
        assert planned == expected


@settings(max_examples=150, deadline=None)
@given(source=st.lists(st.sampled_from(["$a", "${b}", "$$", "x", "中", "$", "${a}b", " "]),
                       max_size=6).map("".join),
       values=st.fixed_dictionaries({}, optional=dict.fromkeys(
           ("a", "b"), st.one_of(_TEXT, st.integers(), st.floats(allow_nan=False),
                                 st.booleans()))),
       safe=st.booleans())
def test_a_generated_string_template_is_planned_as_it_substitutes(
    source: str, values: dict[str, Any], safe: bool
) -> None:
    """``substitute`` / ``safe_substitute`` of strings and numbers: planned as it runs, or
    nothing when it raises (a name it lacks, a bad placeholder)."""
    method = "safe_substitute" if safe else "substitute"
    template = string.Template(source)
    planned = _planned(f"T.{method}(values)", {"T": template}, values=values)
    event("planned" if planned is not MISSING else "not planned")
    try:
        expected = getattr(template, method)(values)
    except (KeyError, ValueError):
        assert planned is MISSING
    else:
        assert planned == expected
