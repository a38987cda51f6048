"""What GET answers from: one cached status per notebook, refreshed when its workflow
changes, not when someone asks.

A GET used to be a workflow query (a workflow task on the control worker plus server
work) and a describe: about 17 ms of CPU across the platform, paid again by every client
polling a status page. Here each notebook somebody reads has one *watcher*: a long poll
on its workflow history (``wait_new_event``), which the server answers when an event is
appended. A completed workflow task (the only point at which a query's answer can
change) or a closing event marks the entry dirty and refreshes it with one query; every
reader in between is served from memory. Readers that arrive while the entry is dirty
wait for that one refresh (single flight), so a GET after a command this process passed
on reflects it.

What changes without an event is refreshed on a short clock while somebody reads: the
numbers of a sync under way (its activity's last heartbeat) and a queued notebook's
place in line (the fleet's). A watcher stops once nobody has read its notebook for
``IDLE_S``; a notebook read again starts a new one. When watching fails (the server
down, a restart), reads fall back to a refresh each, shared by concurrent readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from domain import codes
from domain.ids import workflow_id
from domain.states import NotebookState
from domain.status import Notebook, SyncState

log = logging.getLogger("ainb.api.status")

# Nobody read it for this long: its watcher ends and the entry goes.
IDLE_S = 60.0
# How old the numbers that change without an event (sync progress, queue place) may be.
EXTRAS_TTL_S = 1.0
# Above the server's own long-poll expiry (20 s by default), which answers with no events.
LONG_POLL_RPC = timedelta(seconds=70)
# At most this many notebooks watched at once; beyond, reads refresh each (bounded memory).
MAX_WATCHED = 10_000
# Versions remembered per notebook, so a stream resumed from one knows what it showed.
SEEN_VERSIONS = 64

_CHANGES = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}
# Closed other than by continuing as new: the query alone would answer by replay.
_CLOSED = _CHANGES - {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}

# A notebook by (project, notebook id).
Key = tuple[str, str]
# The workflow's answer, as read (query, or visibility when no worker answers).
# (project, notebook id, watched): a watched notebook's closing is seen by its watcher,
# so its load need not ask whether the workflow still lives.
Load = Callable[[str, str, bool], Awaitable[Notebook]]
# That answer with what changes without an event added (on a copy).
AddExtras = Callable[[Notebook], Awaitable[Notebook]]


def content_key(notebook: Notebook) -> str:
    """What a watcher of the notebook would call a change: everything but the version
    (which also grows with workflow tasks that change nothing shown)."""
    body = notebook.model_dump_json(exclude={"status": {"version"}})
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()


def _queued(notebook: Notebook) -> bool:
    st = notebook.status
    return st.state == NotebookState.STARTING and st.info.code == codes.QUEUED


def needs_extras(notebook: Notebook) -> bool:
    st = notebook.status
    if _queued(notebook):
        return True
    syncs = [v.last_sync for v in st.volumes]
    if st.workspace is not None:
        syncs.append(st.workspace.last_sync)
    return any(s is not None and s.state == SyncState.RUNNING for s in syncs)


@dataclass
class Entry:
    key: Key
    base: Notebook | None = None  # the workflow's answer
    value: Notebook | None = None  # base with the extras: what readers get
    extras_at: float = 0.0
    # Generations: `wanted` grows with every change heard of (or command passed on);
    # `have` is the one the stored value was loaded for. A load begun at generation g
    # reflects every change marked up to g.
    wanted: int = 1
    have: int = 0
    watching: bool = False  # the long poll is established: a clean entry is current
    final: bool = False  # its workflow completed (deleted): it changes no more
    last_read: float = field(default_factory=time.monotonic)
    waiters: int = 0
    refreshing: asyncio.Future[None] | None = None
    watcher: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # version -> content_key, for the versions this process served (newest last)
    seen: OrderedDict[int, str] = field(default_factory=OrderedDict)

    @property
    def workflow_id(self) -> str:
        return workflow_id(*self.key)

    @property
    def dirty(self) -> bool:
        return self.have < self.wanted

    def mark(self) -> int:
        """A change happened (or may have): loads begun from now on are to reflect it."""
        self.wanted += 1
        return self.wanted

    def extras_stale(self) -> bool:
        if self.value is None or not needs_extras(self.value):
            return False
        # A place in line moves when another notebook's capacity is freed, which this
        # notebook's history does not show: asked of the fleet at every read while queued.
        if _queued(self.value):
            return True
        return time.monotonic() - self.extras_at > EXTRAS_TTL_S

    def store(self, base: Notebook, value: Notebook) -> None:
        before = self.value
        self.base, self.value, self.extras_at = base, value, time.monotonic()
        version = value.status.version
        key = content_key(value)
        self.seen[version] = key
        self.seen.move_to_end(version)
        while len(self.seen) > SEEN_VERSIONS:
            self.seen.popitem(last=False)
        if before is None or content_key(before) != key or before.status.version != version:
            # Wake whoever waits, and give the next ones a fresh event to wait on.
            self.changed.set()
            self.changed = asyncio.Event()

    def key_at(self, version: int) -> str | None:
        """What this process served at ``version`` (or the newest version before it)."""
        best = None
        for v, key in self.seen.items():
            if v <= version:
                best = key
        return best


class StatusCache:
    def __init__(self, client: Client, load: Load, add_extras: AddExtras) -> None:
        self._client = client
        self._load = load
        self._add_extras = add_extras
        self._entries: dict[Key, Entry] = {}
        self._closed = False

    # ------------------------------------------------------------------ reads

    async def read(self, key: Key) -> Notebook:
        entry = self._entry(key)
        entry.last_read = time.monotonic()
        if entry.final and entry.value is not None:
            return entry.value
        # Unwatched, nothing would tell this entry of a change: each read wants a load
        # begun after it (readers arriving during one load share the next).
        want = entry.wanted if entry.watching else entry.mark()
        if entry.value is None or entry.have < want or entry.extras_stale():
            await self._refresh(entry)
        while entry.value is None or entry.have < want:
            await self._refresh(entry)
        return entry.value

    async def wait_for_change(self, key: Key, version: int, within_s: float) -> Notebook:
        """The notebook once its version is past ``version``, or as it is after ``within_s``."""
        entry = self._entry(key)
        entry.waiters += 1
        try:
            deadline = time.monotonic() + within_s
            notebook = await self.read(key)
            while notebook.status.version <= version and not _final(notebook):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await _changed(entry, left)
                notebook = await self.read(key)
            return notebook
        finally:
            entry.waiters -= 1

    async def changes(
        self, key: Key, after_version: int | None, within_s: float
    ) -> AsyncIterator[Notebook]:
        """Each different notebook from now on, once, for ``within_s`` seconds or until it
        is deleted. Resumed ``after_version`` (the last one a client got), it starts with
        the current notebook only if that differs from what was served at that version."""
        entry = self._entry(key)
        entry.waiters += 1
        try:
            deadline = time.monotonic() + within_s
            last = entry.key_at(after_version) if after_version is not None else None
            while True:
                notebook = await self.read(key)
                shown = content_key(notebook)
                if shown != last:
                    last = shown
                    yield notebook
                if _final(notebook):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                # Numbers that change without an event are looked at again on the clock.
                await _changed(entry, min(left, EXTRAS_TTL_S) if needs_extras(notebook) else left)
        finally:
            entry.waiters -= 1

    def invalidate(self, key: Key) -> None:
        """A command went through this process: the next read asks the workflow."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.mark()

    async def aclose(self) -> None:
        self._closed = True
        watchers = [e.watcher for e in self._entries.values() if e.watcher is not None]
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._entries.clear()

    # ---------------------------------------------------------------- entries

    def _entry(self, key: Key) -> Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = Entry(key)
            if len(self._entries) < MAX_WATCHED and not self._closed:
                self._entries[key] = entry
                entry.watcher = asyncio.create_task(self._watch(entry))
        return entry

    async def _refresh(self, entry: Entry) -> None:
        """One refresh at a time per notebook; readers arriving meanwhile share it."""
        if entry.refreshing is None:
            entry.refreshing = asyncio.ensure_future(self._refresh_now(entry))
        fut = entry.refreshing
        await asyncio.shield(fut)

    async def _refresh_now(self, entry: Entry) -> None:
        try:
            # A change marked while loading loads again (a few times at most; a reader
            # that still has an older value than it wants asks for another refresh).
            for _ in range(5):
                if entry.base is not None and not entry.dirty:
                    if not entry.extras_stale():
                        break
                    base, generation = entry.base, entry.have  # the extras only
                else:
                    generation = entry.wanted
                    base = await self._load(*entry.key, entry.watching)
                value = await self._add_extras(base)
                entry.store(base, value)
                entry.have = max(entry.have, generation)
                if not entry.dirty:
                    break
        finally:
            entry.refreshing = None

    # --------------------------------------------------------------- watching

    async def _watch(self, entry: Entry) -> None:
        """Long-poll the notebook's history; mark the entry dirty (and refresh it) at each
        completed workflow task, following continue-as-new to the next run."""
        backoff = 0.5
        try:
            while not self._idle(entry):
                finished = await self._watch_run(entry)
                if finished is None:  # could not watch: reads refresh each meanwhile
                    entry.watching = False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff = 0.5
                if finished == "missing":
                    return
                if finished == "deleted":
                    # It changes no more: served as it is until nobody asks.
                    entry.final = True
                    # Nothing signals that nobody reads any more: it is a clock.
                    while not self._idle(entry):  # noqa: ASYNC110
                        await asyncio.sleep(IDLE_S / 4)
                    return
                if finished == "closed":
                    # Closed from outside: wait for the run that takes over.
                    entry.watching = False
                    await asyncio.sleep(2.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching %s failed", entry.workflow_id)
        finally:
            entry.watching = False
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]

    async def _watch_run(self, entry: Entry) -> str | None:
        """Until the current run ends: "continued", "deleted" (completed), "closed" (from
        outside), "missing" (no such workflow), "idle"; None on an error."""
        token = b""
        namespace = self._client.namespace
        execution = WorkflowExecution(workflow_id=entry.workflow_id)
        while not self._idle(entry):
            req = GetWorkflowExecutionHistoryRequest(
                namespace=namespace,
                execution=execution,
                next_page_token=token,
                wait_new_event=True,
                skip_archival=True,
            )
            try:
                resp = await self._client.workflow_service.get_workflow_execution_history(
                    req, retry=False, timeout=LONG_POLL_RPC
                )
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return "missing"
                log.info("watching %s: %s", entry.workflow_id, err.message)
                return None
            if not entry.watching:
                # From here on a clean entry is current: anything newer wakes this poll.
                entry.watching = True
                entry.mark()
            types = {e.event_type for e in resp.history.events}
            if types & _CLOSED:
                entry.watching = False  # this refresh describes the workflow
            if types & _CHANGES:
                entry.mark()
            if entry.dirty:
                try:
                    await self._refresh(entry)
                except Exception as err:  # the readers see it; the watch goes on
                    log.info("refreshing %s: %s", entry.workflow_id, err)
            if not resp.next_page_token:
                if EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW in types:
                    return "continued"
                if EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED in types:
                    return "deleted"
                return "closed"
            # The token names the run it began on: the poll stays on it until it ends.
            token = resp.next_page_token
        return "idle"

    def _idle(self, entry: Entry) -> bool:
        return self._closed or (entry.waiters == 0 and time.monotonic() - entry.last_read > IDLE_S)


async def _changed(entry: Entry, within: float) -> None:
    """Until the entry changes, at most ``within`` seconds; while not watched, a second
    (nothing wakes the event then but the readers' own refreshes)."""
    if not entry.watching and not entry.final:
        within = min(within, 1.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(entry.changed.wait(), within)


def _final(notebook: Notebook) -> bool:
    return notebook.status.state == NotebookState.DELETED
