"""soar posture import garak: a garak report becomes an ATLAS Navigator layer of failure rates.

The fixture tests/fixtures/garak/garak.report.jsonl is shaped exactly like garak's output: its
``start_run setup`` and ``attempt`` records are copies of those in garak's own test asset
tests/_assets/analyze/test_with_ci.report.jsonl (github.com/NVIDIA/garak at cafbe99) with
other probes, prompts and detector results; ``init``, ``eval``, ``completion`` and ``digest``
have the fields garak/command.py and garak/evaluators/base.py write.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soar.audit.formats import navigator_layer
from soar.audit.query import CatalogNames
from soar.cli import app
from soar.posture import (
    PROBE_TECHNIQUES,
    ReportInvalid,
    posture_layer,
    read_garak_report,
    techniques_of,
)
from tests.conftest import REFERENCE

FIXTURE = Path(__file__).parents[1] / "fixtures" / "garak" / "garak.report.jsonl"


def read(lines: list[str]) -> dict[str, object]:
    return posture_layer(read_garak_report(enumerate(lines, 1)))


def scores(layer: dict[str, object]) -> dict[str, float]:
    return {t["techniqueID"]: t["score"] for t in layer["techniques"] if "score" in t}  # type: ignore[attr-defined]


def test_the_fixture_scores_each_technique_by_failure_rate() -> None:
    report = read_garak_report(enumerate(FIXTURE.read_text().splitlines(), 1))
    assert report.target == "openai.OpenAIGenerator gpt-4o-mini"
    assert report.run == "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    layer = posture_layer(report)
    # dan.Dan_11_0: worst detector 4 of 5; grandma.Win10 (attempts only, interrupted) 1 of 2
    assert scores(layer) == {
        "AML.T0054": round(5 / 7, 4),
        "AML.T0051.000": 0.2,
        "AML.T0051.001": 0.125,
        "AML.T0056": 0.25,
        "AML.T0068": 0.0,
    }
    ordered = [t["techniqueID"] for t in layer["techniques"]]  # type: ignore[attr-defined]
    assert ordered[0] == "AML.T0054"  # weakest first
    parent = next(t for t in layer["techniques"] if t["techniqueID"] == "AML.T0051")  # type: ignore[attr-defined]
    assert parent == {"techniqueID": "AML.T0051", "enabled": True, "showSubtechniques": True}
    jb = layer["techniques"][0]  # type: ignore[index]
    assert "LLM Jailbreak" in jb["comment"] and "5 of 7" in jb["comment"]
    assert {"name": "probe dan.Dan_11_0", "value": "4/5"} in jb["metadata"]
    meta = {m["name"]: m["value"] for m in layer["metadata"]}  # type: ignore[attr-defined]
    assert meta["unmapped_probes"] == "test.Test"
    assert meta["target"] == "openai.OpenAIGenerator gpt-4o-mini"
    assert layer["gradient"] == {  # type: ignore[comparison-overlap]
        "colors": ["#d9f0d3", "#c0392b"],
        "minValue": 0,
        "maxValue": 1,
    }


def test_the_layer_has_the_shape_of_the_observed_attacks_layer() -> None:
    names = CatalogNames(version="5.6.0", techniques={}, tactics={}, tactics_of={})
    now = datetime.now(UTC)
    observed = navigator_layer(
        {"AML.T0054": {"detections": 3}}, names, since=now.replace(year=2020), until=now
    )
    layer = read(FIXTURE.read_text().splitlines())
    assert set(observed) <= set(layer)
    for key in ("versions", "domain", "sorting"):
        assert layer[key] == observed[key]
    entry = set(observed["techniques"][0])
    assert all(entry <= set(t) for t in layer["techniques"] if "score" in t)  # type: ignore[attr-defined]


def test_older_reports_with_total_and_prefixed_names() -> None:
    lines = [
        json.dumps({"entry_type": "init", "garak_version": "0.9.0.9", "run": "r1"}),
        json.dumps(
            {
                "entry_type": "eval",
                "probe": "probes.promptinject.HijackKillHumans",
                "detector": "detector.promptinject.AttackRogueString",
                "passed": 1,
                "total": 4,
            }
        ),
    ]
    assert scores(read(lines)) == {"AML.T0051.000": 0.75}


def test_attempts_use_the_runs_threshold() -> None:
    attempt = {
        "entry_type": "attempt",
        "status": 2,
        "probe_classname": "encoding.InjectHex",
        "detector_results": {"encoding.DecodeMatch": [0.6, 0.4, None]},
    }
    lines = [json.dumps(attempt)]
    assert scores(read(lines)) == {"AML.T0068": 0.5}
    setup = {"entry_type": "start_run setup", "run.eval_threshold": 0.7}
    assert scores(read([json.dumps(setup), *lines])) == {"AML.T0068": 0.0}


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ("{not json", "line 2: not a JSON object"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"probe": "dan.Dan_11_0"}', "line 2: entry_type"),
        (
            '{"entry_type": "eval", "probe": "dan.X", "detector": "dan.DAN", "passed": "3",'
            ' "fails": 1}',
            "line 2: passed",
        ),
        (
            '{"entry_type": "eval", "probe": "dan.X", "detector": "dan.DAN", "passed": 3,'
            ' "fails": -1}',
            "line 2: fails",
        ),
        (
            '{"entry_type": "eval", "probe": "dan.X", "detector": "dan.DAN", "passed": 3,'
            ' "fails": 1, "total_evaluated": 9}',
            "line 2: total_evaluated",
        ),
        (
            '{"entry_type": "eval", "probe": "<script>", "detector": "dan.DAN", "passed": 1,'
            ' "fails": 1}',
            "line 2: probe",
        ),
        ('{"entry_type": "eval", "probe": "dan.X", "passed": 1, "fails": 1}', "line 2: detector"),
        (
            '{"entry_type": "attempt", "status": 2, "probe_classname": "dan.X",'
            ' "detector_results": {"dan.DAN": ["high"]}}',
            "line 2: detector_results.dan.DAN",
        ),
    ],
)
def test_a_bad_line_is_refused_with_its_number_and_field(line: str, where: str) -> None:
    good = json.dumps({"entry_type": "init", "run": "r"})
    with pytest.raises(ReportInvalid) as err:
        read_garak_report(enumerate([good, line], 1))
    assert str(err.value).startswith(where)


def test_a_report_that_tested_nothing_is_refused() -> None:
    with pytest.raises(ReportInvalid, match="empty"):
        read_garak_report(enumerate(["", "  "], 1))
    init = json.dumps({"entry_type": "init", "run": "r"})
    with pytest.raises(ReportInvalid, match="nothing was tested"):
        read_garak_report(enumerate([init], 1))


def test_probe_mapping_table() -> None:
    assert techniques_of("dan.Dan_11_0") == ("AML.T0054",)
    assert techniques_of("goodside.Tag") == ("AML.T0068",)  # the class wins over the module
    assert techniques_of("goodside.Davidjl") == ()
    assert techniques_of("latentinjection.LatentInjectionResumeFull") == ("AML.T0051.001",)
    from soar.detect.catalog import KNOWN_TECHNIQUES

    used = {t for ts in PROBE_TECHNIQUES.values() for t in ts}
    assert used <= KNOWN_TECHNIQUES
    atlas = REFERENCE / "atlas" / "ATLAS.yaml"
    if atlas.exists():
        text = atlas.read_text(encoding="utf-8")
        assert all(f"id: {t}\n" in text for t in used), sorted(
            t for t in used if f"id: {t}\n" not in text
        )


def test_cli_writes_the_layer_and_names_a_bad_line(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "posture.json"
    result = runner.invoke(app, ["posture", "import", "garak", str(FIXTURE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "AML.T0054 71%" in result.output
    assert scores(json.loads(out.read_text()))["AML.T0054"] == round(5 / 7, 4)
    stdout = runner.invoke(app, ["posture", "import", "garak", str(FIXTURE)])
    assert json.loads(stdout.stdout)["domain"] == "atlas-atlas"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(FIXTURE.read_text().splitlines()[0] + "\n{oops\n")
    failed = runner.invoke(app, ["posture", "import", "garak", str(bad)])
    assert failed.exit_code == 1 and "line 2: not a JSON object" in failed.output
    missing = runner.invoke(app, ["posture", "import", "garak", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2


EVAL = '{"entry_type": "eval", "probe": "dan.X", "detector": "dan.DAN", '


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (EVAL + '"passed": ' + "9" * 5000 + ', "fails": 1}', "line 2: passed"),
        (EVAL + '"passed": 3, "fails": ' + "1" * 5000 + "}", "line 2: fails"),
        (EVAL + '"passed": 3, "fails": 1, "total_evaluated": NaN}', "line 2: total_evaluated"),
        (EVAL + '"passed": 3.5, "fails": 1}', "line 2: passed"),
    ],
)
def test_a_number_python_cannot_read_names_the_line_and_field(line: str, where: str) -> None:
    good = json.dumps({"entry_type": "init", "run": "r"})
    with pytest.raises(ReportInvalid) as err:
        read_garak_report(enumerate([good, line], 1))
    assert str(err.value).startswith(where)


@pytest.mark.parametrize(
    "scores_json",
    [
        "[NaN, NaN, NaN, -1e308, 0.0]",
        "[0.1, Infinity]",
        "[1e999]",
        "[-0.5]",
        "[1.5]",
        "[-Infinity]",
    ],
)
def test_detector_scores_must_be_finite_and_within_0_to_1(scores_json: str) -> None:
    line = (
        '{"entry_type": "attempt", "status": 2, "probe_classname": "dan.X",'
        f' "detector_results": {{"dan.DAN": {scores_json}}}}}'
    )
    with pytest.raises(ReportInvalid) as err:
        read_garak_report(enumerate([line], 1))
    assert str(err.value).startswith("line 1: detector_results.dan.DAN")
    assert "0 to 1" in str(err.value)


def test_report_text_reaches_the_layer_and_stdout_without_controls(tmp_path: Path) -> None:
    evil = "m\u202eodel\u2028x\u0085y\x9b31m\x1b]8;;http://e/\x07<b>"
    setup = {
        "entry_type": "start_run setup",
        "plugins.target_type": "openai\u2029",
        "plugins.target_name": evil,
    }
    init = {"entry_type": "init", "run": evil, "garak_version": evil, "start_time": evil}
    ev = {"entry_type": "eval", "probe": "dan.X", "detector": "dan.DAN", "passed": 1, "fails": 1}
    report = read_garak_report(enumerate([json.dumps(x) for x in (setup, init, ev)], 1))
    bad = ("\u202e", "\u2028", "\u2029", "\u0085", "\x9b", "\x1b", "\x07")
    for value in (report.target, report.run, report.garak_version, report.start_time):
        assert value is not None and not any(c in value for c in bad), value
    assert "\\u202e" in (report.target or "")  # shown, not silently dropped
    layer = posture_layer(report)
    assert not any(c in json.dumps(layer, ensure_ascii=False) for c in bad)
    src = tmp_path / "r.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in (setup, init, ev)) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["posture", "import", "garak", str(src)])
    assert result.exit_code == 0, result.output
    assert result.stdout.isascii() and "<" not in result.stdout
    assert json.loads(result.stdout)["name"].startswith("atlas-soar posture: openai")
