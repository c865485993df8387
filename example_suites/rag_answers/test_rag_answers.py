"""RAG answers: the answer comes from the retrieved passages, and says so when they lack it.

Each case carries the retrieved passages in the prompt (``Context: ... Question: ...``, or
``上下文：... 问题：...`` for the Chinese help center) and the facts a correct answer contains.
"""

import re

import pytest

from pytest_modelrollout import Reply, cases

SYSTEM = (
    "Answer the customer's question using only the numbered passages in the context. "
    "If the passages do not contain the answer, say that the context does not contain it."
)

# How our models phrase "the passages don't say" (English and Chinese).
NO_ANSWER = re.compile(
    r"does not contain|doesn't contain|not (?:mentioned|covered) in the (?:context|passages)|"
    r"no information|没有相关信息|未提及|没有提到|无法从资料",
    re.IGNORECASE,
)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def context_of(prompt: str) -> str:
    """The retrieved passages: everything between the context and the question markers."""
    m = re.search(r"(?:Context:|上下文：)(.*?)(?:Question:|问题：)", prompt, re.DOTALL)
    assert m, "case without a context section"
    return m.group(1)


def uses_facts(facts: list[str]):
    def check(reply: Reply) -> bool:
        missing = [f for f in facts if f not in reply.text]
        assert not missing, f"facts from the passages missing: {missing}"
        assert not NO_ANSWER.search(reply.text), "claims no answer although the context has it"
        return True

    return check


def abstains(reply: Reply) -> bool:
    assert NO_ANSWER.search(reply.text), f"should say the context lacks it: {reply.text[:120]!r}"
    return True


def numbers_from(context: str):
    """Every number in the answer appears in the passages (no invented prices or deadlines)."""
    allowed = set(NUMBER.findall(context))

    def check(reply: Reply) -> bool:
        invented = [n for n in NUMBER.findall(reply.text) if n not in allowed]
        assert not invented, f"numbers not in the passages: {invented}"
        return True

    return check


@pytest.mark.workflow("rag_answers", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/answers.jsonl"))
def test_answer_is_grounded(rollout, case):
    pair = rollout.ask(case)
    if case.expected["answerable"]:
        pair.expect(uses_facts(case.expected["facts"]), "grounded")
    else:
        pair.expect(abstains, "no_answer")
    pair.expect(numbers_from(context_of(case.prompt)), "no_invented_numbers")
    pair.expect_language("same_as_prompt")
    # an extractive answer is one or two sentences, not a rewrite of the passages
    pair.expect_length(max_chars=300)
    pair.expect_latency(max_ms=4000)
