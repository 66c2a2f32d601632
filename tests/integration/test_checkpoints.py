"""Signed checkpoints prove the log: as a superuser with the triggers off, change a row,
delete one in the middle, cut off the newest rows, re-hash a suffix consistently; `soar audit
verify --checkpoints` names each. Checkpoints go to a directory or to a bucket over HTTP."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import pytest
from typer.testing import CliRunner

from soar.audit.chain import sealed_content, sealed_link
from soar.audit.verify import _range_stmt
from soar.db import make_sync_engine

pytestmark = pytest.mark.timeout(180)

FIRST = 2000  # rows sealed before the first checkpoint (after the sealing-start row)
ROWS = 3000


def insert_and_seal(url: str, start: int, n: int) -> None:
    with psycopg.connect(url) as c:
        c.execute(
            "INSERT INTO action_log (event_key, event, actor, outcome, incident_id, details)"
            " SELECT 'k' || g, 'test.event', 'system:atlas-soar', 'ok', 'inc-' || (g / 7),"
            " jsonb_build_object('g', g, 'f', g / 3.0, 's', repeat('é', g %% 5))"
            " FROM generate_series(%s::int, %s::int) g",
            (start, start + n - 1),
        )
        c.commit()
        while c.execute("SELECT sealed FROM soar_seal(1000)").fetchone() != (0,):
            c.commit()
        c.commit()


def cli(url: str, *args: str) -> Any:
    from atlas_soar.cli import app

    return CliRunner().invoke(app, ["audit", *args], env={"SOAR_DATABASE_URL": url})


def tamper(url: str, *statements: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        for sql in statements:
            conn.execute(sql)
        conn.commit()


def rehash_from(url: str, seq: int) -> None:
    """The careful forger: change row `seq`, then recompute every later hash so the chain
    is consistent again."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(_range_stmt(seq - 1, 10**9)).all()
    finally:
        engine.dispose()
    prev = rows[0][14]
    updates = []
    for r in rows[1:]:
        values = list(r[1:13])
        if r[0] == seq:
            values[7] = "alice"  # actor
        h = sealed_link(prev, sealed_content([str(r[0]), *values]))
        updates.append((values[7], prev, h, r[0]))
        prev = h
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE action_log SET actor = %s, prev_hash = %s, hash = %s WHERE seq = %s",
                updates,
            )
        conn.commit()


@pytest.fixture
def signed(db_url: str, tmp_path: Path) -> tuple[str, Path, Path]:
    keys = tmp_path / "keys"
    made = cli(db_url, "keygen", "--out", str(keys))
    assert made.exit_code == 0, made.output
    key = next(keys.glob("*.key.pem"))
    pub = next(keys.glob("*pub*"))
    assert key.stat().st_mode & 0o077 == 0
    out = tmp_path / "checkpoints"
    insert_and_seal(db_url, 1, FIRST)
    first = cli(db_url, "checkpoint", "--key", str(key), "--out", str(out))
    assert first.exit_code == 0, first.output
    insert_and_seal(db_url, FIRST + 1, ROWS - FIRST)
    second = cli(db_url, "checkpoint", "--key", str(key), "--out", str(out))
    assert second.exit_code == 0, second.output
    assert len(list(out.glob("checkpoint-*.json"))) == 2
    return db_url, out, pub


def verify(url: str, out: Path | str, pub: Path, *extra: str) -> Any:
    return cli(url, "verify", "--checkpoints", str(out), "--public-key", str(pub), *extra)


HEAD = ROWS + 1  # the sealing-start row is seq 1


def test_an_untouched_log_passes_against_its_checkpoints(signed: tuple[str, Path, Path]) -> None:
    url, out, pub = signed
    ok = verify(url, out, pub)
    assert ok.exit_code == 0, ok.output
    assert f"{HEAD} rows" in ok.output and "2 checkpoints" in ok.output
    assert "every row sealed" in ok.output
    ok2 = verify(url, out, pub, "--workers", "2")
    assert ok2.exit_code == 0, ok2.output


def test_a_changed_row_is_named(signed: tuple[str, Path, Path]) -> None:
    url, out, pub = signed
    tamper(url, "UPDATE action_log SET outcome = 'rejected' WHERE seq = 1234")
    bad = verify(url, out, pub)
    assert bad.exit_code == 1
    assert "row 1234: content changed" in bad.output


def test_a_deleted_middle_row_is_named(signed: tuple[str, Path, Path]) -> None:
    url, out, pub = signed
    tamper(url, "DELETE FROM action_log WHERE seq = 1500")
    bad = verify(url, out, pub)
    assert bad.exit_code == 1
    assert "row(s) 1500 missing" in bad.output


def test_cutting_off_the_newest_rows_is_named(signed: tuple[str, Path, Path]) -> None:
    url, out, pub = signed
    tamper(url, f"DELETE FROM action_log WHERE seq > {HEAD - 10}")
    assert cli(url, "verify").exit_code == 0  # the chain alone cannot see it
    bad = verify(url, out, pub)
    assert bad.exit_code == 1
    assert "log truncated" in bad.output
    assert f"rows {HEAD - 9}..{HEAD} gone" in bad.output


def test_a_consistently_rehashed_suffix_is_named(signed: tuple[str, Path, Path]) -> None:
    url, out, pub = signed
    rehash_from(url, 2500)
    assert cli(url, "verify").exit_code == 0  # consistent: the chain alone cannot see it
    bad = verify(url, out, pub)
    assert bad.exit_code == 1
    assert f"row {HEAD}: history rewritten" in bad.output
    assert f"changed after row {FIRST + 1}" in bad.output
    # Nor does the signer bless it.
    key = next(pub.parent.glob("*.key.pem"))
    refused = cli(url, "checkpoint", "--key", str(key), "--out", str(out))
    assert refused.exit_code == 1 and "rewritten" in refused.output


def test_every_problem_is_found_and_the_output_capped(signed: tuple[str, Path, Path]) -> None:
    url, out, pub = signed
    tamper(
        url,
        "UPDATE action_log SET outcome = 'x' WHERE seq % 100 = 0",
        "DELETE FROM action_log WHERE seq IN (777, 1777)",
        f"DELETE FROM action_log WHERE seq > {HEAD - 10}",
    )
    bad = verify(url, out, pub, "--max-problems", "5")
    assert bad.exit_code == 1
    assert bad.output.count("problem: ") == 5
    # 29 changed rows remain (3000 is gone with the tail), 2 holes, the truncation.
    assert "... and 27 more problems" in bad.output, bad.output
    assert "32 problem(s)" in bad.output


def test_a_forged_or_unknown_checkpoint_is_named(
    signed: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, out, pub = signed
    newest = sorted(out.glob("checkpoint-*.json"))[-1]
    newest.write_text(newest.read_text().replace('"seq": ', '"seq": 1', 1))
    bad = verify(url, out, pub)
    assert bad.exit_code == 1
    assert "signature invalid" in bad.output or "malformed" in bad.output
    other = cli(url, "keygen", "--out", str(tmp_path / "other"))
    assert other.exit_code == 0
    stranger = next((tmp_path / "other").glob("*pub*"))
    bad = verify(url, out, stranger)
    assert bad.exit_code == 1 and "unknown key" in bad.output
    assert verify(url, out, stranger).exit_code == 1
    # Rotation: both public keys given, the good checkpoint verifies again.
    newest.unlink()
    ok = cli(
        url,
        "verify",
        "--checkpoints",
        str(out),
        "--public-key",
        str(pub),
        "--public-key",
        str(stranger),
    )
    assert ok.exit_code == 0, ok.output


# --- a bucket over HTTP --------------------------------------------------------------------


class _Bucket(BaseHTTPRequestHandler):
    """Just enough of S3: PUT and GET objects, ListObjectsV2 with a prefix."""

    objects: dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.objects[unquote(urlsplit(self.path).path)] = body
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        q = parse_qs(u.query)
        if q.get("list-type") == ["2"]:
            bucket = u.path.rstrip("/")
            prefix = q.get("prefix", [""])[0]
            keys = sorted(
                k[len(bucket) + 1 :]
                for k in self.objects
                if k.startswith(bucket + "/") and k[len(bucket) + 1 :].startswith(prefix)
            )
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>false'
                "</IsTruncated>" + "".join(f"<Contents><Key>{k}</Key></Contents>" for k in keys)
            ).encode() + b"</ListBucketResult>"
        elif unquote(u.path) in self.objects:
            body = self.objects[unquote(u.path)]
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def bucket() -> Iterator[str]:
    _Bucket.objects = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bucket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/audit-bucket/soar"
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoints_in_a_bucket(db_url: str, tmp_path: Path, bucket: str) -> None:
    assert cli(db_url, "keygen", "--out", str(tmp_path)).exit_code == 0
    key, pub = next(tmp_path.glob("*.key.pem")), next(tmp_path.glob("*pub*"))
    insert_and_seal(db_url, 1, 300)
    made = cli(db_url, "checkpoint", "--key", str(key), "--out", bucket)
    assert made.exit_code == 0, made.output
    assert [k for k in _Bucket.objects if re.search(r"/audit-bucket/soar/checkpoint-", k)]
    insert_and_seal(db_url, 301, 100)
    assert cli(db_url, "checkpoint", "--key", str(key), "--out", bucket).exit_code == 0
    ok = verify(db_url, bucket, pub)
    assert ok.exit_code == 0, ok.output
    assert "2 checkpoints" in ok.output
    tamper(db_url, "DELETE FROM action_log WHERE seq > 395")
    bad = verify(db_url, bucket, pub)
    assert bad.exit_code == 1 and "log truncated" in bad.output


@pytest.fixture
def s3() -> Iterator[tuple[str, dict[str, str]]]:
    """A real S3-compatible server (moto's, a process of its own) that checks AWS Signature
    Version 4 on every request; yields its endpoint and the credentials of a user that may
    write the bucket `audit-bucket`."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}  # set-up, then every call signed
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        anon = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **anon)
        iam.create_user(UserName="checkpointer")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="checkpointer", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName="checkpointer")["AccessKey"]
        creds = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket="audit-bucket")
        yield endpoint, creds
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_checkpoints_in_an_s3_bucket_with_signed_requests(
    db_url: str, tmp_path: Path, s3: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, creds = s3
    assert cli(db_url, "keygen", "--out", str(tmp_path)).exit_code == 0
    key, pub = next(tmp_path.glob("*.key.pem")), next(tmp_path.glob("*pub*"))
    insert_and_seal(db_url, 1, 50)
    target = f"{endpoint}/audit-bucket/soar"

    # Without credentials, or with a wrong secret, the server refuses: nothing is written.
    unsigned = cli(db_url, "checkpoint", "--key", str(key), "--out", target)
    assert unsigned.exit_code != 0 and "HTTP" in unsigned.output
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    forged = cli(db_url, "checkpoint", "--key", str(key), "--out", target)
    assert forged.exit_code != 0 and "HTTP 403" in forged.output

    # Signed with the real secret (here from the URL; the environment works the same way).
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    secret = creds["AWS_SECRET_ACCESS_KEY"].replace("/", "%2F").replace("+", "%2B")
    authed = target.replace("http://", f"http://{creds['AWS_ACCESS_KEY_ID']}:{secret}@")
    made = cli(db_url, "checkpoint", "--key", str(key), "--out", authed)
    assert made.exit_code == 0, made.output
    assert secret not in made.output
    insert_and_seal(db_url, 51, 20)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["AWS_SECRET_ACCESS_KEY"])
    assert cli(db_url, "checkpoint", "--key", str(key), "--out", target).exit_code == 0
    ok = verify(db_url, target, pub)
    assert ok.exit_code == 0, ok.output
    assert "2 checkpoints" in ok.output
    tamper(db_url, "DELETE FROM action_log WHERE seq > 60")
    bad = verify(db_url, target, pub)
    assert bad.exit_code == 1 and "log truncated" in bad.output


def test_a_running_signer_checkpoints_every_n_rows(db_url: str, tmp_path: Path) -> None:
    """`--rows 100` (with a long `--every`): a checkpoint as soon as 100 more rows are sealed,
    none while nothing changes."""
    import os
    import subprocess
    import sys
    import time

    assert cli(db_url, "keygen", "--out", str(tmp_path / "k")).exit_code == 0
    key = next((tmp_path / "k").glob("*.key.pem"))
    out = tmp_path / "cps"
    insert_and_seal(db_url, 1, 10)
    signer = subprocess.Popen(
        [
            *(sys.executable, "-m", "soar.cli", "audit", "checkpoint", "--key", str(key)),
            *("--out", str(out), "--rows", "100", "--every", "3600"),
        ],
        env={**os.environ, "SOAR_DATABASE_URL": db_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def count(expected: int) -> int:
        for _ in range(100):
            n = len(list(out.glob("checkpoint-*.json"))) if out.exists() else 0
            if n >= expected:
                return n
            time.sleep(0.1)
        return n

    try:
        assert count(1) == 1  # the head at start
        insert_and_seal(db_url, 11, 50)
        time.sleep(2.5)
        assert count(1) == 1  # 50 more rows: not yet
        insert_and_seal(db_url, 61, 60)
        assert count(2) == 2  # 110 more rows: signed
    finally:
        signer.terminate()
        output = signer.communicate(timeout=10)[0]
    assert "Traceback" not in output
