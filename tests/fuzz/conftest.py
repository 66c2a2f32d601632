"""One database for the whole fuzz run (cloned from the migrated template), settings with
bootstrap tokens for every role and a Slack signing secret, and the number of examples."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from soar.config import Settings
from tests.support import make_settings

SLACK_SIGNING_SECRET = "fuzz-slack-signing-secret-0123456789"


def examples(default: int) -> int:
    """`SOAR_FUZZ_EXAMPLES` overrides the per-test (per-operation) example count."""
    raw = os.environ.get("SOAR_FUZZ_EXAMPLES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


@pytest.fixture(scope="session")
def fuzz_db_url(pg_server: str, template_db: str) -> Iterator[str]:
    name = "fuzz_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def fuzz_settings(fuzz_db_url: str, temporal_address: str) -> Settings:
    # No worker polls this task queue: accepted detections start workflows that wait.
    return make_settings(
        fuzz_db_url,
        temporal_address,
        "tq-fuzz-" + uuid.uuid4().hex[:8],
        slack_signing_secret=SLACK_SIGNING_SECRET,
        slack_approvers="U-ALICE",
    )
