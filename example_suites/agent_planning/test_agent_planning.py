"""Agent planning: the model picks the right tool and calls it with arguments that are valid
for the tool's declared schema (and carry the identifiers the customer gave).

The tools are declared once, on the marker, in the OpenAI function-tool format, so the plugin
knows every request of the test at collection time.
"""

import json
from pathlib import Path

import pytest

from pytest_modelrollout import Reply, cases

TOOLS = json.loads((Path(__file__).parent / "data" / "tools.json").read_text(encoding="utf-8"))

SYSTEM = (
    "You are the support agent of an online store. Use the tools to act on the customer's "
    "request; never invent order numbers, e-mail addresses or amounts."
)


def arguments_match(expected: dict):
    """The identifiers in the arguments are the ones the customer gave (not made up)."""

    def check(reply: Reply) -> bool:
        assert reply.tool_calls, "no tool call"
        args = reply.tool_calls[0].arguments or {}
        wrong = {k: args.get(k) for k, v in expected.items() if args.get(k) != v}
        assert not wrong, f"arguments differ from the request: {wrong} (expected {expected})"
        return True

    return check


@pytest.mark.workflow("agent_planning", system=SYSTEM, tools=TOOLS)
@pytest.mark.parametrize("case", cases("data/requests.jsonl"))
def test_tool_choice_and_arguments(rollout, case):
    pair = rollout.ask(case)
    # the right tool, arguments valid JSON matching its declared `parameters`
    pair.expect_tool_call(name=case.expected["tool"])
    if case.expected["args"]:
        pair.expect(arguments_match(case.expected["args"]), "argument_values")
    pair.expect_latency(max_ms=4000)


@pytest.mark.workflow("agent_planning", system=SYSTEM, tools=TOOLS)
def test_answers_from_the_tool_result(rollout):
    """Second step of the loop: after the tool ran, the agent reports its result in text."""
    messages = [
        {"role": "user", "content": "Where is my order A-1042?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_order_status", "arguments": '{"order_id": "A-1042"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": '{"status": "in_transit", "carrier": "UPS", "eta": "2025-03-14"}',
        },
    ]
    pair = rollout.ask(messages)
    pair.expect(lambda r: not r.tool_calls, "no_repeated_call")
    pair.expect(lambda r: "2025-03-14" in r.text, "reports_eta")
