"""The fleet's books: hosts, what each holds, and who waits for what.

Pure and deterministic: the fleet workflow is the only writer, so every decision is
serialised through it and replayed exactly; tests drive these functions directly.
A notebook holds capacity from its grant until its container is gone (I5).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from domain import codes

EPS = 1e-9


class FlavorSpec(BaseModel):
    """What one unit of a flavor takes from a host (the operator's flavor, for the workflow)."""

    name: str
    kind: Literal["cpu", "gpu"]
    cpu_per_unit: float
    memory_gib_per_unit: float
    gpu_model: str | None = None  # None or "any": any model


class Quotas(BaseModel):
    project_max_gpus: int = 4


class HostInventory(BaseModel):
    """What a host agent reports about its machine when it registers."""

    name: str
    task_queue: str
    cpus: float
    memory_gib: float
    gpu_model: str | None = None
    gpu_ids: list[str] = Field(default_factory=list)
    flavors: list[str] = Field(default_factory=list)  # flavors the operator lets it run
    # Where the API reads this host's container output (worker/log_server.py).
    logs_url: str = ""
    # host:port of the agent's editor tunnel, the gateway's only way to an editor
    # (worker/editor_tunnel.py).
    editor_tunnel: str = ""


class HostState(BaseModel):
    inventory: HostInventory
    up: bool = True
    last_seen: datetime
    down_since: datetime | None = None


class Allocation(BaseModel):
    notebook: str  # the notebook's workflow id
    project: str
    host: str
    task_queue: str
    flavor: str
    units: int
    cpus: float
    memory_gib: float
    gpu_ids: list[str] = Field(default_factory=list)
    granted_at: datetime


class CapacityRequest(BaseModel):
    notebook: str
    project: str
    flavor: str
    units: int
    requested_at: datetime | None = None  # set by the fleet when queued


class Decision(BaseModel):
    """The answer to a request: granted now, queued (and where), or refused."""

    outcome: Literal["granted", "queued", "refused"]
    allocation: Allocation | None = None
    position: int | None = None  # 1 = next of its flavor
    waiting_for: str = ""
    message: str = ""
    code: str = ""  # why it was refused: a status.info.code


class FleetState(BaseModel):
    hosts: dict[str, HostState] = Field(default_factory=dict)
    allocations: dict[str, Allocation] = Field(default_factory=dict)  # by notebook
    queue: list[CapacityRequest] = Field(default_factory=list)  # arrival order


def need(flavor: FlavorSpec, units: int) -> tuple[float, float, int]:
    """(cpus, memory GiB, GPUs) that ``units`` of ``flavor`` take."""
    gpus = units if flavor.kind == "gpu" else 0
    return flavor.cpu_per_unit * units, flavor.memory_gib_per_unit * units, gpus


def free(state: FleetState, host: str) -> tuple[float, float, list[str]]:
    """(cpus, memory GiB, GPU ids) not held by any allocation on ``host``."""
    inv = state.hosts[host].inventory
    cpus, mem = inv.cpus, inv.memory_gib
    held: set[str] = set()
    for a in state.allocations.values():
        if a.host == host:
            cpus -= a.cpus
            mem -= a.memory_gib
            held.update(a.gpu_ids)
    return cpus, mem, [g for g in inv.gpu_ids if g not in held]


def _fits(state: FleetState, host: str, flavor: FlavorSpec, units: int) -> bool:
    h = state.hosts[host]
    inv = h.inventory
    if not h.up or flavor.name not in inv.flavors:
        return False
    if flavor.kind == "gpu" and flavor.gpu_model not in (None, "any", inv.gpu_model):
        return False
    cpus, mem, gpus = need(flavor, units)
    f_cpus, f_mem, f_gpus = free(state, host)
    return cpus <= f_cpus + EPS and mem <= f_mem + EPS and gpus <= len(f_gpus)


def could_ever_fit(state: FleetState, flavor: FlavorSpec, units: int) -> bool:
    """Would an empty host of those known fit it? (Otherwise queueing is pointless.)"""
    cpus, mem, gpus = need(flavor, units)
    for h in state.hosts.values():
        inv = h.inventory
        if flavor.name not in inv.flavors:
            continue
        if flavor.kind == "gpu" and flavor.gpu_model not in (None, "any", inv.gpu_model):
            continue
        if cpus <= inv.cpus + EPS and mem <= inv.memory_gib + EPS and gpus <= len(inv.gpu_ids):
            return True
    return False


def _place(
    state: FleetState, req: CapacityRequest, flavor: FlavorSpec, now: datetime
) -> Allocation | None:
    """Best fit: the host left with the least free of what the flavor is scarce in."""
    candidates = [h for h in sorted(state.hosts) if _fits(state, h, flavor, req.units)]
    if not candidates:
        return None

    def leftover(host: str) -> tuple[float, ...]:
        f_cpus, f_mem, f_gpus = free(state, host)
        return (len(f_gpus), f_cpus, f_mem) if flavor.kind == "gpu" else (f_cpus, f_mem, 0)

    host = min(candidates, key=leftover)
    cpus, mem, gpus = need(flavor, req.units)
    _, _, f_gpus = free(state, host)
    inv = state.hosts[host].inventory
    alloc = Allocation(
        notebook=req.notebook,
        project=req.project,
        host=host,
        task_queue=inv.task_queue,
        flavor=flavor.name,
        units=req.units,
        cpus=cpus,
        memory_gib=mem,
        gpu_ids=f_gpus[:gpus],
        granted_at=now,
    )
    state.allocations[req.notebook] = alloc
    return alloc


def project_gpus(state: FleetState, project: str, flavors: dict[str, FlavorSpec]) -> int:
    """GPUs a project holds or waits for."""
    held = sum(len(a.gpu_ids) for a in state.allocations.values() if a.project == project)
    waiting = sum(
        need(flavors[r.flavor], r.units)[2]
        for r in state.queue
        if r.project == project and r.flavor in flavors
    )
    return held + waiting


def position(state: FleetState, notebook: str) -> tuple[int, str] | None:
    """(1-based place among requests of the same flavor, flavor) of a queued notebook."""
    for r in state.queue:
        if r.notebook == notebook:
            same = [q for q in state.queue if q.flavor == r.flavor]
            return same.index(r) + 1, r.flavor
    return None


def _queued(state: FleetState, notebook: str, flavor: FlavorSpec) -> Decision:
    pos = position(state, notebook)
    assert pos is not None
    req = next(r for r in state.queue if r.notebook == notebook)
    return Decision(outcome="queued", position=pos[0], waiting_for=waiting_for(state, req, flavor))


def waiting_for(state: FleetState, req: CapacityRequest, flavor: FlavorSpec) -> str:
    what = f"{req.units} x {flavor.name} ({describe_need(flavor, req.units)})"
    if not any(flavor.name in h.inventory.flavors and h.up for h in state.hosts.values()):
        return f"{what}; no host offering {flavor.name} is up"
    return what


def queued_message(position: int | None, waiting_for: str) -> str:
    """A queued notebook's status message: the workflow's when the fleet queued it, and
    the API's with the place in line it has now."""
    return (
        f"queued: number {position} in line for {waiting_for}; it starts as soon as a host has room"
    )


def describe_need(flavor: FlavorSpec, units: int) -> str:
    cpus, mem, gpus = need(flavor, units)
    parts = [f"{gpus} GPU" + ("s" if gpus != 1 else "")] if gpus else []
    parts += [f"{cpus:g} vCPU", f"{mem:g} GiB"]
    return ", ".join(parts)


def request(
    state: FleetState,
    req: CapacityRequest,
    flavors: dict[str, FlavorSpec],
    quotas: Quotas,
    now: datetime,
) -> Decision:
    """Grant, queue or refuse; asking again for the same notebook gives the same answer."""
    if req.notebook in state.allocations:
        return Decision(outcome="granted", allocation=state.allocations[req.notebook])
    flavor = flavors.get(req.flavor)
    if flavor is None:
        return Decision(
            outcome="refused",
            code=codes.NO_CAPACITY,
            message=f"flavor {req.flavor!r} is not offered",
        )
    if position(state, req.notebook) is not None:
        return _queued(state, req.notebook, flavor)
    gpus = need(flavor, req.units)[2]
    if gpus:
        used = project_gpus(state, req.project, flavors)
        if used + gpus > quotas.project_max_gpus:
            return Decision(
                outcome="refused",
                code=codes.QUOTA_EXCEEDED,
                message=f"project quota: at most {quotas.project_max_gpus} GPUs at once per "
                f"project; project {req.project} holds or waits for {used}, this asks {gpus}",
            )
    offered = any(req.flavor in h.inventory.flavors for h in state.hosts.values())
    if offered and not could_ever_fit(state, flavor, req.units):
        return Decision(
            outcome="refused",
            code=codes.NO_CAPACITY,
            message=f"no host can ever fit {req.units} x {flavor.name} "
            f"({describe_need(flavor, req.units)})",
        )
    # First come, first served per flavor: nobody overtakes an earlier request of its flavor.
    if not any(r.flavor == req.flavor for r in state.queue):
        alloc = _place(state, req, flavor, now)
        if alloc is not None:
            return Decision(outcome="granted", allocation=alloc)
    state.queue.append(req.model_copy(update={"requested_at": now}))
    return _queued(state, req.notebook, flavor)


def release(state: FleetState, notebook: str) -> bool:
    """Forget a notebook's allocation or queued request; True if there was one."""
    had = state.allocations.pop(notebook, None) is not None
    before = len(state.queue)
    state.queue = [r for r in state.queue if r.notebook != notebook]
    return had or len(state.queue) != before


def drain(state: FleetState, flavors: dict[str, FlavorSpec], now: datetime) -> list[Allocation]:
    """Grant queued requests in order while they fit; each flavor waits behind its head."""
    granted: list[Allocation] = []
    blocked: set[str] = set()
    remaining: list[CapacityRequest] = []
    for req in state.queue:
        flavor = flavors.get(req.flavor)
        if flavor is None or req.flavor in blocked:
            remaining.append(req)
            continue
        alloc = _place(state, req, flavor, now)
        if alloc is None:
            blocked.add(req.flavor)
            remaining.append(req)
        else:
            granted.append(alloc)
    state.queue = remaining
    return granted


def register(state: FleetState, inventory: HostInventory, now: datetime) -> None:
    """A host agent (re)starting: its inventory, up from now. What it holds stays held by
    the notebooks that still run there (an agent restart re-adopts them)."""
    state.hosts[inventory.name] = HostState(inventory=inventory, up=True, last_seen=now)


def heartbeat(state: FleetState, host: str, now: datetime) -> bool:
    """Note a host alive. False when the fleet does not count on it (unknown, or down):
    it must clean up and register again before anything is placed there."""
    h = state.hosts.get(host)
    if h is None or not h.up:
        return False
    h.last_seen = now
    return True


def expire(state: FleetState, now: datetime, down_after_s: float) -> list[str]:
    """Mark down the hosts silent for ``down_after_s``; return their names."""
    gone = []
    for name, h in sorted(state.hosts.items()):
        if h.up and (now - h.last_seen).total_seconds() > down_after_s:
            h.up = False
            h.down_since = now
            gone.append(name)
    return gone


def usage(state: FleetState, flavors: dict[str, FlavorSpec]) -> dict[str, dict[str, int]]:
    """Per flavor: units that could start right now on an up host (largest single fit),
    and requests queued."""
    out: dict[str, dict[str, int]] = {}
    for name, flavor in flavors.items():
        best = 0
        for host, h in state.hosts.items():
            if not h.up or name not in h.inventory.flavors:
                continue
            if flavor.kind == "gpu" and flavor.gpu_model not in (
                None,
                "any",
                h.inventory.gpu_model,
            ):
                continue
            f_cpus, f_mem, f_gpus = free(state, host)
            units = min(
                int((f_cpus + EPS) // flavor.cpu_per_unit) if flavor.cpu_per_unit else 10**6,
                int((f_mem + EPS) // flavor.memory_gib_per_unit)
                if flavor.memory_gib_per_unit
                else 10**6,
                len(f_gpus) if flavor.kind == "gpu" else 10**6,
            )
            best = max(best, units)
        out[name] = {
            "free_units_largest_host": best,
            "queued": sum(1 for r in state.queue if r.flavor == name),
        }
    return out
