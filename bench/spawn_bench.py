"""Spawn benchmark: time until a JupyterLab notebook answers, ainb against a bare `docker run`.

On the embedded stack with the Docker runtime, N rounds, interleaved, same image and the
same isolation on both sides (network `none`, uid 1000, no capability, the editor on a
Unix socket):
  * bare: `docker run -d ...` of the image, until `GET /api/status` over its socket
    answers 200 (polled every 50 ms), then the container is removed;
  * ainb: `POST` a notebook, until `GET /api/status` through its `status.url` (the
    gateway, the host agent's tunnel) answers 200 (polled every 50 ms, the URL read from
    the notebook's GET, polled every 50 ms too), then the notebook is deleted.
Prints the medians and the ratio ainb/bare.

    python bench/spawn_bench.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activities.runtime import editor_socket
from domain.config import JUPYTERLAB_IMAGE
from worker.stack import Ports, Stack

PROJECT = "bench"
POLL_S = 0.05


def bare(image: str, workdir: Path) -> float:
    """Seconds from `docker run` until the editor answers on its socket."""
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
            time.sleep(POLL_S)  # 403: it answers, and wants the token
        return time.perf_counter() - began
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
        shutil.rmtree(workdir)


def ainb(api: httpx.Client, api_port: int) -> tuple[float, float]:
    """Seconds from POST until RUNNING, and until the editor answers through status.url."""
    base = f"/v1/projects/{PROJECT}/notebooks"
    began = time.perf_counter()
    r = api.post(
        base,
        json={"name": "b", "framework": {"id": "python"},
              "resources": {"flavor": "ai1-1-cpu", "cpu": 1}},
    )  # fmt: skip
    r.raise_for_status()
    nid = r.json()["id"]
    running = None
    try:
        while (nb := api.get(f"{base}/{nid}").json())["status"]["state"] != "RUNNING":
            assert nb["status"]["state"] == "STARTING", nb["status"]
            time.sleep(POLL_S)
        running = time.perf_counter() - began
        url = urlsplit(nb["status"]["url"])
        # *.localhost is loopback (as for a browser); the Host names the notebook's origin.
        status = f"http://127.0.0.1:{api_port}/api/status?{url.query}"
        with httpx.Client(headers={"Host": url.netloc}, timeout=30) as browser:
            while browser.get(status).status_code != 200:
                time.sleep(POLL_S)
        return running, time.perf_counter() - began
    finally:
        api.delete(f"{base}/{nid}")
        while api.get(f"{base}/{nid}").status_code != 404:
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", default=JUPYTERLAB_IMAGE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    stack = Stack(Path(tempfile.mkdtemp(prefix="ainb-spawn-bench-")), Ports.random(),
                  runtime="docker")  # fmt: skip
    stack.start()
    results: dict[str, list[float]] = {"bare": [], "ainb_running": [], "ainb_answers": []}
    try:
        with stack.api_client(timeout=120) as api:
            ainb(api, stack.ports.api)  # warm: first pulls of the workspace bucket etc.
            bare(args.image, Path(tempfile.mkdtemp(prefix="ainb-bare-")) / "nb")
            for i in range(args.rounds):
                # Interleaved, alternating who goes first.
                order = ("bare", "ainb") if i % 2 == 0 else ("ainb", "bare")
                for who in order:
                    if who == "bare":
                        workdir = Path(tempfile.mkdtemp(prefix="ainb-bare-")) / "nb"
                        results["bare"].append(bare(args.image, workdir))
                    else:
                        running, answers = ainb(api, stack.ports.api)
                        results["ainb_running"].append(running)
                        results["ainb_answers"].append(answers)
                print(
                    f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items())
                )
    finally:
        stack.stop()

    medians = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{'path':<16}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, values in results.items():
        print(f"{name:<16}{medians[name]:>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
    print(
        f"ainb/bare: RUNNING {medians['ainb_running'] / medians['bare']:.2f}x, "
        f"answering through status.url {medians['ainb_answers'] / medians['bare']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
