"""Commands against a fake API (httpx.MockTransport): requests sent, output, exit codes;
and --wait's lines and outcomes against a scripted sequence of GETs."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from cli.client import ApiError, Unreachable
from cli.main import main
from cli.wait import WaitFailed, follow
from tests.unit.test_cli_render import NOTEBOOK_ID, notebook, with_sync

BASE = "/v1/projects/demo/notebooks"
FLAVORS = [
    {"name": "ai1-1-cpu", "kind": "cpu", "description": "", "cpu_per_unit": 1.0,
     "memory_gib_per_unit": 4.0, "gpu_model": None, "max_units": 12, "free_units": 2, "queued": 0},
    {"name": "ai1-1-gpu", "kind": "gpu", "description": "", "cpu_per_unit": 8.0,
     "memory_gib_per_unit": 45.0, "gpu_model": "any", "max_units": 4, "free_units": 0, "queued": 0},
]  # fmt: skip


class FakeApi:
    def __init__(self, routes: dict[tuple[str, str], object]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get((request.method, request.url.path))
        if answer is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        if isinstance(answer, httpx.Response):
            return answer
        if callable(answer):
            return answer(request)
        return httpx.Response(200, json=answer)


def run(argv: list[str], api: FakeApi, env: dict | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--url", "http://api.test", "--project", "demo", *argv],
        environ=env or {"HOME": "/nonexistent"},
        stdout=out,
        stderr=err,
        transport=httpx.MockTransport(api),
    )
    return code, out.getvalue(), err.getvalue()


def test_run_picks_a_flavor_of_the_asked_kind_and_posts_the_spec() -> None:
    api = FakeApi({
        ("GET", "/v1/capabilities/flavors"): FLAVORS,
        ("POST", BASE): lambda r: httpx.Response(201, json=notebook()),
    })  # fmt: skip
    code, out, _ = run(["run", "python", "--gpu", "2", "--name", "g", "-l", "a=b"], api)
    assert code == 0, out
    body = json.loads(api.requests[-1].content)
    assert body["resources"] == {"flavor": "ai1-1-gpu", "gpu": 2}
    assert body["labels"] == {"a": "b"} and body["name"] == "g"
    assert NOTEBOOK_ID in out and "STARTING" in out

    code, _, _ = run(["run", "python", "jupyterlab", "--flavor", "ai1-1-gpu"], api)
    assert json.loads(api.requests[-1].content)["resources"] == {"flavor": "ai1-1-gpu", "gpu": 1}
    code, _, _ = run(["run", "python", "--cpu", "3"], api)
    assert json.loads(api.requests[-1].content)["resources"] == {"flavor": "ai1-1-cpu", "cpu": 3}


def test_a_catalog_refusal_is_one_line_naming_the_field_and_exit_2() -> None:
    refusal = {
        "error": "framework.id: unknown framework 'cobol'; available: python",
        "field": "framework.id",
        "errors": [{"field": "framework.id", "message": "..."}],
    }
    api = FakeApi({
        ("GET", "/v1/capabilities/flavors"): FLAVORS,
        ("POST", BASE): httpx.Response(422, json=refusal),
    })  # fmt: skip
    code, out, err = run(["run", "cobol"], api)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("ainb: error: framework.id: unknown framework 'cobol'") and "422" in err


def test_a_field_missing_from_the_message_is_added() -> None:
    api = FakeApi({("PUT", f"{BASE}/{NOTEBOOK_ID}/labels"): httpx.Response(
        422, json={"error": "bad key", "field": "labels"})})  # fmt: skip
    api.routes[("GET", f"{BASE}/{NOTEBOOK_ID}")] = notebook()
    code, _, err = run(["label", NOTEBOOK_ID, "x=y"], api)
    assert code == 2 and err == "ainb: error: labels: bad key (HTTP 422)\n"


@pytest.mark.parametrize(
    ("response", "code", "words"),
    [
        (httpx.Response(404, json={"error": "notebook x not found in project demo"}), 2, "not found"),
        (httpx.Response(409, json={"error": "cannot stop a STOPPED notebook"}), 2, "STOPPED"),
        (httpx.Response(503, json={"error": "the control plane did not answer"}), 1, "did not answer"),
        (httpx.Response(500, text="Internal Server Error"), 1, "Internal Server Error"),
    ],
)  # fmt: skip
def test_status_codes_map_to_exit_codes(response, code, words) -> None:
    api = FakeApi({("POST", f"{BASE}/{NOTEBOOK_ID}/stop"): response})
    got, out, err = run(["stop", NOTEBOOK_ID], api)
    assert got == code and words in err and out == "" and err.count("\n") == 1


def test_unknown_routes_say_so() -> None:
    code, _, err = run(["get", NOTEBOOK_ID], FakeApi({}))
    assert code == 2 and "Not Found" in err


def test_connection_refused_names_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    code, _, err = run(["ls"], refuse)  # type: ignore[arg-type]
    assert code == 1
    assert err == "ainb: cannot reach the ainb API at http://api.test: connection refused\n"


def test_token_is_sent_as_bearer_only_when_given() -> None:
    api = FakeApi({("GET", BASE): []})
    run(["ls"], api)
    assert "authorization" not in api.requests[-1].headers
    run(["ls"], api, env={"HOME": "/nonexistent", "AINB_TOKEN": "s3cret"})
    assert api.requests[-1].headers["authorization"] == "Bearer s3cret"


def test_ls_filters_and_json_output() -> None:
    api = FakeApi({("GET", BASE): [notebook("RUNNING")]})
    code, out, _ = run(
        ["ls", "--state", "running", "-l", "team=nlp", "-l", "x=y", "-o", "json"], api
    )
    assert code == 0
    assert api.requests[-1].url.params.get_list("label") == ["team=nlp", "x=y"]
    assert api.requests[-1].url.params["state"] == "RUNNING"
    assert [n["id"] for n in json.loads(out)] == [NOTEBOOK_ID]
    code, out, _ = run(["ls", "-o", "yaml"], api)
    assert out.startswith(f'- id: "{NOTEBOOK_ID}"')  # quoted: it starts with a digit


def test_label_edits_the_current_labels() -> None:
    current = notebook()
    current["spec"]["labels"] = {"team": "nlp", "tier": "gold"}
    updated = notebook()
    updated["spec"]["labels"] = {"team": "cv", "new": "1"}
    api = FakeApi({
        ("GET", f"{BASE}/{NOTEBOOK_ID}"): current,
        ("PUT", f"{BASE}/{NOTEBOOK_ID}/labels"): updated,
    })  # fmt: skip
    code, out, _ = run(["label", NOTEBOOK_ID, "tier-", "team=cv", "new=1"], api)
    assert code == 0
    assert json.loads(api.requests[-1].content) == {"labels": {"team": "cv", "new": "1"}}
    assert out == f"{NOTEBOOK_ID} labels: new=1,team=cv\n"


def test_usage_of_a_notebook_or_of_the_project() -> None:
    api = FakeApi({
        ("GET", f"{BASE}/{NOTEBOOK_ID}/usage"): {"notebook_id": NOTEBOOK_ID, "project": "demo",
                                                 "current": None, "periods": [], "total_minutes": 0},
        ("GET", "/v1/projects/demo/usage"): {"project": "demo", "start": "2026-01-01T00:00:00Z",
                                             "end": "2026-01-31T00:00:00Z", "total_minutes": 3,
                                             "by_notebook": [], "by_flavor": []},
    })  # fmt: skip
    code, out, _ = run(["usage", NOTEBOOK_ID], api)
    assert code == 0 and "total billed minutes: 0" in out
    code, out, _ = run(["usage", "--from", "2026-01-01T00:00:00Z"], api)
    assert code == 0 and "total billed minutes: 3" in out
    assert api.requests[-1].url.params["from"] == "2026-01-01T00:00:00Z"


class Script:
    """A client whose event stream answers a scripted sequence (the last answer repeats);
    an exception in it ends the stream, and the next one goes on with the script."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.resumed_from: list[int | None] = []

    def changes(self, notebook_id: str, after_version: int | None = None):
        self.resumed_from.append(after_version)
        while True:
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(answer, Exception):
                raise answer
            yield answer


def _follow(client, first: dict, target: str) -> tuple[object, list[str]]:
    lines: list[str] = []
    result = follow(client, first, target, lines.append, poll_s=0, sleep=lambda _: None)
    return result, [line.split("  ", 1)[1] for line in lines]  # without the time stamp


def test_wait_shows_each_change_once_and_ends_at_the_target() -> None:
    queued = notebook("STARTING", code="QUEUED", message="queued: number 2 in line")
    first_in_line = notebook("STARTING", code="QUEUED", message="queued: number 1 in line")
    pulling = notebook("STARTING", message="pulling volumes")
    running = notebook("RUNNING", message="running on local")
    client = Script(
        queued, first_in_line, first_in_line, with_sync(pulling, "running", 0, 4),
        with_sync(pulling, "running", 2, 4), with_sync(pulling, "running", 2, 4),
        with_sync(pulling, "done", 4, 4), with_sync(running, "done", 4, 4),
    )  # fmt: skip
    result, lines = _follow(client, notebook("STARTING", message="notebook created"), "RUNNING")
    assert result["status"]["state"] == "RUNNING"
    assert lines == [
        "STARTING  notebook created",
        "STARTING  QUEUED: queued: number 2 in line",
        "STARTING  QUEUED: queued: number 1 in line",
        # a sync's line comes before the state's when both change at once
        "sync pull /workspace/data running: 0/4 files, 0 B/4.0 KB",
        "STARTING  pulling volumes",
        "sync pull /workspace/data running: 2/4 files, 2.0 KB/4.0 KB",
        "sync pull /workspace/data done: 4/4 files, 4.0 KB/4.0 KB",
        "RUNNING   running on local",
    ]


def test_a_finished_sync_of_an_earlier_run_is_not_progress() -> None:
    old = with_sync(notebook("STOPPING", message="saving"), "done", 4, 4)
    _, lines = _follow(Script(notebook("STOPPED")), old, "STOPPED")
    assert lines == ["STOPPING  saving", "STOPPED"]


def test_wait_fails_when_the_notebook_fails() -> None:
    failed = notebook(
        "FAILED", code="DATA_SYNC_FAILED", message="volume /workspace/data: no bucket"
    )
    with pytest.raises(WaitFailed, match="is FAILED: DATA_SYNC_FAILED: volume /workspace/data"):
        _follow(Script(failed), notebook("STARTING"), "RUNNING")
    with pytest.raises(WaitFailed, match="ERROR: IMAGE_NOT_FOUND"):
        _follow(Script(notebook("ERROR", code="IMAGE_NOT_FOUND")), notebook("STARTING"), "RUNNING")
    with pytest.raises(WaitFailed, match="stopped before it was running"):
        _follow(Script(notebook("STOPPED", code="EXITED")), notebook("STARTING"), "RUNNING")


def test_wait_rides_out_a_restarting_api_and_ends_on_deletion() -> None:
    client = Script(
        Unreachable("http://api.test", "connection refused"),
        ApiError(503, "the control plane did not answer in time"),
        notebook("DELETING"),
        ApiError(404, "notebook not found"),
    )
    result, lines = _follow(client, notebook("STOPPING"), "DELETED")
    assert result is None
    assert lines[0] == "STOPPING"
    assert "still waiting" in lines[1] and lines[-2:] == ["DELETING", "DELETED"]
    with pytest.raises(WaitFailed, match="no longer exists"):
        _follow(Script(ApiError(404, "gone")), notebook("STARTING"), "RUNNING")


def test_wait_resumes_the_stream_from_the_last_version_seen() -> None:
    def at(nb: dict, version: int) -> dict:
        nb["status"]["version"] = version
        return nb

    client = Script(
        at(notebook("STARTING", message="pulling volumes"), 7),
        Unreachable("http://api.test", "connection refused"),
        at(notebook("RUNNING"), 9),
    )
    result, lines = _follow(client, at(notebook("STARTING", message="created"), 5), "RUNNING")
    assert result is not None and result["status"]["version"] == 9
    assert client.resumed_from == [5, 7]
    assert lines[:2] == ["STARTING  created", "STARTING  pulling volumes"]


def test_wait_ends_on_the_streams_deleted_notebook() -> None:
    client = Script(notebook("DELETING"), notebook("DELETED", message="deleted"))
    result, lines = _follow(client, notebook("STOPPED"), "DELETED")
    assert result is None and lines == ["STOPPED", "DELETING", "DELETED"]
    with pytest.raises(WaitFailed, match="being deleted"):
        _follow(Script(notebook("DELETED")), notebook("STARTING"), "RUNNING")
