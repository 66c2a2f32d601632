"""Settings: one clear line naming the variable; placeholders refused in production."""

from __future__ import annotations

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

    from soar.cli import app

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
