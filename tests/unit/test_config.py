"""Settings: one clear line naming the variable; placeholders refused in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from soar.config import SettingsError, load_settings
from soar.db import safe_url, sqlalchemy_url


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings(_env_file=None)


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("SOAR_API_PORT", "eighty", "SOAR_API_PORT"),
        ("SOAR_DATABASE_URL", "mysql://x/y", "SOAR_DATABASE_URL: must be a PostgreSQL URL"),
        ("SOAR_TEMPORAL_ADDRESS", "temporal", "SOAR_TEMPORAL_ADDRESS: must be host:port"),
        ("SOAR_WEBHOOK_SECRET", "hunter2", "SOAR_WEBHOOK_SECRET: must be a Standard Webhooks"),
        ("SOAR_API_TOKENS", "alice:boss:tok", "SOAR_API_TOKENS: entry 1 (alice): role 'boss'"),
        ("SOAR_API_TOKENS", "alice-no-colons", "SOAR_API_TOKENS: entry 1 must be name:role:token"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(monkeypatch, **{var: value})
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_placeholders_refused_in_production_only(monkeypatch: pytest.MonkeyPatch) -> None:
    settings(monkeypatch, SOAR_API_TOKENS="ops:admin:changeme")  # fine in development
    with pytest.raises(SettingsError, match="SOAR_API_TOKENS"):
        settings(monkeypatch, SOAR_ENVIRONMENT="production")
    monkeypatch.setenv("SOAR_API_TOKENS", "ops:admin:" + "x7" * 16)
    monkeypatch.setenv("SOAR_JIRA_TOKEN", "changeme")
    with pytest.raises(SettingsError, match="SOAR_JIRA_TOKEN"):
        settings(monkeypatch, SOAR_ENVIRONMENT="production")


def test_database_urls_plain_and_explicit_driver() -> None:
    assert sqlalchemy_url("postgresql://u:p@h:5/d") == "postgresql+psycopg://u:p@h:5/d"
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert sqlalchemy_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert "s3cret" not in safe_url("postgresql://u:s3cret@h/d")


def test_production_refuses_unsafe_settings_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from atlas_soar.cli import app

    hook = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    env = {
        "SOAR_ENVIRONMENT": "production",
        "SOAR_API_TOKENS": "ops:admin:" + "x7" * 16,
        "SOAR_WEBHOOK_SECRET": hook,
        "SOAR_HOOK_SECRET": hook,
        "SOAR_PUBLIC_URL": "http://soar.example.com",
        "SOAR_DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
        "SOAR_TEMPORAL_ADDRESS": "127.0.0.1:1",
    }
    for k in ("SOAR_SESSION_SECRET", "SOAR_DECISION_KEY", "SOAR_ACTION_HOOKS"):
        monkeypatch.delenv(k, raising=False)
    result = CliRunner().invoke(app, ["api"], env=env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert [line.removeprefix("error: ").split(":")[0] for line in lines] == [
        "SOAR_HOOK_SECRET",
        "SOAR_PUBLIC_URL",
        "SOAR_SESSION_SECRET",
        "SOAR_DECISION_KEY",
    ], lines
    assert "must differ from SOAR_WEBHOOK_SECRET" in lines[0]
    # The worker needs no session secret; other commands need none of these.
    worker = CliRunner().invoke(app, ["worker"], env=env)
    assert "SOAR_SESSION_SECRET" not in worker.output and "SOAR_DECISION_KEY" in worker.output

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SOAR_HOOK_SECRET")
    monkeypatch.setenv("SOAR_ACTION_HOOKS", '{"block_session": "https://gw/block"}')
    problems = load_settings(_env_file=None).production_problems()
    assert problems[0].startswith("SOAR_HOOK_SECRET: required in production")
    monkeypatch.setenv("SOAR_HOOK_SECRET", "whsec_" + "b3RoZXItb3RoZXItb3RoZXI=")
    monkeypatch.setenv("SOAR_PUBLIC_URL", "https://soar.example.com")
    monkeypatch.setenv("SOAR_SESSION_SECRET", "s" * 40)
    monkeypatch.setenv("SOAR_DECISION_KEY", "d" * 40)
    assert load_settings(_env_file=None).production_problems() == []  # all safe
    with pytest.raises(SettingsError, match="SOAR_DECISION_KEY: each key must have at least 32"):
        settings(monkeypatch, SOAR_DECISION_KEY="short")


def test_smtp_settings_are_checked_and_never_echo_a_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOAR_SESSION_SECRET", "a-session-secret-0123456789")
    for url in ("http://mail:25", "smtp://:25", "smtp://mail", "smtps://u:hunter2@mail:port"):
        monkeypatch.setenv("SOAR_SMTP_URL", url)
        with pytest.raises(SettingsError) as caught:
            load_settings(_env_file=None)
        assert str(caught.value) == ("SOAR_SMTP_URL: must be smtp://host:port or smtps://host:port")
    monkeypatch.setenv("SOAR_SMTP_URL", "smtps://u:hunter2@mail.example.com:465")
    with pytest.raises(SettingsError, match="SOAR_SMTP_FROM: required with SOAR_SMTP_URL"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SOAR_SMTP_FROM", "not an address")
    with pytest.raises(SettingsError, match="SOAR_SMTP_FROM: must be an e-mail address"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SOAR_SMTP_FROM", "SOC <soar@example.com>")
    assert load_settings(_env_file=None).smtp_enabled
    monkeypatch.delenv("SOAR_SESSION_SECRET")
    with pytest.raises(SettingsError, match="SOAR_SESSION_SECRET: required with SOAR_SMTP_URL"):
        load_settings(_env_file=None)


def test_smtp_credentials_come_from_the_url_or_the_two_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from approvals.email import smtp_endpoint

    monkeypatch.setenv("SOAR_SESSION_SECRET", "a-session-secret-0123456789")
    monkeypatch.setenv("SOAR_SMTP_FROM", "soar@example.com")
    monkeypatch.setenv("SOAR_SMTP_URL", "smtps://soar%40example.com:p%3Ass@mail.example.com:465")
    ep = smtp_endpoint(load_settings(_env_file=None))
    assert (ep.host, ep.port, ep.tls, ep.user, ep.password) == (
        "mail.example.com",
        465,
        True,
        "soar@example.com",
        "p:ss",
    )
    monkeypatch.setenv("SOAR_SMTP_URL", "smtp://mail.example.com:587")
    monkeypatch.setenv("SOAR_SMTP_USER", "relay")
    monkeypatch.setenv("SOAR_SMTP_PASSWORD", "s3cret")
    ep = smtp_endpoint(load_settings(_env_file=None))
    assert (ep.port, ep.tls, ep.user, ep.password) == (587, False, "relay", "s3cret")


def test_make_run_links_the_incident_pages_to_its_own_temporal_ui(tmp_path: Path) -> None:
    from soar.stack.temporal import EmbeddedTemporal
    from soar.stack.up import temporal_ui_env

    tp = EmbeddedTemporal(tmp_path / "t.db", port=7233, ui_port=18233)
    assert temporal_ui_env(tp, {}) == {"SOAR_TEMPORAL_UI_URL": "http://127.0.0.1:18233"}
    assert temporal_ui_env(tp, {"SOAR_TEMPORAL_UI_URL": "https://t.example"}) == {}
    assert temporal_ui_env(None, {}) == {}
