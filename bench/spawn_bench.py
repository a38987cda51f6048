"""Spawn benchmark: time until a JupyterLab notebook answers, ainb against a bare `docker run`.

On the embedded stack with the Docker runtime, same image and the same isolation and
limits on both sides (network `none`, uid 1000, no capability, 1 CPU, 4 GiB, the editor on
a Unix socket), clients polling every 50 ms:
  * bare: `docker run -d ...` of the image, until `GET /api/status` over its socket
    answers (403: it serves, and wants the token), then the container is removed;
  * ainb: `POST` a notebook, until `GET /api/status` through its `status.url` (the
    gateway, the host agent's tunnel) answers 200, the URL read from the notebook's GET
    (also polled every 50 ms); the notebooks are deleted afterwards, untimed.
Two stacks, one after the other: *cold* (no warm pool), then *warm* (a warm pool of
`--concurrency` editors per host, full before each measurement: "with a warm editor
available"). For each: `--rounds` sequential rounds interleaved with bare ones, then
`--concurrency` starts at once (makespan: from the first POST until the last answers),
against as many bare `docker run`s at once. Platform CPU: the CPU-seconds the stack's own
processes (Temporal, SeaweedFS, control worker, API, host agent, with their children)
used during the concurrent starts, per start (psutil); the editors' own CPU is in their
containers on both sides and is not counted.

Then the peer, JupyterHub 6 + DockerSpawner 14 on the same image (bench/hub_peer.py; its
CPU is the hub process's), measured the same way.

    python bench/spawn_bench.py [--rounds 6] [--concurrency 10] [--only cold|warm|hub]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import docker
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activities.paths import host_dir
from activities.runtime import editor_socket
from activities.runtime.docker_runtime import POOL_LABEL
from activities.runtime.warm_pool import SLOT_PREFIX
from domain.config import JUPYTERLAB_IMAGE
from worker.stack import Ports, Stack, free_port

PROJECT = "bench"
POLL_S = 0.05


def bare(image: str) -> float:
    """Seconds from `docker run` until the editor answers on its socket."""
    workdir = Path(tempfile.mkdtemp(prefix="ainb-bare-")) / "nb"
    run, workspace = workdir / "run", workdir / "workspace"
    for d in (run, workspace):
        d.mkdir(parents=True, mode=0o700)
        os.chown(d, 1000, 1000)
    name = f"ainb-bench-bare-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", "none", "--user", "1000:1000",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--cpus", "1",
         "--memory", "4g", "--pids-limit", "4096",
         "-e", "AINB_EDITOR_SOCKET=/run/ainb/editor.sock", "-e", "AINB_EDITOR_TOKEN=bench",
         "-e", "AINB_BASE_URL=/", "-v", f"{run}:/run/ainb", "-v", f"{workspace}:/workspace",
         image],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        while editor_socket.probe(run / "editor.sock", "/api/status") != 403:
            time.sleep(POLL_S)
        return time.perf_counter() - began
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
        shutil.rmtree(workdir.parent)


def ainb(api: httpx.Client, api_port: int) -> tuple[str, float, float]:
    """(id, seconds from POST until RUNNING, until the editor answers through status.url)."""
    base = f"/v1/projects/{PROJECT}/notebooks"
    began = time.perf_counter()
    r = api.post(
        base,
        json={"name": "b", "framework": {"id": "python"},
              "resources": {"flavor": "ai1-1-cpu", "cpu": 1}},
    )  # fmt: skip
    r.raise_for_status()
    nid = r.json()["id"]
    while (nb := api.get(f"{base}/{nid}").json())["status"]["state"] != "RUNNING":
        assert nb["status"]["state"] == "STARTING", nb["status"]
        time.sleep(POLL_S)
    running = time.perf_counter() - began
    url = urlsplit(nb["status"]["url"])
    # *.localhost is loopback (as for a browser); the Host names the notebook's origin.
    status = f"http://127.0.0.1:{api_port}/api/status?{url.query}"
    while browser().get(status, headers={"Host": url.netloc}).status_code != 200:
        time.sleep(POLL_S)
    return nid, running, time.perf_counter() - began


@functools.cache
def browser() -> httpx.Client:
    """The clients' "browser", made once: making an httpx client takes ~35 ms (its TLS
    context), which no path should be charged for; a browser is already running."""
    return httpx.Client(timeout=30)


def delete(api: httpx.Client, nids: list[str]) -> None:
    base = f"/v1/projects/{PROJECT}/notebooks"
    for nid in nids:
        api.delete(f"{base}/{nid}")
    for nid in nids:
        while api.get(f"{base}/{nid}").status_code != 404:
            time.sleep(0.2)


def at_once(fn, n: int) -> tuple[float, list]:
    """Makespan of n calls of fn started together, and their results."""
    with ThreadPoolExecutor(n) as pool:
        began = time.perf_counter()
        results = list(pool.map(lambda _: fn(), range(n)))
    return time.perf_counter() - began, results


def cpu_seconds(stack: Stack) -> dict[str, float]:
    return {name: _tree_cpu(proc.pid) for name, proc in stack.procs.items()}


def wait_pool_full(stack: Stack, size: int, client: docker.DockerClient) -> None:
    root = host_dir(stack.data_dir, stack.host_name) / "pool"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        slots = [
            c.name.removeprefix(SLOT_PREFIX)
            for c in client.containers.list(filters={"label": POOL_LABEL})
            if c.name.startswith(SLOT_PREFIX)
        ]
        if sum((root / s / "run" / "editor.sock").exists() for s in slots) >= size:
            time.sleep(1.0)  # let the last editor settle, as a pool that has waited would
            return
        time.sleep(0.5)
    raise TimeoutError("the warm pool did not fill")


def measure(kind: str, pool: int, args, out: dict) -> None:
    stack = Stack(
        Path(tempfile.mkdtemp(prefix=f"ainb-spawn-bench-{kind}-")),
        Ports.random(),
        runtime="docker",
        config_overrides={"warm_pool": {args.image: pool}} if pool else {},
    )
    client = docker.from_env()
    stack.start()
    seq: dict[str, list[float]] = {"bare": [], f"{kind}_running": [], f"{kind}_answers": []}
    try:
        with stack.api_client(timeout=120) as api:
            ready = (lambda: wait_pool_full(stack, pool, client)) if pool else (lambda: None)
            ready()
            delete(api, [ainb(api, stack.ports.api)[0]])  # warm-up: buckets, images, caches
            bare(args.image)
            for i in range(args.rounds):
                order = ("bare", "ainb") if i % 2 == 0 else ("ainb", "bare")
                for who in order:
                    if who == "bare":
                        seq["bare"].append(bare(args.image))
                    else:
                        ready()
                        nid, running, answers = ainb(api, stack.ports.api)
                        seq[f"{kind}_running"].append(running)
                        seq[f"{kind}_answers"].append(answers)
                        delete(api, [nid])
                print(
                    f"{kind} round {i + 1}: "
                    + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seq.items())
                )
            n = args.concurrency
            bare_makespan, _ = at_once(lambda: bare(args.image), n)
            ready()
            before = cpu_seconds(stack)
            makespan, results = at_once(lambda: ainb(api, stack.ports.api), n)
            after = cpu_seconds(stack)
            delete(api, [r[0] for r in results])
    finally:
        stack.stop()
    cpu = {name: after[name] - before.get(name, 0.0) for name in after}
    out[kind] = {
        "sequential": seq,
        "medians": {k: statistics.median(v) for k, v in seq.items()},
        "concurrent": {"n": n, "bare_makespan": bare_makespan, "makespan": makespan,
                       "answers": sorted(r[2] for r in results)},
        "cpu_s": cpu,
        "cpu_s_per_start": sum(cpu.values()) / n,
    }  # fmt: skip
    print(
        f"{kind}: {n} at once {makespan:.1f}s against {n} bare {bare_makespan:.1f}s; platform "
        f"CPU {sum(cpu.values()):.1f}s ({', '.join(f'{k} {v:.1f}' for k, v in cpu.items())})"
    )


def measure_hub(args, out: dict) -> None:
    """The peer: JupyterHub 6 + DockerSpawner 14 on the same image (bench/hub_peer.py)."""
    from bench.hub_peer import Hub

    root = Path(tempfile.gettempdir()) / "ainb-spawn-bench-hub"
    root.mkdir(exist_ok=True)
    hub = Hub(args.image, root, free_port)
    seq: dict[str, list[float]] = {"bare": [], "hub_answers": []}
    try:
        hub.stop(hub.spawn()[0])  # warm-up
        for i in range(args.rounds):
            order = ("bare", "hub") if i % 2 == 0 else ("hub", "bare")
            for who in order:
                if who == "bare":
                    seq["bare"].append(bare(args.image))
                else:
                    user, answers = hub.spawn()
                    seq["hub_answers"].append(answers)
                    hub.stop(user)
            print(f"hub round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seq.items()))
        n = args.concurrency
        bare_makespan, _ = at_once(lambda: bare(args.image), n)
        before = _tree_cpu(hub.proc.pid)
        makespan, results = at_once(hub.spawn, n)
        cpu = _tree_cpu(hub.proc.pid) - before
        for user, _ in results:
            hub.stop(user)
    finally:
        hub.close()
    out["hub"] = {
        "sequential": seq,
        "medians": {k: statistics.median(v) for k, v in seq.items()},
        "concurrent": {"n": n, "bare_makespan": bare_makespan, "makespan": makespan,
                       "answers": sorted(r[1] for r in results)},
        "cpu_s": {"jupyterhub": cpu},
        "cpu_s_per_start": cpu / n,
    }  # fmt: skip
    print(f"hub: {n} at once {makespan:.1f}s against {n} bare {bare_makespan:.1f}s; CPU {cpu:.1f}s")


def _tree_cpu(pid: int) -> float:
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--image", default=JUPYTERLAB_IMAGE)
    parser.add_argument("--only", choices=["cold", "warm", "hub"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    out: dict = {}
    if args.only in (None, "cold"):
        measure("cold", 0, args, out)
    if args.only in (None, "warm"):
        measure("warm", args.concurrency, args, out)
    if args.only in (None, "hub"):
        measure_hub(args, out)

    print(f"\n{'path':<16}{'median s':>10}{'min s':>8}{'max s':>8}")
    for kind in out.values():
        for name, values in kind["sequential"].items():
            print(
                f"{name:<16}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}"
            )
    for name, kind in out.items():
        m, c = kind["medians"], kind["concurrent"]
        running = m.get(f"{name}_running")
        to_running = f"{running / m['bare']:.2f}x" if running else "-"
        print(
            f"{name}/bare: sequential to RUNNING {to_running}, "
            f"answering {m[f'{name}_answers'] / m['bare']:.2f}x; {c['n']} at once "
            f"{c['makespan'] / c['bare_makespan']:.2f}x; platform CPU per start "
            f"{kind['cpu_s_per_start']:.2f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
