"""revoke_api_key: the key is revoked for good (D3FEND Credential Revoking)."""

from soar.actions.base import API_KEY, BLOCK, ActionDefinition, Enforcement, Ocsf
from soar.domain import Risk

ACTION = ActionDefinition(
    name="revoke_api_key",
    label="Revoke API key",
    past="Revoked API key",
    description="The API key is refused from now on; it cannot be restored, only replaced.",
    default_risk=Risk.high,
    executor="enforcement",
    target="api_key",
    enforcement=Enforcement(BLOCK, (API_KEY,)),
    irreversible=True,
    hook_events=("applied",),
    ocsf=Ocsf(activity=(2, "Evict"), disposition=(24, "Access Revoked"), control=(2, "Denied")),
)
