"""Where a summary is shown: marked when a model wrote it, escaped for each sink; settings of
the provider refused in one line naming the variable; the offline summary deterministic."""

from __future__ import annotations

import pytest

from activities.tickets import description_of
from approvals.slack_blocks import incident_blocks
from soar.config import SettingsError, load_settings
from soar.connectors import IncidentBrief
from soar.escape import jira_wiki
from soar.summaries import NextStep, Summary, SummaryFacts, offline_summary

EVIL = "<!channel> *bold* `code` {noformat} [click|http://evil.example] <script>x</script>"


def brief(analysis: Summary | None) -> IncidentBrief:
    return IncidentBrief(
        incident_id="inc-1",
        tenant="acme",
        subject="user:u-1",
        technique="AML.T0051",
        technique_name="LLM Prompt Injection",
        tactic="AML.TA0005",
        tactic_name="Execution",
        severity="high",
        risk_score=50.0,
        excerpt=None,
        analysis=analysis,
    )


def model_summary() -> Summary:
    return Summary(EVIL, EVIL, (NextStep(EVIL, "AML.M0020"),), written_by="model", model="m-1")


def test_slack_marks_and_escapes_a_model_summary() -> None:
    blocks = incident_blocks(brief(model_summary()))
    text = blocks[-1]["text"]["text"]
    assert text.startswith("*Summary* _(written by model `m-1`; untrusted, for reading only)_")
    assert "<!channel>" not in text and "<script>" not in text and "&lt;!channel&gt;" in text
    assert "`AML.M0020`" in text
    assert len(text) <= 2900
    offline = incident_blocks(brief(offline_summary(facts())))[-1]["text"]["text"]
    assert "_(offline summary)_" in offline
    assert all("*Summary*" not in str(b) for b in incident_blocks(brief(None)))


def test_jira_description_and_comments_keep_model_text_as_text() -> None:
    description = description_of(brief(model_summary()), "")
    part = description.split("h4. Summary\n\n{noformat}\n", 1)[1].split("\n{noformat}", 1)[0]
    assert part.startswith("Written by model m-1; untrusted")
    assert "{ noformat}" in part  # cannot close the block early
    assert jira_wiki(EVIL).count("\\[click") == 1 and "\\{noformat\\}" in jira_wiki(EVIL)
    assert "[click|" not in jira_wiki(EVIL)


def facts() -> SummaryFacts:
    return SummaryFacts(
        "acme",
        "AML.T0051",
        "LLM Prompt Injection",
        (("AML.TA0005", "Execution"),),
        (("AML.M0020", "Generative AI Guardrails"),),
        "high",
        0.9,
        "gw",
        risk_score=42.0,
        detections_24h=2,
    )


def test_offline_summary_is_deterministic_and_cites_catalog_mitigations() -> None:
    a, b = offline_summary(facts()), offline_summary(facts())
    assert a == b and a.written_by == "offline" and a.model is None
    assert a.summary == (
        "AML.T0051 LLM Prompt Injection (AML.TA0005 Execution); reported by gw at severity "
        "high, confidence 0.90; 2 detection(s) on this subject in 24 h; risk score 42/100."
    )
    assert a.next_steps[0].mitigation == "AML.M0020"
    assert Summary.from_json(a.as_json()) == a


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"llm_base_url": "http://127.0.0.1:9/v1"}, "SOAR_LLM_MODEL"),
        ({"llm_model": "gpt-x"}, "SOAR_LLM_BASE_URL"),
        ({"llm_base_url": "ftp://x", "llm_model": "m"}, "SOAR_LLM_BASE_URL"),
        ({"llm_base_url": "http://x/v1", "llm_model": "a model"}, "SOAR_LLM_MODEL"),
        ({"llm_timeout_seconds": 0}, "SOAR_LLM_TIMEOUT_SECONDS"),
    ],
)
def test_provider_settings_refused_naming_the_variable(env: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(_env_file=None, **env)


def test_api_key_is_a_secret() -> None:
    s = load_settings(
        _env_file=None, llm_base_url="http://x/v1", llm_model="m", llm_api_key="sk-abc"
    )
    assert "sk-abc" not in repr(s) and s.llm_api_key is not None
