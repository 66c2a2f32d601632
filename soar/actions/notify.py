"""notify: a notice about the incident to a channel (Slack)."""

from soar.actions.base import ActionDefinition, Ocsf
from soar.domain import Risk

ACTION = ActionDefinition(
    name="notify",
    label="Notify",
    past="Notified",
    description="A notice about the incident, to params.channel (default slack).",
    default_risk=Risk.low,
    executor="notice",
    target="channel",
    resolve=lambda _detection, params: params.get("channel", "slack"),
    ocsf=Ocsf(disposition=(19, "Alert")),
)
