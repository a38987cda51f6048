"""The embedded ledger: a SQLite file beside the Temporal database. A record's key is its
primary key, so a retried write (an activity that ran twice) changes nothing. Production
deployments put the same table in PostgreSQL; the queries are plain SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from domain.billing import UsageRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    key TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    notebook_id TEXT NOT NULL,
    period INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    flavor TEXT NOT NULL,
    kind TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    minutes INTEGER NOT NULL,
    period_started_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    final INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_notebook ON usage (project, notebook_id, period, seq);
CREATE INDEX IF NOT EXISTS usage_time ON usage (project, recorded_at);
"""

_COLUMNS = list(UsageRecord.model_fields)


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One connection to the ledger's database (the usage records, and the API tokens and
    audit log of ledger/access_store.py), in autocommit mode."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a record acknowledged is a record kept
        yield db
    finally:
        db.close()


class Database:
    """A store in the ledger's database file: its tables made on first use."""

    schema = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(self.schema)

    def _db(self):
        return connect(self.path)


class SqliteLedger(Database):
    schema = _SCHEMA

    def record(self, rec: UsageRecord) -> bool:
        """Write a record once; False if its key was already there (a retry)."""
        row = rec.model_dump(mode="json")
        row["final"] = int(rec.final)
        row["recorded_at"] = timestamp(rec.recorded_at)
        row["period_started_at"] = timestamp(rec.period_started_at)
        with self._db() as db:
            cur = db.execute(
                f"INSERT OR IGNORE INTO usage ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                [row[c] for c in _COLUMNS],
            )
            return cur.rowcount == 1

    def records(self, project: str, notebook_id: str | None = None) -> list[UsageRecord]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM usage WHERE project = ?"
        args: list = [project]
        if notebook_id is not None:
            query += " AND notebook_id = ?"
            args.append(notebook_id)
        query += " ORDER BY notebook_id, period, seq"
        with self._db() as db:
            rows = db.execute(query, args).fetchall()
        return [UsageRecord.model_validate(dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    def summary(self, project: str, start: datetime, end: datetime) -> list[dict]:
        """Minutes per notebook and flavor recorded in [start, end)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT notebook_id, flavor, kind, SUM(minutes), SUM(minutes * quantity) FROM usage "
                "WHERE project = ? AND recorded_at >= ? AND recorded_at < ? "
                "GROUP BY notebook_id, flavor, kind ORDER BY notebook_id, flavor",
                [project, timestamp(start), timestamp(end)],
            ).fetchall()
        return [
            {"notebook_id": n, "flavor": f, "kind": k, "minutes": m, "unit_minutes": um}
            for n, f, k, m, um in rows
        ]


def timestamp(at: datetime) -> str:
    """One fixed UTC format, so that text order is time order in SQL."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
