"""Gateway benchmark: what the stable address costs over reaching the editor directly.

On the embedded stack with the Docker runtime, one JupyterLab notebook, measured side by
side in one run:
  * HTTP: N sequential `GET api/status` (token header), directly at the editor's port and
    through the gateway: p50, p99 and requests per second;
  * WebSocket: M sequential `1+1` executions in one kernel over its channels, opened
    directly and through the gateway: p50 and p99 of the round trip.
Prints each figure and the ratio gateway/direct.

    python bench/gateway_bench.py [--requests 500] [--executions 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
from jupyter_kernel_client import JupyterKernelClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.stack import Ports, Stack

PROJECT = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _http(root: str, token: str, n: int) -> dict:
    times = []
    with httpx.Client(headers={"Authorization": f"token {token}"}, timeout=30) as client:
        client.get(root + "api/status").raise_for_status()  # warm the connection
        began = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            client.get(root + "api/status").raise_for_status()
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - began
    return {
        "p50_ms": 1000 * _percentile(times, 50),
        "p99_ms": 1000 * _percentile(times, 99),
        "per_s": n / total,
    }


def _kernel(root: str, token: str, n: int) -> dict:
    times = []
    with JupyterKernelClient(server_url=root.rstrip("/"), token=token) as kernel:
        kernel.execute("1+1")  # the kernel is up and the channels open
        for _ in range(n):
            t = time.perf_counter()
            reply = kernel.execute("1+1")
            times.append(time.perf_counter() - t)
            assert reply["status"] == "ok"
    return {"p50_ms": 1000 * _percentile(times, 50), "p99_ms": 1000 * _percentile(times, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    stack = Stack(Path(tempfile.mkdtemp(prefix="ainb-gw-bench-")), Ports.random(), runtime="docker")
    stack.start()
    api = httpx.Client(base_url=stack.api_url, timeout=120)
    base = f"/v1/projects/{PROJECT}/notebooks"
    nid = None
    try:
        r = api.post(
            base,
            json={
                "name": "bench",
                "framework": {"id": "python"},
                "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            },
        )
        r.raise_for_status()
        nid = r.json()["id"]
        deadline = time.monotonic() + 180
        while (nb := api.get(f"{base}/{nid}").json())["status"]["state"] != "RUNNING":
            assert time.monotonic() < deadline, nb["status"]
            time.sleep(0.3)
        url, _, query = nb["status"]["url"].partition("?")
        token = parse_qs(query)["token"][0]
        gateway = url.removesuffix("lab")
        direct = nb["status"]["endpoint"].removesuffix("lab")

        results = {
            "http_direct": _http(direct, token, args.requests),
            "http_gateway": _http(gateway, token, args.requests),
            "kernel_direct": _kernel(direct, token, args.executions),
            "kernel_gateway": _kernel(gateway, token, args.executions),
        }
    finally:
        if nid:
            api.delete(f"{base}/{nid}")
            deadline = time.monotonic() + 120
            while api.get(f"{base}/{nid}").status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.5)
        stack.stop()

    print(f"\n{'path':<18}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for name, r in results.items():
        rate = f"{r['per_s']:>9.0f}" if "per_s" in r else f"{'':>9}"
        print(f"{name:<18}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{rate}")
    for kind in ("http", "kernel"):
        d, g = results[f"{kind}_direct"], results[f"{kind}_gateway"]
        print(
            f"{kind}: gateway/direct p50 {g['p50_ms'] / d['p50_ms']:.2f}x, "
            f"p99 {g['p99_ms'] / d['p99_ms']:.2f}x, "
            f"added p50 {g['p50_ms'] - d['p50_ms']:.2f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
