"""Activities that run on a notebook's host, through its own task queue.

Each is idempotent: containers are found by their deterministic name, syncs skip what
is already in place, removals treat "not there" as done. Blocking calls (Docker, boto3)
run in a thread pool; long ones heartbeat so cancellation and host loss are noticed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.metrics import SYNC_BYTES, SYNC_FILES
from activities.paths import NotebookPaths, host_dir, notebooks_dir
from activities.runtime import editor_socket
from activities.runtime.base import (
    ContainerRuntime,
    ImageNotFound,
    LaunchSpec,
    Mount,
    RuntimeUnavailable,
)
from activities.storage import sync
from activities.storage.beneath import Tree, chown_tree, count_files, move_entry
from activities.storage.clients import S3Clients, ensure_bucket
from activities.storage.errors import (
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
    SyncCancelled,
)
from activities.storage.measure import measure_tree, real_dir_below
from activities.storage.volume_cache import VolumeCache
from domain import activity_names as A
from domain import codes
from domain.config import Settings
from domain.gateway import EDITOR_SOCKET, GATEWAY_ROOT
from domain.messages import (
    LaunchInput,
    LaunchResult,
    NotebookRef,
    ReadyInput,
    StopContainerInput,
    StopContainerResult,
    SyncResult,
    VolumeSyncInput,
    WatchInput,
    WatchResult,
    WorkspaceSyncInput,
)
from domain.spec import WORKSPACE, Editor, Permission, env_problem
from domain.status import SyncProgress, SyncState
from domain.storage_policy import volume_refusal
from domain.tokens import editor_read_token, editor_token

if TYPE_CHECKING:
    from activities.runtime.warm_pool import WarmPool

POLL_S = 1.0
# Readiness: a look at the editor's socket this often (an lstat: the start is not kept
# waiting on the tick, and a tick costs next to nothing), the engine asked once a second.
READY_TICK_S = 0.02
READY_ENGINE_POLL_S = 1.0
_LEGACY_PREFIX = re.compile("^" + re.escape(GATEWAY_ROOT) + "/[^/]+/[^/]+")


@dataclasses.dataclass
class _NotedStats(sync.SyncStats):
    note: str = ""


# Under /workspace: local versions a pull had to replace (see _rescue_preserved).
PRESERVED_DIR = ".ainb-preserved"


def _move_tree_contents(src: Path, root: Path, rel: str) -> int:
    """Move every run directory of a preserved area to ``root/rel``; count the files.

    ``src`` (next to a synced tree, in the notebook's directory) and ``root`` (the
    workspace directory itself) are ours, but what is below ``root`` is the notebook's and
    live: ``rel`` is created and reached beneath ``root`` without following any symlink,
    and each run directory is moved by a rename between directory descriptors (a copy
    and a removal across file systems). A symlink planted on the way raises ``ELOOP``
    (or ``ENOTDIR``, ``ENOENT``) with the runs not yet moved left in ``src``; nothing lands
    outside the workspace."""
    moved = 0
    with Tree(src) as area, Tree(root) as workspace:
        with os.scandir(area.fd) as entries:
            runs = sorted(e.name for e in entries)
        dest = workspace.makedirs_fd(rel)
        try:
            for run in runs:
                target = run
                for suffix in (f"-{os.getpid()}", f"-{os.getpid()}-{os.urandom(3).hex()}"):
                    try:
                        os.stat(target, dir_fd=dest, follow_symlinks=False)
                    except FileNotFoundError:
                        break
                    target = run + suffix
                files = count_files(area.fd, run)
                move_entry(area.fd, run, dest, target)
                moved += files
        finally:
            os.close(dest)
    shutil.rmtree(src, ignore_errors=True)
    return moved


def _now() -> datetime:
    return datetime.now(UTC)


class HostActivities:
    def __init__(
        self, settings: Settings, runtime: ContainerRuntime, pool: WarmPool | None = None
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._pool = pool
        self._s3 = S3Clients(settings)
        self._notebooks_dir = notebooks_dir(settings.data_dir, settings.host_name)
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="host-activity")
        self._cache = VolumeCache(
            host_dir(settings.data_dir, settings.host_name) / "cache",
            settings.volume_cache_ttl_s,
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.pull_volume,
            self.push_volume,
            self.restore_workspace,
            self.save_workspace,
            self.launch_container,
            self.wait_editor_ready,
            self.launch_editor,
            self.watch_container,
            self.stop_container,
            self.remove_local_data,
        ]

    def paths(self, notebook_id: str) -> NotebookPaths:
        return NotebookPaths(self._notebooks_dir, notebook_id)

    async def _blocking(
        self, fn: Callable[..., Any], *args: Any, heartbeat: tuple = (), **kwargs: Any
    ) -> Any:
        """Run a blocking call in the pool, heartbeating meanwhile so that a dead agent is
        noticed within the heartbeat timeout, however long the call takes. A cancel waits
        for the call to finish: what it started (a container) must exist before the
        workflow goes on to undo it."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=POLL_S)
                if done:
                    return future.result()
                activity.heartbeat(*heartbeat)
        except asyncio.CancelledError:
            await asyncio.gather(asyncio.shield(future), return_exceptions=True)
            raise

    # ------------------------------------------------------------------- data

    async def _sync(
        self, direction: str, what: str, run: Callable[..., sync.SyncStats]
    ) -> SyncResult:
        """Run a blocking sync, heartbeating its progress; a cancel stops it between files."""
        started = _now()
        stop = threading.Event()
        latest: list[sync.SyncStats] = [sync.SyncStats()]

        def progress(stats: sync.SyncStats) -> None:
            latest[0] = dataclasses.replace(stats)

        future = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(run, progress=progress, should_stop=stop.is_set)
        )
        try:
            while True:
                activity.heartbeat({"what": what, **dataclasses.asdict(latest[0])})
                done, _ = await asyncio.wait({future}, timeout=POLL_S)
                if done:
                    break
            stats = future.result()
        except asyncio.CancelledError:
            stop.set()
            try:
                await asyncio.shield(future)
            except StorageError:
                pass
            raise
        except SyncCancelled as err:
            raise asyncio.CancelledError() from err
        except StorageAccessError as err:
            raise ApplicationError(
                f"{what}: {err}", type=codes.DATA_SYNC_FAILED, non_retryable=True
            ) from err
        except (StorageUnavailableError, StorageError) as err:
            raise ApplicationError(f"{what}: {err}", type=codes.STORAGE_UNAVAILABLE) from err
        note = stats.note if isinstance(stats, _NotedStats) else ""
        SYNC_BYTES.labels(direction).inc(stats.bytes_done)
        SYNC_FILES.labels(direction).inc(stats.files_done)
        return SyncResult(
            progress=SyncProgress(
                direction=direction,
                state=SyncState.DONE,
                started_at=started,
                ended_at=_now(),
                message=note,
                **{k: v for k, v in dataclasses.asdict(stats).items() if k != "note"},
            )
        )

    def _volume_client(self, alias: str, what: str):
        try:
            return self._s3.get(alias)
        except KeyError as err:
            raise ApplicationError(
                f"{what}: {err.args[0]}", type=codes.DATA_SYNC_FAILED, non_retryable=True
            ) from None

    @staticmethod
    def _describe(inp: VolumeSyncInput) -> str:
        v = inp.volume
        source = f"{v.bucket}@{v.alias}" + (f"/{v.prefix}" if v.prefix else "")
        return f"volume {v.mount_path} ({source})"

    def _allowed(self, inp: VolumeSyncInput, what: str) -> None:
        """The API checked the storage rules at create; they are checked again here, where
        the data moves (for a spec stored before a rule changed, or an input from
        anywhere else)."""
        refusal = volume_refusal(self._settings, inp.ref.project, inp.volume)
        if refusal is not None:
            raise ApplicationError(
                f"{what}: refused by rule {refusal.rule}: {refusal.message}",
                type=codes.DATA_SYNC_FAILED,
                non_retryable=True,
            )

    @activity.defn(name=A.PULL_VOLUME)
    async def pull_volume(self, inp: VolumeSyncInput) -> SyncResult:
        what = self._describe(inp)
        self._allowed(inp, what)
        s3 = self._volume_client(inp.volume.alias, what)
        local = self.paths(inp.ref.notebook_id).volume(inp.index)
        local.mkdir(parents=True, exist_ok=True)
        if inp.volume.cache:
            run = functools.partial(self._pull_through_cache, s3, inp, local)
        else:
            run = functools.partial(
                sync.pull, s3, inp.volume.bucket, inp.volume.prefix, local, delete=True
            )
        try:
            result = await self._sync("pull", what, run)
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._cache.evict)
        result = await self._rescue_preserved(
            inp.ref.notebook_id, local, inp.volume.relative_mount, result
        )
        await self._hand_over(inp.ref.notebook_id, local)
        return result

    async def _rescue_preserved(
        self, notebook_id: str, local: Path, label: str, result: SyncResult
    ) -> SyncResult:
        """A pull moves a local file that changed on both sides out of the tree, next to
        it on the host, where the user cannot see it and the stop would remove it. Move it
        into the workspace instead: visible in the editor, and saved with the workspace."""
        area = local.parent / f".{local.name}.preserved"
        if not area.is_dir():
            return result
        workspace = self.paths(notebook_id).workspace
        try:
            moved = await self._blocking(
                _move_tree_contents, area, workspace, f"{PRESERVED_DIR}/{label}"
            )
        except OSError as err:
            # e.g. the notebook made /workspace/.ainb-preserved a symlink (ELOOP): nothing
            # was written through it; the files not moved stay in the host's preserved area
            # (the next pull of this tree tries again) and the sync itself succeeded
            activity.logger.warning("cannot move preserved files of %s: %s", label, err)
            note = (
                f"local file(s) changed both here and in storage could not be moved to "
                f"/workspace/{PRESERVED_DIR}/{label} ({err.strerror}); they are kept on the host"
            )
        else:
            if not moved:
                return result
            note = (
                f"{moved} local file(s) changed both here and in storage were moved to "
                f"/workspace/{PRESERVED_DIR}/{label} before the stored version replaced them"
            )
        progress = result.progress
        message = f"{progress.message}; {note}" if progress.message else note
        return SyncResult(progress=progress.model_copy(update={"message": message}))

    def _pull_through_cache(
        self,
        s3: Any,
        inp: VolumeSyncInput,
        local: Path,
        *,
        progress: Callable[[sync.SyncStats], None],
        should_stop: Callable[[], bool],
    ) -> sync.SyncStats:
        """Bring the host's copy up to date, then fill the notebook's directory from it."""
        v = inp.volume
        entry = self._cache.entry(inp.ref.project, v.alias, v.bucket, v.prefix)
        with self._cache.locked(entry, should_stop):
            cached = self._cache.data(entry)
            fill = sync.pull(
                s3,
                v.bucket,
                v.prefix,
                cached,
                delete=True,
                progress=progress,
                should_stop=should_stop,
            )
            self._cache.touch(entry)
            stats = sync.pull(
                s3,
                v.bucket,
                v.prefix,
                local,
                delete=True,
                seed_from=cached,
                progress=progress,
                should_stop=should_stop,
            )
        return _NotedStats(
            **dataclasses.asdict(stats),
            note=f"host cache: downloaded {fill.files_done} file(s) ({fill.bytes_done} bytes), "
            f"{fill.files_skipped} already cached",
        )

    async def _unsaved_if_permanent(self, err: ApplicationError, local: Path) -> NoReturn:
        """A push that retries cannot fix says where its data stays, and how much."""
        if err.type != codes.DATA_SYNC_FAILED:
            raise err
        files, size = await self._blocking(measure_tree, local)
        raise ApplicationError(
            err.message,
            {"path": str(local), "files": files, "bytes": size},
            type=err.type,
            non_retryable=True,
        ) from err

    @activity.defn(name=A.PUSH_VOLUME)
    async def push_volume(self, inp: VolumeSyncInput) -> SyncResult:
        what = self._describe(inp)
        paths = self.paths(inp.ref.notebook_id)
        local: Path | None = paths.volume(inp.index)
        prefix = inp.volume.prefix
        if inp.preserved:
            what = f"preserved files of {what}"
            # Below /workspace, written by the notebook: no symlink may lead the push away.
            local = real_dir_below(paths.workspace, f"{PRESERVED_DIR}/{inp.volume.relative_mount}")
            prefix = "/".join(
                p for p in (prefix.strip("/"), PRESERVED_DIR, inp.ref.notebook_id) if p
            )
        try:
            self._allowed(inp, what)
            s3 = self._volume_client(inp.volume.alias, what)
        except ApplicationError as err:
            await self._unsaved_if_permanent(err, local or paths.volume(inp.index))
        if local is None or not local.is_dir():
            # Already pushed and cleaned up by an earlier attempt: nothing left to lose.
            return SyncResult(progress=SyncProgress(direction="push", state=SyncState.DONE))
        try:
            return await self._sync(
                "push",
                what,
                functools.partial(
                    sync.push,
                    s3,
                    local,
                    inp.volume.bucket,
                    prefix,
                    delete=inp.volume.permission == Permission.RWD
                    and not (inp.keep_remote or inp.preserved),
                ),
            )
        except ApplicationError as err:
            await self._unsaved_if_permanent(err, local)

    @activity.defn(name=A.RESTORE_WORKSPACE)
    async def restore_workspace(self, inp: WorkspaceSyncInput) -> SyncResult:
        local = self.paths(inp.ref.notebook_id).workspace
        local.mkdir(parents=True, exist_ok=True)
        result = await self._sync(
            "pull",
            "workspace",
            functools.partial(
                sync.pull, self._s3.platform(), inp.bucket, inp.prefix, local, delete=True
            ),
        )
        result = await self._rescue_preserved(inp.ref.notebook_id, local, "workspace", result)
        await self._hand_over(inp.ref.notebook_id, local)
        return result

    @activity.defn(name=A.SAVE_WORKSPACE)
    async def save_workspace(self, inp: WorkspaceSyncInput) -> SyncResult:
        local = self.paths(inp.ref.notebook_id).workspace
        if not local.is_dir():
            return SyncResult(progress=SyncProgress(direction="push", state=SyncState.DONE))
        s3 = self._s3.platform()
        try:
            await self._blocking(ensure_bucket, s3, inp.bucket)
        except Exception as err:
            raise ApplicationError(
                f"workspace: the platform bucket {inp.bucket} cannot be reached: {err}",
                type=codes.STORAGE_UNAVAILABLE,
            ) from err
        try:
            return await self._sync(
                "push",
                "workspace",
                functools.partial(
                    sync.push,
                    s3,
                    local,
                    inp.bucket,
                    inp.prefix,
                    delete=inp.mirror,
                    exclude=inp.exclude,
                ),
            )
        except ApplicationError as err:
            await self._unsaved_if_permanent(err, local)

    @activity.defn(name=A.REMOVE_LOCAL_DATA)
    async def remove_local_data(self, ref: NotebookRef) -> None:
        root = self.paths(ref.notebook_id).root
        await self._blocking(shutil.rmtree, root, ignore_errors=True)

    # -------------------------------------------------------------- container

    def _launch_spec(self, inp: LaunchInput, prepare: bool = True) -> LaunchSpec:
        spec = inp.spec
        paths = self.paths(inp.ref.notebook_id)
        mounts = [Mount(source=paths.workspace, target=WORKSPACE)]
        trees = [paths.workspace, paths.run]
        for index, volume in enumerate(spec.volumes):
            source = paths.volume(index)
            trees.append(source)
            mounts.append(
                Mount(
                    source=source,
                    target=volume.mount_path,
                    read_only=volume.permission == Permission.RO,
                )
            )
        flavor = self._settings.flavors.get(spec.resources.flavor)
        if flavor is None:
            raise ApplicationError(
                f"flavor {spec.resources.flavor!r} is not offered by host {self._settings.host_name}",
                type=codes.LAUNCH_FAILED,
                non_retryable=True,
            )
        if problem := env_problem(spec.env_vars):
            raise ApplicationError(
                f"env_vars: {problem[1]}", type=codes.SPEC_REFUSED, non_retryable=True
            )
        if prepare:
            self._prepare(paths, trees)
        alloc = inp.allocation
        units = spec.resources.units
        cpus = alloc.cpus if alloc else units * flavor.cpu_per_unit
        memory_gib = alloc.memory_gib if alloc else units * flavor.memory_gib_per_unit
        gpu_ids = list(alloc.gpu_ids) if alloc else []
        # The engine refuses limits above the machine (an inventory configured larger than
        # the real host, e.g. simulated capacity): cap them at what is there.
        cpus = min(cpus, float(os.cpu_count() or 1))
        host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = min(int(memory_gib * 2**30), host_memory)
        secret = self._settings.token_secret.get_secret_value()
        token = "" if spec.unsecure_http else editor_token(secret, inp.ref.notebook_id)
        # JupyterLab can serve a read-only visitor (a project token of role read) under a
        # second token; code-server cannot, and the gateway never lets such a visitor in.
        read_token = (
            editor_read_token(secret, inp.ref.notebook_id)
            if token and spec.editor is Editor.JUPYTERLAB
            else ""
        )
        env = {
            **spec.env_vars,
            "AINB_EDITOR_SOCKET": EDITOR_SOCKET,
            "AINB_EDITOR_TOKEN": token,
            **({"AINB_EDITOR_READ_TOKEN": read_token} if read_token else {}),
            "AINB_BASE_URL": "/",
            "AINB_NOTEBOOK_ID": inp.ref.notebook_id,
            "AINB_PROJECT": inp.ref.project,
        }
        s = self._settings
        return LaunchSpec(
            notebook_id=inp.ref.notebook_id,
            project=inp.ref.project,
            image=inp.image,
            env=env,
            mounts=mounts,
            workspace=paths.workspace,
            run_dir=paths.run,
            cpus=cpus,
            memory_bytes=memory,
            gpus=spec.resources.gpu or 0,
            gpu_ids=gpu_ids,
            editor=spec.editor.value,
            network=s.notebook_network,
            user=f"{s.editor_uid}:{s.editor_gid}",
        )

    def _prepare(self, paths: NotebookPaths, trees: list[Path]) -> None:
        """The notebook's directory is root's and closed to others; the trees bound into
        the container are its user's (their contents were handed over by each pull)."""
        paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(paths.root, 0o700)
        for tree in trees:
            tree.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.lchown(tree, self._settings.editor_uid, self._settings.editor_gid)
        # A socket left by an earlier run must not answer for the new editor.
        paths.editor_socket.unlink(missing_ok=True)

    async def _hand_over(self, notebook_id: str, tree: Path) -> None:
        """Files a pull wrote (as root) become the notebook user's, and so does what the
        pull moved aside into the workspace: the editor can change them without any
        capability. Never follows a link the notebook planted."""
        uid, gid = self._settings.editor_uid, self._settings.editor_gid
        for path in (tree, self.paths(notebook_id).workspace / PRESERVED_DIR):
            if path.is_dir() and not path.is_symlink():
                await self._blocking(chown_tree, path, uid, gid)

    def _launch(self, inp: LaunchInput) -> LaunchResult:
        paths = self.paths(inp.ref.notebook_id)
        existing = self._runtime.poll(inp.ref.notebook_id)
        if existing is not None and existing.running:
            state = existing  # a retried launch: the first attempt's container serves
            if self._pool is not None:
                self._pool.resume(self._launch_spec(inp, prepare=False), paths)
        else:
            spec = self._launch_spec(inp)
            # A container left by an earlier run holds the name: the cold path replaces it.
            claimed = (
                self._pool.claim(spec, paths)
                if self._pool is not None and existing is None
                else None
            )
            state = claimed or self._runtime.start(spec)
        return LaunchResult(
            container=state.name,
            # For operators: where the editor answers on this host (only the host agent
            # connects there; the gateway goes through the agent's tunnel).
            url=f"unix:{paths.editor_socket}",
            port=0,
            started_at=_now(),
        )

    @activity.defn(name=A.LAUNCH_CONTAINER)
    async def launch_container(self, inp: LaunchInput) -> LaunchResult:
        try:
            return await self._blocking(self._launch, inp)
        except ImageNotFound as err:
            raise ApplicationError(
                str(err), type=codes.IMAGE_NOT_FOUND, non_retryable=True
            ) from err
        except RuntimeUnavailable as err:
            raise ApplicationError(str(err), type=codes.ENGINE_UNAVAILABLE) from err

    @activity.defn(name=A.WAIT_EDITOR_READY)
    async def wait_editor_ready(self, inp: ReadyInput) -> None:
        await self._await_editor(inp.ref.notebook_id, inp.path, inp.timeout_s)

    @activity.defn(name=A.LAUNCH_EDITOR)
    async def launch_editor(self, inp: LaunchInput) -> LaunchResult:
        """launch_container then wait_editor_ready, in one activity (one task queue round
        trip and one workflow task fewer per start). A retry launches again, which finds
        the first attempt's container, and waits again."""
        result = await self.launch_container(inp)
        await self._await_editor(inp.ref.notebook_id, inp.ready_path, inp.ready_timeout_s)
        return result

    async def _await_editor(self, notebook_id: str, path: str, timeout_s: float) -> None:
        if not self._runtime.serves_http:
            return  # a simulated host: its editor is "up" once its record exists
        sock = self.paths(notebook_id).editor_socket
        # Histories from before notebooks had their own origin name the path under the
        # old gateway prefix; the editor now serves at its root.
        path = "/" + _LEGACY_PREFIX.sub("", path).lstrip("/")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        next_poll = loop.time() + READY_ENGINE_POLL_S
        activity.heartbeat()
        while True:
            # Until the editor has made its socket, one lstat() per tick on this thread
            # (no thread hop, no engine call); then one request per try, which the editor
            # answers once it serves (any HTTP answer; 403 is a protected one).
            # An lstat() of a local directory does not block in any way that matters.
            if os.path.lexists(sock) and await self._blocking(  # noqa: ASYNC240
                editor_socket.probe, sock, path
            ) in (200, 403):
                return
            # Asking the engine whether the container still runs costs the engine and this
            # agent far more than a look at the socket: once a second is enough to fail
            # fast on an editor that exited.
            if loop.time() >= next_poll:
                next_poll = loop.time() + READY_ENGINE_POLL_S
                # With it, the heartbeat: each one is a call into the SDK's core and a
                # task on this loop, a fifth of the agent's CPU when it came every tick.
                activity.heartbeat()
                state = await self._blocking(self._runtime.poll, notebook_id)
                if state is None or not state.running:
                    logs = await self._blocking(self._runtime.logs, notebook_id, 20)
                    code = state.exit_code if state else None
                    raise ApplicationError(
                        f"the editor exited while starting (exit code {code}); "
                        f"last output:\n{logs}",
                        type=codes.exit_code(code) if code else codes.EDITOR_NOT_READY,
                        non_retryable=True,
                    )
            if loop.time() > deadline:
                raise ApplicationError(
                    f"the editor did not answer within {timeout_s:.0f}s",
                    type=codes.EDITOR_NOT_READY,
                    non_retryable=True,
                )
            await asyncio.sleep(READY_TICK_S)

    @activity.defn(name=A.WATCH_CONTAINER)
    async def watch_container(self, inp: WatchInput) -> WatchResult:
        """Heartbeat while the container runs (the heartbeats prove RUNNING time); return
        when it exits, or after ``max_s`` still running so the workflow can checkpoint."""
        loop = asyncio.get_running_loop()
        until = loop.time() + inp.max_s
        last_seen: datetime | None = None
        while True:
            details = ({"last_seen_running_at": last_seen.isoformat()},) if last_seen else ()
            try:
                state = await self._blocking(
                    self._runtime.poll, inp.ref.notebook_id, heartbeat=details
                )
            except RuntimeUnavailable:
                # The engine hiccups; the container may well be running. Heartbeat nothing
                # new, so the heartbeat timeout decides if this lasts too long.
                await asyncio.sleep(POLL_S)
                continue
            if state is None:
                return WatchResult(exit_code=None, last_seen_running_at=last_seen)
            if not state.running:
                return WatchResult(exit_code=state.exit_code, last_seen_running_at=last_seen)
            last_seen = _now()
            activity.heartbeat({"last_seen_running_at": last_seen.isoformat()})
            if loop.time() >= until:
                return WatchResult(running=True, last_seen_running_at=last_seen)
            await asyncio.sleep(min(POLL_S, max(0.0, until - loop.time())))

    @activity.defn(name=A.STOP_CONTAINER)
    async def stop_container(self, inp: StopContainerInput) -> StopContainerResult:
        try:
            state = await self._blocking(self._runtime.stop, inp.ref.notebook_id, inp.grace_s)
        except RuntimeUnavailable as err:
            raise ApplicationError(str(err), type=codes.ENGINE_UNAVAILABLE) from err
        if state is None:
            return StopContainerResult(existed=False)
        return StopContainerResult(existed=True, exit_code=state.exit_code)
