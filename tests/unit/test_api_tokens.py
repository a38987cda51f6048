"""Project API tokens on the REST routes, when the operator asks for them."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api import errors
from api.deps import require_project_token
from domain.config import Settings


def _client(require: bool) -> TestClient:
    app = FastAPI()
    errors.install(app)
    app.state.settings = Settings(
        api_tokens={"vision": [SecretStr("tok-v")], "nlp": [SecretStr("tok-n")]},
        require_api_token=require,
    )

    @app.get("/v1/projects/{project}/x", dependencies=[Depends(require_project_token)])
    def x(project: str) -> dict:
        return {"project": project}

    return TestClient(app)


def test_off_by_default_on_loopback() -> None:
    assert _client(False).get("/v1/projects/vision/x").status_code == 200


def test_each_project_wants_one_of_its_own_tokens() -> None:
    client = _client(True)
    ok = client.get("/v1/projects/vision/x", headers={"Authorization": "Bearer tok-v"})
    assert ok.status_code == 200
    missing = client.get("/v1/projects/vision/x")
    assert missing.status_code == 401 and "project vision" in missing.json()["error"]
    other = client.get("/v1/projects/vision/x", headers={"Authorization": "Bearer tok-n"})
    assert other.status_code == 403
    unknown = client.get("/v1/projects/nobody/x", headers={"Authorization": "Bearer tok-v"})
    assert unknown.status_code == 403
