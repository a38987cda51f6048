"""The usage records. A record's key is its primary key, so a retried write (an activity
that ran twice, or a connection lost after the commit) changes nothing."""

from __future__ import annotations

from datetime import datetime

from domain.billing import UsageRecord
from ledger.store import Store

_COLUMNS = list(UsageRecord.model_fields)


class UsageLedger(Store):
    def record(self, rec: UsageRecord) -> bool:
        """Write a record once; False if its key was already there (a retry)."""
        row = rec.model_dump()
        with self._db() as db:
            cur = db.execute(
                f"INSERT INTO usage ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT (key) DO NOTHING",
                [self._v(row[c]) for c in _COLUMNS],
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
                [project, self._v(start), self._v(end)],
            ).fetchall()
        return [
            {"notebook_id": n, "flavor": f, "kind": k, "minutes": int(m), "unit_minutes": int(um)}
            for n, f, k, m, um in rows
        ]

    def totals(self) -> list[dict]:
        """Minutes per flavor over every project and all time (the metrics' counters)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT flavor, kind, SUM(minutes), SUM(minutes * quantity) FROM usage "
                "GROUP BY flavor, kind ORDER BY flavor, kind"
            ).fetchall()
        return [
            {"flavor": f, "kind": k, "minutes": int(m), "unit_minutes": int(um)}
            for f, k, m, um in rows
        ]
