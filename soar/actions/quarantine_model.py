"""quarantine_model: a model (or an agent's tool) is taken out of service until released, for
every subject of the tenant: for a poisoned, backdoored or leaking model.

Its target is the detection's `evidence.model`. Gateways ask
`GET /v1/enforcement/models/{model}` (`"blocked": true` while it is quarantined) or check
`kind: "model"` in `soar.gateway` (`client.is_blocked("model", name, tenant)`). A playbook
may give it a `duration`; without one it stays until it is released."""

from soar.actions.base import BLOCK, ActionDefinition, Enforcement, Ocsf, TargetKind
from soar.domain import Risk

MODEL = TargetKind("model", "models", lambda d: d.model, "the detection names no model")

ACTION = ActionDefinition(
    name="quarantine_model",
    label="Quarantine model",
    past="Quarantined model",
    description="The gateway stops serving the model (or agent tool) to anyone in the tenant.",
    default_risk=Risk.high,
    executor="enforcement",
    target="model",
    enforcement=Enforcement(BLOCK, (MODEL,)),
    temporary=True,
    hook_events=("applied", "lifted"),
    ocsf=Ocsf(activity=(1, "Isolate"), disposition=(3, "Quarantined"), control=(2, "Denied")),
)
