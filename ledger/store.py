"""The base of the ledger's stores (usage records, API tokens and the audit log): one
database for all, its schema migrated at the first use."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledger.engine import Connection, Engine, LedgerUnavailable, engine_for
from ledger.migrations import ensure

log = logging.getLogger("ainb.ledger")


def ledger_engine(where: str | Path) -> Engine:
    """A ``ledger_url``, or a path (a SQLite file, as the tests and older settings give)."""
    if isinstance(where, Path):
        return engine_for(f"sqlite:///{where}")
    return engine_for(where)


class Store:
    def __init__(self, where: str | Path) -> None:
        self.engine = ledger_engine(where)
        try:
            ensure(self.engine)
        except LedgerUnavailable as err:
            # Not fatal: the notebooks run on, and the first write that reaches the
            # database migrates it (the writes are retried until then).
            log.warning("the ledger is not reachable yet (%s); migrating at first use", err)

    @contextmanager
    def _db(self) -> Iterator[Connection]:
        ensure(self.engine)
        with self.engine.connect() as conn:
            yield conn

    def _v(self, value):
        return self.engine.value(value)
