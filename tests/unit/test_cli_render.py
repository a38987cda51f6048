"""Tables for people; JSON and YAML for scripts."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest

from cli import render, yamlout
from domain.messages import NotebookInput
from domain.spec import NotebookSpec
from domain.status import initial_notebook

# Notebooks as the API serializes them, made from the domain models so they stay real
# (test_cli_commands.py uses them too).
NOTEBOOK_ID = "0123456789abcdef0123456789abcdef"


def notebook(state: str = "STARTING", **info) -> dict:
    spec = NotebookSpec.model_validate(
        {
            "name": "nb",
            "framework": {"id": "python", "version": "3.11"},
            "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            "volumes": ["data@local/train:/workspace/data:ro"],
            "labels": {"team": "nlp"},
            "env_vars": {"SECRET": "hunter2"},
        }
    )
    nb = initial_notebook(
        NotebookInput(
            project="demo",
            notebook_id=NOTEBOOK_ID,
            spec=spec,
            image="ainb/jupyterlab-python:3.11",
            workspace_bucket="ainb-workspaces",
            created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
    ).model_dump(mode="json")
    nb["status"]["state"] = state
    nb["status"]["info"] = {"code": None, "message": "", **info}
    return nb


def with_sync(nb: dict, state: str, done: int, total: int) -> dict:
    nb = copy.deepcopy(nb)
    nb["status"]["volumes"][0]["last_sync"] = {
        "direction": "pull",
        "state": state,
        "files_done": done,
        "files_total": total,
        "bytes_done": done * 1000,
        "bytes_total": total * 1000,
    }
    return nb


def test_notebook_table_has_one_row_per_notebook() -> None:
    nb = notebook("RUNNING", message="running on local")
    lines = render.notebooks_table([nb, nb], "demo").splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "STATE", "FRAMEWORK", "EDITOR", "RESOURCES", "LABELS", "AGE", "INFO",
    ]  # fmt: skip
    assert len(lines) == 3
    row = lines[1]
    for cell in (NOTEBOOK_ID, "RUNNING", "python:3.11", "jupyterlab", "1 cpu x ai1-1-cpu",
                 "team=nlp", "running on local"):  # fmt: skip
        assert cell in row
    # columns line up: every cell starts where its header does
    assert lines[1].index("RUNNING") == lines[0].index("STATE")
    assert render.notebooks_table([], "demo") == "no notebooks in project demo\n"


def test_detail_shows_status_volumes_but_not_env_values() -> None:
    nb = with_sync(
        notebook("STARTING", code="QUEUED", message="queued: number 2 in line"), "running", 3, 10
    )
    text = render.notebook_detail(nb)
    assert "state:" in text and "STARTING" in text
    assert "QUEUED: queued: number 2 in line" in text
    assert "/workspace/data  data@local/train  ro  last sync pull running: 3/10 files" in text
    assert "3.0 KB/10.0 KB" in text
    assert "SECRET" in text and "hunter2" not in text
    assert "timeout:" in text and "7d" in text


def test_age_and_sizes() -> None:
    now = datetime(2026, 1, 2, 5, 10, 30, tzinfo=UTC)
    assert render.age("2026-01-02T03:04:05Z", now) == "2h6m"
    assert render.age("2026-01-02T05:10:00+00:00", now) == "30s"
    assert render.human_bytes(999) == "999 B"
    assert render.human_bytes(1_500_000) == "1.5 MB"


def test_capabilities_tables() -> None:
    frameworks = [
        {"id": "python", "description": "Python", "default_version": "3.11",
         "versions": [{"version": "3.11", "default": True, "editors": ["jupyterlab"],
                       "images": {"jupyterlab": "ainb/jupyterlab-python:3.11"}}]},
    ]  # fmt: skip
    text = render.frameworks_table(frameworks)
    assert "3.11 (default)" in text and "ainb/jupyterlab-python:3.11" in text
    text = render.editors_table([{"id": "jupyterlab", "frameworks": ["python:3.11"]}])
    assert text.splitlines()[1].split() == ["jupyterlab", "python:3.11"]
    flavor = {"name": "ai1-1-cpu", "kind": "cpu", "description": "1 vCPU", "cpu_per_unit": 1.0,
              "memory_gib_per_unit": 4.0, "gpu_model": None, "max_units": 12, "free_units": 2,
              "queued": 0}  # fmt: skip
    assert render.flavors_table([flavor]).splitlines()[1].split()[:8] == [
        "ai1-1-cpu", "cpu", "1", "4", "-", "12", "2", "0",
    ]  # fmt: skip


def test_usage_tables() -> None:
    usage = {
        "notebook_id": NOTEBOOK_ID, "project": "demo", "total_minutes": 7,
        "periods": [{"period": 1, "flavor": "ai1-1-cpu", "kind": "cpu", "quantity": 1,
                     "started_at": "2026-01-02T03:04:05Z", "ended_at": "2026-01-02T03:10:05Z",
                     "seconds": 360.0, "minutes": 6}],
        "current": {"period": 2, "flavor": "ai1-1-cpu", "kind": "cpu", "quantity": 1,
                    "started_at": "2026-01-02T04:00:00Z", "ended_at": None, "seconds": 30.0,
                    "minutes": 1},
    }  # fmt: skip
    lines = render.notebook_usage(usage).splitlines()
    assert lines[1].split()[-1] == "6" and "running" in lines[2]
    assert lines[-1] == "total billed minutes: 7 recorded, the running period 1 so far"


YAML_CASES = [
    notebook("FAILED", code="DATA_SYNC_FAILED", message="volume /workspace/data: no such bucket"),
    {"empty": {}, "none": [], "null": None, "bools": [True, False], "n": 3, "x": 1.5},
    {"strings": ["yes", "No", "null", "~", "3.11", "0x1f", "1e3", ".5", "2026-01-02", "a: b",
                 "# not a comment", "- item", "{x}", "quote\"d", "back\\slash", "tab\there",
                 "line\nbreak", "ünïcode ✓", "", " lead", "trail ", "*alias", "&anchor",
                 "!tag", "%dir", "@at", "`tick", "python:3.11", "a=b,c=d", "ok plain words",
                 "/workspace/data", "\u2028", "\x85", "\U0001f600"]},
    [[1, [2, 3]], [{"a": [{"b": {}}]}]],
]  # fmt: skip


@pytest.mark.parametrize("data", YAML_CASES)
def test_yaml_reads_back_as_the_same_data(data) -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(yamlout.dump(data)) == data


def test_yaml_is_block_style_and_plain_where_safe() -> None:
    text = yamlout.dump({"id": "abc", "labels": {"team": "nlp"}, "volumes": [{"a": 1, "b": "yes"}]})
    assert text == 'id: abc\nlabels:\n  team: nlp\nvolumes:\n  - a: 1\n    b: "yes"\n'


def test_json_is_the_api_document() -> None:
    nb = notebook()
    assert json.loads(render.structured(nb, "json")) == nb
