"""The fleet workflow's scenarios for record.py (which runs them: ``--scenario fleet-…``
or ``--all``): FleetWorkflow on the time-skipping server, driven by the Updates a host
agent and a notebook's capacity activities send. Queued notebooks are small stand-in
workflows that wait for their grant, so the fleet's signal to them lands as it does in
production; the audit's activity is the real one (it only describes workflows).

Imported only from a checkout that has the fleet; record.py says so otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.fleet import FleetActivities
from domain import fleet as F
from domain.ids import CONTROL_TASK_QUEUE
from domain.messages import FleetInput
from workflows.fleet import FleetWorkflow

try:  # where the names live since the protocol module (issue 17)
    from domain.protocol import FLEET_WORKFLOW_ID
    from domain.protocol import SIGNAL_CAPACITY_GRANTED as GRANT_SIGNAL
except ImportError:  # older checkouts
    from workflows.fleet import FLEET_WORKFLOW_ID, GRANT_SIGNAL  # type: ignore[attr-defined,no-redef]

WAITERS_QUEUE = "record-fleet-notebooks"
CPU = "ai1-1-cpu"
GPU = "ai1-1-gpu"
FLAVORS = {
    CPU: F.FlavorSpec(name=CPU, kind="cpu", cpu_per_unit=1, memory_gib_per_unit=4),
    GPU: F.FlavorSpec(
        name=GPU, kind="gpu", cpu_per_unit=8, memory_gib_per_unit=45, gpu_model="any"
    ),
}


def cpu_host(name: str = "cpu-1", cpus: float = 2, flavors: tuple[str, ...] = (CPU,)):
    return F.HostInventory(
        name=name,
        task_queue=f"ainb-host-{name}",
        cpus=cpus,
        memory_gib=4 * cpus,
        flavors=list(flavors),
    )


def gpu_host(name: str = "gpu-1") -> F.HostInventory:
    return F.HostInventory(
        name=name,
        task_queue=f"ainb-host-{name}",
        cpus=20,
        memory_gib=100,
        gpu_model="sim",
        gpu_ids=["0", "1"],
        flavors=[CPU, GPU],
    )


@workflow.defn(name="RecordFleetNotebook", sandboxed=False)
class Waiter:
    """A queued notebook, as far as the fleet can tell: it takes the grant signal."""

    def __init__(self) -> None:
        self._grant: dict | None = None

    @workflow.run
    async def run(self) -> dict:
        await workflow.wait_condition(lambda: self._grant is not None)
        assert self._grant is not None
        return self._grant

    @workflow.signal(name=GRANT_SIGNAL)
    def granted(self, grant: dict) -> None:
        self._grant = grant


class Fleet:
    """What a scenario says to the fleet, in the words of its clients."""

    def __init__(self, env: WorkflowEnvironment, handle: WorkflowHandle) -> None:
        self.env = env
        self.handle = handle
        self.waiters: list[WorkflowHandle] = []

    async def _update(self, update: Any, arg: Any) -> Any:
        # An Update that meets the run just as it continues as new is tried again.
        for attempt in range(50):
            try:
                return await self.handle.execute_update(update, arg)
            except RPCError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)

    async def register(self, inventory: F.HostInventory) -> None:
        await self._update(FleetWorkflow.register_host, inventory)

    async def heartbeat(self, host: str) -> bool:
        return await self._update(FleetWorkflow.host_heartbeat, host)

    async def request(self, notebook: str, flavor: str = CPU, units: int = 1) -> F.Decision:
        req = F.CapacityRequest(notebook=notebook, project="p", flavor=flavor, units=units)
        return await self._update(FleetWorkflow.request, req)

    async def release(self, notebook: str) -> bool:
        return await self._update(FleetWorkflow.release, notebook)

    async def view(self) -> Any:
        return await self.handle.query(FleetWorkflow.view)

    async def notebook(self, notebook: str) -> WorkflowHandle:
        """A live notebook workflow for the fleet to tell of its grant."""
        handle = await self.env.client.start_workflow(
            Waiter.run, id=notebook, task_queue=WAITERS_QUEUE
        )
        self.waiters.append(handle)
        return handle

    async def until(self, what: str, test: Callable[[Any], bool]) -> Any:
        deadline = time.monotonic() + 30
        while True:
            view = await self.view()
            if test(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}: {view}")
            await asyncio.sleep(0.05)


def _held(view: Any) -> set[str]:
    return {a.notebook for h in view.hosts for a in h.allocations}


def _outcome(d: F.Decision, outcome: str, code: str = "") -> F.Decision:
    if d.outcome != outcome or (code and d.code != code):
        raise AssertionError(f"expected {outcome} {code}, got {d}")
    return d


@dataclasses.dataclass
class FleetScenario:
    name: str
    run: Callable[[Fleet], Awaitable[None]]
    inp: dict[str, Any]  # FleetInput fields besides the flavors

    @property
    def doc(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]

    def missing(self) -> list[str]:
        return [f"FleetInput.{k}" for k in self.inp if k not in FleetInput.model_fields]

    async def record(self, env: WorkflowEnvironment, document: Callable) -> dict:
        inp = FleetInput(flavors=FLAVORS, **self.inp)
        audit = FleetActivities(env.client).find_gone_notebooks
        async with (
            Worker(
                env.client,
                task_queue=CONTROL_TASK_QUEUE,
                workflows=[FleetWorkflow],
                activities=[audit],
            ),
            Worker(
                env.client,
                task_queue=WAITERS_QUEUE,
                workflows=[Waiter],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ),
        ):
            handle = await env.client.start_workflow(
                FleetWorkflow.run, inp, id=FLEET_WORKFLOW_ID, task_queue=CONTROL_TASK_QUEUE
            )
            fleet = Fleet(env, handle)
            try:
                await self.run(fleet)
                return await document(env.client, handle)
            finally:
                for h in [handle, *fleet.waiters]:
                    try:
                        await h.terminate("recorded")
                    except RPCError:
                        pass  # already closed


SCENARIOS: dict[str, FleetScenario] = {}


def scenario(name: str, **inp: Any) -> Callable:
    def register(fn: Callable[[Fleet], Awaitable[None]]) -> Callable:
        SCENARIOS[name] = FleetScenario(name, fn, inp)
        return fn

    return register


@scenario("fleet-grants")
async def grants(fleet: Fleet) -> None:
    """Two hosts register and heartbeat; a CPU and a GPU request are granted, asked
    again (the same answer), released."""
    await fleet.register(cpu_host())
    await fleet.register(gpu_host())
    assert await fleet.heartbeat("cpu-1") and await fleet.heartbeat("gpu-1")
    _outcome(await fleet.request("notebook/p/a"), "granted")
    gpu = _outcome(await fleet.request("notebook/p/b", GPU), "granted")
    assert gpu.allocation is not None and gpu.allocation.gpu_ids
    again = _outcome(await fleet.request("notebook/p/b", GPU), "granted")
    assert again.allocation == gpu.allocation
    assert await fleet.release("notebook/p/b")
    assert not await fleet.release("notebook/p/nobody")


@scenario("fleet-queued-then-granted")
async def queued_then_granted(fleet: Fleet) -> None:
    """A request queued behind a full host, granted when the holder releases: the fleet
    signals the waiting notebook."""
    await fleet.register(cpu_host(cpus=2))
    _outcome(await fleet.request("notebook/p/a", units=2), "granted")
    waiting = await fleet.notebook("notebook/p/b")
    _outcome(await fleet.request("notebook/p/b"), "queued")
    assert await fleet.release("notebook/p/a")
    grant = await asyncio.wait_for(waiting.result(), 30)
    assert grant["notebook"] == "notebook/p/b", grant


@scenario("fleet-grant-to-gone-notebook")
async def grant_to_gone_notebook(fleet: Fleet) -> None:
    """A queued notebook whose workflow is gone by the time of its grant: the signal
    fails and the fleet takes the capacity back."""
    await fleet.register(cpu_host(cpus=2))
    _outcome(await fleet.request("notebook/p/a", units=2), "granted")
    _outcome(await fleet.request("notebook/p/gone"), "queued")
    assert await fleet.release("notebook/p/a")
    await fleet.until("the grant taken back", lambda v: not _held(v) and not v.queue)


@scenario("fleet-refused", quotas=F.Quotas(project_max_gpus=1))
async def refused(fleet: Fleet) -> None:
    """Refusals: a flavor not offered, the project's GPU quota, a size no host fits."""
    await fleet.register(cpu_host())
    await fleet.register(gpu_host())
    _outcome(await fleet.request("notebook/p/a", "ai9-9-none"), "refused", "NO_CAPACITY")
    _outcome(await fleet.request("notebook/p/b", GPU, 2), "refused", "QUOTA_EXCEEDED")
    _outcome(await fleet.request("notebook/p/c", CPU, 64), "refused", "NO_CAPACITY")


@scenario("fleet-host-down", host_down_after_s=30)
async def host_down(fleet: Fleet) -> None:
    """A host misses its heartbeats: marked down; a request queues; its heartbeat is
    refused; it registers again and the queued request is granted."""
    await fleet.register(cpu_host())
    assert await fleet.heartbeat("cpu-1")
    await fleet.env.sleep(timedelta(seconds=45))
    await fleet.until("the host down", lambda v: v.hosts[0].state == "down")
    waiting = await fleet.notebook("notebook/p/a")
    _outcome(await fleet.request("notebook/p/a"), "queued")
    assert not await fleet.heartbeat("cpu-1")
    await fleet.register(cpu_host())
    await asyncio.wait_for(waiting.result(), 30)
    assert await fleet.heartbeat("cpu-1")


# Hosts stay up without heartbeats past the first audit; the fleet ticks every 200 s.
@scenario("fleet-audit", host_down_after_s=600)
async def audit(fleet: Fleet) -> None:
    """The periodic audit finds a holder whose workflow is gone and frees what it held;
    a live holder keeps its place."""
    await fleet.register(cpu_host(cpus=2))
    await fleet.notebook("notebook/p/live")
    _outcome(await fleet.request("notebook/p/live"), "granted")
    _outcome(await fleet.request("notebook/p/gone"), "granted")
    # The audit is due 5 minutes in, and runs at the first tick after that (400 s).
    await fleet.env.sleep(timedelta(seconds=410))
    view = await fleet.until("the audit", lambda v: "notebook/p/gone" not in _held(v))
    assert _held(view) == {"notebook/p/live"}


@scenario("fleet-configure")
async def configure(fleet: Fleet) -> None:
    """The operator adds a flavor: a host offering it registers, a request is granted."""
    bigger = F.FlavorSpec(name="ai1-2-cpu", kind="cpu", cpu_per_unit=2, memory_gib_per_unit=8)
    new = FleetInput(flavors={**FLAVORS, bigger.name: bigger}, quotas=F.Quotas(project_max_gpus=8))
    await fleet.handle.execute_update(FleetWorkflow.configure, new)
    await fleet.register(cpu_host(cpus=4, flavors=(CPU, bigger.name)))
    _outcome(await fleet.request("notebook/p/a", bigger.name), "granted")


@scenario("fleet-continue-as-new", max_history_events=40)
async def continue_as_new(fleet: Fleet) -> None:
    """Heartbeats until the history is long: continued as new with its books, where a
    new request is placed next to the one granted before."""
    await fleet.register(cpu_host(cpus=2))
    _outcome(await fleet.request("notebook/p/a"), "granted")
    first = fleet.handle.first_execution_run_id
    deadline = time.monotonic() + 30
    while (await fleet.handle.describe()).run_id == first:
        if time.monotonic() > deadline:
            raise AssertionError("the fleet never continued as new")
        await fleet.heartbeat("cpu-1")
    assert await fleet.heartbeat("cpu-1")
    _outcome(await fleet.request("notebook/p/b"), "granted")
    _outcome(await fleet.request("notebook/p/c"), "queued")  # the carried grants count
