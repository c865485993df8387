"""JSON extraction: support e-mails -> a ticket record our helpdesk API accepts.

The reply must be strict JSON (what ``json.loads`` in production reads: no code fence, no prose)
valid against the pydantic model, and complete: the identifiers and amounts in the e-mail are
carried over exactly.
"""

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from pytest_modelrollout import Reply, cases

SYSTEM = "Extract the support ticket fields from the customer's message. Reply with JSON only."


class Ticket(BaseModel):
    order_id: str = Field(description="order or invoice number, e.g. A-1042")
    customer_email: str
    category: Literal["shipping", "refund", "billing", "product", "account", "other"]
    amount: float | None = Field(None, description="amount of money mentioned, if any")
    urgent: bool
    summary: str


# dataset key -> Ticket field
FIELDS = {
    "order_id": "order_id",
    "email": "customer_email",
    "amount": "amount",
    "category": "category",
}


def complete(expected: dict):
    """Every field the message states is extracted with the right value."""

    def check(reply: Reply) -> bool:
        ticket = Ticket.model_validate_json(reply.text)
        got = ticket.model_dump()
        wrong = {FIELDS[k]: got[FIELDS[k]] for k, v in expected.items() if got[FIELDS[k]] != v}
        assert not wrong, f"wrong or missing values: {wrong}, expected {expected}"
        assert ticket.summary.strip(), "empty summary"
        return True

    return check


@pytest.mark.workflow("json_extraction", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/tickets.jsonl"))
def test_ticket_extraction(rollout, case):
    pair = rollout.ask(case, response_format=Ticket)
    pair.expect_json(Ticket)
    pair.expect(complete(case.expected), "complete")
    pair.expect_latency(max_ms=4000)


@pytest.mark.workflow("json_extraction", system=SYSTEM)
@pytest.mark.parametrize("case", cases("data/tickets.jsonl")[:3])
def test_ticket_structure_snapshot(candidate, case, snapshot):
    """The shape of the candidate's reply (keys, types, language, length band) matches the
    committed baseline. ``pytest --snapshot-update`` adopts a new one."""
    reply = candidate.ask(case, response_format=Ticket)
    assert reply.structure() == snapshot
