"""disable_user: the user's account is locked (D3FEND Account Locking)."""

from soar.actions.base import BLOCK, USER, ActionDefinition, Enforcement, Ocsf
from soar.domain import Risk

ACTION = ActionDefinition(
    name="disable_user",
    label="Disable user",
    past="Disabled user",
    description="The gateway refuses every request of the user, whatever the session or key.",
    default_risk=Risk.high,
    executor="enforcement",
    target="user",
    enforcement=Enforcement(BLOCK, (USER,)),
    temporary=True,
    drastic=True,
    hook_events=("applied", "lifted"),
    ocsf=Ocsf(activity=(2, "Evict"), disposition=(24, "Access Revoked"), control=(2, "Denied")),
)
