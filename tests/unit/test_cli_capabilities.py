"""GET /v1/capabilities/frameworks and /editors, from the operator's catalog."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors
from api.auth import Authenticator
from api.routers import capabilities
from domain.config import Settings
from ledger.access_store import AccessStore

ADMIN = "unit-admin-token-0123456789"


def _client(tmp_path) -> TestClient:
    app = FastAPI()
    errors.install(app)
    app.include_router(capabilities.router)
    app.state.settings = Settings.model_validate(
        {
            "admin_tokens": [ADMIN],
            "frameworks": {
                "python": {
                    "description": "Python",
                    "default_version": "3.11",
                    "versions": {
                        "3.11": {"images": {"jupyterlab": "j:3.11", "vscode": "v:3.11"}},
                        "3.12": {"images": {"jupyterlab": "j:3.12"}},
                    },
                },
                "torch": {
                    "default_version": "2",
                    "versions": {"2": {"images": {"jupyterlab": "t:2"}}},
                },
            },
        }
    )
    app.state.auth = Authenticator(app.state.settings, AccessStore(tmp_path / "ledger.sqlite"))
    return TestClient(app, headers={"authorization": f"Bearer {ADMIN}"})


def test_frameworks_list_versions_default_and_editors(tmp_path) -> None:
    r = _client(tmp_path).get("/v1/capabilities/frameworks")
    assert r.status_code == 200
    python, torch = r.json()
    assert python == {
        "id": "python",
        "description": "Python",
        "default_version": "3.11",
        "versions": [
            {"version": "3.11", "default": True, "editors": ["jupyterlab", "vscode"],
             "images": {"jupyterlab": "j:3.11", "vscode": "v:3.11"}},
            {"version": "3.12", "default": False, "editors": ["jupyterlab"],
             "images": {"jupyterlab": "j:3.12"}},
        ],
    }  # fmt: skip
    assert torch["id"] == "torch" and torch["versions"][0]["default"]


def test_editors_across_the_catalog(tmp_path) -> None:
    r = _client(tmp_path).get("/v1/capabilities/editors")
    assert r.json() == [
        {"id": "jupyterlab", "frameworks": ["python:3.11", "python:3.12", "torch:2"]},
        {"id": "vscode", "frameworks": ["python:3.11"]},
    ]


def test_capabilities_want_a_valid_token(tmp_path) -> None:
    client = _client(tmp_path)
    assert client.get("/v1/capabilities/editors", headers={"authorization": ""}).status_code == 401
    bad = client.get("/v1/capabilities/editors", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and "not valid" in bad.json()["error"]
