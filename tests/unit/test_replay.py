"""Notebook workflows never end, so today's code must replay the histories older code
wrote: each file in tests/unit/histories/ is a notebook's whole life recorded by a past
version (tests/unit/histories/record.py, run against that version's checkout). A change
that reorders the commands of a recorded path fails here, not in production."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.notebook import NotebookWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_recorded_histories() -> None:
    assert len(HISTORIES) >= 2


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"notebook/{path.stem}", json.loads(path.read_text()))


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_todays_workflow_replays_a_recorded_history(path: Path) -> None:
    history = _history(path)
    replayer = Replayer(workflows=[NotebookWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
