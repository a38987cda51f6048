"""The counters of one sync (:class:`SyncStats`), as returned and passed to ``progress``.

A plain mutable dataclass updated in place by the coordinator.  Its fields are, in
order, the sync numbers of :mod:`domain.status` (``SYNC_COUNTERS``): the host
heartbeats ``dataclasses.asdict(stats)`` and builds ``SyncProgress`` from it, and
``tests/unit/test_sync_stats.py`` keeps the two lists equal.  (Not derived from
:mod:`domain.status` at import time: the engine and its command line stay free of
pydantic, and the explicit fields keep ``SyncStats`` a static type.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyncStats:
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0  # transferred
    bytes_done: int = 0  # transferred
    files_skipped: int = 0  # unchanged, not transferred
    files_failed: int = 0
    files_deleted: int = 0
    files_seeded: int = 0  # copied from ``seed_from`` instead of downloaded (also in files_done)
