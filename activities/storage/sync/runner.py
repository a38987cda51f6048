"""The coordinator of one sync: thread pool, CRT requests, progress, stop and failures.

:class:`_Runner` runs the per-file work of a pull or push (on a thread pool, or as
asynchronous CRT requests whose completions it consumes on its own thread), reports
progress, polls ``should_stop``, saves manifests periodically, records per-file and
sync-wide failures, and turns the outcome into stats or an exception.  Also the
listing of the remote prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from activities.storage.crt_engine import CrtCancelled, CrtEngine, Transfer
from activities.storage.errors import StorageError, SyncCancelled
from activities.storage.sync.common import _Ctx, _describe, _FileProblem, _Interrupted, _ShortRead
from activities.storage.sync.constants import (
    _INFLIGHT_PER_WORKER,
    _MANIFEST_SAVE_SECONDS,
    _MAX_INFLIGHT,
    _PROGRESS_INTERVAL,
    _STOP_POLL_INTERVAL,
)
from activities.storage.sync.error_map import _bucket_level_error, _map_error
from activities.storage.sync.stats import SyncStats

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Done:
    """Result of one file task (always produced by a worker, consumed by the coordinator)."""

    key: str
    entry: dict | None  # manifest entry, None if nothing should be recorded
    transferred: bool
    nbytes: int = 0


class _Progress:
    """Bytes of one large transfer reported so far (CRT threads add, coordinator settles)."""

    __slots__ = ("n", "runner")

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.n = 0

    def __call__(self, nbytes: int) -> None:
        self.n += nbytes
        self.runner.add_inflight_bytes(nbytes)

    def settle(self) -> None:
        if self.n:
            self.runner.add_inflight_bytes(-self.n)
            self.n = 0


class _Runner:
    def __init__(
        self,
        ctx: _Ctx,
        progress: Callable[[SyncStats], None] | None,
        should_stop: Callable[[], bool] | None,
        workers: int,
        doing: str,
    ) -> None:
        self.ctx = ctx
        self.doing = doing
        self._progress = progress
        self._should_stop = should_stop
        pool_size = getattr(getattr(ctx.s3, "meta", None), "config", None)
        pool_size = getattr(pool_size, "max_pool_connections", None) or 10
        self.workers = max(1, min(int(workers), int(pool_size)))
        self.max_inflight = max(8, min(_MAX_INFLIGHT, int(workers) * _INFLIGHT_PER_WORKER))
        self.stats = SyncStats()
        self.failures: list[tuple[str, str]] = []
        self.fatal: StorageError | None = None
        self.cancelled = False
        self.cancel_event = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._engine: CrtEngine | None = None
        self._inflight_lock = threading.Lock()
        self._inflight_bytes = 0
        self._last_progress = 0.0
        self._last_stop_poll = 0.0
        self._save_cb: Callable[[], None] | None = None
        self._dirty = 0
        self._last_save = time.monotonic()
        self._save_interval = _MANIFEST_SAVE_SECONDS
        self._owner = threading.get_ident()

    def on_coordinator(self) -> bool:
        return threading.get_ident() == self._owner

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ainb-sync")
        return self._pool

    @property
    def engine(self) -> CrtEngine:
        if self._engine is None:
            self._engine = CrtEngine.for_client(self.ctx.s3)
        return self._engine

    # -- stats / progress / stop --------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.cancelled or self.fatal is not None

    def add_inflight_bytes(self, n: int) -> None:
        with self._inflight_lock:
            self._inflight_bytes += n

    def reset_inflight_bytes(self) -> None:
        with self._inflight_lock:
            self._inflight_bytes = 0

    def report(self, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_INTERVAL:
            return
        self._last_progress = now
        with self._inflight_lock:
            extra = self._inflight_bytes
        snap = dataclasses.replace(self.stats)
        snap.bytes_done += max(0, extra)
        self._progress(snap)

    def poll_stop(self) -> bool:
        if self.cancelled:
            return True
        if self._should_stop is None:
            return False
        now = time.monotonic()
        if now - self._last_stop_poll < _STOP_POLL_INTERVAL:
            return False
        self._last_stop_poll = now
        if self._should_stop():
            log.info(
                "%s of %s <-> %s: stop requested", self.ctx.op, self.ctx.local_dir, self.ctx.where
            )
            self.cancelled = True
            self.cancel_event.set()
            return True
        return False

    def set_saver(self, cb: Callable[[], None]) -> None:
        self._save_cb = cb

    def mark_dirty(self) -> None:
        self._dirty += 1

    def maybe_save(self, force: bool = False) -> None:
        if self._save_cb is None or (not force and not self._dirty):
            return
        now = time.monotonic()
        if force or now - self._last_save >= self._save_interval:
            t0 = time.monotonic()
            self._save_cb()
            took = time.monotonic() - t0
            # save every ~1.5 s, but never spend more than ~10% of the time on manifests
            self._save_interval = max(_MANIFEST_SAVE_SECONDS, 10 * took)
            self._dirty = 0
            self._last_save = time.monotonic()

    def tick(self) -> None:
        self.poll_stop()
        self.report()
        self.maybe_save()

    # -- failures -------------------------------------------------------------

    def fail(self, rel: str, message: str) -> None:
        self.stats.files_failed += 1
        self.failures.append((rel, message))
        log.warning("%s %s: '%s': %s", self.ctx.op, self.ctx.where, rel, message)

    def record_error(self, rel: str, exc: BaseException) -> None:
        if isinstance(exc, (_Interrupted, CrtCancelled)) and self.stopping:
            return
        mapped = _map_error(exc, self.ctx, self.doing)
        if mapped is not None:
            if self.fatal is None:
                log.warning("%s %s: stopping: %s", self.ctx.op, self.ctx.where, mapped)
                self.fatal = mapped
                self.cancel_event.set()
            return
        if isinstance(exc, _FileProblem):
            self.fail(rel, str(exc))
        else:
            if not isinstance(exc, (OSError, ClientError, BotoCoreError, _ShortRead)):
                log.error("unexpected error for '%s'", rel, exc_info=exc)
            self.fail(rel, _describe(exc))

    # -- execution ------------------------------------------------------------

    def run_pool(
        self,
        items: Sequence[Any],
        fn: Callable[[Any], _Done | None],
        on_done: Callable[[Any, _Done | None], None],
    ) -> None:
        """Run ``fn(item)`` on the pool; feed results to ``on_done`` on this thread."""
        if not items:
            return
        it = iter(items)
        inflight: dict[Future, Any] = {}
        exhausted = False
        max_inflight = self.workers * 2
        while True:
            while not exhausted and len(inflight) < max_inflight:
                if self.stopping or self.poll_stop():
                    exhausted = True
                    break
                item = next(it, None)
                if item is None:
                    exhausted = True
                    break
                inflight[self.pool.submit(fn, item)] = item
            if not inflight:
                break
            done, _ = wait(inflight, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                item = inflight.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:
                    self.record_error(item.rel, exc)
                else:
                    on_done(item, result)
            self.tick()

    def run_serial(
        self,
        items: Sequence[Any],
        fn: Callable[[Any], _Done | None],
        on_done: Callable[[Any, _Done | None], None],
    ) -> None:
        """Run ``fn(item)`` one item at a time on this thread (large files)."""
        for item in items:
            if self.stopping or self.poll_stop():
                break
            try:
                result = fn(item)
            except Exception as exc:
                self.record_error(item.rel, exc)
            else:
                on_done(item, result)
            finally:
                self.reset_inflight_bytes()
            self.tick()

    def run_async(
        self,
        items: Iterable[Any],
        start: Callable[[Any, Callable[[Transfer], None]], Transfer | _Done | None],
        finish: Callable[[Any, Transfer, Callable[[Transfer], None]], Transfer | _Done | None],
        on_done: Callable[[Any, _Done | None], None],
        *,
        idle: Callable[[bool], None] | None = None,
    ) -> None:
        """Run CRT requests for ``items``, up to ``max_inflight`` at a time.

        ``start(item, notify)`` starts a request (or returns a result at once);
        ``finish(item, transfer, notify)`` turns a completed request into a
        result, or starts a new request (a retry).  Both, and ``on_done``, run on
        this thread; CRT threads only queue completed transfers.  On stop or on a
        sync-wide error the in-flight requests are cancelled and their
        completions still consumed (so ``finish`` cleans up after them).
        ``idle(final)`` is called after every round and once at the end.
        """
        done_q: queue.SimpleQueue[Transfer] = queue.SimpleQueue()
        notify = done_q.put
        it = iter(items)
        inflight: dict[int, tuple[Transfer, Any]] = {}
        exhausted = False
        cancelled = False
        t: Transfer | None

        def handle(item: Any, result: Transfer | _Done | None) -> None:
            if isinstance(result, Transfer):
                inflight[id(result)] = (result, item)
            else:
                on_done(item, result)

        try:
            while True:
                while not exhausted and len(inflight) < self.max_inflight:
                    if self.stopping or self.poll_stop():
                        exhausted = True
                        break
                    item = next(it, None)
                    if item is None:
                        exhausted = True
                        break
                    try:
                        handle(item, start(item, notify))
                    except Exception as exc:
                        self.record_error(item.rel, exc)
                if self.stopping and not cancelled:
                    cancelled = True
                    exhausted = True
                    for t, _item in list(inflight.values()):
                        t.cancel()
                if not inflight and exhausted:
                    break
                try:
                    t = done_q.get(timeout=0.05)
                except queue.Empty:
                    t = None
                while t is not None:
                    _t, item = inflight.pop(id(t))
                    try:
                        handle(item, finish(item, t, notify))
                    except Exception as exc:
                        self.record_error(item.rel, exc)
                    try:
                        t = done_q.get_nowait()
                    except queue.Empty:
                        t = None
                if cancelled:
                    for t2, _item in list(inflight.values()):
                        t2.cancel()  # retries started by finish() after the stop
                if idle is not None:
                    idle(False)
                self.tick()
        finally:
            if inflight:  # an unexpected exception: never leave requests writing our files
                for t, _item in list(inflight.values()):
                    t.cancel()
                self.cancel_event.set()
                deadline = time.monotonic() + 60
                while any(not t.finished for t, _ in inflight.values()):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                for t, item in list(inflight.values()):
                    with contextlib.suppress(Exception):
                        finish(item, t, lambda _t: None)
            if idle is not None:
                idle(True)

    def finish(self, verb: str) -> SyncStats:
        self.report(force=True)
        stats = dataclasses.replace(self.stats)
        if self.fatal is not None:
            self.fatal.stats = stats
            raise self.fatal
        if self.cancelled:
            raise SyncCancelled(
                f"{verb.capitalize()} of {self.ctx.local_dir} <-> {self.ctx.where} was cancelled "
                f"after {stats.files_done} of {stats.files_total} files were transferred "
                f"({stats.files_skipped} were already up to date). The next sync resumes from "
                "there.",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
                stats=stats,
            )
        if self.failures:
            rel, msg = self.failures[0]
            raise StorageError(
                f"{verb.capitalize()} of {self.ctx.local_dir} <-> {self.ctx.where} did not "
                f"complete: {len(self.failures)} of {stats.files_total} files failed "
                f"({stats.files_done} transferred, {stats.files_skipped} already up to date). "
                f"First failure: '{rel}': {msg}",
                bucket=self.ctx.bucket,
                prefix=self.ctx.prefix,
                stats=stats,
            )
        return stats


def _list_remote(ctx: _Ctx, runner: _Runner, doing: str) -> dict[str, tuple[int, str, str]]:
    """key -> (size, etag, last-modified as ISO text) for every object under the prefix."""
    try:
        objects = runner.engine.list_all(ctx.bucket, ctx.kp, should_stop=runner.poll_stop)
    except Exception as exc:
        raise _bucket_level_error(exc, ctx, doing) from exc
    runner.report()
    return {key: (size, etag, lm) for key, size, etag, lm in objects}
