"""block_api_key: the key stops working at the gateway, without being revoked."""

from soar.actions.base import API_KEY, BLOCK, ActionDefinition, Enforcement, Ocsf
from soar.domain import Risk

ACTION = ActionDefinition(
    name="block_api_key",
    label="Block API key",
    past="Blocked API key",
    description="The gateway refuses every request made with the API key.",
    default_risk=Risk.low,
    executor="enforcement",
    target="api_key",
    enforcement=Enforcement(BLOCK, (API_KEY,)),
    temporary=True,
    hook_events=("applied", "lifted"),
    ocsf=Ocsf(activity=(1, "Isolate"), disposition=(2, "Blocked"), control=(2, "Denied")),
)
