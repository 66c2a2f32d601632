"""What a summariser gets and gives, and the deterministic offline summariser.

A summariser sees structured facts and the *redacted* excerpt only (never the raw prompt,
never the subject's identifiers). What it writes is for people to read: nothing in the plan,
the risk score or any action is ever derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

OFFLINE = "offline"
MODEL = "model"

# Why an attacker would use a technique of this tactic, said once per tactic (ATLAS IDs).
_INTENT = {
    "AML.TA0002": "learn about the AI system before attacking it",
    "AML.TA0003": "prepare resources (data, models, accounts) for an attack",
    "AML.TA0004": "get a first foothold in the AI system",
    "AML.TA0000": "gain access to the model itself",
    "AML.TA0005": "make the model or agent run instructions the attacker chose",
    "AML.TA0006": "keep a foothold that survives restarts or new sessions",
    "AML.TA0012": "gain permissions the user should not have",
    "AML.TA0007": "slip past guardrails and detectors",
    "AML.TA0013": "steal credentials",
    "AML.TA0008": "find out how the AI system and its surroundings are built",
    "AML.TA0015": "move from the AI system to other systems",
    "AML.TA0009": "gather data of interest",
    "AML.TA0001": "craft inputs that make the model misbehave",
    "AML.TA0014": "control a compromised agent or system remotely",
    "AML.TA0010": "take data or the model out of the system",
    "AML.TA0011": "disrupt the service, raise its cost or cause harm",
}
MAX_STEPS = 4


@dataclass(frozen=True)
class SummaryFacts:
    """The only things a summary is built from."""

    tenant: str  # for rate limits and budgets; not sent to a model
    technique: str
    technique_name: str
    tactics: tuple[tuple[str, str], ...]
    mitigations: tuple[tuple[str, str], ...]
    severity: str
    confidence: float
    source: str
    excerpt: str | None = None  # already redacted
    risk_score: float | None = None
    detections_24h: int | None = None
    subject_kinds: tuple[str, ...] = ()  # which of user / session / api_key are known


@dataclass(frozen=True)
class NextStep:
    step: str
    mitigation: str | None = None  # an ATLAS mitigation ID of the catalog


@dataclass(frozen=True)
class Summary:
    summary: str
    likely_intent: str
    next_steps: tuple[NextStep, ...]
    written_by: str = OFFLINE  # offline | model
    model: str | None = None
    fallback_reason: str | None = None  # why a model summary was not used

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "likely_intent": self.likely_intent,
            "next_steps": [{"step": s.step, "mitigation": s.mitigation} for s in self.next_steps],
            "written_by": self.written_by,
            "model_written": self.written_by == MODEL,
            "model": self.model,
            "fallback_reason": self.fallback_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        steps = tuple(
            NextStep(str(s.get("step", "")), s.get("mitigation"))
            for s in data.get("next_steps") or ()
            if isinstance(s, dict)
        )
        return cls(
            summary=str(data.get("summary", "")),
            likely_intent=str(data.get("likely_intent", "")),
            next_steps=steps,
            written_by=str(data.get("written_by", OFFLINE)),
            model=data.get("model"),
            fallback_reason=data.get("fallback_reason"),
        )


@dataclass(frozen=True)
class CallRecord:
    """What the action log keeps of one summarisation (never the prompt itself)."""

    model: str
    outcome: str  # offline | generated | cached | refused | rate_limited | over_budget | ...
    prompt_sha256: str | None = None
    response_sha256: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "outcome": self.outcome,
            "prompt_sha256": self.prompt_sha256,
            "response_sha256": self.response_sha256,
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "total": self.prompt_tokens + self.completion_tokens,
            },
            "latency_ms": round(self.latency_ms, 1),
            "reason": self.reason,
            **self.extra,
        }


@dataclass(frozen=True)
class Outcome:
    summary: Summary
    call: CallRecord


class Summariser(Protocol):
    """Turns facts into a summary; never raises for anything the provider does."""

    name: str

    async def summarise(self, facts: SummaryFacts) -> Outcome: ...


def offline_summary(facts: SummaryFacts, *, fallback_reason: str | None = None) -> Summary:
    """The deterministic summary: the same facts always give the same text."""
    tactic_text = ", ".join(f"{t} {n}" for t, n in facts.tactics) or "no known tactic"
    parts = [
        f"{facts.technique} {facts.technique_name or ''}".strip() + f" ({tactic_text})",
        f"reported by {facts.source} at severity {facts.severity}, "
        f"confidence {facts.confidence:.2f}",
    ]
    if facts.detections_24h is not None:
        parts.append(f"{facts.detections_24h} detection(s) on this subject in 24 h")
    if facts.risk_score is not None:
        parts.append(f"risk score {facts.risk_score:g}/100")
    intents = [_INTENT[t] for t, _ in facts.tactics if t in _INTENT]
    intent = (
        "The attacker likely wants to " + "; or to ".join(dict.fromkeys(intents)) + "."
        if intents
        else "Unclear from the technique alone; read the redacted excerpt."
    )
    steps = [
        NextStep(f"Apply {mid} {name} to the affected application.", mid)
        for mid, name in facts.mitigations[: MAX_STEPS - 1]
    ]
    steps.append(
        NextStep(
            "Review the redacted excerpt and the subject's other detections before deciding "
            "any pending approval."
        )
    )
    return Summary(
        summary="; ".join(parts) + ".",
        likely_intent=intent,
        next_steps=tuple(steps),
        written_by=OFFLINE,
        fallback_reason=fallback_reason,
    )


class OfflineSummariser:
    """The default: no network, no model."""

    name = OFFLINE

    async def summarise(self, facts: SummaryFacts) -> Outcome:
        return Outcome(offline_summary(facts), CallRecord(model=OFFLINE, outcome=OFFLINE))
