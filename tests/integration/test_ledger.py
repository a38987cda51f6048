"""The ledger's stores on both of their databases: the embedded SQLite file and a real
PostgreSQL server the suite starts. The same records, idempotency keys, queries and
migrations on each; and on PostgreSQL a server that dies and comes back."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from domain.access import Role
from domain.billing import UsageRecord
from ledger.access_store import AccessStore, AuditEntry, StoredToken
from ledger.engine import LedgerUnavailable, PostgresEngine, SqliteEngine, sqlite_path
from ledger.migrations import LATEST, MIGRATIONS, applied, migrate
from ledger.usage import UsageLedger
from tests.pg_server import PgServer

T0 = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    pg: PgServer = request.getfixturevalue("pg_server")
    return pg.new_database()


def _engine(url: str):
    # A fresh engine, not the process's shared one: as another process would have.
    if url.startswith("sqlite"):
        return SqliteEngine(sqlite_path(url))
    return PostgresEngine(url)


def _record(nid: str = "nb1", period: int = 1, seq: int = 1, **kw) -> UsageRecord:
    values = {
        "key": f"{nid}/{period}/{seq}",
        "project": "p",
        "notebook_id": nid,
        "period": period,
        "seq": seq,
        "flavor": "ai1-1-gpu",
        "kind": "gpu",
        "quantity": 2,
        "minutes": 3,
        "period_started_at": T0,
        "recorded_at": T0 + timedelta(minutes=3 * seq),
        "final": False,
    }
    return UsageRecord(**{**values, **kw})


def test_a_record_is_written_once_whoever_retries_it(ledger_url: str) -> None:
    ledger = UsageLedger(ledger_url)
    rec = _record()
    assert ledger.record(rec) is True
    assert ledger.record(rec) is False
    # Eight writers of one key at once (an activity retried while its first try still
    # runs): exactly one of them writes.
    with ThreadPoolExecutor(8) as pool:
        again = list(pool.map(ledger.record, [_record(seq=2)] * 8))
    assert again.count(True) == 1
    assert [(r.period, r.seq) for r in ledger.records("p")] == [(1, 1), (1, 2)]


def test_records_come_back_as_written_in_period_order(ledger_url: str) -> None:
    ledger = UsageLedger(ledger_url)
    written = [
        _record("nb2", 1, 1),
        _record("nb1", 2, 1, final=True, recorded_at=T0 + timedelta(hours=2)),
        _record("nb1", 1, 2, final=True),
        _record("nb1", 1, 1),
    ]
    for rec in written:
        ledger.record(rec)
    ledger.record(_record("nb9", project="other"))
    got = ledger.records("p", "nb1")
    assert [(r.period, r.seq) for r in got] == [(1, 1), (1, 2), (2, 1)]
    assert got[1] == written[2]  # every field, times to the microsecond, flags as bools
    assert got[1].recorded_at == T0 + timedelta(minutes=6) and got[1].final is True
    assert [r.notebook_id for r in ledger.records("p")] == ["nb1", "nb1", "nb1", "nb2"]
    assert [r.project for r in ledger.records("other")] == ["other"]


def test_summary_sums_minutes_recorded_in_the_window(ledger_url: str) -> None:
    ledger = UsageLedger(ledger_url)
    for rec in (
        _record("nb1", 1, 1),  # recorded at T0+3m
        _record("nb1", 1, 2),  # T0+6m
        _record("nb2", 1, 1, flavor="ai1-1-cpu", kind="cpu", quantity=1, minutes=5),
        _record("nb1", 2, 1, recorded_at=T0 + timedelta(days=1)),  # outside
    ):
        ledger.record(rec)
    rows = ledger.summary("p", T0, T0 + timedelta(minutes=6))  # [start, end): 6m is out
    assert rows == [
        {
            "notebook_id": "nb1",
            "flavor": "ai1-1-gpu",
            "kind": "gpu",
            "minutes": 3,
            "unit_minutes": 6,
        },
        {
            "notebook_id": "nb2",
            "flavor": "ai1-1-cpu",
            "kind": "cpu",
            "minutes": 5,
            "unit_minutes": 5,
        },
    ]
    whole = ledger.summary("p", T0, T0 + timedelta(hours=1))
    assert [(r["notebook_id"], r["minutes"]) for r in whole] == [("nb1", 6), ("nb2", 5)]


def test_the_schema_is_made_by_the_platform_once_even_by_many_at_once(ledger_url: str) -> None:
    engines = [_engine(ledger_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))

    def go(engine) -> list[int]:
        barrier.wait()
        return migrate(engine)

    with ThreadPoolExecutor(len(engines)) as pool:
        results = list(pool.map(go, engines))
    # One process applied everything; the others waited for its lock and found it done.
    assert sorted(results, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]
    assert applied(engines[0]) == list(range(1, LATEST + 1))
    assert migrate(engines[0]) == []
    assert UsageLedger(ledger_url).record(_record()) is True


def test_a_database_a_newer_release_migrated_still_serves(ledger_url: str) -> None:
    # Migrations are additive: a process of the previous release goes on beside it.
    engine = _engine(ledger_url)
    migrate(engine)
    with engine.connect() as conn:
        conn.execute(
            "INSERT INTO ainb_schema (version, name, applied_at) VALUES (?, ?, ?)",
            [LATEST + 1, "from the future", T0.isoformat()],
        )
        conn.execute("ALTER TABLE usage ADD COLUMN note TEXT DEFAULT ''")
    assert migrate(engine) == []
    ledger = UsageLedger(ledger_url)
    assert ledger.record(_record()) is True
    assert len(ledger.records("p")) == 1


def test_a_ledger_made_before_numbered_migrations_is_adopted(tmp_path: Path) -> None:
    # The schema as it was created before migrations were numbered (SQLite only existed).
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE usage (key TEXT PRIMARY KEY, project TEXT NOT NULL,
            notebook_id TEXT NOT NULL, period INTEGER NOT NULL, seq INTEGER NOT NULL,
            flavor TEXT NOT NULL, kind TEXT NOT NULL, quantity INTEGER NOT NULL,
            minutes INTEGER NOT NULL, period_started_at TEXT NOT NULL,
            recorded_at TEXT NOT NULL, final INTEGER NOT NULL);
        INSERT INTO usage VALUES ('nb1/1/1', 'p', 'nb1', 1, 1, 'ai1-1-gpu', 'gpu', 2, 3,
            '2026-11-30T12:00:00.123456Z', '2026-11-30T12:03:00.123456Z', 0);
        """
    )
    db.close()
    ledger = UsageLedger(f"sqlite:///{path}")
    assert ledger.records("p") == [_record()]
    assert ledger.record(_record()) is False  # its key is still its key
    assert applied(ledger.engine) == list(range(1, LATEST + 1))


def _token(tid: str, created: datetime) -> StoredToken:
    return StoredToken(
        id=tid,
        project="p",
        name=f"name-{tid}",
        role=Role.OPERATOR,
        selector={"team": "a"},
        secret_hash="argon2-hash",
        created_by="admin",
        created_at=created,
        expires_at=created + timedelta(days=30),
    )


def test_tokens_and_audit_share_the_ledgers_database(ledger_url: str) -> None:
    store = AccessStore(ledger_url)
    store.add(_token("t2", T0 + timedelta(seconds=1)))
    store.add(_token("t1", T0))
    assert [t.id for t in store.list("p")] == ["t1", "t2"]
    got = store.get("t1")
    assert got == _token("t1", T0)
    assert store.get("nope") is None
    store.touch("t1", T0 + timedelta(hours=1))
    assert store.renew("t1", T0 + timedelta(days=60)) is True
    store.revoke("t1", T0 + timedelta(hours=2))
    store.revoke("t1", T0 + timedelta(hours=3))  # the first revocation stands
    assert store.renew("t1", T0 + timedelta(days=90)) is False  # revoked: not renewed
    t1 = store.get("t1")
    assert t1 is not None
    assert (t1.last_used_at, t1.revoked_at, t1.expires_at) == (
        T0 + timedelta(hours=1),
        T0 + timedelta(hours=2),
        T0 + timedelta(days=60),
    )
    assert t1.state(T0 + timedelta(hours=3)) == "revoked"

    for i, status in enumerate((200, 403, 409)):
        store.record(
            AuditEntry(
                at=T0 + timedelta(seconds=i),
                project="p",
                notebook_id="nb1" if i else None,
                action="patch",
                token_id="t1",
                token_name="name-t1",
                status=status,
                detail=f"#{i}",
            )
        )
    entries = store.audit("p", T0, T0 + timedelta(seconds=2), 10)
    assert [(e.status, e.detail, e.notebook_id) for e in entries] == [
        (200, "#0", None),
        (403, "#1", "nb1"),
    ]
    assert len(store.audit("p", T0, T0 + timedelta(hours=1), 2)) == 2
    # The usage records are in the same database, beside the tokens.
    UsageLedger(ledger_url).record(_record())
    assert len(UsageLedger(ledger_url).records("p")) == 1


def test_postgresql_down_is_an_error_to_retry_and_nothing_is_lost_or_doubled(
    pg_server: PgServer,
) -> None:
    url = pg_server.new_database()
    ledger = UsageLedger(url)
    assert ledger.record(_record(seq=1)) is True
    pg_server.kill()  # every pooled connection is now broken
    try:
        with pytest.raises(LedgerUnavailable) as err:
            ledger.record(_record(seq=2))
        assert pg_server.password not in str(err.value)  # the URL is named, not its password
    finally:
        pg_server.start()
    # What the activity's retry does: the same record again, on a connection made anew.
    assert _eventually_written(lambda: ledger.record(_record(seq=2)))
    assert ledger.record(_record(seq=1)) is False
    assert ledger.record(_record(seq=2)) is False
    assert [r.seq for r in ledger.records("p")] == [1, 2]


def test_a_ledger_down_at_start_is_migrated_by_the_first_write(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    pg_server.kill()
    try:
        ledger = UsageLedger(url)  # a process starting while the database is away
        with pytest.raises(LedgerUnavailable):
            ledger.record(_record())
    finally:
        pg_server.start()
    assert _eventually_written(lambda: ledger.record(_record()))
    assert applied(ledger.engine) == list(range(1, LATEST + 1))


def _eventually_written(write: Callable[[], bool]) -> bool:
    # The pool reconnects in the background; a write taken before that fails fast.
    for _ in range(10):
        try:
            return write()
        except LedgerUnavailable:
            continue
    return write()
