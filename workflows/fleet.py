"""The fleet: one durable workflow that keeps the books of every host's capacity.

Every grant, release and host change goes through it, one at a time, so two notebooks
never hold the same GPU, whatever starts or crashes concurrently. Notebooks ask through
an Update (granted, queued or refused); a queued notebook is told by a Signal when its
turn comes. Host agents register with an Update and prove they live with Signals.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain import activity_names as A
    from domain import fleet as F
    from domain import protocol as P
    from domain.messages import FleetInput, FleetView, HostView

AUDIT_EVERY = timedelta(minutes=5)


@workflow.defn(name=P.FLEET_WORKFLOW_TYPE)
class FleetWorkflow:
    @workflow.init
    def __init__(self, inp: FleetInput) -> None:
        self._inp = inp
        self._state = inp.state or F.FleetState()
        self._grants: list[F.Allocation] = []  # to tell their notebooks
        self._next_audit = workflow.now() + AUDIT_EVERY

    @workflow.run
    async def run(self, inp: FleetInput) -> None:
        tick = timedelta(seconds=max(1.0, self._inp.host_down_after_s / 3))
        while True:
            try:
                await workflow.wait_condition(
                    lambda: bool(self._grants) or self._history_is_long(), timeout=tick
                )
            except asyncio.TimeoutError:  # noqa: UP041 (TimeoutError is Temporal's here)
                pass
            gone = F.expire(self._state, workflow.now(), self._inp.host_down_after_s)
            if gone:
                workflow.logger.warning("hosts down (no heartbeat): %s", ", ".join(gone))
            if workflow.now() >= self._next_audit:
                await self._audit()
            await self._notify()
            self._publish()
            if self._history_is_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self._notify()
                workflow.continue_as_new(self._inp.model_copy(update={"state": self._state}))

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() > self._inp.max_history_events
            or info.is_continue_as_new_suggested()
        )

    async def _notify(self) -> None:
        """Tell queued notebooks they got capacity; a notebook gone meanwhile frees it."""
        while self._grants:
            grant = self._grants.pop(0)
            if self._state.allocations.get(grant.notebook) != grant:
                continue  # released before we told it
            try:
                await workflow.get_external_workflow_handle(grant.notebook).signal(
                    P.SIGNAL_CAPACITY_GRANTED, grant
                )
            except Exception:
                workflow.logger.warning("notebook %s is gone: releasing", grant.notebook)
                F.release(self._state, grant.notebook)
                self._drain()

    async def _audit(self) -> None:
        """Take back what notebooks whose workflow is gone still hold or wait for."""
        self._next_audit = workflow.now() + AUDIT_EVERY
        holders = sorted({*self._state.allocations, *(r.notebook for r in self._state.queue)})
        if not holders:
            return
        gone: list[str] = await workflow.execute_activity(
            A.FIND_GONE_NOTEBOOKS,
            holders,
            result_type=list[str],
            start_to_close_timeout=timedelta(minutes=2),
        )
        for notebook in gone:
            workflow.logger.warning("notebook %s is gone: releasing what it held", notebook)
            F.release(self._state, notebook)
        if gone:
            self._drain()

    def _drain(self) -> None:
        self._grants.extend(F.drain(self._state, self._inp.flavors, workflow.now()))

    def _publish(self) -> None:
        lines = []
        for name, h in sorted(self._state.hosts.items()):
            cpus, mem, gpus = F.free(self._state, name)
            held = sum(1 for a in self._state.allocations.values() if a.host == name)
            lines.append(
                f"{name}: {'up' if h.up else 'DOWN'}, {held} notebook(s), free "
                f"{cpus:g} vCPU / {mem:g} GiB / {len(gpus)} GPU"
            )
        lines.append(f"queued: {len(self._state.queue)}")
        workflow.set_current_details("\n\n".join(lines))

    # ---------------------------------------------------------------- notebooks

    @workflow.update(name=P.FLEET_UPDATE_REQUEST)
    def request(self, req: F.CapacityRequest) -> F.Decision:
        return F.request(self._state, req, self._inp.flavors, self._inp.quotas, workflow.now())

    @workflow.update(name=P.FLEET_UPDATE_RELEASE)
    def release(self, notebook: str) -> bool:
        had = F.release(self._state, notebook)
        if had:
            self._drain()
        return had

    # -------------------------------------------------------------------- hosts

    @workflow.update(name=P.FLEET_UPDATE_REGISTER_HOST)
    def register_host(self, inventory: F.HostInventory) -> None:
        F.register(self._state, inventory, workflow.now())
        self._drain()

    @register_host.validator
    def _validate_register(self, inventory: F.HostInventory) -> None:
        unknown = sorted(set(inventory.flavors) - set(self._inp.flavors))
        if unknown:
            raise ApplicationError(
                f"flavors {unknown} are not configured", type=P.INVALID, non_retryable=True
            )

    @workflow.update(name=P.FLEET_UPDATE_HOST_HEARTBEAT)
    def host_heartbeat(self, host: str) -> bool:
        """False: the fleet does not count on this host; it must reconcile and register."""
        return F.heartbeat(self._state, host, workflow.now())

    @workflow.update(name=P.FLEET_UPDATE_CONFIGURE)
    def configure(self, inp: FleetInput) -> None:
        """New flavors, quotas or timings from the operator's configuration."""
        self._inp = inp.model_copy(update={"state": None})
        self._drain()

    # -------------------------------------------------------------------- reads

    @workflow.query(name=P.FLEET_QUERY_VIEW)
    def view(self) -> FleetView:
        hosts = []
        for name, h in sorted(self._state.hosts.items()):
            cpus, mem, gpus = F.free(self._state, name)
            hosts.append(
                HostView(
                    name=name,
                    state="up" if h.up else "down",
                    last_seen=h.last_seen,
                    down_since=h.down_since,
                    inventory=h.inventory,
                    free_cpus=cpus,
                    free_memory_gib=mem,
                    free_gpu_ids=gpus,
                    allocations=[a for a in self._state.allocations.values() if a.host == name],
                )
            )
        return FleetView(
            hosts=hosts,
            queue=list(self._state.queue),
            flavors=F.usage(self._state, self._inp.flavors),
        )

    @workflow.query(name=P.FLEET_QUERY_POSITION)
    def position(self, notebook: str) -> F.Decision | None:
        pos = F.position(self._state, notebook)
        if pos is None:
            return None
        req = next(r for r in self._state.queue if r.notebook == notebook)
        flavor = self._inp.flavors[req.flavor]
        return F.Decision(
            outcome="queued",
            position=pos[0],
            waiting_for=F.waiting_for(self._state, req, flavor),
        )

    @workflow.query(name=P.FLEET_QUERY_PROJECT_GPUS)
    def project_gpus(self, project: str) -> int:
        return F.project_gpus(self._state, project, self._inp.flavors)
