"""API tokens and the audit log, in the ledger's database (the same one as the usage
records; tables made by ledger/migrations.py). Only a token's hash is stored; its secret is shown once."""

from __future__ import annotations

import builtins
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from domain.access import Role
from ledger.store import Store


class StoredToken(BaseModel):
    id: str
    project: str
    name: str
    role: Role
    selector: dict[str, str] = Field(default_factory=dict)
    secret_hash: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def state(self, now: datetime) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= now else "active"


class AuditEntry(BaseModel):
    at: datetime
    project: str
    notebook_id: str | None = None
    action: str
    token_id: str
    token_name: str
    # The API's answer: 2xx done, 4xx refused.
    status: int
    detail: str = ""


_TOKEN_COLUMNS = list(StoredToken.model_fields)
_AUDIT_COLUMNS = list(AuditEntry.model_fields)


class AccessStore(Store):
    # ------------------------------------------------------------------ tokens

    def add(self, token: StoredToken) -> None:
        row = _token_row(token)
        with self._db() as db:
            db.execute(
                f"INSERT INTO api_tokens ({', '.join(_TOKEN_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _TOKEN_COLUMNS)})",
                [self._v(row[c]) for c in _TOKEN_COLUMNS],
            )

    def get(self, token_id: str) -> StoredToken | None:
        with self._db() as db:
            row = db.execute(
                f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM api_tokens WHERE id = ?", [token_id]
            ).fetchone()
        return _token(row) if row else None

    def list(self, project: str) -> builtins.list[StoredToken]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM api_tokens WHERE project = ? "
                "ORDER BY created_at, id",
                [project],
            ).fetchall()
        return [_token(r) for r in rows]

    def revoke(self, token_id: str, at: datetime) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [self._v(at), token_id],
            )

    def renew(self, token_id: str, expires_at: datetime) -> bool:
        with self._db() as db:
            cur = db.execute(
                "UPDATE api_tokens SET expires_at = ? WHERE id = ? AND revoked_at IS NULL",
                [self._v(expires_at), token_id],
            )
            return cur.rowcount == 1

    def touch(self, token_id: str, at: datetime) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ?", [self._v(at), token_id]
            )

    # ------------------------------------------------------------------- audit

    def record(self, entry: AuditEntry) -> None:
        row = entry.model_dump()
        with self._db() as db:
            db.execute(
                f"INSERT INTO audit ({', '.join(_AUDIT_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _AUDIT_COLUMNS)})",
                [self._v(row[c]) for c in _AUDIT_COLUMNS],
            )

    def audit(
        self, project: str, start: datetime, end: datetime, limit: int
    ) -> builtins.list[AuditEntry]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audit "
                "WHERE project = ? AND at >= ? AND at < ? ORDER BY seq LIMIT ?",
                [project, self._v(start), self._v(end), limit],
            ).fetchall()
        return [AuditEntry.model_validate(dict(zip(_AUDIT_COLUMNS, r, strict=True))) for r in rows]


def _token_row(token: StoredToken) -> dict:
    row = token.model_dump()
    row["role"] = token.role.value
    row["selector"] = json.dumps(token.selector, sort_keys=True)
    return row


def _token(row: tuple) -> StoredToken:
    values = dict(zip(_TOKEN_COLUMNS, row, strict=True))
    values["selector"] = json.loads(values["selector"])
    return StoredToken.model_validate(values)
