"""Control-plane activities: the usage ledger and the platform's own storage."""

from __future__ import annotations

import asyncio
import functools

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.storage import sync
from activities.storage.clients import S3Clients
from activities.storage.errors import StorageError
from domain import activity_names as A
from domain import codes
from domain.billing import UsageRecord
from domain.config import Settings
from domain.messages import DeleteWorkspaceInput
from ledger.usage import UsageLedger


class ControlActivities:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._s3 = S3Clients(settings)
        self._ledger = UsageLedger(settings.ledger)

    def activities(self) -> list:
        return [self.delete_workspace, self.record_usage]

    @activity.defn(name=A.RECORD_USAGE)
    async def record_usage(self, record: UsageRecord) -> bool:
        """Idempotent by the record's key: a write retried after a crash changes nothing."""
        loop = asyncio.get_running_loop()
        written = await loop.run_in_executor(None, self._ledger.record, record)
        if self._settings.failpoint_after_ledger_write_s:
            # Tests kill the worker here: committed, not yet acknowledged, so it is retried.
            await asyncio.sleep(self._settings.failpoint_after_ledger_write_s)
        return written

    @activity.defn(name=A.DELETE_WORKSPACE)
    async def delete_workspace(self, inp: DeleteWorkspaceInput) -> int:
        run = functools.partial(sync.delete_prefix, self._s3.platform(), inp.bucket, inp.prefix)
        future = asyncio.get_running_loop().run_in_executor(None, run)
        try:
            # Heartbeats: a control worker killed mid-delete is noticed in seconds, not at
            # the activity's timeout (the delete is idempotent: a retry finishes it).
            while not future.done():
                activity.heartbeat()
                await asyncio.wait({future}, timeout=2)
            return future.result()
        except StorageError as err:
            if err.code == "NoSuchBucket":
                return 0  # nothing was ever saved
            raise ApplicationError(str(err), type=codes.STORAGE_UNAVAILABLE) from err
