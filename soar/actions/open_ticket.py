"""open_ticket: the incident's ticket (Jira), opened once per incident."""

from soar.actions.base import ActionDefinition
from soar.domain import Risk

ACTION = ActionDefinition(
    name="open_ticket",
    label="Open ticket",
    past="Opened ticket",
    description="The incident's ticket; later steps add comments to it.",
    default_risk=Risk.low,
    executor="ticket",
    target="incident",
    resolve=lambda _detection, _params: "incident",
    applied_event="ticket.created",
)
