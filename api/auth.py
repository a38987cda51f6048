"""Every REST call carries a bearer token: who it is (`Authenticator`) and whether it may
(`allow`), as FastAPI dependencies. Credentials come from the `Authorization` header only,
never from a cookie or the query, so a page of another site can never use them.

Tokens are of three kinds: administrator tokens from the operator's configuration
(`admin_tokens`), static project tokens from the configuration (`api_tokens`, role
operator), and project tokens issued through the API (`ainb token create`), stored hashed.
A stored token's state (revoked, renewed) is cached for `TOKEN_CACHE_S`: a revocation
through another API process takes effect within that long, through this one at once; an
expiry takes effect on the second.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from api.errors import ApiError
from domain.access import (
    STATE_CHANGING,
    Action,
    Principal,
    Role,
    refusal,
    same_secret,
    split_token,
)
from domain.config import Settings
from ledger.access_store import AccessStore, AuditEntry, StoredToken

TOKEN_CACHE_S = 5.0
# last_used_at is written at most this often per token: a read is not a write.
TOUCH_EVERY_S = 60.0
CHALLENGE = {"www-authenticate": 'Bearer realm="ainb"'}


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class Authenticator:
    def __init__(self, settings: Settings, store: AccessStore) -> None:
        self.store = store
        self._static: list[tuple[bytes, Principal]] = []
        for secret in settings.admin_tokens:
            value = secret.get_secret_value()
            principal = Principal(
                token_id=f"admin-{_fingerprint(value)}", name="administrator", role=Role.ADMIN
            )
            self._static.append((value.encode(), principal))
        for project, secrets in settings.api_tokens.items():
            for secret in secrets:
                value = secret.get_secret_value()
                principal = Principal(
                    token_id=f"static-{_fingerprint(value)}",
                    name=f"configured token of {project}",
                    role=Role.OPERATOR,
                    project=project,
                )
                self._static.append((value.encode(), principal))
        self._cache: dict[str, tuple[float, StoredToken | None]] = {}
        self._touched: dict[str, float] = {}

    async def by_id(self, token_id: str) -> Principal | None:
        """The rights of a token known by its id only (a gateway session names it), while
        it is valid."""
        for _, principal in self._static:
            if principal.token_id == token_id:
                return principal
        stored = await self._stored(token_id)
        if stored is None or stored.state(datetime.now(UTC)) != "active":
            return None
        return _principal(stored)

    def forget(self, token_id: str) -> None:
        """A token changed here (revoked, renewed): read it again at its next use."""
        self._cache.pop(token_id, None)

    async def principal(self, token: str) -> Principal | None:
        """The rights of a token, or None if it is not a valid one (whatever its bytes)."""
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for secret, principal in self._static:
            # Every configured token is compared, so the time taken says nothing of which.
            if hmac.compare_digest(given, secret):
                found = principal
        if found is not None:
            return found
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret_part = parts
        stored = await self._stored(token_id)
        now = datetime.now(UTC)
        if (
            stored is None
            or stored.state(now) != "active"
            or not same_secret(secret_part, stored.secret_hash)
        ):
            return None
        if self._touched.get(token_id, 0.0) < time.monotonic() - TOUCH_EVERY_S:
            self._touched[token_id] = time.monotonic()
            await asyncio.to_thread(self.store.touch, token_id, now)
        return _principal(stored)

    async def _stored(self, token_id: str) -> StoredToken | None:
        cached = self._cache.get(token_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        stored = await asyncio.to_thread(self.store.get, token_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token_id] = (time.monotonic() + TOKEN_CACHE_S, stored)
        return stored


def _principal(stored: StoredToken) -> Principal:
    return Principal(
        token_id=stored.id,
        name=stored.name,
        role=stored.role,
        project=stored.project,
        selector=stored.selector,
    )


# Declares the scheme in the OpenAPI document (Swagger's "Authorize"); errors are ours.
_BEARER = HTTPBearer(auto_error=False, description="an ainb API token")


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
) -> Principal:
    token = credentials.credentials.strip() if credentials else None
    if not token:
        raise ApiError(
            401,
            "an API token is needed: send it as 'Authorization: Bearer <token>' "
            "(the embedded stack's administrator token is in <data dir>/admin-token)",
            headers=CHALLENGE,
        )
    auth: Authenticator = request.app.state.auth
    principal = await auth.principal(token)
    if principal is None:
        raise ApiError(
            401, "the API token is not valid (unknown, expired or revoked)", headers=CHALLENGE
        )
    return principal


def allow(action: Action) -> Callable[[Request, Principal], AsyncIterator[Principal]]:
    """A dependency: the caller may take `action` in the path's project (else 401/403),
    and, for a state-changing action, the call goes into the audit log with its answer."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> AsyncIterator[Principal]:
        project = request.path_params.get("project")
        if why := refusal(principal, action, project):
            await _audit(request, principal, action, 403, why)
            raise ApiError(403, why, details={"action": action.value, "role": principal.role})
        request.state.principal = principal
        if action not in STATE_CHANGING:
            yield principal
            return
        try:
            yield principal
        except ApiError as err:
            await _audit(request, principal, action, err.status, err.message)
            raise
        except RequestValidationError as err:
            await _audit(request, principal, action, 422, str(err.errors())[:500])
            raise
        except HTTPException as err:
            await _audit(request, principal, action, err.status_code, str(err.detail))
            raise
        except Exception as err:
            await _audit(request, principal, action, 500, str(err))
            raise
        route = request.scope.get("route")
        await _audit(request, principal, action, getattr(route, "status_code", None) or 200, "")

    return dependency


async def _audit(
    request: Request, principal: Principal, action: Action, status: int, detail: str
) -> None:
    if action not in STATE_CHANGING:
        return
    project = request.path_params.get("project")
    if not project:
        return
    auth: Authenticator = request.app.state.auth
    entry = AuditEntry(
        at=datetime.now(UTC),
        project=project,
        notebook_id=getattr(request.state, "audit_notebook", None)
        or request.path_params.get("notebook_id"),
        action=action.value,
        token_id=principal.token_id,
        token_name=principal.name,
        status=status,
        detail=detail[:500],
    )
    await asyncio.to_thread(auth.store.record, entry)
