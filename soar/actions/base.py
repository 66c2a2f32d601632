"""What an action type is. Each module of this package defines one `ACTION`; the registry
(`soar.actions.registry`) collects them, and policy, enforcement, the workflow, the UI,
Slack and the exports read from there instead of naming action types themselves.

Pure data and pure functions (no I/O): the workflow reads it while it replays."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from soar.domain import DetectionFacts, Risk
from soar.gateway.table import stored_kind

__all__ = [
    "API_KEY",
    "BLOCK",
    "SESSION",
    "SUBJECT_KINDS",
    "TARGET_KIND",
    "USER",
    "ActionDefinition",
    "Effect",
    "Enforcement",
    "Executor",
    "Ocsf",
    "Target",
    "TargetKind",
]

Executor = Literal["enforcement", "notice", "ticket"]
# The param naming the target kind of an action that has several (`session`, `user`, ...).
TARGET_KIND = "target_kind"


@dataclass(frozen=True)
class TargetKind:
    """What an enforcement action applies to: the kind the enforcement store keys it on, the
    path gateways ask under (`GET /v1/enforcement/{path}/{target}`), and where a detection
    names it."""

    name: str
    path: str
    read: Callable[[DetectionFacts], str | None]
    missing: str  # why an action of this kind is skipped when the detection lacks it


SESSION = TargetKind(
    "session", "sessions", lambda d: d.subject.session, "the subject has no session"
)
API_KEY = TargetKind(
    "api_key", "api-keys", lambda d: d.subject.api_key, "the subject has no api_key"
)
USER = TargetKind("user", "users", lambda d: d.subject.user, "the subject has no user")
# The subject's identities, most durable first (as `Subject.key` correlates them).
SUBJECT_KINDS = (USER, API_KEY, SESSION)


@dataclass(frozen=True)
class Effect:
    """What an active enforcement entry does to its target. `flag` is the field of the
    enforcement check's answer that says it is in force (`"blocked"` for blocks)."""

    name: str
    flag: str


BLOCK = Effect("block", "blocked")


@dataclass(frozen=True)
class Enforcement:
    """An action that puts an entry in the enforcement store. With one target kind the
    target is always of that kind; with several, the playbook may choose one
    (`params: {target_kind: session}`), else the first one the detection has."""

    effect: Effect
    targets: tuple[TargetKind, ...]

    def kind_for(self, params: Mapping[str, str]) -> TargetKind:
        if len(self.targets) == 1:
            return self.targets[0]
        wanted = params.get(TARGET_KIND)
        return next((k for k in self.targets if k.name == wanted), self.targets[0])

    def stored_kind(self, params: Mapping[str, str]) -> str:
        """The enforcement store's `kind` of an entry of this action."""
        return stored_kind(self.effect.name, self.kind_for(params).name)


@dataclass(frozen=True)
class Ocsf:
    """How an action reads as an OCSF Remediation Activity (7001): its activity (the D3FEND
    tactic), the disposition once done, and what the control then does to the subject."""

    activity: tuple[int, str] | None = None  # None: not a remediation (99, the action's name)
    disposition: tuple[int, str] = (7, "Custom Action")
    control: tuple[int, str] = (99, "Other")


@dataclass(frozen=True)
class Target:
    value: str
    params: dict[str, str]  # the action's params, with the chosen target kind when it varies


@dataclass(frozen=True)
class ActionDefinition:
    """One action type. `label` is the imperative an approver reads ("Revoke API key"),
    `past` what happened ("Revoked API key"). `temporary`: a playbook may give it a
    `duration`, after which it lifts itself; `irreversible`: nothing can undo it;
    `drastic`: it locks a person out until someone acts (disabling a user). A playbook refuses
    an irreversible or drastic action as `risk: low` unless its rule says
    `allow_irreversible_low_risk: true` (`must_be_approved`). `default_risk` is what a rule
    should ask for: `soar policy check` warns when a playbook runs it with less.
    `hook_events` are the outbound hook calls it makes (`applied`, `lifted`);
    `applied_event` is its audit event once done."""

    name: str
    label: str
    past: str
    description: str
    default_risk: Risk
    executor: Executor
    target: str  # what its target is, in messages
    enforcement: Enforcement | None = None
    resolve: Callable[[DetectionFacts, Mapping[str, str]], str | None] | None = None
    temporary: bool = False
    irreversible: bool = False
    drastic: bool = False
    hook_events: tuple[str, ...] = ()
    applied_event: str = "action.applied"
    ocsf: Ocsf = Ocsf()

    def __post_init__(self) -> None:
        if (self.enforcement is None) == (self.resolve is None):
            raise ValueError(f"{self.name}: needs exactly one of enforcement and resolve")
        if (self.executor == "enforcement") != (self.enforcement is not None):
            raise ValueError(f"{self.name}: enforcement goes with the enforcement executor")

    @property
    def must_be_approved(self) -> bool:
        """A playbook may run it without an approval only by an explicit opt-in."""
        return self.irreversible or self.drastic

    @property
    def enforces(self) -> bool:
        return self.enforcement is not None

    def target_of(self, detection: DetectionFacts, params: Mapping[str, str]) -> Target | None:
        """The target of this action for a detection, or None when the detection lacks it."""
        out = dict(params)
        if self.resolve is not None:
            value = self.resolve(detection, params)
            return Target(value, out) if value else None
        assert self.enforcement is not None
        kinds = self.enforcement.targets
        if TARGET_KIND in params or len(kinds) == 1:
            kind = self.enforcement.kind_for(params)
            value = kind.read(detection)
        else:
            kind, value = next(
                ((k, k.read(detection)) for k in kinds if k.read(detection)), (kinds[0], None)
            )
        if not value:
            return None
        if len(kinds) > 1:
            out[TARGET_KIND] = kind.name
        return Target(value, out)

    def missing(self, params: Mapping[str, str]) -> str:
        """Why `target_of` found nothing."""
        if self.enforcement is None:
            return f"the detection has no {self.target}"
        kinds = self.enforcement.targets
        if TARGET_KIND in params or len(kinds) == 1:
            return self.enforcement.kind_for(params).missing
        return "the subject has none of " + ", ".join(k.name for k in kinds)

    def param_errors(self, params: Mapping[str, str]) -> list[tuple[str, str]]:
        """(param, reason) for params this action cannot take."""
        if self.enforcement is None or len(self.enforcement.targets) == 1:
            return []
        names = [k.name for k in self.enforcement.targets]
        wanted = params.get(TARGET_KIND)
        if wanted is not None and wanted not in names:
            return [(TARGET_KIND, f"{wanted!r} is not one of {', '.join(names)}")]
        return []
