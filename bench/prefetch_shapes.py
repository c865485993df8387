"""Benchmark: suites written the ways teams write them, and what prefetch sends ahead for each.

Usage::

    python bench/prefetch_shapes.py [--cases 200] [--latency-ms 300] [--repeat 1]
                                    [--xdist 2] [--base REV] [--shapes NAME,NAME]

Each shape is one test function over ``--cases`` rows of ``cases()`` (2 models, the simulator
at ``--latency-ms``, concurrency 16), run with pytest in a subprocess:

- ``plain``: ``rollout.ask(case)``, the baseline every other shape is compared with;
- ``skips 1 in 10``: ``pytest.skip`` inside the test for one case in ten (a case without an
  expected answer);
- ``system looked up``: ``rollout.ask(case.prompt, system=SYSTEMS[case.meta["lang"]])``;
- ``message list``: the same system prompt in a message list written in the test;
- ``%-formatted``: ``rollout.ask("Customer (%s): %s" % (case.id, case.prompt))``;
- ``cut to length``: ``rollout.ask(case.prompt[:60])`` (the prompts are longer);
- ``candidate only``: ``rollout.candidate.ask(case.prompt)`` (one model's calls);
- ``system by a condition``: ``system="..." if case.meta["lang"] == "en" else "..."``;
- ``if / else``: the ask under ``if case.meta["lang"] == "zh":``, another under ``else:``;
- ``system set by if / else``: ``system = "..."`` under ``if case.meta["lang"] == "zh":``,
  another under ``else:``, then ``rollout.ask(case.prompt, system=system)``;
- ``prompt extended with +=``: ``prompt = case.prompt``, ``prompt += " Answer briefly."`` under
  ``if case.meta["lang"] == "en":``, ``prompt += " (ticket " + case.id + ")"``;
- ``parts joined``: ``question, lang = case.prompt, case.meta["lang"]``, a list of parts
  appended to (under ``if lang == "zh":`` too, through a name set there), then
  ``rollout.ask(" ".join(parts))``;
- ``documents in a loop``: a message list appended to by ``for shot in
  case.meta["shots"]:`` (a RAG test's documents), then the question;
- ``generation settings``: ``rollout.ask(case.prompt, system="Answer briefly.",
  **GENERATION)``, a dict of the module with the sampling parameters;
- ``format with **meta``: ``rollout.ask(ORDER.format(question=case.prompt, **case.meta))``;
- ``set in the branch``: under ``if case.meta["lang"] == "zh":``, ``system =
  SYSTEMS[case.meta["lang"]]`` then ``rollout.candidate.ask(case.prompt, system=system)``;
  ``else: rollout.ask(case.prompt)`` (300 calls);
- ``context built in a loop``: ``context = ""``, then ``context += f"[{i}] ..."`` in a ``for``
  loop over the case's documents (here its examples), then the question after it;
- ``system from meta.get``: ``system=case.meta.get("system", "Be brief.")``;
- ``built by a function``: ``rollout.ask(build_prompt(case, channel="email"),
  system=system_for(case))``, two functions of the test's module (``if``, ``len``, a slice,
  ``dict.get``);
- ``system from a fixture``: ``system=system_prompt``, a fixture of the module that returns
  ``SYSTEMS[case.meta["lang"]]`` (it takes the test's ``case``);
- ``Jinja2 template``: ``rollout.ask(SUPPORT.render(question=case.prompt, **case.meta))``, a
  template of a ``FileSystemLoader`` (needs ``jinja2``, in the ``test`` extra);
- ``system from a file``: ``system=(PROMPTS / f"system_{lang}.txt").read_text(...)``, a file
  chosen by the case;
- ``string.Template``: ``rollout.ask(NOTE.substitute(case.meta, message=case.prompt))``;
- ``asks in a loop``: ``for style in ("brief", "formal"): rollout.ask(f"{case.prompt}
  (answer: {style})")``: twice the calls of ``plain`` (so about 2x its time at best);
- ``comprehension with an if``: ``[rollout.ask(f"{case.prompt} (answer: {style})") for style
  in ("brief", "", "formal") if style]``: the same two calls as the loop's;
- ``loop with a continue``: the loop's ``for style in ("brief", "", "formal"):`` with ``if
  not style: continue`` before its ask: the same two calls;
- ``loop with if by language``: the loop's asks under ``if case.meta["lang"] == "zh":``, the
  Chinese cases' of the candidate alone (``rollout.candidate.ask``): 1.5 times ``plain``'s
  calls;
- ``ask in a helper``: ``pair = ask_support(rollout, case)``, a function of the test's module
  whose ``return rollout.ask(prompt, system=...)`` follows ``prompt = f"{case.prompt} (answer:
  {style})"``;
- ``helper asking twice``: ``pair = ask_support(rollout, case)``, a helper that asks both
  models, then the candidate alone for one sentence (``rollout.candidate.ask(case.prompt + "
  One sentence.", ...)``), then returns the first pair: 1.5 times ``plain``'s calls;
- ``helper by language``: ``ask_in_language(rollout, case)``, a helper whose ``if
  case.meta["lang"] == "zh":`` asks the candidate alone (``return
  rollout.candidate.ask(case.prompt, system=...)``) and else both models: 300 calls, 0.75
  times ``plain``'s (no stable call for the Chinese half);
- ``counted retries``, ``retries up to a limit``, ``for-else retries``: the ask in a retry
  loop (``while tries < 3:``, ``while tries < MAX_TRIES:``, ``for attempt in
  range(MAX_TRIES): ... break`` / ``else: pytest.fail(...)``) that ends once the candidate
  answered;
- ``try retries``: ``for attempt in range(MAX_TRIES):`` with the ask in ``try:`` (``assert
  pair.candidate.ok``, ``break``) and ``except AssertionError: continue``;
- ``helper retrying``: ``assert ask_until_answered(rollout, case) is not None``, a helper
  with such a ``while`` loop;
- ``message list appended``: ``messages = [system]``, then ``messages.append({"role": "user",
  "content": case.prompt})`` before ``rollout.ask(messages)``;
- ``message list added to under an if``: the same, with ``if case.meta["lang"] == "zh":``
  appending a system message and ``else:`` a question and answer from the case before it;
- ``conversation``: ``for turn in (case.prompt,):`` appending the turn, asking, appending the
  reply;
- ``conversation of three turns``: the same over the case's prompt and two follow-up turns
  (3 times ``plain``'s calls; each turn after the reply before it: 3 latencies at least);
- ``follow-up on the reply``: ``first = rollout.ask(case)``, then ``rollout.ask([...])`` of
  the question, ``first.candidate.text`` and a follow-up (2 times ``plain``'s calls, the
  second after the first's reply);
- ``few-shot joined``: ``rollout.ask("\\n\\n".join(f"Q: {s['q']}\\nA: {s['a']}" for s in
  case.meta["shots"]) + f"\\n\\nQ: {case.prompt}\\nA:")``, the case's own examples;
- ``few-shot messages``: ``for shot in case.meta["shots"]:`` appending a user message (the
  example's question) and an assistant message (its answer) to the message list, then the
  question;
- ``few-shot extended``: ``for question, answer in EXAMPLES[case.meta["lang"]]:`` extending
  the message list with the pair, a dict of the module's examples per language;
- ``if on the environment``: the ask under ``if os.environ.get("SUPPORT_MODE") ==
  "strict":`` (the variable is not set: read since 2026-11-28, probed three times), another
  under ``else:``;
- ``environment in the prompt``: ``style = os.environ.get("ANSWER_STYLE", "brief")`` in the
  prompt, ``system=os.getenv("SUPPORT_SYSTEM", "Be kind.")`` (neither set);
- ``if by a walrus``: ``if (lang := case.meta["lang"]) == "zh":`` (a condition prefetch did
  not read before 2026-11-28 03:20), the Chinese cases asking with a system prompt, the others ``rollout.ask(case.prompt)``;
- ``messages copied``: ``messages = list(BASE)``, the module's message list copied, then the
  question appended;
- ``payload dict``: ``payload = {**case.meta, "q": case.prompt}``, ``payload["channel"] =
  ...`` (under ``if case.meta["lang"] == "zh":`` too), then
  ``rollout.ask(ORDER.format(**payload))``;
- ``messages built by a function``: ``rollout.ask(build_messages(case))``, a function of the
  module that copies the module's message list, appends each few-shot example's question
  and answer in a ``for`` loop (``continue`` past an empty one), then the question;
- ``list added to by a function``: ``messages = [...]``, then ``add_question(messages,
  case)``, a function of the module that appends the question to the list it is given;
- ``asked through an object a fixture made``: the test parametrized with the questions as
  strings, ``bot.answer(question)`` on a ``SupportBot(rollout)`` from a fixture, whose method
  asks ``self.model.ask(question, system=..., temperature=0)``;
- ``case's prompt asked through an object``: the same bot handed the case, asking
  ``self.model.ask(case.prompt, system=...)``;
- ``question wrapped by an object``: the bot handed the case asks
  ``self.model.ask(f"Customer: {case.prompt}\\nReply briefly.")``.
- ``the same ask again``: ``first = rollout.ask(case)``, then ``rollout.ask(case)`` twice in a
  ``for`` loop (a repeatability check: three calls per model per test, each after the reply
  before it);
- ``question worded by language by an object``: the bot handed the case words it by its
  language, a template and a system prompt for English and for Chinese.

For each: the wall time, as a ratio to ``plain``'s in the same run (and to the ideal, the calls
x latency / 16); the calls the test functions made; the calls sent ahead and left unused
(wasted: paid for, never used); and the test functions that ran live (from ``-v``). With
``--xdist N`` each shape runs with ``-n N`` too; ``--shapes`` runs only those named (and
``plain``). With ``--base REV`` each also runs with the
plugin as it was at git revision REV (its ``src/`` first on ``PYTHONPATH``), alternating with
this tree, the simulator being this tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import CONCURRENCY, export_src, pytest_cmd, start_sim, user_env

HEAD = """
import pytest
from pytest_modelrollout import cases

SYSTEMS = {"en": "Answer in English.", "zh": "请用中文回答。"}

def build_prompt(case, channel="chat"):
    # the customer's message as the bot gets it
    text = case.prompt.strip()
    if len(text) > 60:
        text = text[:60]
    if case.meta.get("lang") == "zh":
        return "客户消息（" + channel + "）：" + text
    return f"Customer message ({channel}): {text}"

def system_for(case):
    return SYSTEMS.get(case.meta.get("lang"), "Be brief.")

@pytest.fixture
def system_prompt(case):
    return SYSTEMS[case.meta["lang"]]

{prelude}
@pytest.mark.workflow("support")
@pytest.mark.parametrize("case", {params})
def test_shape(rollout, case{fixtures}):
"""
PROMPTS = """
import string
from pathlib import Path

PROMPTS = Path(__file__).parent / "prompts"
"""
JINJA = PROMPTS + """
import jinja2

ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(PROMPTS))
SUPPORT = ENV.get_template("support.j2")
"""
# the files the shapes read: a Jinja2 template, a system prompt per language
FILES = {
    "support.j2": "{% if lang == 'zh' %}客户消息：{% else %}Customer message: {% endif %}"
                  "{{ question }}\n",
    "system_en.txt": "Answer in English.\n",
    "system_zh.txt": "请用中文回答。\n",
}
# a shape: the test's body; or (the fixtures it takes, its body); or (those, its body, code
# of the module before it); or (those, and what its `case` is parametrized with instead of
# the cases)
Shape = str | tuple[str, str] | tuple[str, str, str] | tuple[str, str, str, str]
SHAPES: dict[str, Shape] = {
    "plain": "rollout.ask(case)",
    "the same ask again": "first = rollout.ask(case)\n"
                          "    for _ in range(2):  # repeatable: the same reply each time\n"
                          "        rollout.ask(case)",
    "skips 1 in 10": 'if case.id.endswith("3"):\n        pytest.skip("no expected answer")\n'
                     "    rollout.ask(case)",
    "system looked up": 'rollout.ask(case.prompt, system=SYSTEMS[case.meta["lang"]])',
    "message list": 'rollout.ask([{"role": "system", "content": SYSTEMS[case.meta["lang"]]},\n'
                    '                 {"role": "user", "content": case.prompt}])',
    "%-formatted": 'rollout.ask("Customer (%s): %s" % (case.id, case.prompt))',
    "cut to length": "rollout.ask(case.prompt[:60])",
    "candidate only": "rollout.candidate.ask(case.prompt)",
    "system by a condition": 'rollout.ask(case.prompt, system="Answer briefly." '
                             'if case.meta["lang"] == "en" else "请简短回答。")',
    "if / else": 'if case.meta["lang"] == "zh":\n'
                 '        rollout.ask(case.prompt, system="请简短回答。")\n'
                 "    else:\n"
                 '        rollout.ask(case.prompt, system="Answer briefly.")',
    "system set by if / else": 'if case.meta["lang"] == "zh":\n'
                               '        system = "请用中文回答。"\n'
                               '    else:\n'
                               '        system = "Answer in English."\n'
                               '    rollout.ask(case.prompt, system=system)',
    "prompt extended with +=": 'prompt = case.prompt\n'
                               '    if case.meta["lang"] == "en":\n'
                               '        prompt += " Answer briefly."\n'
                               '    prompt += " (ticket " + case.id + ")"\n'
                               '    rollout.ask(prompt)',
    "parts joined": 'question, lang = case.prompt, case.meta["lang"]\n'
                    '    parts = ["Customer (" + lang + "):"]\n'
                    '    if lang == "zh":\n'
                    '        note = "请用中文回答。"\n'
                    '        parts.append(note)\n'
                    '    parts.append(question)\n'
                    '    rollout.ask(" ".join(parts))',
    "documents in a loop": 'messages = [{"role": "system", "content": "Answer from the documents."}]\n'
                           '    for shot in case.meta["shots"]:\n'
                           '        messages.append({"role": "user", "content": "Document: " + shot["q"]})\n'
                           '    messages.append({"role": "user", "content": case.prompt})\n'
                           '    rollout.ask(messages)',
    "generation settings": ("", 'rollout.ask(case.prompt, system="Answer briefly.", **GENERATION)',
                            'GENERATION = {"temperature": 0, "max_tokens": 300}\n'),
    "format with **meta": ("", 'rollout.ask(ORDER.format(question=case.prompt, **case.meta))',
                           'ORDER = "Customer ({lang}): {question}"\n'),
    "set in the branch": 'if case.meta["lang"] == "zh":\n'
                         '        system = SYSTEMS[case.meta["lang"]]\n'
                         '        rollout.candidate.ask(case.prompt, system=system)\n'
                         '    else:\n'
                         '        rollout.ask(case.prompt)',
    "context built in a loop": 'context = ""\n'
                               '    for i, shot in enumerate(case.meta["shots"], 1):\n'
                               '        context += f"[{i}] {shot[\'q\']} {shot[\'a\']}\\n"\n'
                               '    rollout.ask(f"Context:\\n{context}Question: {case.prompt}")',
    "system from meta.get": 'rollout.ask(case.prompt, system=case.meta.get("system", '
                            '"Be brief."))',
    "built by a function": 'rollout.ask(build_prompt(case, channel="email"), '
                           "system=system_for(case))",
    # (the test requests the fixture: the fixtures it takes, then its body)
    "system from a fixture": (", system_prompt",
                              "rollout.ask(case.prompt, system=system_prompt)"),
    "Jinja2 template": ("", "rollout.ask(SUPPORT.render(question=case.prompt, **case.meta))",
                        JINJA),
    "system from a file": ("", 'lang = case.meta["lang"]\n'
                               '    system = (PROMPTS / f"system_{lang}.txt").read_text('
                               'encoding="utf-8")\n'
                               "    rollout.ask(case.prompt, system=system)", PROMPTS),
    "string.Template": ("", "rollout.ask(NOTE.substitute(case.meta, message=case.prompt))",
                        PROMPTS + 'NOTE = string.Template("Customer ($lang): $message")\n'),
    "counted retries": "tries = 0\n"
                       "    while tries < 3:\n"
                       "        pair = rollout.ask(case.prompt + \" Answer briefly.\")\n"
                       "        tries += 1\n"
                       "        if pair.candidate.ok:\n"
                       "            break",
    "retries up to a limit": ("", "tries = 0\n"
                                  "    while tries < MAX_TRIES:\n"
                                  "        pair = rollout.ask(case.prompt + \" Answer briefly.\")\n"
                                  "        tries += 1\n"
                                  "        if pair.candidate.ok:\n"
                                  "            break", "MAX_TRIES = 3\n"),
    "for-else retries": ("", "for attempt in range(MAX_TRIES):\n"
                             "        pair = rollout.ask(case.prompt + \" Answer briefly.\")\n"
                             "        if pair.candidate.ok:\n"
                             "            break\n"
                             "    else:\n"
                             "        pytest.fail(\"the candidate never answered\")",
                         "MAX_TRIES = 3\n"),
    "try retries": ("", "for attempt in range(MAX_TRIES):\n"
                        "        try:\n"
                        "            pair = rollout.ask(case.prompt + \" Answer briefly.\")\n"
                        "            assert pair.candidate.ok\n"
                        "            break\n"
                        "        except AssertionError:\n"
                        "            continue",
                    "MAX_TRIES = 3\n"),
    "asks in a loop": 'for style in ("brief", "formal"):\n'
                      '        rollout.ask(f"{case.prompt} (answer: {style})")',
    "comprehension with an if": 'pairs = [rollout.ask(f"{case.prompt} (answer: {style})")\n'
                                '             for style in ("brief", "", "formal") if style]',
    "loop with a continue": 'for style in ("brief", "", "formal"):\n'
                            '        if not style:\n'
                            '            continue\n'
                            '        rollout.ask(f"{case.prompt} (answer: {style})")',
    "loop with if by language": 'for style in ("brief", "formal"):\n'
                            '        if case.meta["lang"] == "zh":\n'
                            '            rollout.candidate.ask(f"{case.prompt}（{style}）")\n'
                            '        else:\n'
                            '            rollout.ask(f"{case.prompt} (answer: {style})")',
    "ask in a helper": ("", "pair = ask_support(rollout, case)",
                        'def ask_support(rollout, case, style="brief"):\n'
                        '    prompt = f"{case.prompt} (answer: {style})"\n'
                        '    return rollout.ask(prompt, system="Answer briefly.")\n'),
    "helper asking twice": ("", "pair = ask_support(rollout, case)",
                            'def ask_support(rollout, case):\n'
                            '    pair = rollout.ask(case.prompt, system="Answer briefly.")\n'
                            '    rollout.candidate.ask(case.prompt + " One sentence.",\n'
                            '                          system="Answer briefly.")\n'
                            '    return pair\n'),
    "helper by language": ("", "ask_in_language(rollout, case)",
                           'def ask_in_language(rollout, case):\n'
                           '    if case.meta["lang"] == "zh":\n'
                           '        return rollout.candidate.ask(case.prompt, system="请简短回答。")\n'
                           '    return rollout.ask(case.prompt, system="Answer briefly.")\n'),
    "helper retrying": ("", "assert ask_until_answered(rollout, case) is not None",
                        "MAX_TRIES = 3\n\n"
                        "def ask_until_answered(rollout, case, tries=MAX_TRIES):\n"
                        "    attempt = 0\n"
                        "    while attempt < tries:\n"
                        '        pair = rollout.ask(case.prompt + " Answer briefly.")\n'
                        "        attempt += 1\n"
                        "        if pair.candidate.ok:\n"
                        "            return pair\n"
                        "    return None\n"),
    "message list appended": 'messages = [{"role": "system", "content": "Answer briefly."}]\n'
                             '    messages.append({"role": "user", "content": case.prompt})\n'
                             '    rollout.ask(messages)',
    "message list added to under an if": (
        'messages = [{"role": "system", "content": "Answer briefly."}]\n'
        '    if case.meta["lang"] == "zh":\n'
        '        messages.append({"role": "system", "content": "用中文回答。"})\n'
        '    else:\n'
        '        messages.append({"role": "user", "content": case.meta["shots"][0]["q"]})\n'
        '        messages.append({"role": "assistant", "content": case.meta["shots"][0]["a"]})\n'
        '    messages.append({"role": "user", "content": case.prompt})\n'
        '    rollout.ask(messages)'),
    "conversation": 'messages = [{"role": "system", "content": "Answer briefly."}]\n'
                    '    for turn in (case.prompt,):\n'
                    '        messages.append({"role": "user", "content": turn})\n'
                    '        pair = rollout.ask(messages)\n'
                    '        messages.append({"role": "assistant", "content": pair.candidate.text})',
    "conversation of three turns": (
        'messages = [{"role": "system", "content": "Answer briefly."}]\n'
        '    for turn in (case.prompt, "When will it arrive?", "Thanks. Anything else?"):\n'
        '        messages.append({"role": "user", "content": turn})\n'
        '        pair = rollout.ask(messages)\n'
        '        pair.expect_length(max_chars=4000)\n'
        '        messages.append({"role": "assistant", "content": pair.candidate.text})'),
    "follow-up on the reply": (
        'first = rollout.ask(case)\n'
        '    rollout.ask([{"role": "user", "content": case.prompt},\n'
        '                 {"role": "assistant", "content": first.candidate.text},\n'
        '                 {"role": "user", "content": "Shorter, please."}])'),
    "few-shot joined": 'shots = "\\n\\n".join(f"Q: {s[\'q\']}\\nA: {s[\'a\']}" '
                       'for s in case.meta["shots"])\n'
                       '    rollout.ask(f"{shots}\\n\\nQ: {case.prompt}\\nA:")',
    "few-shot messages": 'messages = [{"role": "system", "content": "Answer briefly."}]\n'
                         '    for shot in case.meta["shots"]:\n'
                         '        messages.append({"role": "user", "content": shot["q"]})\n'
                         '        messages.append({"role": "assistant", "content": shot["a"]})\n'
                         '    messages.append({"role": "user", "content": case.prompt})\n'
                         '    rollout.ask(messages)',
    "few-shot extended": ("", 'messages = [{"role": "system", "content": "Answer briefly."}]\n'
                          '    for question, answer in EXAMPLES[case.meta["lang"]]:\n'
                          '        messages.extend([{"role": "user", "content": question},\n'
                          '                         {"role": "assistant", "content": answer}])\n'
                          '    messages.append({"role": "user", "content": case.prompt})\n'
                          '    rollout.ask(messages)',
                          'EXAMPLES = {"en": [("Where is order A-1?", "On its way.")],\n'
                          '            "zh": [("订单 B-1 在哪？", "在路上。"), ("能退货吗？", "可以。")]}\n'),
    "if on the environment": ("", 'if os.environ.get("SUPPORT_MODE") == "strict":\n'
                              '        rollout.ask(case.prompt, system="Answer by the policy.")\n'
                              '    else:\n'
                              '        rollout.ask(case.prompt, system="Answer briefly.")',
                              "import os\n"),
    "environment in the prompt": ("", 'style = os.environ.get("ANSWER_STYLE", "brief")\n'
                                  '    rollout.ask(f"({style}) {case.prompt}",\n'
                                  '                system=os.getenv("SUPPORT_SYSTEM", "Be kind."))',
                                  "import os\n"),
    "if by a walrus": 'if (lang := case.meta["lang"]) == "zh":\n'
                      '        rollout.ask(case.prompt, system="用中文回答。")\n'
                      '    else:\n'
                      '        rollout.ask(case.prompt)',
    "messages copied": ("", 'messages = list(BASE)\n'
                        '    messages.append({"role": "user", "content": case.prompt})\n'
                        '    rollout.ask(messages)',
                        'BASE = [{"role": "system", "content": "Answer briefly."}]\n'),
    "payload dict": ("", 'payload = {**case.meta, "q": case.prompt}\n'
                     '    payload["channel"] = "chat"\n'
                     '    if case.meta["lang"] == "zh":\n'
                     '        payload["channel"] = "微信"\n'
                     '    rollout.ask(ORDER.format(**payload))',
                     'ORDER = "{q} ({lang}, {channel})"\n'),
    "messages built by a function": (
        "", "rollout.ask(build_messages(case))",
        'BASE = [{"role": "system", "content": "Answer like the examples."}]\n'
        'SHOTS = [("Where is order A-1?", "On its way."), ("", ""),\n'
        '         ("Can I return it?", "Yes, within 30 days.")]\n\n'
        'def build_messages(case):\n'
        '    messages = list(BASE)\n'
        '    for question, answer in SHOTS:\n'
        '        if not question:\n'
        '            continue\n'
        '        messages.append({"role": "user", "content": question})\n'
        '        messages.append({"role": "assistant", "content": answer})\n'
        '    messages.append({"role": "user", "content": case.prompt})\n'
        '    return messages\n'),
    "list added to by a function": (
        "", 'messages = [{"role": "system", "content": "Answer briefly."}]\n'
            '    add_question(messages, case)\n'
            '    rollout.ask(messages)',
        'def add_question(messages, case):\n'
        '    messages.append({"role": "user", "content": case.prompt})\n'),
    "asked through an object a fixture made": (
        ", bot", "bot.answer(case)",
        'class SupportBot:\n'
        '    def __init__(self, model):\n'
        '        self.model = model\n\n'
        '    def answer(self, question):\n'
        '        return self.model.ask(question, system="Answer briefly.", temperature=0)\n\n'
        '@pytest.fixture\n'
        'def bot(rollout):\n'
        '    return SupportBot(rollout)\n',
        '[p.values[0].prompt for p in cases("cases.jsonl")]'),
    "question wrapped by an object": (
        ", bot", "bot.answer(case)",
        'class SupportBot:\n'
        '    def __init__(self, model):\n'
        '        self.model = model\n\n'
        '    def answer(self, case):\n'
        '        return self.model.ask(f"Customer: {case.prompt}\\nReply briefly.")\n\n'
        '@pytest.fixture\n'
        'def bot(rollout):\n'
        '    return SupportBot(rollout)\n'),
    "question worded by language by an object": (
        ", bot", "bot.answer(case)",
        'TEMPLATES = {"en": "Customer: {q}\\nReply briefly.", "zh": "客户：{q}\\n请简短回答。"}\n'
        'SYSTEMS = {"en": "You are a concise support agent.", "zh": "你是一名简洁的客服。"}\n\n'
        'class SupportBot:\n'
        '    def __init__(self, model):\n'
        '        self.model = model\n\n'
        '    def answer(self, case):\n'
        '        lang = "zh" if any("\\u4e00" <= ch <= "\\u9fff" for ch in case.prompt) else "en"\n'
        '        return self.model.ask(TEMPLATES[lang].format(q=case.prompt),\n'
        '                              system=SYSTEMS[lang])\n\n'
        '@pytest.fixture\n'
        'def bot(rollout):\n'
        '    return SupportBot(rollout)\n'),
    "case's prompt asked through an object": (
        ", bot", "bot.answer(case)",
        'class SupportBot:\n'
        '    def __init__(self, model):\n'
        '        self.model = model\n\n'
        '    def answer(self, case):\n'
        '        return self.model.ask(case.prompt, system="Answer briefly.")\n\n'
        '@pytest.fixture\n'
        'def bot(rollout):\n'
        '    return SupportBot(rollout)\n'),
}
PREFETCH_LINE = re.compile(r"modelrollout prefetch.*?: (\d+) calls sent ahead of their tests, "
                           r"(\d+) used, (\d+) unused")


def write_shape(root: Path, n: int, latency_ms: int, shape: Shape) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    for name, text in FILES.items():
        (root / "prompts" / name).write_text(text, encoding="utf-8")
    with (root / "cases.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            zh = i % 2 == 1
            prompt = (f"我的订单 B-{20000 + i} 什么时候到？它上周就应该到了，我已经等了很久。" if zh
                      else f"Where is my order A-{10000 + i}? It was due last week and I have "
                           "been waiting for a long time.")
            row = {"id": f"c{i:05d}", "prompt": prompt, "lang": "zh" if zh else "en",
                   "shots": [{"q": f"Where is order A-{10000 + i - k}?", "a": "On its way."}
                             for k in (1, 2)]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    model = f"latency_ms={latency_ms}&jitter=0.2"
    (root / "pyproject.toml").write_text(
        f'[tool.modelrollout]\nstable = "sim:stable?{model}"\ncandidate = "sim:good?{model}"\n'
        f"concurrency = {CONCURRENCY}\n", encoding="utf-8")
    fixtures, body, prelude, params = (
        (*shape, "", "")[:4] if isinstance(shape, tuple) else ("", shape, "", ""))
    head = HEAD.replace("{fixtures}", fixtures).replace("{prelude}", prelude).replace(
        "{params}", params or 'cases("cases.jsonl")')
    (root / "test_shape.py").write_text(head + "    " + body + "\n", encoding="utf-8")


def run(root: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """One run of the shape's suite (``-vv``: with pytest_cmd's ``-q``, the -v summary)."""
    report = root / "report.json"
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(pytest_cmd("-vv", "--rollout-report=report.json", *args), cwd=root,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not report.exists():
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    calls = json.loads(report.read_text(encoding="utf-8"))["records"]["calls"]
    sent = PREFETCH_LINE.search(proc.stdout)
    return {
        "wall": wall,
        "calls": len(calls),
        "ahead": int(sent.group(1)) if sent else 0,
        "unused": int(sent.group(3)) if sent else 0,
        "live": proc.stdout.count("  run live: "),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--latency-ms", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the median is printed")
    ap.add_argument("--xdist", type=int, default=0, help="also with -n N")
    ap.add_argument("--base", default="", help="also with the plugin at this git revision")
    ap.add_argument("--shapes", default="",
                    help="only these shapes, comma-separated (plain always runs)")
    args = ap.parse_args()
    wanted = {s.strip() for s in args.shapes.split(",") if s.strip()}
    unknown = wanted - SHAPES.keys()
    if unknown:
        ap.error(f"unknown shape(s) {', '.join(sorted(unknown))}; the shapes are: "
                 + ", ".join(SHAPES))
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: nproc={os.cpu_count()}, python {platform.python_version()}, "
          f"{platform.platform()}, load average {os.getloadavg()[0]:.1f}")
    proc, url = start_sim()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            env = user_env(MODELROLLOUT_SIM_URL=url)
            trees: dict[str, dict[str, str]] = {"this tree": env}
            if args.base:
                src = export_src(args.base, work / "base")
                trees[args.base] = {**env, "PYTHONPATH": os.pathsep.join(
                    [str(src), *filter(None, [env.get("PYTHONPATH")])])}
            ideal_pair = 2 * args.cases * args.latency_ms / 1000 / CONCURRENCY
            print(f"{args.cases} cases x 2 models at {args.latency_ms} ms (jitter 0.2), "
                  f"concurrency {CONCURRENCY}: the ideal for both models is {ideal_pair:.2f} s")
            xargs_list: list[tuple[str, ...]] = [()]
            if args.xdist:
                xargs_list.append(("-n", str(args.xdist)))
            for xargs in xargs_list:
                label = " ".join(xargs) or "-n 0"
                plain_wall: dict[str, float] = {}
                for name, body in SHAPES.items():
                    if wanted and name != "plain" and name not in wanted:
                        continue
                    root = work / re.sub(r"\W+", "-", name)
                    write_shape(root, args.cases, args.latency_ms, body)
                    results: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
                    for _ in range(max(1, args.repeat)):
                        for tree, tree_env in trees.items():  # alternating: the same drift
                            results[tree].append(run(root, tree_env, *xargs))
                    for tree, runs in results.items():
                        r = sorted(runs, key=lambda x: x["wall"])[len(runs) // 2]
                        if name == "plain":
                            plain_wall[tree] = r["wall"]
                        ratio = r["wall"] / plain_wall[tree]
                        print(f"  {label:5} {name:25} {tree:10} {r['wall']:6.2f} s = "
                              f"{ratio:4.2f}x plain ({r['wall'] / ideal_pair:4.2f}x the ideal); "
                              f"{r['calls']} calls made, {r['ahead']} sent ahead, "
                              f"{r['unused']} unused; {r['live']} function(s) ran live")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
