"""IncidentWorkflow replays the histories of earlier versions: runs recorded (with the fake
activities of test_incident_workflow.py) from the code before the bulkheads (`v0-*`, no
`bulkheads-v1` marker), from the code before the action registry (`v1-*`), and runs with an
analyst's actions (`v2-*`, test_analyst_workflow.py with SOAR_RECORD_HISTORIES) or with the
assessment as a local activity and the offline summary written by it (`v2-*`, recorded from
a real stack by tests/integration/test_record_histories.py). A change that would make a
running incident fail on its next workflow task fails here."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.incident import IncidentWorkflow

HISTORIES = sorted((Path(__file__).parents[1] / "fixtures" / "histories").glob("*.json.gz"))


def test_there_are_histories_of_both_versions() -> None:
    names = {p.name[:2] for p in HISTORIES}
    assert names == {"v0", "v1", "v2"} and len(HISTORIES) >= 18


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.name.removesuffix(".json.gz"))
async def test_an_earlier_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.name, gzip.decompress(path.read_bytes()).decode())
    await Replayer(workflows=[IncidentWorkflow]).replay_workflow(history)
