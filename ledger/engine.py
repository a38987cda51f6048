"""Where the ledger's tables live, chosen by ``ledger_url``: a SQLite file (the embedded
default, ``sqlite:///path``) or PostgreSQL (``postgresql://user@host/db``), which the API
replicas and control workers on other machines share.

The stores write one SQL text for both, with ``?`` placeholders and standard clauses
(``ON CONFLICT DO NOTHING``, ``LIMIT ?``); an engine adapts the placeholders and the values
SQLite has no type for (times as fixed-format UTC text, flags as 0/1)."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger("ainb.ledger")


class LedgerUnavailable(RuntimeError):
    """The ledger's database did not answer (down, unreachable, or refused us): retried by
    the activity that wrote, a 503 for a reader."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...


class Engine(Protocol):
    dialect: str  # "sqlite" or "postgresql": which of a migration's texts applies
    where: str  # for messages: the URL without its password

    def connect(self) -> Any:
        """A context manager: one connection in autocommit mode."""

    def transaction(self) -> Any:
        """A context manager: one connection inside a transaction that excludes any other
        migrator (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock)."""

    def value(self, v: Any) -> Any:
        """A Python value as this database stores it."""


def timestamp(at: datetime) -> str:
    """One fixed UTC format, so that text order is time order in SQLite."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------- SQLite


class _SqliteConn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self._db.execute(sql, list(args))


class SqliteEngine:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"sqlite:///{path}"
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        # A connection per call: SQLite's are cheap, and one never crosses threads.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a record acknowledged is a record kept
            yield _SqliteConn(db)
        except sqlite3.OperationalError as err:
            raise LedgerUnavailable(f"{self.where}: {err}") from err
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def value(self, v: Any) -> Any:
        if isinstance(v, datetime):
            return timestamp(v)
        if isinstance(v, bool):
            return int(v)
        return v


# ----------------------------------------------------------------- PostgreSQL

# Any constant both the API and the workers agree on: the migrations' advisory lock.
_MIGRATION_LOCK = 0x61696E62  # "ainb"


class _PgConn:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        # Our SQL has no other '?' and no '%': a plain swap to psycopg's placeholders.
        return self._conn.execute(sql.replace("?", "%s"), list(args))


class PostgresEngine:
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 5) -> None:
        from psycopg_pool import ConnectionPool  # only where PostgreSQL is used

        self.where = redact(url)
        # A pool per process: a new PostgreSQL connection costs a handshake and an
        # authentication, several milliseconds, on every write. Each connection is checked
        # when taken, so one broken by a server restart is replaced, not handed out.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s))},
            check=ConnectionPool.check_connection,
            timeout=connect_timeout_s,
            open=False,
            name="ainb-ledger",
        )
        # Opened without waiting: a ledger down when a process starts is waited for by its
        # writes (retried), not by the process's start.
        self._pool.open(wait=False)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn:
                yield _PgConn(conn)
        except (psycopg.OperationalError, PoolTimeout) as err:
            raise LedgerUnavailable(f"{self.where}: {err}") from err

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.connect() as conn, conn._conn.transaction():  # type: ignore[attr-defined]
            conn.execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATION_LOCK])
            yield conn

    def value(self, v: Any) -> Any:
        return v

    def close(self) -> None:
        self._pool.close()


# ------------------------------------------------------------------- choosing

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The one engine of this process for a URL (the API's usage reads and token store share
    a PostgreSQL pool)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _make(url)
        return engine


def _make(url: str) -> Engine:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SqliteEngine(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        return PostgresEngine(url)
    raise ValueError(f"ledger_url: expected sqlite:///<path> or postgresql://..., got {scheme!r}")


def sqlite_path(url: str) -> Path:
    # sqlite:///relative/or/absolute: three slashes and the path, as SQLAlchemy spells it.
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError(f"ledger_url: expected sqlite:///<path>, got {url!r}")
    return Path(unquote(url[len("sqlite:///") :]))


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
