"""The GET fast path (api/fast_reads.py) answers with the very bytes the FastAPI route
would, and leaves every other case to the route: no token, a bad one, a refusal, a
notebook out of reach, any query string."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.auth import Authenticator
from api.errors import ApiError
from api.main import create_app
from domain.config import Settings
from domain.spec import NotebookSpec
from domain.states import NotebookState
from domain.status import Notebook, NotebookStatus, Transition, WorkspaceStatus
from ledger.access_store import AccessStore

NID = "0123456789abcdef0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
OTHER = "other-project-token-0123456789"
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
NOTEBOOK = Notebook(
    id=NID,
    project="p1",
    created_at=NOW,
    updated_at=NOW,
    spec=NotebookSpec.model_validate(
        {
            "name": "nb",
            "framework": {"id": "python"},
            "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
        }
    ),
    image="img",
    status=NotebookStatus(
        state=NotebookState.RUNNING,
        url="http://x.localhost/lab?token=t",
        endpoint="unix:/run/x",
        workspace=WorkspaceStatus(bucket="b", prefix="p"),
        transitions=[Transition(state=NotebookState.RUNNING, at=NOW, version=7)],
        version=9,
    ),
)


class Service:
    def __init__(self) -> None:
        self.reads = 0

    async def get(self, project: str, notebook_id: str, caller=None) -> Notebook:
        self.reads += 1
        if (project, notebook_id) != ("p1", NID):
            raise ApiError(404, f"notebook {notebook_id} not found in project {project}")
        return NOTEBOOK

    async def wait_for_change(self, project, notebook_id, version, within_s, caller=None):
        return await self.get(project, notebook_id, caller)


@pytest.fixture()
def api(tmp_path: Path):
    settings = Settings(
        token_secret=SecretStr("s" * 32),
        admin_tokens=[SecretStr(ADMIN)],
        api_tokens={"p2": [SecretStr(OTHER)]},
        data_dir=tmp_path,
    )
    app = create_app(settings)
    app.state.settings = settings
    app.state.service = Service()
    app.state.auth = Authenticator(settings, AccessStore(tmp_path / "ledger.sqlite"))
    transport = httpx.ASGITransport(app=app)
    return app, httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")


async def test_the_fast_path_sends_what_the_route_sends(api) -> None:
    _, client = api
    auth = {"Authorization": f"Bearer {ADMIN}"}
    path = f"/v1/projects/p1/notebooks/{NID}"
    async with client:
        fast = await client.get(path, headers=auth)
        # A query string takes the FastAPI route; the long poll with version 0 answers
        # at once (the notebook is past it).
        routed = await client.get(path, params={"wait_for_change": 0}, headers=auth)
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert fast.headers["content-length"] == routed.headers["content-length"]
    assert Notebook.model_validate_json(fast.content) == NOTEBOOK


@pytest.mark.parametrize(
    ("headers", "path", "status"),
    [
        ({}, f"/v1/projects/p1/notebooks/{NID}", 401),
        ({"Authorization": "Bearer nope"}, f"/v1/projects/p1/notebooks/{NID}", 401),
        ({"Authorization": f"Basic {ADMIN}"}, f"/v1/projects/p1/notebooks/{NID}", 401),
        ({"Authorization": f"Bearer {OTHER}"}, f"/v1/projects/p1/notebooks/{NID}", 403),
        ({"Authorization": f"Bearer {ADMIN}"}, f"/v1/projects/p1/notebooks/{'f' * 32}", 404),
        ({"Authorization": f"Bearer {ADMIN}"}, "/v1/projects/p1/notebooks/not-an-id", 404),
        (
            {"Authorization": f"Bearer {ADMIN}", "Host": "evil.example"},
            f"/v1/projects/p1/notebooks/{NID}",
            403,
        ),
    ],
)
async def test_everything_else_is_the_routes_answer(api, headers, path, status) -> None:
    _, client = api
    async with client:
        r = await client.get(path, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()
