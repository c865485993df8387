"""Automation tasks: ticket triage that runs unattended, thousands of times a day.

What matters here is that the same input always produces the same decision (a retried job must
not route a ticket differently), that the decision is machine-readable and correct, and what a
*successful* task costs: the workflow's gate on ``cost_per_success`` (see modelrollout.toml)
blocks a candidate that is cheaper per call but fails more often.
"""

from typing import Literal

import pytest
from pydantic import BaseModel

from pytest_modelrollout import Pair, Reply, cases

SYSTEM = (
    "You route incoming support tickets. Reply with JSON only: the queue, a priority, a few "
    "tags and whether the customer needs a reply."
)
REPEATS = 3  # the same ticket is triaged this many times
MAX_COST_PER_TASK_USD = 0.0001  # budget per triage call (prices per model in the config)


class TriageDecision(BaseModel):
    queue: Literal["shipping", "refund", "billing", "technical", "account", "other"]
    priority: Literal["low", "normal", "high"]
    tags: list[str]
    customer_reply_needed: bool


def routes_to(queue: str):
    def check(reply: Reply) -> bool:
        decision = TriageDecision.model_validate_json(reply.text)
        assert decision.queue == queue, f"routed to {decision.queue!r}, expected {queue!r}"
        return True

    return check


def within_budget(reply: Reply) -> bool:
    assert reply.cost_usd is not None, "no price configured for this model"
    assert reply.cost_usd <= MAX_COST_PER_TASK_USD, f"${reply.cost_usd:.6f} per task"
    return True


def same_as(first: Pair):
    """Same model, same input -> byte-identical decision."""
    baseline = {first.stable.model: first.stable.text, first.candidate.model: first.candidate.text}

    def check(reply: Reply) -> bool:
        assert reply.text == baseline[reply.model], "different output for the same input"
        return True

    return check


@pytest.mark.workflow("automation_tasks", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/events.jsonl"))
def test_triage(rollout, case):
    first = rollout.ask(case, response_format=TriageDecision)
    first.expect_json(TriageDecision)
    first.expect(routes_to(case.expected["queue"]), "correct_queue")
    first.expect(within_budget, "cost_budget")
    for _ in range(REPEATS - 1):
        again = rollout.ask(case, response_format=TriageDecision)
        again.expect(same_as(first), "repeatable")
