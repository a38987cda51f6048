"""Notebook and fleet workflows never end, so today's code must replay the histories older
code wrote: each file in tests/unit/histories/ is a path of the workflow as a past version
recorded it (tests/unit/histories/record.py, run against that version's checkout). A
change that reorders the commands of a recorded path fails here, not in production.

Files named ``fleet-*`` are the fleet workflow's; the others are notebooks'. The first
two lifecycle files are plain histories, from before the recorder kept the workflow id
and every run of a continue-as-new chain (``{"workflow_id": …, "runs": […]}``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.fleet import FleetWorkflow
from workflows.notebook import NotebookWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))

# Every path record.py knows, spelled out here so that a deleted file is noticed: each
# needs a history from at least one version.
NOTEBOOK_SCENARIOS = (
    "lifecycle",
    "start-volume-unreadable",
    "start-storage-unavailable",
    "start-image-missing",
    "start-editor-not-ready",
    "start-refused",
    "editor-exit-0",
    "editor-exit-nonzero",
    "timeout-auto-restart",
    "continue-as-new-running",
    "continue-as-new-idle",
    "host-lost-starting",
    "host-lost-running",
    "host-lost-stopping",
    "watch-failing",
    "datasync-push-pull",
    "datasync-pull-failed",
    "datasync-interrupted-by-stop",
    "workspace-checkpoint",
    "queued-then-granted",
    "queued-then-stopped",
    "stop-while-starting",
    "delete-while-starting",
    "delete-while-stopping",
    "delete-keep-workspace",
    "push-retrying",
    # Nothing stuck, orphaned or lost (since a01fc8b).
    "sync-failed-then-datasync",
    "sync-failed-force-delete",
    "sync-failed-delete-refused",
    "host-lost-then-start-saves-leftovers",
    "delete-pushes-preserved",
    "closed-taken-over",
    "ledger-down",
    # Defects of the workflow up to 911a019 (see record.py): fixed, they must keep replaying.
    "stop-racing-a-completion",
    "stop-during-usage-write",
)
FLEET_SCENARIOS = (
    "fleet-grants",
    "fleet-queued-then-granted",
    "fleet-grant-to-gone-notebook",
    "fleet-refused",
    "fleet-host-down",
    "fleet-audit",
    "fleet-configure",
    "fleet-continue-as-new",
)
SCENARIOS = NOTEBOOK_SCENARIOS + FLEET_SCENARIOS


def _scenario(path: Path) -> str | None:
    """``<scenario>-<version label>.json``; the label may hold dashes, so the longest
    scenario name that fits wins."""
    fits = [s for s in SCENARIOS if path.stem.startswith(f"{s}-")]
    return max(fits, key=len) if fits else None


def test_every_scenario_has_a_recorded_history() -> None:
    recorded = {_scenario(p) for p in HISTORIES}
    missing = [s for s in SCENARIOS if s not in recorded]
    assert not missing, f"no history of {missing}: see tests/unit/histories/record.py"


def test_every_history_is_of_a_known_scenario() -> None:
    # A file no scenario claims would be replayed with the notebook workflow by default.
    unknown = [p.name for p in HISTORIES if _scenario(p) is None]
    assert not unknown, f"{unknown}: name the scenario in NOTEBOOK_ or FLEET_SCENARIOS"


def _runs(path: Path) -> list[WorkflowHistory]:
    doc = json.loads(path.read_text())
    if "runs" not in doc:
        return [WorkflowHistory.from_json(f"notebook/{path.stem}", doc)]
    return [WorkflowHistory.from_json(doc["workflow_id"], run) for run in doc["runs"]]


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_todays_workflow_replays_a_recorded_history(path: Path) -> None:
    workflow = FleetWorkflow if _scenario(path) in FLEET_SCENARIOS else NotebookWorkflow
    replayer = Replayer(workflows=[workflow], data_converter=pydantic_data_converter)
    for number, history in enumerate(_runs(path), 1):
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"run {number}: {result.replay_failure}"
