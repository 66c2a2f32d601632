"""Settings from the environment (prefix ``SOAR_``) or a ``.env`` file.

A missing or malformed setting is reported in one line naming the variable
(see :func:`load_settings`), never as a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from soar.domain import Role, Severity

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx", "todo", "placeholder"}


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "atlas-soar"


@dataclass(frozen=True)
class BootstrapToken:
    name: str
    role: Role
    token: str


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SOAR_", env_file=".env", extra="ignore", case_sensitive=False
    )

    environment: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=default_home)

    database_url: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    # Temporal's web UI, for links from an incident to its workflow run
    # ({ui}/namespaces/{namespace}/workflows/{workflow id}).
    temporal_ui_url: str = "http://localhost:8233"
    # A Temporal cluster over TLS: the client certificate and key (mTLS), the CA that signed
    # the server's certificate (unset: the system's roots), and an API key (Temporal Cloud).
    # Any of them turns TLS on; SOAR_TEMPORAL_TLS=true turns it on with none of them.
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    # The name the server's certificate is checked against (unset: the address's host).
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    temporal_task_queue: str = "atlas-soar"
    # Bulkheads: containment, decisions, block lifts and the log run on the main task queue;
    # Slack, Jira, e-mail, outbound hooks and model calls on this one (default
    # "<task queue>-external"), each with its own bounded concurrency.
    temporal_external_task_queue: str | None = None
    core_max_concurrent_activities: int = Field(default=64, ge=1)
    external_max_concurrent_activities: int = Field(default=16, ge=1)
    # An external step (Slack, Jira, hook) is retried with growing backoff for at most this
    # long, then given up and logged as failed.
    external_max_age_seconds: int = Field(default=3600, ge=1)
    # Temporal's workflow sandbox guards determinism at a CPU cost per workflow run (about
    # a third of the worker's CPU per incident). Off by default: the workflow tests run
    # IncidentWorkflow inside the sandbox, so a non-deterministic import fails there.
    workflow_sandbox: bool = False
    # The worker's own /metrics (it is a separate process from the API); unset: not served.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # On SIGTERM / SIGINT, how long in-flight activities may finish before they are handed
    # back (cancelled, retried elsewhere). `soar up` waits this plus 5 s before a kill.
    worker_shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=300)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None  # used in links (Slack, Jira); default http://host:port

    webhook_secret: SecretStr | None = None
    max_body_bytes: int = 256 * 1024
    # Encrypts the per-source webhook secrets at rest (any string; a key is derived from it).
    # `soar up` generates one into SOAR_HOME; unset elsewhere: stored unencrypted.
    secrets_key: SecretStr | None = None
    # A rotated source secret stays valid this long beside the new one.
    source_rotation_grace_seconds: int = Field(default=24 * 3600, ge=0)

    # Token buckets at intake: sustained rate per second and burst, per source and per
    # subject (tenant + user / api key / session). Over the limit: 429 with Retry-After.
    source_rate_per_second: float = Field(default=200.0, gt=0)
    source_burst: int = Field(default=400, ge=1)
    subject_rate_per_second: float = Field(default=5.0, gt=0)
    subject_burst: int = Field(default=50, ge=1)

    policy_file: Path | None = None
    correlation_window_seconds: int = Field(default=3600, ge=1)
    approval_timeout_seconds: int = Field(default=4 * 3600, ge=1)

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_approval_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_approvers: str = ""

    # E-mail approvals: smtp://host:port (STARTTLS when the server offers it) or
    # smtps://host:port (TLS from the start); credentials in the URL or the two below.
    smtp_url: SecretStr | None = None
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # An e-mailed decision link works once, until the approval expires or this long after
    # it was sent, whichever comes first.
    email_link_ttl_seconds: int = Field(default=24 * 3600, ge=1)

    jira_url: str | None = None
    jira_user: str | None = None
    jira_token: SecretStr | None = None
    jira_project: str | None = None
    jira_issue_type: str = "Task"
    jira_done_transition: str = "Done"
    jira_priority_map: str = "critical:Highest,high:High,medium:Medium,low:Low,info:Lowest"
    # JSON {field id: value template}; placeholders {incident_id} {tenant} {subject}
    # {technique} {technique_name} {tactic} {tactic_name} {severity} {risk_score} {url}
    jira_custom_fields: dict[str, Any] = Field(default_factory=dict)

    # Outbound enforcement hooks, e.g. an LLM gateway's admin API: JSON {action_type: url}
    action_hooks: dict[str, str] = Field(default_factory=dict)
    hook_secret: SecretStr | None = None  # whsec_... used to sign hook calls

    api_tokens: SecretStr | None = None  # name:role:token,...
    # Signs approval decisions at the one decision gate; the workflow accepts no other
    # (soar/decisions.py). Every API process and every worker needs the same one.
    decision_key: SecretStr | None = None
    # Web UI sign-in: failed attempts allowed per user name and per client address (a burst,
    # then one more per refill interval); over either: 429 with Retry-After, logged
    # `auth.throttled`. Per API process (N replicas: up to N times as many).
    signin_user_burst: int = Field(default=10, ge=1)
    signin_user_refill_seconds: float = Field(default=60.0, gt=0)
    signin_address_burst: int = Field(default=50, ge=1)
    signin_address_refill_seconds: float = Field(default=6.0, gt=0)
    # Password hashes computed at once (default: half the CPUs, so the event loop keeps one)
    # and waiting (more waiting: 429 "busy", at once).
    signin_hash_concurrency: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1
    )
    signin_hash_queue: int = Field(default=8, ge=1)
    # Signs web UI cookies; derived from the webhook secret when unset.
    session_secret: SecretStr | None = None

    log_level: str = "INFO"

    # Incident summaries by an OpenAI-compatible model (soar/summaries); unset: the offline
    # deterministic summariser. The model's answer is shown to people, never acted on.
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str | None = None
    llm_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    llm_temperature: float = Field(default=0.2, ge=0)  # above 0.3: 0.3 is used
    llm_max_prompt_chars: int = Field(default=6000, ge=500)
    llm_max_output_tokens: int = Field(default=400, ge=50, le=4000)
    llm_max_response_chars: int = Field(default=4000, ge=200)
    llm_rate_per_minute: float = Field(default=30.0, gt=0)  # per tenant, per worker process
    llm_burst: int = Field(default=10, ge=1)
    llm_daily_token_budget: int = Field(default=200_000, ge=0)  # per tenant, per UTC day
    llm_cache_seconds: int = Field(default=24 * 3600, ge=0)

    # Enforcement at gateway speed (soar/replica.py, GET /v1/enforcement/stream): each API
    # process answers checks from an in-memory replica fed by LISTEN/NOTIFY. A feed older than
    # max_staleness is reported on /readyz and checks fall back to the database.
    enforcement_max_staleness_seconds: float = Field(default=5.0, gt=0)
    enforcement_poll_seconds: float = Field(default=1.0, gt=0)  # feed probe without NOTIFY
    enforcement_reconcile_seconds: float = Field(default=60.0, gt=0)  # full compare, repairs
    enforcement_change_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    enforcement_stream_heartbeat_seconds: float = Field(default=10.0, gt=0)
    enforcement_stream_queue: int = Field(default=1000, ge=10)  # per client; full: dropped
    enforcement_stream_max_clients: int = Field(default=1000, ge=1)
    # A gateway token's identity is remembered this long on the hot path (0: every request
    # asks the database); a disabled token stops working after at most this delay.
    enforcement_token_cache_seconds: float = Field(default=5.0, ge=0)

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql://", "postgresql+", "postgres://")):
            raise ValueError("must be a PostgreSQL URL (postgresql://user:pass@host:port/db)")
        return v

    @field_validator("temporal_address")
    @classmethod
    def _check_temporal(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be host:port, e.g. temporal.example.com:7233")
        return v

    @field_validator("temporal_ui_url")
    @classmethod
    def _check_temporal_ui(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or any(c in v for c in " \"'<>"):
            raise ValueError("must be an http(s) URL, e.g. http://localhost:8233")
        return v.rstrip("/")

    @field_validator("temporal_tls_cert", "temporal_tls_key", "temporal_tls_ca")
    @classmethod
    def _check_pem_path(cls, v: Path | None) -> Path | None:
        if v is None or str(v) == "":
            return None
        path = v.expanduser()
        if not path.is_file():
            raise ValueError(f"{path} is not a readable file (a PEM path)")
        try:
            head = path.read_bytes()[:1_000_000]
        except OSError as exc:
            raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
        if b"-----BEGIN " not in head:
            raise ValueError(f"{path} is not a PEM file (no -----BEGIN line)")
        return path

    @field_validator("decision_key")
    @classmethod
    def _check_decision_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        keys = [k.strip() for k in v.get_secret_value().split(",") if k.strip()]
        if any(len(k) < 32 for k in keys):
            raise ValueError("each key must have at least 32 characters (a long random string)")
        return v

    @field_validator("webhook_secret", "hook_secret")
    @classmethod
    def _check_webhook_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        raw = v.get_secret_value()
        if not raw.startswith("whsec_") or len(raw) < 16:
            raise ValueError("must be a Standard Webhooks secret of the form whsec_<base64>")
        return v

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        parts = urlsplit(v.get_secret_value().strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname or port is None:
            # The value may hold a password: never echo it.
            raise ValueError("must be smtp://host:port or smtps://host:port")
        return v

    @field_validator("smtp_from")
    @classmethod
    def _check_smtp_from(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        _, address = parseaddr(v)
        if "@" not in address or any(ord(c) < 32 for c in v) or len(v) > 320:
            raise ValueError("must be an e-mail address, e.g. soar@example.com")
        return v.strip()

    @field_validator("llm_base_url")
    @classmethod
    def _check_llm_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://api.openai.com/v1")
        return v.strip()

    @field_validator("llm_model")
    @classmethod
    def _check_llm_model(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if len(v) > 256 or any(c.isspace() or not c.isprintable() for c in v.strip()):
            raise ValueError("must be a model name (printable, no spaces, at most 256 chars)")
        return v.strip()

    @model_validator(mode="after")
    def _llm_complete(self) -> Settings:
        if self.llm_base_url and not self.llm_model:
            raise ValueError("SOAR_LLM_MODEL: required when SOAR_LLM_BASE_URL is set")
        if self.llm_model and not self.llm_base_url:
            raise ValueError("SOAR_LLM_BASE_URL: required when SOAR_LLM_MODEL is set")
        return self

    @field_validator("jira_priority_map")
    @classmethod
    def _check_priority_map(cls, v: str) -> str:
        severities = {s.value for s in Severity}
        for item in (x.strip() for x in v.split(",")):
            if not item:
                continue
            sev, sep, name = item.partition(":")
            if not sep or sev.strip() not in severities or not name.strip():
                raise ValueError(
                    f"entry {item!r} must be severity:Priority name "
                    f"(severity one of {', '.join(sorted(severities))})"
                )
        return v

    @field_validator("action_hooks")
    @classmethod
    def _check_action_hooks(cls, v: dict[str, str]) -> dict[str, str]:
        from soar import actions

        hooked = sorted(a.name for a in actions.ACTIONS.values() if a.hook_events)
        for name in v:
            if name not in hooked:
                raise ValueError(f"{name!r} is not an action type with hooks ({', '.join(hooked)})")
        return v

    @field_validator("api_tokens")
    @classmethod
    def _check_tokens(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        parse_api_tokens(v.get_secret_value())
        return v

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if self.temporal_tls_cert and not self.temporal_tls_key:
            raise ValueError("SOAR_TEMPORAL_TLS_KEY: required with SOAR_TEMPORAL_TLS_CERT (mTLS)")
        if self.temporal_tls_key and not self.temporal_tls_cert:
            raise ValueError("SOAR_TEMPORAL_TLS_CERT: required with SOAR_TEMPORAL_TLS_KEY (mTLS)")
        return self

    @model_validator(mode="after")
    def _smtp_needs(self) -> Settings:
        if self.smtp_url is None:
            return self
        if not self.smtp_from:
            raise ValueError("SOAR_SMTP_FROM: required with SOAR_SMTP_URL (the sender address)")
        if self.session_secret is None or not self.session_secret.get_secret_value():
            raise ValueError(
                "SOAR_SESSION_SECRET: required with SOAR_SMTP_URL (it signs the e-mailed "
                "approval links; the worker and the API must share it)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("webhook_secret", "slack_signing_secret", "slack_bot_token", "jira_token"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().lower() in _PLACEHOLDERS:
                raise ValueError(f"SOAR_{name.upper()}: placeholder value refused in production")
        for tok in self.bootstrap_tokens:
            if tok.token.lower() in _PLACEHOLDERS or len(tok.token) < 16:
                raise ValueError(
                    f"SOAR_API_TOKENS: token of {tok.name!r} is a placeholder or shorter "
                    "than 16 characters; refused in production"
                )
        return self

    def production_problems(self, *, process: Literal["api", "worker"] = "api") -> list[str]:
        """What `soar api` / `soar worker` refuse to start with in production, one line naming
        the variable each (other commands, e.g. `soar migrate`, need none of these)."""
        if self.environment != "production":
            return []

        def secret(v: SecretStr | None) -> str:
            return v.get_secret_value() if v is not None else ""

        out = []
        if self.action_hooks and not secret(self.hook_secret):
            out.append(
                "SOAR_HOOK_SECRET: required in production when SOAR_ACTION_HOOKS is set "
                "(unsigned hook calls could be forged)"
            )
        if secret(self.hook_secret) and secret(self.hook_secret) == secret(self.webhook_secret):
            out.append(
                "SOAR_HOOK_SECRET: must differ from SOAR_WEBHOOK_SECRET in production "
                "(every detection source holds that one and could forge hook calls)"
            )
        if not (self.public_url or "").startswith("https://"):
            out.append(
                "SOAR_PUBLIC_URL: must be an https:// URL in production "
                "(links, secure cookies and e-mail links are built from it)"
            )
        if process == "api" and not secret(self.session_secret):
            out.append(
                "SOAR_SESSION_SECRET: required in production (signs web UI sessions; "
                "every API replica needs the same one)"
            )
        if not secret(self.decision_key):
            out.append(
                "SOAR_DECISION_KEY: required in production (signs approval decisions; the "
                "API and every worker need the same one)"
            )
        return out

    @cached_property
    def bootstrap_tokens(self) -> tuple[BootstrapToken, ...]:
        if self.api_tokens is None:
            return ()
        return parse_api_tokens(self.api_tokens.get_secret_value())

    @property
    def slack_approver_ids(self) -> frozenset[str]:
        return frozenset(x.strip() for x in self.slack_approvers.split(",") if x.strip())

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token and self.slack_approval_channel)

    @property
    def smtp_enabled(self) -> bool:
        return self.smtp_url is not None and bool(self.smtp_from)

    @property
    def jira_enabled(self) -> bool:
        return bool(self.jira_url and self.jira_project and self.jira_token)

    @property
    def external_task_queue(self) -> str:
        return self.temporal_external_task_queue or f"{self.temporal_task_queue}-external"

    @property
    def correlation_window(self) -> timedelta:
        return timedelta(seconds=self.correlation_window_seconds)

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def temporal_tls_enabled(self) -> bool:
        return bool(
            self.temporal_tls
            or self.temporal_tls_cert
            or self.temporal_tls_key
            or self.temporal_tls_ca
            or self.temporal_api_key
        )

    @property
    def webhook_secret_file(self) -> Path:
        return self.home / "webhook-secret"


def parse_api_tokens(raw: str) -> tuple[BootstrapToken, ...]:
    out: list[BootstrapToken] = []
    for i, item in enumerate(x.strip() for x in raw.split(",")):
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"entry {i + 1} must be name:role:token")
        name, role, token = parts
        try:
            out.append(BootstrapToken(name=name, role=Role(role), token=token))
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise ValueError(
                f"entry {i + 1} ({name}): role {role!r} is not one of {roles}"
            ) from None
    return tuple(out)


class SettingsError(Exception):
    """One line naming the variable and what is wrong with it."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        var = f"SOAR_{loc.upper()}" if loc else "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if msg.startswith("SOAR_"):
            raise SettingsError(msg) from None
        raise SettingsError(f"{var}: {msg}") from None
