"""Control-plane benchmark: the embedded stack with 10 simulated hosts.

Measures, for N notebooks (default 200):
  * lifecycle throughput: notebooks per second through create -> RUNNING -> stop -> STOPPED,
    with C notebooks in flight at once (default 20);
  * the control plane's own share of time-to-RUNNING: from the create request until the
    host's runtime is asked to start the container (the simulated runtime logs that
    moment), p50 and p99, one notebook at a time (no queueing behind other notebooks),
    under the concurrent run (closed loop: C clients, each starting its next notebook
    as soon as the last one is STOPPED, which keeps the machine saturated), and at
    fixed arrival rates (open loop, ``--rates``: notebooks are created on a schedule,
    whatever the ones before are doing, as people would create them).

Simulated hosts ("sim" runtime) start no real container, so what is measured is Temporal,
the workflows, the fleet, the activities and the API: the control plane itself.

    python bench/fleet_bench.py [--notebooks 200] [--concurrency 20] [--rates 1,2,3]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.stack import Ports, Stack

HOSTS = 10
PROJECT = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class Bench:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.api = stack.api_client(timeout=120)
        self.base = f"/v1/projects/{PROJECT}/notebooks"

    def starts(self) -> dict[str, float]:
        """When each notebook's runtime was asked to start, across all hosts."""
        out: dict[str, float] = {}
        for log in (self.stack.data_dir / "hosts").glob("*/sim-runtime/starts.jsonl"):
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                out.setdefault(rec["notebook"], rec["at"])
        return out

    def wait(self, nid: str, state: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api.get(f"{self.base}/{nid}")
            if r.status_code == 404 and state == "DELETED":
                return
            if r.status_code == 200 and r.json()["status"]["state"] == state:
                return
            time.sleep(0.25)  # a client polling 4 times a second, as a UI would
        raise TimeoutError(f"{nid} never reached {state}")

    def one(self, i: int) -> tuple[str, float]:
        """A whole life; returns the id and when its create request was sent."""
        sent = time.time()
        r = self.api.post(
            self.base,
            json={
                "name": f"b{i}",
                "framework": {"id": "python"},
                "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            },
        )
        r.raise_for_status()
        nid = r.json()["id"]
        self.wait(nid, "RUNNING")
        self.api.post(f"{self.base}/{nid}/stop").raise_for_status()
        self.wait(nid, "STOPPED")
        return nid, sent

    def run(self, n: int, concurrency: int) -> dict:
        t0 = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            done = list(pool.map(self.one, range(n)))
        return {"concurrency": concurrency, **self._figures(done, time.monotonic() - t0)}

    def run_at_rate(self, n: int, rate: float) -> dict:
        """Open loop: notebook i is created at i / rate seconds, however many are in flight."""
        t0 = time.monotonic()
        lags: list[float] = []
        with ThreadPoolExecutor(256) as pool:
            futures = []
            for i in range(n):
                due = t0 + i / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                lags.append(max(0.0, time.monotonic() - due))
                futures.append(pool.submit(self.one, i))
            done = [f.result() for f in futures]
        return {
            "rate": rate,
            "schedule_lag_max_ms": 1000 * max(lags),
            **self._figures(done, time.monotonic() - t0),
        }

    def _figures(self, done: list[tuple[str, float]], elapsed: float) -> dict:
        """Throughput and the control plane's share of time-to-RUNNING of one run."""
        starts = self.starts()
        overhead = [starts[nid] - sent for nid, sent in done if nid in starts]
        by_id = {nid: starts[nid] - sent for nid, sent in done if nid in starts}
        self.slowest = max(by_id, key=by_id.__getitem__) if by_id else None
        return {
            "notebooks": len(done),
            "seconds": elapsed,
            "notebooks_per_s": len(done) / elapsed,
            "overhead_p50_ms": 1000 * _percentile(overhead, 50),
            "overhead_p99_ms": 1000 * _percentile(overhead, 99),
            "overhead_mean_ms": 1000 * statistics.fmean(overhead) if overhead else float("nan"),
            "overhead_ms": sorted(round(1000 * o) for o in overhead),
        }

    def explain(self, nid: str) -> list[str]:
        """The slowest notebook's history up to its launch: where its time went."""
        import asyncio

        from domain.config import Settings
        from domain.ids import workflow_id
        from temporal_client.connect import connect

        async def history() -> list[str]:
            client = await connect(Settings(temporal_address=self.stack.temporal_address))
            events = [
                e
                async for e in client.get_workflow_handle(
                    workflow_id(PROJECT, nid)
                ).fetch_history_events()
            ]
            t0 = events[0].event_time.ToDatetime()
            lines = []
            for e in events:
                at = (e.event_time.ToDatetime() - t0).total_seconds() * 1000
                name = e.WhichOneof("attributes") or ""
                lines.append(f"{at:8.0f} ms  {name.removesuffix('_event_attributes')}")
                if "activity_task_started" in name and len(lines) > 12:
                    break
            return lines

        return asyncio.run(history())

    def cleanup(self) -> None:
        ids = [n["id"] for n in self.api.get(self.base).json()]
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda i: self.api.delete(f"{self.base}/{i}"), ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=50, help="notebooks one at a time")
    parser.add_argument(
        "--rates",
        default="1,2,3",
        help="open-loop runs: notebooks created per second (comma-separated; empty: none)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates: not a comma-separated list of numbers: {args.rates!r}")
    if any(r <= 0 for r in rates):
        parser.error("--rates: every rate must be above 0")

    sim = {
        "AINB_HOST_CPUS": "64",
        "AINB_HOST_MEMORY_GIB": "256",
        "AINB_HOST_FLAVORS": '["ai1-1-cpu"]',
    }
    with tempfile.TemporaryDirectory(prefix="ainb-fleet-bench-") as tmp:
        stack = Stack(
            Path(tmp),
            Ports.random(),
            runtime="sim",
            extra_env={
                **sim,
                "AINB_WORKSPACE_CHECKPOINT_S": "0",
            },
            sim_hosts={f"sim-{i}": sim for i in range(1, HOSTS)},
        )
        print(f"starting the embedded stack with {HOSTS} simulated hosts...", flush=True)
        stack.start()
        try:
            bench = Bench(stack)
            bench.run(10, 5)  # warm up: connections, caches, workflow code
            bench.cleanup()
            print(f"{args.sequential} notebooks one at a time...", flush=True)
            sequential = bench.run(args.sequential, 1)
            bench.cleanup()
            print(f"{args.notebooks} notebooks, {args.concurrency} in flight...", flush=True)
            concurrent = bench.run(args.notebooks, args.concurrency)
            if bench.slowest:
                print(f"the slowest of them ({bench.slowest}), from its workflow's start:")
                print("\n".join(bench.explain(bench.slowest)))
            bench.cleanup()
            open_loop = []
            for rate in rates:
                print(f"{args.notebooks} notebooks created at {rate:g}/s...", flush=True)
                open_loop.append(bench.run_at_rate(args.notebooks, rate))
                bench.cleanup()
        finally:
            stack.stop()

    print()
    print(f"{'run':<28}{'nb/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    rows = [("one at a time", sequential), (f"{args.concurrency} in flight", concurrent)]
    rows += [(f"created at {r['rate']:g}/s", r) for r in open_loop]
    for name, r in rows:
        print(
            f"{name:<28}{r['notebooks_per_s']:>8.2f}{r['overhead_p50_ms']:>9.0f}"
            f"{r['overhead_p99_ms']:>9.0f}{r['overhead_mean_ms']:>9.0f}"
        )
    for r in open_loop:
        if r["schedule_lag_max_ms"] > 100:
            print(
                f"note: at {r['rate']:g}/s creates left up to {r['schedule_lag_max_ms']:.0f} ms "
                "late (the load generator fell behind)"
            )
    print("\ntargets: control-plane share of time-to-RUNNING p50 < 300 ms, p99 < 1000 ms")
    if args.json:
        args.json.write_text(
            json.dumps({"sequential": sequential, "concurrent": concurrent, "open_loop": open_loop})
        )


if __name__ == "__main__":
    main()
