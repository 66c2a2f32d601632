"""soar.atlas.parse on the official ATLAS 5.6.0 file and on small hand-made documents, and
soar.atlas.builtin checked fact by fact against the official file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from soar.atlas import BUILTIN_CATALOG, Catalog, CatalogError, parse_atlas_file, parse_atlas_yaml

# Read in place, never copied into the project (see /work/shared/reference/atlas/SOURCE.md).
REFERENCE_YAML = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "atlas" / "ATLAS.yaml"
)


@pytest.fixture(scope="module")
def reference_text() -> str:
    if not REFERENCE_YAML.is_file():
        pytest.skip(f"ATLAS reference file not found at {REFERENCE_YAML}")
    return REFERENCE_YAML.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reference(reference_text: str) -> Catalog:
    return parse_atlas_file(REFERENCE_YAML)


def small_doc() -> dict[str, Any]:
    """A minimal 5.x-shaped distribution; each test gets a fresh copy to mutate."""
    return copy.deepcopy(
        {
            "id": "ATLAS",
            "name": "test",
            "version": "9.9.9",
            "matrices": [
                {
                    "id": "ATLAS",
                    "name": "ATLAS Matrix",
                    "tactics": [
                        {"id": "AML.TA0005", "name": "Execution"},
                        {"id": "AML.TA0007", "name": "Defense Evasion"},
                        {"id": "AML.TA0010", "name": "Exfiltration"},
                    ],
                    "techniques": [
                        {
                            "id": "AML.T0051",
                            "name": "LLM Prompt Injection",
                            "tactics": ["AML.TA0005"],
                        },
                        {"id": "AML.T0051.000", "name": "Direct", "subtechnique-of": "AML.T0051"},
                        {
                            "id": "AML.T0051.001",
                            "name": "Indirect",
                            "subtechnique-of": "AML.T0051",
                            "tactics": ["AML.TA0007"],
                        },
                        {"id": "AML.T0057", "name": "LLM Data Leakage", "tactics": ["AML.TA0010"]},
                    ],
                    "mitigations": [
                        {
                            "id": "AML.M0020",
                            "name": "Generative AI Guardrails",
                            "techniques": [
                                {"id": "AML.T0057", "use": "first"},
                                "AML.T0051",
                                {"id": "AML.T0057", "use": "listed again"},
                            ],
                        },
                    ],
                },
            ],
        }
    )


def parse_doc(doc: dict[str, Any]) -> Catalog:
    return parse_atlas_yaml(yaml.safe_dump(doc, sort_keys=False))


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(CatalogError) as info:
        parse_doc(doc)
    return str(info.value)


# --- the official file ---------------------------------------------------------------------


def test_reference_counts(reference: Catalog) -> None:
    assert reference.version == "5.6.0"
    assert len(reference.tactics) == 16
    assert len(reference.techniques) == 170
    assert sum(t.parent_id is None for t in reference.techniques) == 101
    assert sum(t.parent_id is not None for t in reference.techniques) == 69
    assert len(reference.mitigations) == 35


def test_reference_indirect_prompt_injection(reference: Catalog) -> None:
    indirect = reference.technique("AML.T0051.001")
    assert indirect is not None
    assert indirect.name == "Indirect"
    assert indirect.parent_id == "AML.T0051"
    assert indirect.tactic_ids == ("AML.TA0005",)
    assert indirect.description  # descriptions are kept
    assert reference.technique("AML.T9999") is None


def test_reference_subtechniques_inherit_parent_tactics(reference: Catalog) -> None:
    # In 5.6.0 no sub-technique has a 'tactics' field of its own.
    for technique in reference.techniques:
        if technique.parent_id is not None:
            parent = reference.technique(technique.parent_id)
            assert parent is not None and parent.parent_id is None
            assert technique.tactic_ids == parent.tactic_ids != ()


def test_reference_duplicate_mitigation_links_are_deduped(reference: Catalog) -> None:
    # AML.M0002 and AML.M0004 each list AML.T0043.001 twice in the file.
    for mitigation_id in ("AML.M0002", "AML.M0004"):
        mitigation = reference.mitigation(mitigation_id)
        assert mitigation is not None
        assert mitigation.technique_ids.count("AML.T0043.001") == 1
    for mitigation in reference.mitigations:
        assert len(set(mitigation.technique_ids)) == len(mitigation.technique_ids)


def test_reference_links_misplaced_under_ml_lifecycle_are_kept(reference: Catalog) -> None:
    linked = [m.id for m in reference.mitigations_for("AML.T0052.001")]
    assert linked == ["AML.M0018", "AML.M0034"]
    assert sum(len(m.technique_ids) for m in reference.mitigations) == 246


def test_reference_lookups(reference: Catalog) -> None:
    assert [t.id for t in reference.subtechniques("AML.T0051")] == [
        "AML.T0051.000",
        "AML.T0051.001",
        "AML.T0051.002",
    ]
    guardrails = reference.mitigation("AML.M0020")
    assert guardrails is not None
    assert guardrails in reference.mitigations_for("AML.T0051")
    tactic = reference.tactic("AML.TA0010")
    assert tactic is not None and tactic.name == "Exfiltration"


@pytest.mark.parametrize("fraction", [0.1, 0.4, 0.5, 0.75])
def test_reference_truncated_raises_catalog_error(reference_text: str, fraction: float) -> None:
    with pytest.raises(CatalogError, match="truncated"):
        parse_atlas_yaml(reference_text[: int(len(reference_text) * fraction)])


@pytest.mark.parametrize(
    ("fraction", "section"),
    [(0.1, "techniques"), (0.35, "techniques"), (0.5, "mitigations"), (0.9, "case-studies")],
)
def test_reference_cut_at_line_boundary_raises(
    reference_text: str, fraction: float, section: str
) -> None:
    # `head -n` style: whole lines only, so what remains is usually still valid YAML and
    # the structural check has to notice that the last entry stops early.
    lines = reference_text.splitlines(keepends=True)
    with pytest.raises(CatalogError, match=rf"{section}\[\d+\] \(AML\..*looks truncated"):
        parse_atlas_yaml("".join(lines[: int(len(lines) * fraction)]))


def test_reference_missing_name_is_named(reference_text: str) -> None:
    doc = yaml.safe_load(reference_text)
    del doc["matrices"][0]["techniques"][12]["name"]
    technique_id = doc["matrices"][0]["techniques"][12]["id"]
    assert error_of(doc) == f"techniques[12] ({technique_id}): missing 'name'"


# --- small documents: rules ----------------------------------------------------------------


def test_subtechnique_inherits_tactics_unless_it_lists_its_own() -> None:
    catalog = parse_doc(small_doc())
    direct = catalog.technique("AML.T0051.000")
    indirect = catalog.technique("AML.T0051.001")
    assert direct is not None and direct.tactic_ids == ("AML.TA0005",)
    assert indirect is not None and indirect.tactic_ids == ("AML.TA0007",)


def test_duplicate_mitigation_refs_deduped_in_order() -> None:
    catalog = parse_doc(small_doc())
    assert catalog.mitigations[0].technique_ids == ("AML.T0057", "AML.T0051")
    assert [m.id for m in catalog.mitigations_for("AML.T0057")] == ["AML.M0020"]
    assert catalog.mitigations_for("AML.T0051.000") == ()


def test_several_matrices_are_merged_by_id() -> None:
    doc = small_doc()
    second = copy.deepcopy(doc["matrices"][0])
    second["tactics"].append({"id": "AML.TA0011", "name": "Impact"})
    second["techniques"].append(
        {"id": "AML.T0029", "name": "Denial of AI Service", "tactics": ["AML.TA0011"]}
    )
    doc["matrices"].append(second)
    catalog = parse_doc(doc)
    assert [t.id for t in catalog.tactics] == [
        "AML.TA0005",
        "AML.TA0007",
        "AML.TA0010",
        "AML.TA0011",
    ]
    assert [t.id for t in catalog.techniques][-1] == "AML.T0029"
    assert len(catalog.techniques) == 5
    assert len(catalog.mitigations) == 1


def test_last_entry_may_be_a_subtechnique_without_tactics() -> None:
    # The truncation check compares the document's last entry with its siblings; a
    # sub-technique legitimately lacks the 'tactics' that all top-level techniques have.
    doc = small_doc()
    matrix = doc["matrices"][0]
    # All entries but the last have 'tactics' (AML.T0051.001 lists its own).
    techniques = [t for t in matrix.pop("techniques") if t["id"] != "AML.T0051.000"]
    techniques.insert(1, {"id": "AML.T0054", "name": "LLM Jailbreak", "tactics": ["AML.TA0007"]})
    techniques.append({"id": "AML.T0051.002", "name": "Triggered", "subtechnique-of": "AML.T0051"})
    matrix["techniques"] = techniques  # now the last key of the document
    triggered = parse_doc(doc).technique("AML.T0051.002")
    assert triggered is not None and triggered.tactic_ids == ("AML.TA0005",)


def test_top_level_mitigations_accepted() -> None:
    doc = small_doc()
    doc["mitigations"] = doc["matrices"][0].pop("mitigations")
    assert parse_doc(doc).mitigations[0].id == "AML.M0020"


def test_numeric_version_is_read_as_text() -> None:
    doc = small_doc()
    doc["version"] = 5
    assert parse_doc(doc).version == "5"


# --- small documents: errors name the item and the field -----------------------------------


def test_missing_technique_name() -> None:
    doc = small_doc()
    del doc["matrices"][0]["techniques"][3]["name"]
    assert error_of(doc) == "techniques[3] (AML.T0057): missing 'name'"


def test_missing_technique_id() -> None:
    doc = small_doc()
    del doc["matrices"][0]["techniques"][0]["id"]
    assert error_of(doc) == "techniques[0]: missing 'id'"


def test_missing_tactics_on_top_level_technique() -> None:
    doc = small_doc()
    del doc["matrices"][0]["techniques"][0]["tactics"]
    assert error_of(doc) == "techniques[0] (AML.T0051): missing 'tactics'"


@pytest.mark.parametrize(
    ("section", "index", "bad_id", "expected"),
    [
        ("tactics", 1, "TA0007", "tactics[1]: malformed id 'TA0007', expected AML.TA####"),
        ("techniques", 3, "AML.T57", "techniques[3]: malformed id 'AML.T57'"),
        ("techniques", 3, "AML.T0057.1", "techniques[3]: malformed id 'AML.T0057.1'"),
        ("mitigations", 0, "AML.M20", "mitigations[0]: malformed id 'AML.M20'"),
    ],
)
def test_malformed_ids(section: str, index: int, bad_id: str, expected: str) -> None:
    doc = small_doc()
    doc["matrices"][0][section][index]["id"] = bad_id
    assert error_of(doc).startswith(expected)


def test_unknown_parent() -> None:
    doc = small_doc()
    doc["matrices"][0]["techniques"].pop(0)  # AML.T0051 goes, its sub-techniques stay
    doc["matrices"][0]["mitigations"][0]["techniques"] = ["AML.T0057"]
    message = error_of(doc)
    assert message == (
        "techniques[0] (AML.T0051.000): 'subtechnique-of' refers to unknown technique 'AML.T0051'"
    )


def test_parent_must_match_subtechnique_id() -> None:
    doc = small_doc()
    doc["matrices"][0]["techniques"][1]["subtechnique-of"] = "AML.T0057"
    assert "techniques[1] (AML.T0051.000): 'subtechnique-of' is 'AML.T0057'" in error_of(doc)


def test_unknown_tactic() -> None:
    doc = small_doc()
    doc["matrices"][0]["techniques"][3]["tactics"] = ["AML.TA0010", "AML.TA0099"]
    assert error_of(doc) == (
        "techniques[3] (AML.T0057): 'tactics' refers to unknown tactic 'AML.TA0099'"
    )


def test_unknown_mitigation_technique_ref() -> None:
    doc = small_doc()
    doc["matrices"][0]["mitigations"][0]["techniques"].append({"id": "AML.T0099"})
    assert error_of(doc) == (
        "mitigations[0] (AML.M0020): 'techniques' refers to unknown technique 'AML.T0099'"
    )


def test_not_an_atlas_distribution() -> None:
    doc = small_doc()
    del doc["matrices"]
    assert error_of(doc) == "not an ATLAS distribution: no 'matrices' key"
    with pytest.raises(CatalogError, match="top level is a list"):
        parse_atlas_yaml("- a\n- b\n")
    with pytest.raises(CatalogError, match="empty"):
        parse_atlas_yaml("")


def test_missing_version() -> None:
    doc = small_doc()
    del doc["version"]
    assert "missing 'version'" in error_of(doc)


def test_missing_mitigations_everywhere() -> None:
    doc = small_doc()
    del doc["matrices"][0]["mitigations"]
    assert "no 'mitigations'" in error_of(doc)


def test_invalid_yaml_reports_line() -> None:
    text = yaml.safe_dump(small_doc(), sort_keys=False) + "  bad: [unclosed\n"
    with pytest.raises(CatalogError, match=r"^file is truncated or not valid YAML: line \d+: "):
        parse_atlas_yaml(text)


def test_impossible_date_is_catalog_error() -> None:
    # PyYAML raises ValueError from its timestamp constructor; it must not escape raw.
    text = yaml.safe_dump(small_doc(), sort_keys=False) + "created_date: 2024-13-40\n"
    with pytest.raises(CatalogError, match="not valid YAML"):
        parse_atlas_yaml(text)


def test_parse_file_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "ATLAS.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(small_doc()).encode())
    assert parse_atlas_file(path).version == "9.9.9"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CatalogError, match="not UTF-8"):
        parse_atlas_file(path)


# --- the built-in catalog ------------------------------------------------------------------

BUILTIN_MUST_COVER = (
    "AML.T0051",
    "AML.T0051.000",
    "AML.T0051.001",
    "AML.T0054",
    "AML.T0057",
    "AML.T0024",
    "AML.T0024.000",
    "AML.T0024.001",
    "AML.T0024.002",
    "AML.T0056",
    "AML.T0040",
    "AML.T0043",
    "AML.T0048",
    "AML.T0029",
    "AML.T0053",
    "AML.T0055",
)


def test_builtin_covers_the_common_techniques() -> None:
    assert BUILTIN_CATALOG.version == "builtin-2"
    for technique_id in BUILTIN_MUST_COVER:
        assert BUILTIN_CATALOG.technique(technique_id) is not None, technique_id
    assert BUILTIN_CATALOG.mitigations


def test_builtin_is_internally_consistent() -> None:
    catalog = BUILTIN_CATALOG
    for items in (catalog.tactics, catalog.techniques, catalog.mitigations):
        ids = [item.id for item in items]
        assert len(ids) == len(set(ids)), "duplicate ids"
    tactic_ids = {t.id for t in catalog.tactics}
    for technique in catalog.techniques:
        assert technique.tactic_ids, technique.id
        assert set(technique.tactic_ids) <= tactic_ids, technique.id
        if technique.parent_id is not None:
            parent = catalog.technique(technique.parent_id)
            assert parent is not None and parent.parent_id is None, technique.id
            assert technique.tactic_ids == parent.tactic_ids, technique.id
    for mitigation in catalog.mitigations:
        assert mitigation.technique_ids, mitigation.id
        for technique_id in mitigation.technique_ids:
            assert catalog.technique(technique_id) is not None, (mitigation.id, technique_id)


def test_builtin_round_trips_through_the_parser() -> None:
    # The builtin, written out as a distribution, passes every check of the parser.
    doc = {
        "id": "ATLAS",
        "name": "builtin",
        "version": BUILTIN_CATALOG.version,
        "matrices": [
            {
                "id": "ATLAS",
                "name": "builtin",
                "tactics": [{"id": t.id, "name": t.name} for t in BUILTIN_CATALOG.tactics],
                "techniques": [
                    {"id": t.id, "name": t.name, "subtechnique-of": t.parent_id}
                    if t.parent_id
                    else {"id": t.id, "name": t.name, "tactics": list(t.tactic_ids)}
                    for t in BUILTIN_CATALOG.techniques
                ],
                "mitigations": [
                    {"id": m.id, "name": m.name, "techniques": list(m.technique_ids)}
                    for m in BUILTIN_CATALOG.mitigations
                ],
            }
        ],
    }
    assert parse_doc(doc) == BUILTIN_CATALOG


def test_builtin_agrees_with_reference(reference: Catalog) -> None:
    for tactic in BUILTIN_CATALOG.tactics:
        real_tactic = reference.tactic(tactic.id)
        assert real_tactic is not None, tactic.id
        assert tactic.name == real_tactic.name, tactic.id
    for technique in BUILTIN_CATALOG.techniques:
        real = reference.technique(technique.id)
        assert real is not None, technique.id
        assert (technique.name, technique.parent_id, technique.tactic_ids) == (
            real.name,
            real.parent_id,
            real.tactic_ids,
        ), technique.id
    builtin_ids = {t.id for t in BUILTIN_CATALOG.techniques}
    for mitigation in BUILTIN_CATALOG.mitigations:
        real_m = reference.mitigation(mitigation.id)
        assert real_m is not None, mitigation.id
        assert mitigation.name == real_m.name, mitigation.id
        # Exactly the reference links among the builtin techniques, none missing or invented.
        expected = tuple(t for t in real_m.technique_ids if t in builtin_ids)
        assert mitigation.technique_ids == expected, mitigation.id
