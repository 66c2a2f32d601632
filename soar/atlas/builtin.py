"""A small built-in ATLAS catalog, usable before (or without) loading the full ATLAS.yaml.

Hand-written facts taken from MITRE ATLAS 5.6.0 (github.com/mitre-atlas/atlas-data,
Apache-2.0, Copyright MITRE): IDs, names, tactic membership and a few mitigation links for
the techniques an LLM/agent SOAR meets most. Descriptions are left empty on purpose; load the
real distribution for them. tests/unit/test_atlas_parse.py checks every fact here against
the reference file, so a rename upstream shows up as a test failure, not as silent drift.

Sub-techniques list their parent's tactics explicitly (ATLAS leaves them implicit) so the
Catalog holds the same effective values the parser produces. Mitigation links are the
reference links restricted to the techniques below, in reference order.
"""

from __future__ import annotations

from soar.atlas.parse import Catalog, Mitigation, Tactic, Technique

# All 16 tactics, in ATLAS matrix order, so every technique added later has its tactic.
_TACTICS = (
    Tactic("AML.TA0002", "Reconnaissance"),
    Tactic("AML.TA0003", "Resource Development"),
    Tactic("AML.TA0004", "Initial Access"),
    Tactic("AML.TA0000", "AI Model Access"),
    Tactic("AML.TA0005", "Execution"),
    Tactic("AML.TA0006", "Persistence"),
    Tactic("AML.TA0012", "Privilege Escalation"),
    Tactic("AML.TA0007", "Defense Evasion"),
    Tactic("AML.TA0013", "Credential Access"),
    Tactic("AML.TA0008", "Discovery"),
    Tactic("AML.TA0015", "Lateral Movement"),
    Tactic("AML.TA0009", "Collection"),
    Tactic("AML.TA0001", "AI Attack Staging"),
    Tactic("AML.TA0014", "Command and Control"),
    Tactic("AML.TA0010", "Exfiltration"),
    Tactic("AML.TA0011", "Impact"),
)

_TECHNIQUES = (
    Technique("AML.T0024", "Exfiltration via AI Inference API", None, ("AML.TA0010",)),
    Technique("AML.T0024.000", "Infer Training Data Membership", "AML.T0024", ("AML.TA0010",)),
    Technique("AML.T0024.001", "Invert AI Model", "AML.T0024", ("AML.TA0010",)),
    Technique("AML.T0024.002", "Extract AI Model", "AML.T0024", ("AML.TA0010",)),
    Technique("AML.T0029", "Denial of AI Service", None, ("AML.TA0011",)),
    Technique("AML.T0034", "Cost Harvesting", None, ("AML.TA0011",)),
    Technique("AML.T0034.000", "Excessive Queries", "AML.T0034", ("AML.TA0011",)),
    Technique("AML.T0034.001", "Resource-Intensive Queries", "AML.T0034", ("AML.TA0011",)),
    Technique("AML.T0034.002", "Agentic Resource Consumption", "AML.T0034", ("AML.TA0011",)),
    Technique("AML.T0040", "AI Model Inference API Access", None, ("AML.TA0000",)),
    Technique("AML.T0043", "Craft Adversarial Data", None, ("AML.TA0001",)),
    Technique("AML.T0043.000", "White-Box Optimization", "AML.T0043", ("AML.TA0001",)),
    Technique("AML.T0043.001", "Black-Box Optimization", "AML.T0043", ("AML.TA0001",)),
    Technique("AML.T0043.002", "Black-Box Transfer", "AML.T0043", ("AML.TA0001",)),
    Technique("AML.T0043.003", "Manual Modification", "AML.T0043", ("AML.TA0001",)),
    Technique("AML.T0043.004", "Insert Backdoor Trigger", "AML.T0043", ("AML.TA0001",)),
    Technique("AML.T0048", "External Harms", None, ("AML.TA0011",)),
    Technique("AML.T0048.000", "Financial Harm", "AML.T0048", ("AML.TA0011",)),
    Technique("AML.T0048.001", "Reputational Harm", "AML.T0048", ("AML.TA0011",)),
    Technique("AML.T0048.002", "Societal Harm", "AML.T0048", ("AML.TA0011",)),
    Technique("AML.T0048.003", "User Harm", "AML.T0048", ("AML.TA0011",)),
    Technique("AML.T0048.004", "AI Intellectual Property Theft", "AML.T0048", ("AML.TA0011",)),
    Technique("AML.T0050", "Command and Scripting Interpreter", None, ("AML.TA0005",)),
    Technique("AML.T0051", "LLM Prompt Injection", None, ("AML.TA0005",)),
    Technique("AML.T0051.000", "Direct", "AML.T0051", ("AML.TA0005",)),
    Technique("AML.T0051.001", "Indirect", "AML.T0051", ("AML.TA0005",)),
    Technique("AML.T0051.002", "Triggered", "AML.T0051", ("AML.TA0005",)),
    Technique("AML.T0053", "AI Agent Tool Invocation", None, ("AML.TA0005", "AML.TA0012")),
    Technique("AML.T0054", "LLM Jailbreak", None, ("AML.TA0012", "AML.TA0007")),
    Technique("AML.T0055", "Unsecured Credentials", None, ("AML.TA0013",)),
    Technique("AML.T0056", "Extract LLM System Prompt", None, ("AML.TA0010",)),
    Technique("AML.T0057", "LLM Data Leakage", None, ("AML.TA0010",)),
    Technique("AML.T0068", "LLM Prompt Obfuscation", None, ("AML.TA0007",)),
    Technique("AML.T0070", "RAG Poisoning", None, ("AML.TA0006",)),
    Technique("AML.T0077", "LLM Response Rendering", None, ("AML.TA0010",)),
    Technique("AML.T0086", "Exfiltration via AI Agent Tool Invocation", None, ("AML.TA0010",)),
)

_MITIGATIONS = (
    Mitigation(
        "AML.M0004",
        "Restrict Number of AI Model Queries",
        (
            "AML.T0034",
            "AML.T0024",
            "AML.T0024.000",
            "AML.T0024.001",
            "AML.T0024.002",
            "AML.T0043.001",
            "AML.T0029",
            "AML.T0043",
            "AML.T0043.003",
        ),
    ),
    Mitigation(
        "AML.M0015",
        "Adversarial Input Detection",
        (
            "AML.T0043.001",
            "AML.T0029",
            "AML.T0043",
            "AML.T0043.000",
            "AML.T0043.002",
            "AML.T0043.004",
            "AML.T0043.003",
        ),
    ),
    Mitigation(
        "AML.M0019",
        "Control Access to AI Models and Data in Production",
        (
            "AML.T0040",
            "AML.T0024",
            "AML.T0034",
            "AML.T0043",
            "AML.T0043.001",
            "AML.T0029",
            "AML.T0051",
        ),
    ),
    Mitigation(
        "AML.M0020",
        "Generative AI Guardrails",
        ("AML.T0054", "AML.T0056", "AML.T0053", "AML.T0051", "AML.T0057"),
    ),
    Mitigation(
        "AML.M0021",
        "Generative AI Guidelines",
        ("AML.T0054", "AML.T0056", "AML.T0053", "AML.T0051", "AML.T0057"),
    ),
    Mitigation(
        "AML.M0022",
        "Generative AI Model Alignment",
        ("AML.T0054", "AML.T0056", "AML.T0053", "AML.T0051", "AML.T0057"),
    ),
    Mitigation(
        "AML.M0024",
        "AI Telemetry Logging",
        (
            "AML.T0024",
            "AML.T0024.000",
            "AML.T0024.001",
            "AML.T0024.002",
            "AML.T0040",
            "AML.T0051",
            "AML.T0051.000",
            "AML.T0051.001",
            "AML.T0051.002",
            "AML.T0053",
            "AML.T0086",
        ),
    ),
    Mitigation(
        "AML.M0029",
        "Human In-the-Loop for AI Agent Actions",
        ("AML.T0086", "AML.T0053"),
    ),
    Mitigation(
        "AML.M0030",
        "Restrict AI Agent Tool Invocation on Untrusted Data",
        ("AML.T0053", "AML.T0086"),
    ),
    Mitigation(
        "AML.M0033",
        "Input and Output Validation for AI Agent Components",
        ("AML.T0053", "AML.T0086", "AML.T0051", "AML.T0051.000", "AML.T0051.001", "AML.T0051.002"),
    ),
)

BUILTIN_CATALOG: Catalog = Catalog(
    version="builtin-2",
    tactics=_TACTICS,
    techniques=_TECHNIQUES,
    mitigations=_MITIGATIONS,
)
