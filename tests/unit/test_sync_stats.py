"""The sync engine's counters are the numbers a sync reports.

``activities.storage.sync.SyncStats`` (the engine's mutable dataclass) and
``domain.status.SyncCounters`` (the pydantic model of SyncProgress/DataSync) must name
the same counters in the same order: the host heartbeats ``dataclasses.asdict(stats)``
and builds ``SyncProgress(**asdict(stats))``, and the API and the workflow read the
heartbeat details by ``SYNC_COUNTERS``."""

from __future__ import annotations

import dataclasses

from activities.host import _NotedStats
from activities.storage import sync
from domain.status import SYNC_COUNTERS, SyncProgress, SyncState


def test_sync_stats_fields_are_the_sync_counters() -> None:
    fields = dataclasses.fields(sync.SyncStats)
    assert tuple(f.name for f in fields) == SYNC_COUNTERS
    assert all(f.type in (int, "int") and f.default == 0 for f in fields)


def test_stats_become_sync_progress_unchanged() -> None:
    stats = sync.SyncStats(*range(1, len(SYNC_COUNTERS) + 1))
    progress = SyncProgress(direction="pull", state=SyncState.DONE, **dataclasses.asdict(stats))
    assert {k: getattr(progress, k) for k in SYNC_COUNTERS} == dataclasses.asdict(stats)


def test_the_hosts_noted_stats_only_add_a_note() -> None:
    names = tuple(f.name for f in dataclasses.fields(_NotedStats))
    assert names == (*SYNC_COUNTERS, "note")
