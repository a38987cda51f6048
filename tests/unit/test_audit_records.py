"""What the audit log records of a state-changing call, whatever its answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, FastAPI, status
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import errors
from api.auth import Authenticator, allow
from api.errors import ApiError
from domain.access import Action, Principal
from domain.config import Settings
from ledger.access_store import AccessStore

ADMIN = "unit-admin-token-0123456789"


class Body(BaseModel):
    n: int


Creator = Annotated[Principal, Depends(allow(Action.CREATE))]


def _app(tmp_path) -> tuple[TestClient, AccessStore]:
    app = FastAPI()
    errors.install(app)
    settings = Settings(admin_tokens=[ADMIN], api_tokens={"p": ["static-operator-token-0123"]})
    store = AccessStore(tmp_path / "ledger.sqlite")
    app.state.auth = Authenticator(settings, store)

    @app.post("/v1/projects/{project}/things", status_code=status.HTTP_201_CREATED)
    async def create(project: str, body: Body, caller: Creator) -> dict:
        if body.n < 0:
            raise ApiError(409, "negative")
        return {"n": body.n}

    @app.get("/v1/hosts", dependencies=[Depends(allow(Action.HOSTS))])
    async def hosts() -> dict:
        return {}

    return TestClient(app), store


def _entries(store: AccessStore) -> list[tuple[str, int, str]]:
    now = datetime.now(UTC)
    rows = store.audit("p", now - timedelta(minutes=1), now + timedelta(minutes=1), 100)
    return [(e.action, e.status, e.token_name) for e in rows]


def test_every_answer_is_recorded_with_the_token_never_its_secret(tmp_path) -> None:
    client, store = _app(tmp_path)
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert client.post("/v1/projects/p/things", json={"n": 1}, headers=admin).status_code == 201
    assert client.post("/v1/projects/p/things", json={"n": "x"}, headers=admin).status_code == 422
    assert client.post("/v1/projects/p/things", json={"n": -1}, headers=admin).status_code == 409
    other = {"authorization": "Bearer static-operator-token-0123"}
    assert client.post("/v1/projects/q/things", json={"n": 1}, headers=other).status_code == 403
    assert client.post("/v1/projects/p/things", json={"n": 1}).status_code == 401
    assert _entries(store) == [
        ("create", 201, "administrator"),
        ("create", 422, "administrator"),
        ("create", 409, "administrator"),
    ]
    now = datetime.now(UTC)
    refused = store.audit("q", now - timedelta(minutes=1), now + timedelta(minutes=1), 10)
    assert [(e.action, e.status) for e in refused] == [("create", 403)]
    assert ADMIN not in str(store.audit("p", now - timedelta(1), now + timedelta(1), 10))
    # Reads are not audited; a refused read is just a 403.
    assert client.get("/v1/hosts", headers=other).status_code == 403
