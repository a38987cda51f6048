"""Project API tokens (`ainb token …`) and the project's audit log.

A token is shown once, when it is created; only its hash is kept. Its holder may act in
its project with its role (read: look; operator: also change), on the notebooks its label
selector reaches. A token may create tokens with at most its own rights.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, Field, field_validator

from api.auth import Authenticator, allow
from api.deps import Project, get_settings
from api.errors import ERROR_RESPONSES, ApiError, _documented
from api.usage import Instant, period
from domain.access import Action, Principal, Role, may_grant, new_token
from domain.config import Settings
from domain.spec import LABELS_SCHEMA, check_labels
from ledger.access_store import AuditEntry, StoredToken

router = APIRouter(
    prefix="/v1/projects/{project}",
    tags=["tokens"],
    responses={**ERROR_RESPONSES, 404: _documented("no such token in the project")},
)
Manager = Annotated[Principal, Depends(allow(Action.MANAGE_TOKENS))]
Config = Annotated[Settings, Depends(get_settings)]


async def _auth(request: Request) -> Authenticator:
    return request.app.state.auth


Auth = Annotated[Authenticator, Depends(_auth)]


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]*$")
    role: Literal["read", "operator"] = "read"
    # Only notebooks whose labels include all of these (empty: every notebook).
    label_selector: dict[str, str] = Field(default_factory=dict, json_schema_extra=LABELS_SCHEMA)
    # Lifetime from now; unset: the operator's default (token_default_expiry_s).
    expires_in_s: int | None = Field(default=None, ge=60)

    @field_validator("label_selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)


class RenewRequest(BaseModel):
    # The new lifetime from now; unset: the operator's default.
    expires_in_s: int | None = Field(default=None, ge=60)


class TokenView(BaseModel):
    id: str
    name: str
    project: str
    role: Role
    label_selector: dict[str, str]
    created_by: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    state: Literal["active", "expired", "revoked"]


class IssuedToken(TokenView):
    # Shown this once: keep it; only its hash is stored.
    token: str


def _view(t: StoredToken) -> TokenView:
    return TokenView(
        id=t.id,
        name=t.name,
        project=t.project,
        role=t.role,
        label_selector=t.selector,
        created_by=t.created_by,
        created_at=t.created_at,
        expires_at=t.expires_at,
        last_used_at=t.last_used_at,
        revoked_at=t.revoked_at,
        state=t.state(datetime.now(UTC)),
    )


def _lifetime(settings: Settings, seconds: int | None) -> timedelta:
    seconds = seconds or settings.token_default_expiry_s
    if seconds > settings.token_max_expiry_s:
        raise ApiError(
            422,
            f"expires_in_s: at most {settings.token_max_expiry_s} seconds "
            f"({settings.token_max_expiry_s // 86400} days)",
            field="expires_in_s",
        )
    return timedelta(seconds=seconds)


async def _owned(auth: Authenticator, project: str, token_id: str, caller: Principal):
    stored = await asyncio.to_thread(auth.store.get, token_id)
    if stored is None or stored.project != project:
        raise ApiError(404, f"token {token_id} not found in project {project}")
    if why := may_grant(caller, stored.role, stored.selector):
        raise ApiError(403, f"token {token_id}: {why}")
    return stored


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=IssuedToken)
async def create_token(
    project: Project, req: TokenRequest, caller: Manager, auth: Auth, settings: Config
) -> IssuedToken:
    """A new token of the project, shown once in `token`."""
    role = Role(req.role)
    if why := may_grant(caller, role, req.label_selector):
        raise ApiError(403, why, field="role" if "token cannot" in why else "label_selector")
    token_id, token, digest = new_token()
    now = datetime.now(UTC)
    stored = StoredToken(
        id=token_id,
        project=project,
        name=req.name,
        role=role,
        selector=req.label_selector,
        secret_hash=digest,
        created_by=f"{caller.name} ({caller.token_id})",
        created_at=now,
        expires_at=now + _lifetime(settings, req.expires_in_s),
    )
    await asyncio.to_thread(auth.store.add, stored)
    return IssuedToken(**_view(stored).model_dump(), token=token)


@router.get("/tokens", response_model=list[TokenView])
async def list_tokens(project: Project, caller: Manager, auth: Auth) -> list[TokenView]:
    """The project's tokens (never their secrets), revoked and expired ones included."""
    return [_view(t) for t in await asyncio.to_thread(auth.store.list, project)]


@router.get("/tokens/{token_id}", response_model=TokenView)
async def get_token(project: Project, token_id: str, caller: Manager, auth: Auth) -> TokenView:
    return _view(await _owned(auth, project, token_id, caller))


@router.delete("/tokens/{token_id}", response_model=TokenView)
async def revoke_token(project: Project, token_id: str, caller: Manager, auth: Auth) -> TokenView:
    """Revoke: refused at once by this API process, within 5 s by any other. Revoking a
    revoked token changes nothing."""
    await _owned(auth, project, token_id, caller)
    await asyncio.to_thread(auth.store.revoke, token_id, datetime.now(UTC))
    auth.forget(token_id)
    return _view(await _owned(auth, project, token_id, caller))


@router.post(
    "/tokens/{token_id}/renew",
    response_model=TokenView,
    responses={409: _documented("the token is revoked: it cannot be renewed")},
)
async def renew_token(
    project: Project,
    token_id: str,
    caller: Manager,
    auth: Auth,
    settings: Config,
    req: RenewRequest | None = None,
) -> TokenView:
    """A new expiry, from now; the token keeps its id, secret and rights (an expired
    token may be renewed, a revoked one may not)."""
    await _owned(auth, project, token_id, caller)
    expires = datetime.now(UTC) + _lifetime(settings, req.expires_in_s if req else None)
    if not await asyncio.to_thread(auth.store.renew, token_id, expires):
        raise ApiError(409, f"token {token_id} is revoked: create a new one")
    auth.forget(token_id)
    return _view(await _owned(auth, project, token_id, caller))


@router.get("/audit", response_model=list[AuditEntry])
async def audit_log(
    project: Project,
    auth: Auth,
    caller: Annotated[Principal, Depends(allow(Action.AUDIT))],
    start: Annotated[Instant | None, Query(alias="from")] = None,
    end: Annotated[Instant | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[AuditEntry]:
    """Every state-changing call in [from, to) (default: the last 7 days), oldest first:
    which token asked (id and name, never the secret), what, on which notebook, and the
    answer (refusals included)."""
    start, end = period(start, end, timedelta(days=7))
    return await asyncio.to_thread(auth.store.audit, project, start, end, limit)
