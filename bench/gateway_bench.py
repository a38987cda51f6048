"""Gateway benchmark: what the notebook's own origin costs over reaching the editor directly.

On the embedded stack with the Docker runtime, one JupyterLab notebook, measured side by
side in one run, with the same client code on both paths:
The paths take turns in blocks, so that a slow moment of the machine falls on all alike.
  * HTTP: N sequential `GET /api/status` (token header), directly at the editor's Unix
    socket (as root on its host: what only the host agent can do) and through the gateway
    (API → the host agent's tunnel → the socket): p50, p99 and requests per second;
  * WebSocket: M sequential `1+1` executions in one kernel over its channels, opened
    directly on the socket, through the host agent's tunnel alone, and through the
    gateway: p50 and p99 of the round trip.
Prints each figure and the ratio gateway/direct.

    python bench/gateway_bench.py [--requests 500] [--executions 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from websockets.sync.client import connect as ws_connect
from websockets.sync.client import unix_connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.tunnel import check_answer, connect_request
from domain.tokens import tunnel_token
from worker.stack import Ports, Stack

PROJECT = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


BLOCKS = 10  # the paths take turns, a tenth of each path's requests at a time


def _figures(times: list[float], busy_s: float | None = None) -> dict:
    figures = {"p50_ms": 1000 * _percentile(times, 50), "p99_ms": 1000 * _percentile(times, 99)}
    if busy_s is not None:
        figures["per_s"] = len(times) / busy_s
    return figures


def _http(clients: dict[str, httpx.Client], n: int) -> dict:
    """Sequential GETs on each path, the paths interleaved in blocks so that a slow
    moment of the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    busy = dict.fromkeys(clients, 0.0)
    for client in clients.values():
        client.get("/api/status").raise_for_status()  # warm the connection
    for _ in range(BLOCKS):
        for name, client in clients.items():
            began = time.perf_counter()
            for _ in range(n // BLOCKS):
                t = time.perf_counter()
                client.get("/api/status").raise_for_status()
                times[name].append(time.perf_counter() - t)
            busy[name] += time.perf_counter() - began
    return {f"http_{name}": _figures(times[name], busy[name]) for name in clients}


def _execute(ws, code: str) -> None:
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "bench",
                    "session": "bench",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False},
                "channel": "shell",
            }
        )
    )
    while True:
        msg = json.loads(ws.recv(timeout=30))
        if msg.get("msg_type") == "execute_reply" and msg["parent_header"]["msg_id"] == msg_id:
            assert msg["content"]["status"] == "ok", msg
            return


def _kernel(openers: dict, n: int) -> dict:
    """Sequential `1+1` on each path's own channels to one kernel, interleaved in blocks."""
    times: dict[str, list[float]] = {name: [] for name in openers}
    sockets = {name: open_ws() for name, open_ws in openers.items()}
    try:
        for ws in sockets.values():
            _execute(ws, "1+1")  # the kernel is up and the channels open
        for _ in range(BLOCKS):
            for name, ws in sockets.items():
                for _ in range(n // BLOCKS):
                    t = time.perf_counter()
                    _execute(ws, "1+1")
                    times[name].append(time.perf_counter() - t)
    finally:
        for ws in sockets.values():
            ws.close()
    return {f"kernel_{name}": _figures(times[name]) for name in openers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    stack = Stack(Path(tempfile.mkdtemp(prefix="ainb-gw-bench-")), Ports.random(), runtime="docker")
    stack.start()
    api = stack.api_client(timeout=120)
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
        origin = url.removesuffix("/lab")
        host = urlsplit(origin).netloc
        sock = nb["status"]["endpoint"].removeprefix("unix:")
        auth = {"Authorization": f"token {token}"}
        # *.localhost is loopback, as for a browser; the Host names the notebook's origin.
        gateway = httpx.Client(base_url=f"http://127.0.0.1:{urlsplit(origin).port}",
                               headers={**auth, "Host": host}, timeout=30)  # fmt: skip
        direct = httpx.Client(
            transport=httpx.HTTPTransport(uds=sock),
            base_url=f"http://{host}",
            headers=auth,
            timeout=30,
        )
        kernel = gateway.post("/api/kernels", json={"name": "python3"})
        kernel.raise_for_status()
        channels = f"/api/kernels/{kernel.json()['id']}/channels?token={token}"

        def ws_direct():
            return unix_connect(sock, f"ws://{host}{channels}", origin=origin)

        fleet = api.get("/v1/hosts").json()
        [agent] = [h for h in fleet["hosts"] if h["name"] == nb["status"]["host"]]
        t_host, _, t_port = agent["inventory"]["editor_tunnel"].rpartition(":")
        t_token = tunnel_token(stack.secrets["token_secret"])

        def ws_tunnel():
            """The host agent's tunnel alone, as the gateway opens it."""
            conn = socket.create_connection((t_host, int(t_port)))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(connect_request(nid, t_token))
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            check_answer(head, nid)
            return ws_connect(f"ws://{host}{channels}", sock=conn, origin=origin)

        def ws_gateway():
            port = urlsplit(origin).port
            conn = socket.create_connection(("127.0.0.1", port))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as a browser does
            return ws_connect(f"ws://{host}{channels}", sock=conn, origin=origin)

        try:
            results = {
                **_http({"direct": direct, "gateway": gateway}, args.requests),
                **_kernel(
                    {"direct": ws_direct, "tunnel": ws_tunnel, "gateway": ws_gateway},
                    args.executions,
                ),
            }
        finally:
            gateway.close()
            direct.close()
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
