"""Support chat: answers stay in the customer's language, short enough, and fast enough."""

import pytest

from pytest_modelrollout import cases


@pytest.mark.workflow("support_chat", system="You are a friendly, concise support agent.")
@pytest.mark.parametrize("case", cases("data/questions.jsonl"))
def test_support_answer(rollout, case):
    pair = rollout.ask(case)
    pair.expect_language("same_as_prompt")
    pair.expect_length(max_words=150)
    pair.expect_length_ratio(max=1.5)
    pair.expect_latency(max_ms=4000)
