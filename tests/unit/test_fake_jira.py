"""The Jira fake, driven by the real ``jira`` client library.

The retry tests pin down how ``jira.resilientsession.ResilientSession`` behaves (see the
module docstring of ``tests.fakes.jira_api``): only 429 and 503-with-Retry-After are retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from jira import JIRA
from jira.exceptions import JIRAError
from jira.resources import Issue

from tests.fakes.jira_api import FakeJira, JiraCall

USER, API_TOKEN = "soar-bot", "api-token-123"


@pytest.fixture
def fake() -> Iterator[FakeJira]:
    with FakeJira(basic_auth=(USER, API_TOKEN)) as server:
        yield server


def _client(fake: FakeJira, **kwargs: object) -> JIRA:
    options: dict[str, object] = {"basic_auth": (USER, API_TOKEN), "max_retries": 0}
    options.update(kwargs)
    return JIRA(server=fake.url, **options)  # type: ignore[arg-type]


@pytest.fixture
def jira(fake: FakeJira) -> Iterator[JIRA]:
    client = _client(fake)
    yield client
    client.close()


def _create(jira: JIRA, summary: str, labels: list[str], **fields: object) -> Issue:
    return jira.create_issue(
        project="SEC",
        summary=summary,
        description=f"{summary}\n\nRaised by atlas-soar.",
        issuetype={"name": "Incident"},
        labels=labels,
        **fields,
    )


# ------------------------------------------------------------------------- construction, auth


def test_construction_only_fetches_server_info(fake: FakeJira) -> None:
    client = _client(fake)
    try:
        assert [(c.method, c.api_path) for c in fake.calls] == [("GET", "serverInfo")]
        call = fake.calls[0]
        assert isinstance(call, JiraCall)
        assert call.basic_auth == (USER, API_TOKEN)
        assert call.headers["Accept"].startswith("application/json")
        info = client.server_info()
        assert info["versionNumbers"] == [9, 12, 0]
        assert info["deploymentType"] == "Server"
        assert client.myself()["name"] == USER
    finally:
        client.close()


def test_wrong_basic_auth_fails_on_construction(fake: FakeJira) -> None:
    with pytest.raises(JIRAError) as excinfo:
        JIRA(server=fake.url, basic_auth=(USER, "wrong"), max_retries=3)
    assert excinfo.value.status_code == 401
    assert "not authenticated" in excinfo.value.text
    assert len(fake.calls) == 1  # 401 is never retried


def test_token_auth() -> None:
    with FakeJira(token="pat-xyz", username="svc-soar") as fake:
        client = JIRA(server=fake.url, token_auth="pat-xyz", max_retries=0)
        assert client.myself()["name"] == "svc-soar"
        assert fake.calls[-1].bearer_token == "pat-xyz"
        assert fake.calls[-1].basic_auth is None
        client.close()
        with pytest.raises(JIRAError) as excinfo:
            JIRA(server=fake.url, token_auth="nope", max_retries=0)
        assert excinfo.value.status_code == 401


def test_validate_true_uses_session_endpoint(fake: FakeJira) -> None:
    client = _client(fake, validate=True)
    assert fake.calls[0].path == "/rest/auth/1/session"
    client.close()


# ------------------------------------------------------------------------- issues


def test_create_issue_with_labels_priority_and_custom_field(fake: FakeJira, jira: JIRA) -> None:
    issue = _create(
        jira,
        "Prompt injection on chatbot-prod",
        ["atlas-soar", "case-42"],
        priority={"name": "High"},
        customfield_10101="AML.T0051",
        customfield_10100={"value": "Critical"},
    )
    assert issue.key == "SEC-1"
    assert issue.fields.summary == "Prompt injection on chatbot-prod"
    assert issue.fields.labels == ["atlas-soar", "case-42"]
    assert issue.fields.priority.name == "High"
    assert issue.fields.status.name == "To Do"
    assert issue.fields.issuetype.name == "Incident"
    assert issue.fields.project.key == "SEC"
    assert issue.fields.customfield_10101 == "AML.T0051"
    assert issue.fields.customfield_10100.value == "Critical"

    post = fake.calls_to("POST", "/rest/api/2/issue")[0]
    assert post.status == 201
    assert post.json["fields"]["labels"] == ["atlas-soar", "case-42"]
    assert post.json["fields"]["priority"] == {"name": "High"}
    # prefetch=True reloads the issue
    assert fake.calls[-1].method == "GET" and fake.calls[-1].api_path == "issue/SEC-1"
    assert fake.issue("SEC-1")["fields"]["labels"] == ["atlas-soar", "case-42"]

    second = jira.create_issue(project="SEC", summary="second", issuetype="Task")
    assert second.key == "SEC-2"
    assert second.fields.priority.name == "Medium"


def test_create_issue_validation_errors(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as excinfo:
        _create(jira, "bad labels", ["has space"])
    assert excinfo.value.status_code == 400
    assert "contains spaces" in excinfo.value.text

    with pytest.raises(JIRAError) as excinfo:
        _create(jira, "unknown field", [], customfield_99999="x")
    assert excinfo.value.status_code == 400
    assert "cannot be set" in excinfo.value.text

    with pytest.raises(JIRAError) as excinfo:
        _create(jira, "bad priority", [], priority={"name": "Urgent!!"})
    assert "Priority name 'Urgent!!' is not valid" in excinfo.value.text

    with pytest.raises(JIRAError) as excinfo:
        jira.create_issue(project="NOPE", summary="x", issuetype="Task")
    assert excinfo.value.status_code == 404


def test_get_missing_issue_is_404(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as excinfo:
        jira.issue("SEC-999")
    assert excinfo.value.status_code == 404
    assert "Issue Does Not Exist" in excinfo.value.text


def test_get_issue_with_field_filter(fake: FakeJira, jira: JIRA) -> None:
    _create(jira, "filtered", ["x"])
    issue = jira.issue("SEC-1", fields="summary,labels")
    assert set(issue.raw["fields"]) == {"summary", "labels"}
    assert fake.calls[-1].query["fields"] == ["summary,labels"]


def test_update_issue_fields_and_labels(fake: FakeJira, jira: JIRA) -> None:
    issue = _create(jira, "to edit", ["atlas-soar"])
    issue.update(fields={"summary": "edited"})
    issue.add_field_value("labels", "triaged")
    fresh = jira.issue(issue.key)
    assert fresh.fields.summary == "edited"
    assert fresh.fields.labels == ["atlas-soar", "triaged"]
    assert fake.calls_to("PUT")[0].status == 204


def test_reference_lists(jira: JIRA) -> None:
    assert [p.name for p in jira.priorities()] == ["Highest", "High", "Medium", "Low", "Lowest"]
    assert "Incident" in [t.name for t in jira.issue_types()]
    project = jira.project("SEC")
    assert (project.key, project.name) == ("SEC", "Security")
    fields = {f["id"]: f for f in jira.fields()}
    assert fields["customfield_10102"]["name"] == "SOAR Case ID"
    assert fields["customfield_10102"]["custom"] is True
    assert "labels" in fields["labels"]["clauseNames"]


# ------------------------------------------------------------------------- search


def test_search_by_label_jql(fake: FakeJira, jira: JIRA) -> None:
    _create(jira, "case 1", ["atlas-soar", "case-1"])
    _create(jira, "case 2", ["atlas-soar", "case-2"])
    _create(jira, "unrelated", ["other"])
    fake.add_project("OPS", "Operations")
    jira.create_issue(project="OPS", summary="ops", issuetype="Task", labels=["case-1"])

    found = jira.search_issues('project = SEC AND labels = "case-1"')
    assert [i.key for i in found] == ["SEC-1"]
    assert found.total == 1
    assert found[0].fields.summary == "case 1"

    # default order (no ORDER BY) is key DESC: project key, then number
    assert [i.key for i in jira.search_issues('labels = "case-1"')] == ["SEC-1", "OPS-1"]
    assert [i.key for i in jira.search_issues("labels = atlas-soar ORDER BY key ASC")] == [
        "SEC-1",
        "SEC-2",
    ]
    assert jira.search_issues('labels = "CASE-1"') == []  # labels are case-sensitive
    assert [i.key for i in jira.search_issues("labels in (case-2, other) ORDER BY key")] == [
        "SEC-2",
        "SEC-3",
    ]
    # Like Jira, != / NOT IN never match issues without a value; OPS-1 has labels.
    assert [i.key for i in jira.search_issues("project = sec AND labels != atlas-soar")] == [
        "SEC-3"
    ]
    assert [
        i.key
        for i in jira.search_issues('summary ~ "case" AND (labels = case-2 OR labels = case-1)')
    ] == ["SEC-2", "SEC-1"]

    search_call = fake.calls_to("GET", "/search")[0]
    assert search_call.query["jql"] == ['project = SEC AND labels = "case-1"']
    assert fake.calls_to("GET", "/field")  # the client's field-name cache


def test_search_via_post_and_custom_field(fake: FakeJira, jira: JIRA) -> None:
    _create(jira, "with case id", ["atlas-soar"], customfield_10102="CASE-77")
    _create(jira, "without", ["atlas-soar"])
    found = jira.search_issues('"SOAR Case ID" = "CASE-77"', use_post=True)
    assert [i.key for i in found] == ["SEC-1"]
    post = fake.calls_to("POST", "/search")[0]
    assert post.json["jql"] == '"SOAR Case ID" = "CASE-77"'
    assert [i.key for i in jira.search_issues("cf[10102] is EMPTY")] == ["SEC-2"]


def test_search_status_and_json_result(jira: JIRA) -> None:
    issue = _create(jira, "x", ["atlas-soar"])
    _create(jira, "y", ["atlas-soar"])
    jira.transition_issue(issue, "Done")
    raw = jira.search_issues(
        'labels = atlas-soar AND status = "Done"', json_result=True, fields="summary,status"
    )
    assert raw["total"] == 1
    assert raw["issues"][0]["key"] == "SEC-1"
    assert set(raw["issues"][0]["fields"]) == {"summary", "status"}
    assert jira.search_issues("resolution is EMPTY")[0].key == "SEC-2"


def test_search_pagination(fake: FakeJira) -> None:
    client = _client(fake, default_batch_sizes={Issue: 2})
    for n in range(5):
        _create(client, f"issue {n}", ["bulk"])
    found = client.search_issues("labels = bulk ORDER BY key ASC", maxResults=False)
    assert [i.key for i in found] == [f"SEC-{n}" for n in range(1, 6)]
    starts = [c.query.get("startAt", ["0"])[0] for c in fake.calls_to("GET", "/search")]
    assert starts == ["0", "2", "4"]
    page = client.search_issues("labels = bulk ORDER BY key ASC", startAt=1, maxResults=2)
    assert [i.key for i in page] == ["SEC-2", "SEC-3"]
    assert page.total == 5
    client.close()


def test_bad_jql_is_400(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as excinfo:
        jira.search_issues("nosuchfield = x")
    assert excinfo.value.status_code == 400
    assert "does not exist" in excinfo.value.text
    with pytest.raises(JIRAError) as excinfo:
        jira.search_issues("project = NOPE")
    assert "The value 'NOPE' does not exist for the field 'project'." in excinfo.value.text
    with pytest.raises(JIRAError) as excinfo:
        jira.search_issues('labels = "unterminated')
    assert excinfo.value.status_code == 400


def test_cloud_deployment_uses_search_jql() -> None:
    with FakeJira(deployment_type="Cloud") as fake:
        client = JIRA(server=fake.url, basic_auth=("me@example.com", "tok"), max_retries=0)
        _create(client, "cloud", ["atlas-soar"])
        found = client.search_issues("labels = atlas-soar")
        assert [i.key for i in found] == ["SEC-1"]
        assert fake.calls_to("GET", "/search/jql")
        client.close()


# ------------------------------------------------------------------------- comments, transitions


def test_comments(fake: FakeJira, jira: JIRA) -> None:
    issue = _create(jira, "commented", ["atlas-soar"])
    first = jira.add_comment(issue, "Containment: session blocked.")
    second = jira.add_comment(issue.key, "Approved by ana.lyst")
    assert first.body == "Containment: session blocked."
    assert first.author.name == USER
    assert int(second.id) > int(first.id)
    assert [c.body for c in jira.comments(issue.key)] == [
        "Containment: session blocked.",
        "Approved by ana.lyst",
    ]
    assert jira.comment(issue.key, second.id).body == "Approved by ana.lyst"
    assert fake.comments("SEC-1") == ["Containment: session blocked.", "Approved by ana.lyst"]
    assert jira.issue(issue.key).fields.comment.total == 2
    assert fake.calls_to("POST", "/comment")[0].json == {"body": "Containment: session blocked."}


def test_transitions(fake: FakeJira, jira: JIRA) -> None:
    issue = _create(jira, "to close", ["atlas-soar"])
    names = {t["name"]: t["id"] for t in jira.transitions(issue)}
    assert names == {"In Progress": "21", "Done": "31"}  # not the current status

    jira.transition_issue(issue, "In Progress")
    assert fake.status_of("SEC-1") == "In Progress"
    jira.transition_issue(issue, "Done", comment="Closed by atlas-soar")
    closed = jira.issue(issue.key)
    assert closed.fields.status.name == "Done"
    assert closed.fields.status.statusCategory.key == "done"
    assert closed.fields.resolution.name == "Done"
    assert fake.comments("SEC-1") == ["Closed by atlas-soar"]
    post = fake.calls_to("POST", "/transitions")[-1]
    assert post.status == 204
    assert post.json["transition"] == {"id": "31"}

    # Already Done: "Done" is no longer offered, which the client reports by name ...
    with pytest.raises(JIRAError, match="Invalid transition name"):
        jira.transition_issue(issue, "Done")
    # ... and the server rejects the id.
    with pytest.raises(JIRAError) as excinfo:
        jira.transition_issue(issue, "31")
    assert excinfo.value.status_code == 400
    assert "not valid for this issue" in excinfo.value.text

    jira.transition_issue(issue, "11")  # reopen by id
    assert jira.issue(issue.key).fields.resolution is None


# ------------------------------------------------------------------------- failures and retries


def test_500_raises_jira_error_without_retry(fake: FakeJira) -> None:
    client = _client(fake, max_retries=3)
    _create(client, "x", [])
    fake.fail_next(500)
    before = len(fake.calls)
    with pytest.raises(JIRAError) as excinfo:
        client.issue("SEC-1")
    assert excinfo.value.status_code == 500
    assert "Internal server error" in excinfo.value.text
    assert len(fake.calls) == before + 1  # not retried despite max_retries=3
    assert client.issue("SEC-1").key == "SEC-1"  # only the next request failed
    client.close()


def test_401_raises(fake: FakeJira, jira: JIRA) -> None:
    fake.fail_next(401)
    with pytest.raises(JIRAError) as excinfo:
        jira.myself()
    assert excinfo.value.status_code == 401
    assert fake.calls[-1].status == 401


def test_fail_next_path_contains(fake: FakeJira, jira: JIRA) -> None:
    issue = _create(jira, "x", [])
    fake.fail_next(500, path_contains="/transitions", method="POST")
    assert jira.issue(issue.key).key == "SEC-1"  # unaffected
    with pytest.raises(JIRAError) as excinfo:
        jira.transition_issue(issue, "Done")  # GET transitions passes, POST fails
    assert excinfo.value.status_code == 500
    assert fake.status_of("SEC-1") == "To Do"
    jira.transition_issue(issue, "Done")
    assert fake.status_of("SEC-1") == "Done"


def test_503_without_retry_after_is_not_retried(fake: FakeJira) -> None:
    client = _client(fake, max_retries=3)
    fake.fail_next(503, count=1)
    started = time.monotonic()
    with pytest.raises(JIRAError) as excinfo:
        client.myself()
    assert excinfo.value.status_code == 503
    assert time.monotonic() - started < 1
    assert [c.status for c in fake.calls_to(path_contains="myself")] == [503]
    client.close()


def test_429_with_retry_after_is_retried_after_2x_retry_after(fake: FakeJira) -> None:
    client = _client(fake, max_retries=1)
    fake.fail_next(429, retry_after=1, path_contains="/myself")
    started = time.monotonic()
    assert client.myself()["name"] == USER
    elapsed = time.monotonic() - started
    # delay = 2 * max(Retry-After, 1) * uniform(0.5, 1.0) -> between 1 and 2 seconds
    assert 0.95 <= elapsed < 5
    assert [c.status for c in fake.calls_to(path_contains="myself")] == [429, 200]
    client.close()


def test_503_with_retry_after_is_retried(fake: FakeJira) -> None:
    client = _client(fake, max_retries=2)
    client._session.max_retry_delay = 0  # no sleeping in tests; still "recoverable"
    fake.fail_next(503, count=2, retry_after=30)
    assert client.myself()["name"] == USER
    assert [c.status for c in fake.calls_to(path_contains="myself")] == [503, 503, 200]
    client.close()


def test_429_without_retry_after_is_retried_until_max_retries(fake: FakeJira) -> None:
    client = _client(fake, max_retries=2)
    client._session.max_retry_delay = 0  # would otherwise back off 10 * 2**n seconds
    fake.fail_next(429, count=5)
    with pytest.raises(JIRAError) as excinfo:
        client.myself()
    assert excinfo.value.status_code == 429
    # max_retries=2 -> 3 attempts in total
    assert [c.status for c in fake.calls_to(path_contains="myself")] == [429, 429, 429]
    client.close()


def test_max_retries_zero_raises_429_at_once(fake: FakeJira, jira: JIRA) -> None:
    fake.fail_next(429, retry_after=60)
    started = time.monotonic()
    with pytest.raises(JIRAError) as excinfo:
        _create(jira, "x", [])
    assert excinfo.value.status_code == 429
    assert excinfo.value.response.headers["Retry-After"] == "60"
    assert time.monotonic() - started < 1
    assert fake.issue_keys == []


def test_post_is_retried_after_429(fake: FakeJira) -> None:
    client = _client(fake, max_retries=1)
    client._session.max_retry_delay = 0
    fake.fail_next(429, retry_after=1, path_contains="/rest/api/2/issue", method="POST")
    issue = _create(client, "retried create", ["atlas-soar"])
    assert issue.key == "SEC-1"
    assert fake.issue_keys == ["SEC-1"]
    assert [c.status for c in fake.calls_to("POST", "/rest/api/2/issue")] == [429, 201]
    client.close()


# ------------------------------------------------------------------------- concurrency, waiting


def test_concurrent_creates_get_unique_keys(fake: FakeJira) -> None:
    keys: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = _client(fake)
        for n in range(5):
            key = _create(client, f"parallel {n}", ["parallel"]).key
            with lock:
                keys.append(key)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(keys, key=lambda k: int(k.split("-")[1])) == [f"SEC-{n}" for n in range(1, 31)]


def test_wait_for(fake: FakeJira, jira: JIRA) -> None:
    def later() -> None:
        time.sleep(0.2)
        jira.add_comment(_create(jira, "async", []).key, "hello")

    threading.Thread(target=later, daemon=True).start()
    calls = fake.wait_for(lambda cs: any(c.api_path.endswith("/comment") for c in cs))
    assert calls[-1].json == {"body": "hello"}
    with pytest.raises(TimeoutError):
        fake.wait_for(lambda cs: False, timeout=0.1)


def test_unknown_endpoint_is_404(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as excinfo:
        jira.issue_link_types()
    assert excinfo.value.status_code == 404
