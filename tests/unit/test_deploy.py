"""deploy/ is checked, offline:

- the Kubernetes manifests against the Kubernetes OpenAPI schemas (`kubernetes-validate`,
  which ships them), strictly;
- the compose file against the Compose Specification schema (`check-jsonschema`'s vendored
  copy) and for references that schema cannot see (depends_on, volumes);
- the Helm chart without `helm` (not installable here): Chart.yaml, values.yaml against the
  chart's values.schema.json (which helm itself enforces), and its templates structurally:
  balanced actions, every `.Values` path and `include` defined, the objects an operator
  expects (hook Job, probes, resources, HPA, PDB, NetworkPolicy, secrets by reference), the
  same objects as the plain manifests;
- the alert rules (`promtool check rules` and its unit tests when promtool is installed:
  .ci/run installs it) and the dashboard, against the metrics the code defines.

SOAR_REQUIRE_DEPLOY_VALIDATORS=1 (set by .ci/run) turns a missing validator into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram, Metric

import soar.metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "atlas-soar"
K8S_VERSION = "1.30.0"
REQUIRED = os.environ.get("SOAR_REQUIRE_DEPLOY_VALIDATORS") == "1"
CHECK_COMPOSE = (sys.executable, "-m", "check_jsonschema", "--builtin-schema")
COMPOSE_SCHEMA = "vendor.compose-spec"


def need(module: str) -> Any:
    try:
        return __import__(module)
    except ModuleNotFoundError:
        if REQUIRED:
            raise
        pytest.skip(f"{module} is not installed")


def manifests() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "atlas-soar.yaml").read_text()) if d]
    assert docs
    return docs


# --- Kubernetes manifests ----------------------------------------------------------------


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    kv = need("kubernetes_validate")
    for doc in manifests():
        kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError, naming the field


def test_k8s_manifests_say_what_an_operator_needs() -> None:
    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Job", "atlas-soar-migrate") in kinds
    assert {k for k, _ in kinds} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert not any(d["kind"] == "Secret" for d in docs)  # secrets by reference only
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"], d["metadata"]
            assert c["envFrom"][0]["secretRef"]["name"].startswith("atlas-soar-")
            for e in c.get("env", []):
                assert not re.search(r"SECRET|TOKEN|PASSWORD|API_KEY|DATABASE_URL", e["name"]), e
            if d["kind"] == "Deployment":
                assert c["livenessProbe"] and c["readinessProbe"], d["metadata"]["name"]
    # Only the API, the workers and the migration job may reach PostgreSQL and Temporal.
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    for name, components in (
        ("atlas-soar-postgres-clients", {"api", "worker", "migrate"}),
        ("atlas-soar-temporal-clients", {"api", "worker"}),
    ):
        peers = policies[name]["spec"]["ingress"][0]["from"]
        ours = {
            p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for p in peers
            if "namespaceSelector" in p
        }
        assert ours == components, name
    grace = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for d in docs
        if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"]
    }
    assert grace and all(g > 10 for g in grace.values())  # > the worker's shutdown grace


# --- compose -----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    need("check_jsonschema")
    done = subprocess.run(
        [*CHECK_COMPOSE, COMPOSE_SCHEMA, str(DEPLOY / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_references_resolve() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], dep
        for v in svc.get("volumes") or []:
            source = v.split(":")[0]
            assert source.startswith((".", "/")) or source in volumes, f"{name}: {source}"
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
    for kind in ("worker-core", "worker-external"):
        assert services[kind]["stop_grace_period"] == "30s"


# --- the Helm chart ----------------------------------------------------------------------


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "atlas-soar"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["type"] == "application" and chart["appVersion"]


def test_chart_values_match_their_schema_and_refuse_secrets() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema_rs.validator_for(schema)
    values = chart_values()
    validator.validate(values)
    # The schema helm enforces refuses a secret given as a plain value, and a bad field.
    for bad in (
        {**values, "env": {**values["env"], "SOAR_JIRA_TOKEN": "abc"}},
        {**values, "env": {**values["env"], "SOAR_DATABASE_URL": "postgresql://u:p@db/soar"}},
        {**values, "existingSecret": ""},
        {**values, "otel": {"endpoint": "ftp://x", "protocol": "grpc"}},
        {**values, "databasePassword": "hunter2"},
    ):
        assert not validator.is_valid(bad), bad
    # A pod outlives the worker's own graceful stop.
    w = values["worker"]
    assert w["terminationGracePeriodSeconds"] > w["shutdownGraceSeconds"] + 5


ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def test_chart_templates_are_balanced_and_reference_what_exists() -> None:
    values = chart_values()
    helpers = templates()["_helpers.tpl"]
    defined = set(re.findall(r'define "([^"]+)"', helpers))
    for name, text in templates().items():
        if name == "NOTES.txt":
            continue
        depth = 0
        for action in ACTION.findall(text):
            word = action.split()[0] if action.split() else ""
            if word in ("if", "range", "with", "define"):
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{name}: an end without its block"
        assert depth == 0, f"{name}: {depth} block(s) not closed"
        assert text.count("{{") == text.count("}}"), name
        for used in re.findall(r'include "([^"]+)"', text):
            assert used in defined, f"{name}: include {used} is not defined"
        for path in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
            node: Any = values
            for part in path.strip(".").split("."):
                assert isinstance(node, dict) and part in node, f"{name}: .Values{path}"
                node = node[part]
        # Inside `range $kind, $w := .Values.workers`: each worker has what is used.
        for field in set(re.findall(r"\$w\.([A-Za-z_.]+)", text)):
            for kind, w in values["workers"].items():
                node = w
                for part in field.split("."):
                    assert part in node, f"{name}: workers.{kind}.{field}"
                    node = node[part]


def test_chart_installs_what_an_operator_needs() -> None:
    t = templates()
    job = t["migrate-job.yaml"]
    assert "kind: Job" in job and '"helm.sh/hook": pre-install,pre-upgrade' in job
    assert "secretRef" in job and ".Values.migration.existingSecret" in job
    for name in ("api.yaml", "workers.yaml"):
        text = t[name]
        assert "kind: Deployment" in text
        for field in ("readinessProbe", "livenessProbe", "resources:", "securityContext"):
            assert field in text, f"{name}: {field}"
        assert "secretRef" in text and "existingSecret" in text
    assert "terminationGracePeriodSeconds" in t["workers.yaml"]
    assert "apiVersion: autoscaling/v2" in t["hpa.yaml"]
    assert "kind: HorizontalPodAutoscaler" in t["hpa.yaml"]
    assert "apiVersion: policy/v1" in t["pdb.yaml"]
    assert t["networkpolicy.yaml"].count("kind: NetworkPolicy") == 4
    assert not any(re.search(r"^kind: Secret", x, re.M) for x in t.values())
    # The chart and the plain manifests describe the same objects.
    in_chart = set()
    for text in t.values():
        for kind, suffix in re.findall(
            r"^kind: (\w+)\nmetadata:\n  name: \{\{ include \"atlas-soar.fullname\" \$?\.? ?\}\}"
            r"(-[a-z-]+)(?:-\{\{ \$kind \}\})?",
            text,
            re.M,
        ):
            in_chart.add((kind, suffix.rstrip("-")))
    plain = {(d["kind"], d["metadata"]["name"].removeprefix("atlas-soar")) for d in manifests()}
    # Per-worker objects: the chart names them -worker-{{ $kind }}.
    plain_shapes = {(k, re.sub(r"-worker-(core|external)$", "-worker", n)) for k, n in plain}
    assert in_chart == plain_shapes, in_chart ^ plain_shapes


# --- alerts and dashboard ----------------------------------------------------------------


def defined_metrics() -> list[Counter | Gauge | Histogram]:
    return [m for m in vars(soar.metrics).values() if isinstance(m, Counter | Gauge | Histogram)]


def known_series() -> set[str]:
    names = {"up"}
    for obj in defined_metrics():
        for family in obj.describe():
            assert isinstance(family, Metric)
            base = family.name
            names |= {
                "counter": {f"{base}_total"},
                "histogram": {f"{base}_bucket", f"{base}_count", f"{base}_sum"},
                "gauge": {base},
            }.get(family.type, {base})
    return names


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(soar_[a-z0-9_]+|up)\b", expr))


def test_alert_rules_are_well_formed_and_name_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    known = known_series()
    seen = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert re.fullmatch(r"Soar[A-Za-z]+", rule["alert"])
            assert rule["labels"]["severity"] in ("page", "ticket")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert series_in(rule["expr"]) <= known, (rule["alert"], series_in(rule["expr"]))
            seen.append(rule["labels"]["severity"])
    assert 3 <= seen.count("page") <= 8  # the few that wake someone


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if REQUIRED:
            raise AssertionError("promtool is not installed (.ci/run installs it)")
        pytest.skip("promtool is not installed")
    here = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        done = subprocess.run(
            [promtool, *args], cwd=here, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_covers_the_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "atlas-soar.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set().union(*(series_in(e) for e in exprs))
    known = known_series()
    assert used <= known, used - known
    # Every metric the code defines is on the dashboard (by any of its series).
    for obj in defined_metrics():
        for family in obj.describe():
            if family.name in ("soar_audit_sealed_rows", "soar_audit_head_seq"):
                continue  # counters of progress, not on-call questions
            assert any(s.startswith(family.name) for s in used), family.name
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "atlas-soar"
