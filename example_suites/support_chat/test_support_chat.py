"""Support chat: answers stay in the customer's language, polite, clear, short enough, fast enough.

Every case asks both models the same customer message (``rollout.ask``); a check that the
candidate fails where the stable passes is a regression.
"""

import re

import pytest

from pytest_modelrollout import Reply, cases

SYSTEM = (
    "You are a friendly, concise support agent for an online store. Answer in the customer's "
    "language, give concrete next steps, never blame the customer."
)

# Words and phrases our support agents must never use, whatever the customer wrote.
RUDE = re.compile(
    r"\b(?:stupid|idiot|dumb|shut up|your fault|calm down|obviously|whatever|as i already said|"
    r"read the manual|not my problem|deal with it)\b",
    re.IGNORECASE,
)
RUDE_ZH = ("笨", "蠢", "闭嘴", "你自己的问题", "不关我们的事", "自己看说明", "爱买不买", "废话")

ORDER_ID = re.compile(r"\b[A-Z]-\d{4}\b")
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")

# Answer length budget per language: English is counted in words, Chinese in characters.
MAX_WORDS_EN = 120
MAX_CHARS_ZH = 260


def polite(reply: Reply) -> bool:
    """No rude words or dismissive phrases (English or Chinese)."""
    found = RUDE.findall(reply.text) + [w for w in RUDE_ZH if w in reply.text]
    assert not found, f"rude wording: {found}"
    return True


def clear(reply: Reply) -> bool:
    """Readable: no run-on sentences (English <= 40 words, Chinese <= 80 characters each),
    no shouting in capitals."""
    sentences = [s for s in SENTENCE_END.split(reply.text) if s.strip()]
    assert sentences, "empty answer"
    for s in sentences:
        if re.search(r"[\u4e00-\u9fff]", s):
            assert len(s) <= 80, f"run-on sentence ({len(s)} chars): {s[:60]}..."
        else:
            assert len(s.split()) <= 40, f"run-on sentence ({len(s.split())} words): {s[:60]}..."
    shouting = re.findall(r"\b[A-Z]{5,}\b", reply.text)
    assert not shouting, f"shouting: {shouting}"
    return True


@pytest.mark.workflow("support_chat", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/questions.jsonl"))
def test_support_answer(rollout, case):
    pair = rollout.ask(case)
    pair.expect_language("same_as_prompt")
    pair.expect(polite, "tone")
    pair.expect(clear, "clarity")
    if case.meta["lang"] == "zh":
        pair.expect_length(max_chars=MAX_CHARS_ZH)
    else:
        pair.expect_length(max_words=MAX_WORDS_EN)
    pair.expect_length_ratio(max=1.5)
    pair.expect_latency(max_ms=4000)

    order_ids = ORDER_ID.findall(case.prompt)
    if order_ids:
        # when the customer gives an order number, the answer refers to that order
        pair.expect(lambda r: all(o in r.text for o in order_ids), "mentions_order_id")


@pytest.mark.workflow("support_chat", system=SYSTEM)
@pytest.mark.parametrize(
    ("greeting", "lang"),
    [("Hi!", "en"), ("你好", "zh"), ("您好！", "zh"), ("Good morning", "en")],
)
def test_greeting_is_answered_in_kind(candidate, greeting, lang):
    """A bare greeting gets a short greeting back, in the same language (candidate only:
    there is nothing to compare)."""
    reply = candidate.ask(greeting)
    reply.expect_language(lang)
    reply.expect_length(max_chars=80)
    reply.expect(polite, "tone")
