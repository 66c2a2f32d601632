"""block_session: the session gets no more answers from the gateway, usually for minutes."""

from soar.actions.base import BLOCK, SESSION, ActionDefinition, Enforcement, Ocsf
from soar.domain import Risk

ACTION = ActionDefinition(
    name="block_session",
    label="Block session",
    past="Blocked session",
    description="The gateway refuses every request of the session.",
    default_risk=Risk.low,
    executor="enforcement",
    target="session",
    enforcement=Enforcement(BLOCK, (SESSION,)),
    temporary=True,
    hook_events=("applied", "lifted"),
    ocsf=Ocsf(activity=(2, "Evict"), disposition=(2, "Blocked"), control=(2, "Denied")),
)
