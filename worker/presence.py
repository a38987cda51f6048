"""A host agent's standing in the fleet: what the machine has, proof it lives, and
reconciliation of the containers found on it with the notebooks meant to run there."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError

from activities.paths import notebooks_dir
from activities.runtime.base import ContainerRuntime
from domain import search_attributes as sa
from domain.config import Settings
from domain.fleet import HostInventory
from domain.ids import host_task_queue, notebook_of, valid_notebook_id, workflow_id
from domain.protocol import NOTEBOOK_WORKFLOW_TYPE
from domain.states import NotebookState
from temporal_client import fleet_calls, notebook_calls, revival

log = logging.getLogger("ainb.presence")

# A container is kept when its notebook is in one of these states on this host.
_MEANT_TO_RUN = {
    NotebookState.STARTING,
    NotebookState.RUNNING,
    NotebookState.STOPPING,
    NotebookState.DELETING,
}


def detect_gpus() -> tuple[list[str], str | None]:
    """GPU indexes and model from nvidia-smi; none when it is not there."""
    if shutil.which("nvidia-smi") is None:
        return [], None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        log.warning("nvidia-smi failed: this host offers no GPU")
        return [], None
    rows = [line.split(",", 1) for line in out.splitlines() if line.strip()]
    return [r[0].strip() for r in rows], (rows[0][1].strip() if rows else None)


def inventory(settings: Settings, logs_url: str = "", editor_tunnel: str = "") -> HostInventory:
    gpu_ids, model = (
        (settings.host_gpu_ids, settings.host_gpu_model)
        if settings.host_gpu_ids is not None
        else detect_gpus()
    )
    cpus = settings.host_cpus or float(os.cpu_count() or 1)
    memory = settings.host_memory_gib or (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    )
    if settings.host_flavors is not None:
        flavors = list(settings.host_flavors)
    else:
        flavors = [
            name
            for name, f in settings.flavors.items()
            if f.kind == "cpu" or (gpu_ids and f.gpu_model in (None, "any", model))
        ]
    return HostInventory(
        name=settings.host_name,
        task_queue=host_task_queue(settings.host_name),
        cpus=cpus,
        memory_gib=round(memory, 2),
        gpu_model=model,
        gpu_ids=list(gpu_ids),
        flavors=flavors,
        logs_url=logs_url,
        editor_tunnel=editor_tunnel,
    )


class Presence:
    def __init__(
        self,
        client: Client,
        settings: Settings,
        runtime: ContainerRuntime,
        logs_url: str = "",
        editor_tunnel: str = "",
    ) -> None:
        self._client = client
        self._logs_url = logs_url
        self._editor_tunnel = editor_tunnel
        self._settings = settings
        self._runtime = runtime
        self._fleet = fleet_calls.fleet(client)

    async def run(self) -> None:
        """Reconcile, register, then heartbeat; reconcile again now and then, and before
        registering again whenever the fleet stopped counting on this host."""
        s = self._settings
        registered = False
        next_reconcile = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not registered or loop.time() >= next_reconcile:
                    await self.reconcile()
                    next_reconcile = loop.time() + s.reconcile_interval_s
                if not registered:
                    await fleet_calls.register_host(
                        self._fleet, inventory(s, self._logs_url, self._editor_tunnel)
                    )
                    log.info("host %s registered with the fleet", s.host_name)
                    registered = True
                elif not await fleet_calls.host_heartbeat(self._fleet, s.host_name):
                    log.warning("the fleet marked host %s down: registering again", s.host_name)
                    registered = False
                    continue
            except RPCError as err:
                log.warning("fleet not reachable (%s); retrying", err.message)
                registered = False
            except Exception:
                log.exception("presence step failed; retrying")
                registered = False
            await asyncio.sleep(s.host_heartbeat_s)

    async def reconcile(self) -> tuple[set[str], set[str]]:
        """Remove containers whose notebook is not meant to run here; keep (re-adopt) the
        rest untouched. A notebook whose state cannot be read now is left alone. Its data
        directory stays: a restart of that notebook here keeps the work it holds."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, self._runtime.managed)
        kept, removed = set(), set()
        for notebook_id, project in sorted(found.items()):
            meant = await self._meant_here(
                project or await self._project_of(notebook_id), notebook_id
            )
            if meant is None or meant:
                kept.add(notebook_id)
                continue
            log.warning("removing container of notebook %s: not meant to run here", notebook_id)
            await loop.run_in_executor(
                None, self._runtime.stop, notebook_id, self._settings.stop_grace_s
            )
            removed.add(notebook_id)
        await self._tidy_data_dirs(set(found))
        return kept, removed

    async def _tidy_data_dirs(self, with_container: set[str]) -> None:
        """Remove the data directories of deleted notebooks (what a forced delete could not
        reach while this host was down). Only when the notebook's workflow completed,
        which is DELETED for good; a directory of any other notebook, or of one Temporal
        cannot name, may hold unsaved work and stays."""
        root = notebooks_dir(self._settings.data_dir, self._settings.host_name)
        try:
            names = sorted(p.name for p in root.iterdir() if p.is_dir())
        except OSError:
            return
        loop = asyncio.get_running_loop()
        for notebook_id in names:
            if notebook_id in with_container or not valid_notebook_id(notebook_id):
                continue
            if not await self._deleted(notebook_id):
                continue
            log.warning("removing the data directory of deleted notebook %s", notebook_id)
            await loop.run_in_executor(None, shutil.rmtree, root / notebook_id, True)

    async def _project_of(self, notebook_id: str) -> str:
        """The project of a notebook whose container does not say (a claimed warm editor
        keeps its slot's labels); empty when Temporal cannot name exactly one."""
        query = f"WorkflowType = '{NOTEBOOK_WORKFLOW_TYPE}' AND {sa.ID.name} = '{notebook_id}'"
        try:
            ids = {wf.id async for wf in self._client.list_workflows(query, limit=10)}
        except Exception:
            return ""
        named = {notebook_of(wid) for wid in ids} - {None}
        return next(iter(named))[0] if len(named) == 1 else ""  # type: ignore[index]

    async def _deleted(self, notebook_id: str) -> bool:
        query = f"WorkflowType = '{NOTEBOOK_WORKFLOW_TYPE}' AND {sa.ID.name} = '{notebook_id}'"
        try:
            ids = {wf.id async for wf in self._client.list_workflows(query, limit=10)}
            if len(ids) != 1:
                return False
            state, _ = await revival.liveness(self._client, ids.pop())
        except Exception:
            return False
        return state == revival.Liveness.DELETED

    async def _meant_here(self, project: str, notebook_id: str) -> bool | None:
        """True/False, or None when it cannot be known now (then nothing is removed).

        Decided by the workflow's execution status, not by a query: a closed workflow
        answers queries by replaying its history, so a terminated notebook would look
        RUNNING forever. A run closed from outside is taken over
        (temporal_client/revival.py): the new run stops this container through the usual
        teardown, after saving its data."""
        if not project:
            return None
        wid = workflow_id(project, notebook_id)
        state, desc = await revival.liveness(self._client, wid)
        if state == revival.Liveness.CLOSED:
            await revival.take_over(self._client, project, notebook_id, desc=desc)
            return None
        if state in (revival.Liveness.DELETED, revival.Liveness.MISSING):
            return False
        if state == revival.Liveness.UNKNOWN:
            return None
        try:
            nb = await notebook_calls.get(
                self._client.get_workflow_handle(wid), rpc_timeout=timedelta(seconds=10)
            )
        except Exception:
            return None
        return nb.status.state in _MEANT_TO_RUN and nb.status.host == self._settings.host_name
