"""The ledger's schema, as numbered migrations the platform applies itself when a process
first uses the database: no SQL by hand, on SQLite or PostgreSQL.

Rules (docs/architecture.md, "The ledger"): a migration is never edited once released, only
followed by another; each is additive (new tables, columns with defaults, indexes), so a
process of the previous release keeps working beside one of the next during a rolling
upgrade. Versions 1 and 2 are written ``IF NOT EXISTS``: they adopt the SQLite files made
before migrations were numbered, which had exactly these tables."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.engine import Engine

log = logging.getLogger("ainb.ledger")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgresql


_USAGE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS usage_notebook ON usage (project, notebook_id, period, seq)",
    "CREATE INDEX IF NOT EXISTS usage_time ON usage (project, recorded_at)",
)
_ACCESS_INDEXES = (
    "CREATE INDEX IF NOT EXISTS api_tokens_project ON api_tokens (project, created_at)",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit (project, at)",
)


def _usage(time: str, flag: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS usage (
        key TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        notebook_id TEXT NOT NULL,
        period INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        flavor TEXT NOT NULL,
        kind TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        minutes INTEGER NOT NULL,
        period_started_at {time} NOT NULL,
        recorded_at {time} NOT NULL,
        final {flag} NOT NULL
    )"""


def _tokens(time: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS api_tokens (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        selector TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at {time} NOT NULL,
        expires_at {time} NOT NULL,
        last_used_at {time},
        revoked_at {time}
    )"""


def _audit(seq: str, time: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS audit (
        seq {seq},
        at {time} NOT NULL,
        project TEXT NOT NULL,
        notebook_id TEXT,
        action TEXT NOT NULL,
        token_id TEXT NOT NULL,
        token_name TEXT NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL
    )"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage records",
        sqlite=(_usage("TEXT", "INTEGER"), *_USAGE_INDEXES),
        postgresql=(_usage("TIMESTAMPTZ", "BOOLEAN"), *_USAGE_INDEXES),
    ),
    Migration(
        2,
        "API tokens and the audit log",
        sqlite=(
            _tokens("TEXT"),
            _audit("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT"),
            *_ACCESS_INDEXES,
        ),
        postgresql=(
            _tokens("TIMESTAMPTZ"),
            _audit("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "TIMESTAMPTZ"),
            *_ACCESS_INDEXES,
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

_VERSIONS = """CREATE TABLE IF NOT EXISTS ainb_schema (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


def applied(engine: Engine) -> list[int]:
    with engine.transaction() as conn:
        conn.execute(_VERSIONS)
        rows = conn.execute("SELECT version FROM ainb_schema ORDER BY version").fetchall()
        return [r[0] for r in rows]


def migrate(engine: Engine, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply what this database lacks, in one transaction under a lock that any other
    process migrating at the same moment waits for (and then finds nothing to do); returns
    the versions it applied. A database already past our latest version (a newer release
    migrated it) is fine: migrations are additive."""
    with engine.transaction() as conn:
        # Made under the lock too: PostgreSQL's CREATE ... IF NOT EXISTS is not safe
        # against another session creating the same table at the same moment.
        conn.execute(_VERSIONS)
        have = {r[0] for r in conn.execute("SELECT version FROM ainb_schema").fetchall()}
        done: list[int] = []
        for m in migrations:
            if m.version in have:
                continue
            for statement in m.statements(engine.dialect):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO ainb_schema (version, name, applied_at) VALUES (?, ?, ?)",
                [m.version, m.name, datetime.now(UTC).isoformat()],
            )
            done.append(m.version)
    if done:
        log.info("ledger %s: applied migrations %s", engine.where, done)
    return done


_ready: set[int] = set()
_ready_lock = threading.Lock()


def ensure(engine: Engine) -> None:
    """Migrate once per engine and process, at the first use: a database that is down when
    the process starts is migrated by the first write that reaches it."""
    if id(engine) in _ready:
        return
    with _ready_lock:
        if id(engine) not in _ready:
            migrate(engine)
            _ready.add(id(engine))
