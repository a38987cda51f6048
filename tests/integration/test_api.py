"""The REST API against the running stack: every error status, list filters, docs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Notebooks
from tests.support import eventually

pytestmark = pytest.mark.docker

BASE = {"name": "nb", "framework": {"id": "python"}, "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}


def _post(notebooks: Notebooks, **changes):
    body = {**BASE, **changes}
    return notebooks.api.post(notebooks.base, json=body)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"resources": {"flavor": "ai1-1-cpu", "cpu": 1, "gpu": 1}}, "resources", "not both"),
        ({"resources": {"flavor": "ai1-1-cpu", "cpu": 0}}, "resources.cpu", "greater than 0"),
        ({"resources": {"flavor": "nope", "cpu": 1}}, "resources.flavor", "unknown flavor"),
        ({"resources": {"flavor": "ai1-1-cpu", "gpu": 1}}, "resources.gpu", "cpu flavor"),
        ({"resources": {"flavor": "ai1-1-cpu", "cpu": 99}}, "resources.cpu", "at most 12"),
        ({"framework": {"id": "cobol"}}, "framework.id", "available: "),
        ({"framework": {"id": "python", "version": "2.7"}}, "framework.version", "3.11"),
        ({"framework": {"id": "broken"}, "editor": "vscode"}, "editor", "not available"),
        ({"editor": "emacs"}, "editor", "jupyterlab"),
        ({"name": "bad name!"}, "name", "pattern"),
        ({"volumes": ["data@nowhere:/workspace/d"]}, "volumes[0].alias", "unknown storage alias"),
        ({"volumes": ["data@local:/etc/passwd"]}, "volumes[0].mount_path", "/workspace"),
        ({"volumes": ["data@local:/workspace/../etc:rw"]}, "volumes[0].mount_path", ".."),
        (
            {"volumes": ["data@local:/workspace/a:rw", "other@local:/workspace/a/b"]},
            "volumes",
            "nested",
        ),
        ({"env_vars": {"AINB_EDITOR_TOKEN": "x"}}, "env_vars", "reserved"),
        ({"timeout": 5}, "timeout", "greater than or equal"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_invalid_specs_are_422_naming_the_field(
    notebooks: Notebooks, changes, field, words
) -> None:
    r = _post(notebooks, **changes)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field, body
    assert words in body["error"], body


def test_not_found_and_bad_paths(notebooks: Notebooks) -> None:
    r = notebooks.get("0" * 32)
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert notebooks.get("not-an-id").status_code == 404
    assert notebooks.command("0" * 32, "stop").status_code == 404
    assert notebooks.delete("0" * 32).status_code == 404
    r = notebooks.api.get("/v1/projects/Bad_Project/notebooks")
    assert r.status_code == 422 and r.json()["field"] == "project"


def test_health_and_docs(notebooks: Notebooks) -> None:
    assert notebooks.api.get("/healthz").json() == {"status": "ok", "temporal": "ok"}
    assert notebooks.api.get("/docs").status_code == 200
    assert "/v1/projects/{project}/notebooks" in notebooks.api.get("/openapi.json").json()["paths"]


def test_list_filters_by_state_and_label(notebooks: Notebooks) -> None:
    a = notebooks.create(name="listed-a", labels={"team": "nlp", "tier": "gold"})
    b = notebooks.create(name="listed-b", labels={"team": "cv"})
    notebooks.wait(a["id"], "RUNNING")
    notebooks.wait(b["id"], "RUNNING")
    notebooks.command(b["id"], "stop")
    notebooks.wait(b["id"], "STOPPED")

    def ids(**params) -> set[str]:
        r = notebooks.api.get(notebooks.base, params=params)
        assert r.status_code == 200, r.text
        return {n["id"] for n in r.json()}

    def listed(check: Callable[[], bool], what: str) -> None:
        # Lists come from Temporal's visibility store, which trails a transition briefly;
        # a failing list request fails at once (retry_on=()).
        eventually(
            check,
            timeout=10,
            interval=0.2,
            retry_on=(),
            what=what,
            detail=lambda: (
                ids(),
                ids(state="RUNNING"),
                ids(state="STOPPED"),
                a["id"],
                b["id"],
            ),
        )

    assert {a["id"], b["id"]} <= ids()
    # the state filter agrees with GET at once
    assert a["id"] in ids(state="RUNNING") and b["id"] not in ids(state="RUNNING")
    assert b["id"] in ids(state="STOPPED")
    assert ids(label="team=nlp") == {a["id"]}
    assert ids(label=["team=nlp", "tier=gold"]) == {a["id"]}
    assert ids(label=["team=nlp", "tier=silver"]) == set()
    assert notebooks.api.get(notebooks.base, params={"state": "NAPPING"}).status_code == 422
    assert notebooks.api.get(notebooks.base, params={"label": "novalue"}).status_code == 422

    # labels are changed on an existing notebook, and lists follow
    r = notebooks.api.put(f"{notebooks.base}/{b['id']}/labels", json={"labels": {"team": "nlp"}})
    assert r.status_code == 200 and r.json()["spec"]["labels"] == {"team": "nlp"}, r.text
    listed(lambda: ids(label="team=nlp") == {a["id"], b["id"]}, "team=nlp to list both")
    listed(lambda: ids(label="team=cv") == set(), "team=cv to list none")
    r = notebooks.api.put(f"{notebooks.base}/{a['id']}/labels", json={"labels": {}})
    assert r.status_code == 200 and r.json()["spec"]["labels"] == {}
    listed(lambda: ids(label="tier=gold") == set(), "tier=gold to list none")
    r = notebooks.api.put(f"{notebooks.base}/{a['id']}/labels", json={"labels": {"bad key": "x"}})
    assert r.status_code == 422 and r.json()["field"] == "labels", r.text
    for n in (a, b):
        notebooks.delete(n["id"])
    for n in (a, b):
        notebooks.wait(n["id"], "DELETED")
    listed(lambda: not {a["id"], b["id"]} & ids(), "the deleted to leave the list")
