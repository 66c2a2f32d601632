"""throttle_subject: the gateway slows the subject down (rate limits it) for a while, short of
blocking it: for probing that is not worth cutting a user off for.

Its target is the subject's most durable identity (user, else API key, else session), or
the one a rule names with `params: {target_kind: session}`. Gateways see it as `"throttled": true`
on `GET /v1/enforcement/{users|api-keys|sessions}/{id}`, as `kind: "throttle:<kind>"` on
the enforcement stream, and as `effects == ("throttle",)` in `soar.gateway`."""

from soar.actions.base import SUBJECT_KINDS, ActionDefinition, Effect, Enforcement, Ocsf
from soar.domain import Risk

THROTTLE = Effect("throttle", "throttled")

ACTION = ActionDefinition(
    name="throttle_subject",
    label="Throttle subject",
    past="Throttled subject",
    description="The gateway rate-limits the subject's requests; it is slowed, not refused.",
    default_risk=Risk.low,
    executor="enforcement",
    target="subject",
    enforcement=Enforcement(THROTTLE, SUBJECT_KINDS),
    temporary=True,
    hook_events=("applied", "lifted"),
    ocsf=Ocsf(activity=(1, "Isolate"), disposition=(14, "Delayed"), control=(4, "Modified")),
)
