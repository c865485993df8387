"""Multilingual: English, Chinese and mixed English-Chinese customers, bilingual summaries,
coding questions with Chinese comments, and region-specific terms (发票/fapiao, 支付宝, 双十一,
GST, VAT, 快递).

Each case states the language the answer must be in: ``en``, ``zh``, ``mixed`` (both languages,
e.g. a bilingual summary) or ``same_as_prompt`` (a Chinese prompt with English product terms
accepts a Chinese or a mixed answer).
"""

import re

import pytest

from pytest_modelrollout import cases

SYSTEM = "You are the support assistant of an online store. Follow the customer's language."

ORDER_ID = re.compile(r"\b[A-Z]-\d{4}\b")


@pytest.mark.workflow("multilingual", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/prompts.jsonl"))
def test_answer_language(rollout, case):
    pair = rollout.ask(case)
    pair.expect_language(case.expected["lang"])
    pair.expect_length_ratio(max=1.5)
    pair.expect_latency(max_ms=4000)
    order_ids = ORDER_ID.findall(case.prompt)
    if order_ids:
        # identifiers are never translated or reformatted
        pair.expect(lambda r: all(o in r.text for o in order_ids), "keeps_order_id")


@pytest.mark.workflow("multilingual", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/summaries.jsonl"))
def test_bilingual_summary(rollout, case):
    """The summary is in the language asked for, not the language of the quoted message.

    Note: the built-in simulator summarises extractively in the language of the quoted text,
    so with ``sim:*`` models both replies fail here and the cases are xfail ("stable fails
    too: not a regression"); real models are judged normally.
    """
    pair = rollout.ask(case)
    pair.expect_language(case.expected["lang"])
    pair.expect_length(max_chars=400)
