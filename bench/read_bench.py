"""Read benchmark: what status reads cost the platform, and whether they slow starts.

On the embedded stack with simulated hosts (runtime "sim": no container, so what is
measured is the control plane itself):
  * reads: ``--rate`` GETs per second (default 1,000), open loop, spread over ``--notebooks``
    RUNNING notebooks (default 100), for ``--seconds`` (default 60), while 10 notebooks
    are started at once; the GETs' p50/p99 (from when each was due) and the CPU-seconds
    every platform process (Temporal, API, control worker, host agents; psutil) used per
    GET, less what the platform uses with nobody reading (measured just before);
  * the peer: the same notebooks read the way a GET read them before the status cache
    (a workflow query and a describe per read, through the Temporal client), at a tenth
    of the rate, for its CPU per read;
  * starts: 10 notebooks started at once, time to RUNNING (seen through the long poll),
    without reads and during the reads: the ratio of the two makespans.

    python bench/read_bench.py [--notebooks 100] [--rate 1000] [--seconds 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack_cpu import Cpu
from domain.config import Settings
from domain.ids import workflow_id
from temporal_client import notebook_calls
from temporal_client.connect import connect
from worker.stack import Ports, Stack

PROJECT = "bench"
SPEC = {"framework": {"id": "python"}, "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}
HOSTS = 4
CONNECTIONS = 32


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


async def _create(api: httpx.AsyncClient, base: str, name: str) -> str:
    r = await api.post(base, json={"name": name, **SPEC})
    r.raise_for_status()
    return r.json()["id"]


async def _until(api: httpx.AsyncClient, base: str, nid: str, state: str) -> dict:
    nb = (await api.get(f"{base}/{nid}")).json()
    while nb["status"]["state"] != state:
        r = await api.get(
            f"{base}/{nid}", params={"wait_for_change": nb["status"]["version"], "timeout_s": 25}
        )
        r.raise_for_status()
        nb = r.json()
    return nb


async def _starts(api: httpx.AsyncClient, base: str, tag: str, n: int = 10) -> list[float]:
    """n created at once: seconds from each create until it is RUNNING."""

    async def one(i: int) -> float:
        began = time.perf_counter()
        nid = await _create(api, base, f"{tag}-{i}")
        await _until(api, base, nid, "RUNNING")
        took = time.perf_counter() - began
        await api.delete(f"{base}/{nid}")
        return took

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _reads(
    stack: Stack, base: str, ids: list[str], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Open loop: ``rate`` GETs a second, round-robin over ``ids``; latencies (from when
    each GET was due, so a backlog counts), errors. A lean HTTP/1.1 client on keep-alive
    connections, like wrk: the load generator shares the machine's two cores with the
    platform, and httpx would take more of them than the API does."""
    host, port = "127.0.0.1", stack.ports.api
    auth = f"Authorization: Bearer {stack.admin_token}\r\n"
    requests = [
        f"GET {base}/{nid} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode() for nid in ids
    ]
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    errors = 0

    async def one(request: bytes, due: float) -> None:
        nonlocal errors
        reader, writer = await idle.get()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        finally:
            idle.put_nowait((reader, writer))

    pending: set[asyncio.Task[None]] = set()
    tick = 0.005
    began = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - began < seconds:
        while sent < (now - began) * rate:
            due = began + sent / rate
            task = asyncio.create_task(one(requests[sent % len(requests)], due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(tick)
    if pending:
        await asyncio.gather(*pending)
    while not idle.empty():
        _, writer = idle.get_nowait()
        writer.close()
    return latencies, errors


async def _peer(stack: Stack, ids: list[str], rate: float, seconds: float) -> int:
    """What a GET did before the cache: a query and a describe per read."""
    client = await connect(Settings(temporal_address=stack.temporal_address))
    done = 0
    began = time.perf_counter()
    gate = asyncio.Semaphore(32)

    async def one(nid: str) -> None:
        nonlocal done
        async with gate:
            handle = client.get_workflow_handle(workflow_id(PROJECT, nid))
            await asyncio.gather(handle.describe(), notebook_calls.get(handle))
            done += 1

    tasks = []
    i = 0
    while time.perf_counter() - began < seconds:
        tasks.append(asyncio.create_task(one(ids[i % len(ids)])))
        i += 1
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    return done


async def run(stack: Stack, args: argparse.Namespace) -> dict:
    base = f"/v1/projects/{PROJECT}/notebooks"
    headers = {"authorization": f"Bearer {stack.admin_token}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers=headers, timeout=60, limits=limits
    ) as api:
        print(f"creating {args.notebooks} notebooks...", flush=True)
        gate = asyncio.Semaphore(10)

        async def made(i: int) -> str:
            async with gate:
                nid = await _create(api, base, f"r{i}")
                await _until(api, base, nid, "RUNNING")
                return nid

        ids = list(await asyncio.gather(*(made(i) for i in range(args.notebooks))))
        for nid in ids:  # every notebook read once, so that each has its watcher
            (await api.get(f"{base}/{nid}")).raise_for_status()
        await asyncio.sleep(2)

        print("10 starts at once, no reads...", flush=True)
        quiet = await _starts(api, base, "quiet")

        print(
            f"{args.rate:.0f} GETs/s for {args.seconds:.0f} s, 10 starts meanwhile...", flush=True
        )
        cpu = Cpu(stack)
        # What the platform costs with nobody reading (heartbeats of 100 RUNNING
        # notebooks, the hosts', the watchers' idle long polls): taken off the reads' bill.
        idle_s = min(15.0, args.seconds / 4)
        idle_before = cpu.total()
        await asyncio.sleep(idle_s)
        idle_rate = (cpu.total() - idle_before) / idle_s
        before = cpu.per_process()
        me = psutil.Process()
        mine = me.cpu_times()
        reads = asyncio.create_task(_reads(stack, base, ids, args.rate, args.seconds))
        await asyncio.sleep(min(5.0, args.seconds / 4))
        loaded = await _starts(api, base, "loaded")
        latencies, errors = await reads
        after = cpu.per_process()
        spent = me.cpu_times()
        generator = (spent.user + spent.system) - (mine.user + mine.system)
        used = {k: after[k] - before.get(k, 0.0) for k in after}

        print("the peer: a query and a describe per read...", flush=True)
        peer_rate = max(1.0, args.rate / 10)
        peer_seconds = min(20.0, args.seconds)
        before_peer = cpu.total()
        peer_reads = await _peer(stack, ids, peer_rate, peer_seconds)
        peer_cpu = cpu.total() - before_peer

    # the starts' own work is in `used` too: the bound below is an upper one
    cpu_per_get = (sum(used.values()) - idle_rate * args.seconds) / max(1, len(latencies))
    peer_per_read = peer_cpu / max(1, peer_reads)
    result = {
        "notebooks": args.notebooks,
        "rate": args.rate,
        "seconds": args.seconds,
        "gets": len(latencies),
        "get_errors": errors,
        "get_p50_ms": _pct(latencies, 50) * 1000,
        "get_p99_ms": _pct(latencies, 99) * 1000,
        "cpu_s_by_process": used,
        "load_generator_cpu_s": generator,
        "idle_platform_cpu_s_per_s": idle_rate,
        "cpu_ms_per_get": cpu_per_get * 1000,
        "peer_reads": peer_reads,
        "peer_cpu_ms_per_read": peer_per_read * 1000,
        "cpu_ratio_get_vs_query": cpu_per_get / peer_per_read if peer_per_read else None,
        "starts_quiet_s": quiet,
        "starts_loaded_s": loaded,
        "start_median_ratio": statistics.median(loaded) / statistics.median(quiet),
        "start_makespan_ratio": max(loaded) / max(quiet),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sim = {
        "AINB_HOST_CPUS": "64",
        "AINB_HOST_MEMORY_GIB": "256",
        "AINB_HOST_FLAVORS": '["ai1-1-cpu"]',
    }
    with tempfile.TemporaryDirectory(prefix="ainb-read-bench-") as tmp:
        stack = Stack(
            Path(tmp),
            Ports.random(),
            runtime="sim",
            extra_env={**sim, "AINB_WORKSPACE_CHECKPOINT_S": "0"},
            sim_hosts={f"sim-{i}": sim for i in range(1, HOSTS)},
        )
        print(f"starting the embedded stack with {HOSTS} simulated hosts...", flush=True)
        stack.start()
        try:
            result = asyncio.run(run(stack, args))
        finally:
            stack.stop()
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_s_by_process"}, indent=1))
    print("CPU-seconds by process during the reads:")
    for name, used in sorted(result["cpu_s_by_process"].items(), key=lambda kv: -kv[1]):
        print(f"  {used:7.2f}  {name}")
    print(
        f"idle platform: {result['idle_platform_cpu_s_per_s']:.2f} CPU-s/s; load generator: "
        f"{result['load_generator_cpu_s']:.1f} CPU-s"
    )
    print(
        f"GET: p50 {result['get_p50_ms']:.1f} ms, p99 {result['get_p99_ms']:.1f} ms; "
        f"{result['cpu_ms_per_get']:.2f} ms of platform CPU per GET, against "
        f"{result['peer_cpu_ms_per_read']:.2f} ms per query+describe "
        f"(ratio {result['cpu_ratio_get_vs_query']:.3f}); starts under reads: median x"
        f"{result['start_median_ratio']:.2f}, makespan x{result['start_makespan_ratio']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
