"""Scale: N notebooks (default 1,000) RUNNING at once on simulated hosts, with heartbeats,
billing checkpoints and workspace checkpoints on, and what holding them costs.

Reports, over a measured window once all are RUNNING:
  * the CPU the control plane (API, control worker, host agents) and the Temporal server
    used, in cores (CPU-seconds per second);
  * history events per notebook-hour while RUNNING;
  * the ledger's write rate (usage records per second).

Simulated hosts ("sim" runtime) start no container: what runs is Temporal, the workflows,
the fleet, the activities, their heartbeats and the ledger, which is the control plane.

Time is compressed by ``--speedup`` (default 15): the billing and workspace checkpoints
come that many times more often than their defaults (every 60 s instead of 900 s), so a
10-minute window holds 2.5 notebook-hours of checkpoints. Events per notebook-hour are
given at the defaults (measured events / speedup), and are exact because checkpoints are
the only periodic history events of a RUNNING notebook. The CPU is given as measured,
with the checkpoints' work multiplied by the speedup: an upper bound for the defaults.
Heartbeats are not compressed (they add no history events, only server and worker work).

    python bench/scale_bench.py [--notebooks 1000] [--window 600] [--speedup 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack_cpu import Cpu
from domain.messages import Tuning
from worker.stack import Ports, Stack

PROJECT = "scale"
SPEC = {"framework": {"id": "python"}, "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}
HOSTS = 10
TARGET_CORES = 1.0
TARGET_EVENTS_PER_HOUR = 60


def _group(name: str) -> str:
    if name == "temporal":
        return "temporal server"
    if name == "s3":
        return "s3"
    return "control plane"


async def _create_all(api: httpx.AsyncClient, base: str, n: int, concurrency: int) -> list[str]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            for attempt in range(5):
                r = await api.post(base, json={"name": f"s{i}", **SPEC})
                if r.status_code == 201:
                    return r.json()["id"]
                await asyncio.sleep(1 + attempt)
            r.raise_for_status()
            raise RuntimeError(r.text)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _running(stack: Stack) -> int:
    # Counted by visibility, not the list endpoint: a list of 1,000 notebooks reads each
    # one's status, which under this load takes longer than the count itself matters.
    from domain.config import Settings
    from temporal_client.connect import connect

    client = await connect(Settings(temporal_address=stack.temporal_address))
    found = await client.count_workflows(
        f"NotebookProject = '{PROJECT}' AND NotebookState = 'RUNNING' "
        "AND ExecutionStatus = 'Running'"
    )
    return found.count


async def _history_lengths(stack: Stack, ids: list[str]) -> dict[str, int]:
    from domain.config import Settings
    from domain.ids import workflow_id
    from temporal_client.connect import connect

    client = await connect(Settings(temporal_address=stack.temporal_address))
    gate = asyncio.Semaphore(32)

    async def one(nid: str) -> tuple[str, int]:
        async with gate:
            desc = await client.get_workflow_handle(workflow_id(PROJECT, nid)).describe()
            return nid, desc.raw_description.workflow_execution_info.history_length

    return dict(await asyncio.gather(*(one(n) for n in ids)))


def _ledger_rows(stack: Stack) -> int:
    with sqlite3.connect(f"file:{stack.data_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]


async def run(args: argparse.Namespace, stack: Stack) -> dict:
    base = f"/v1/projects/{PROJECT}/notebooks"
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=300) as api:
        began = time.monotonic()
        print(f"creating {args.notebooks} notebooks...", flush=True)
        ids = await _create_all(api, base, args.notebooks, args.concurrency)
        while (n := await _running(stack)) < args.notebooks:
            print(f"  {n} RUNNING", flush=True)
            await asyncio.sleep(5)
        ramp = time.monotonic() - began
        print(
            f"all {args.notebooks} RUNNING after {ramp:.0f} s; settling {args.settle} s", flush=True
        )
        await asyncio.sleep(args.settle)

        cpu0, events0, rows0, t0 = (
            Cpu(stack).per_process(),
            await _history_lengths(stack, ids),
            _ledger_rows(stack),
            time.monotonic(),
        )
        print(f"measuring for {args.window} s...", flush=True)
        await asyncio.sleep(args.window)
        cpu1, rows1, t1 = Cpu(stack).per_process(), _ledger_rows(stack), time.monotonic()
        events1 = await _history_lengths(stack, ids)
        still = await _running(stack)

    window = t1 - t0
    by_group: dict[str, float] = {}
    for name, spent in cpu1.items():
        by_group[_group(name)] = by_group.get(_group(name), 0.0) + spent - cpu0.get(name, 0.0)
    per_process = {name: (cpu1[name] - cpu0.get(name, 0.0)) / window for name in cpu1}
    added = [events1[n] - events0[n] for n in ids]
    notebook_hours = len(ids) * window / 3600
    events_per_hour_measured = sum(added) / notebook_hours
    return {
        "notebooks": len(ids),
        "still_running": still,
        "ramp_s": ramp,
        "window_s": window,
        "speedup": args.speedup,
        "cores": {g: spent / window for g, spent in by_group.items()},
        "cores_by_process": per_process,
        "events_per_notebook_hour_measured": events_per_hour_measured,
        "events_per_notebook_hour_at_defaults": events_per_hour_measured / args.speedup,
        "ledger_writes_per_s_measured": (rows1 - rows0) / window,
        "ledger_writes_per_s_at_defaults": (rows1 - rows0) / window / args.speedup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=int, default=1000)
    parser.add_argument("--window", type=float, default=600, help="seconds measured")
    parser.add_argument("--settle", type=float, default=30, help="seconds before measuring")
    parser.add_argument("--speedup", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.speedup < 1:
        parser.error("--speedup: at least 1")

    per_host = -(-args.notebooks // HOSTS) + 8
    sim = {
        "AINB_HOST_CPUS": str(per_host),
        "AINB_HOST_MEMORY_GIB": str(per_host * 8),
        "AINB_HOST_FLAVORS": '["ai1-1-cpu"]',
    }
    defaults = Tuning()
    with tempfile.TemporaryDirectory(prefix="ainb-scale-bench-") as tmp:
        stack = Stack(
            Path(tmp),
            Ports.random(),
            runtime="sim",
            extra_env={
                **sim,
                "AINB_CHECKPOINT_S": str(defaults.checkpoint_s / args.speedup),
                "AINB_WORKSPACE_CHECKPOINT_S": str(defaults.workspace_checkpoint_s / args.speedup),
                "AINB_ACCESS_LOG": "changes",
            },
            sim_hosts={f"sim-{i}": sim for i in range(1, HOSTS)},
        )
        print(f"starting the embedded stack with {HOSTS} simulated hosts...", flush=True)
        stack.start()
        try:
            figures = asyncio.run(run(args, stack))
        finally:
            stack.stop()

    cores = figures["cores"]
    control, temporal = cores.get("control plane", 0.0), cores.get("temporal server", 0.0)
    print()
    print(
        f"{figures['notebooks']} notebooks RUNNING ({figures['still_running']} at the end), "
        f"window {figures['window_s']:.0f} s, checkpoints {args.speedup:g}x their default rate"
    )
    print(f"{'control plane (API, control worker, host agents)':<52}{control:>8.2f} cores")
    print(f"{'Temporal server':<52}{temporal:>8.2f} cores")
    print(f"{'total':<52}{control + temporal:>8.2f} cores   (target < {TARGET_CORES:g})")
    for name, c in sorted(figures["cores_by_process"].items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {name:<50}{c:>8.3f}")
    print(
        f"history events per notebook-hour at the defaults: "
        f"{figures['events_per_notebook_hour_at_defaults']:.1f}   (target < {TARGET_EVENTS_PER_HOUR})"
    )
    print(
        f"ledger writes: {figures['ledger_writes_per_s_measured']:.2f}/s measured, "
        f"{figures['ledger_writes_per_s_at_defaults']:.2f}/s at the defaults"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
