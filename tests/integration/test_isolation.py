"""A notebook runs hostile code: from a shell inside a RUNNING notebook of each editor, the
way its user (or an attacker) would try, it reaches no platform process and no other
notebook, and runs unprivileged (I7)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from activities.paths import NotebookPaths, notebooks_dir
from api.tunnel import connect_request
from domain.ids import workspace_prefix
from domain.tokens import tunnel_token
from tests.integration.conftest import Notebooks
from tests.integration.s3data import bucket_keys, make_bucket
from worker.stack import Stack

pytestmark = pytest.mark.docker

# Run inside the container with its own python: one TCP connect per target, one second each.
PROBE = r"""
import json, socket, sys
result = {}
for host, port in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        result[f"{host}:{port}"] = "connected"
    except OSError as err:
        result[f"{host}:{port}"] = err.strerror or type(err).__name__
    finally:
        s.close()
print(json.dumps(result))
"""


def _platform_ports(stack: Stack) -> set[int]:
    """Every TCP port a process of the platform listens on: the stack's children and
    theirs (Temporal, SeaweedFS's S3, filer, master and volume, the API, the workers, the
    host agent's log server and editor tunnel)."""
    pids = set()
    for proc in stack.procs.values():
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            continue
        pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
    ports = {
        c.laddr.port
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }
    assert {stack.ports.api, stack.ports.s3, stack.ports.temporal} <= ports, ports
    return ports


def _host_addresses() -> set[str]:
    """Every address of this machine, loopback included: a container with a route out
    would find the platform at one of them."""
    addresses = {"127.0.0.1", "::1"}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            try:
                ip = ipaddress.ip_address(entry.address.split("%")[0])
            except ValueError:
                continue
            if not ip.is_link_local:
                addresses.add(str(ip))
    return addresses


def _exec(container, *argv: str, user: str | None = None) -> tuple[int, str]:
    code, out = container.exec_run(list(argv), user=user or "")
    return code, out.decode(errors="replace")


def _token(nb: dict) -> str:
    return parse_qs(urlsplit(nb["status"]["url"]).query)["token"][0]


@pytest.fixture(scope="module")
def pair(stack: Stack, api, project, docker_client):
    """One notebook of each editor, RUNNING side by side."""
    notebooks = Notebooks(api, project, docker_client)
    ids = [
        notebooks.create(name="probe-lab", editor="jupyterlab")["id"],
        notebooks.create(name="probe-code", editor="vscode")["id"],
    ]
    running = [notebooks.wait(nid, "RUNNING", timeout=240) for nid in ids]
    yield notebooks, running
    for nid in ids:
        notebooks.delete(nid)
    for nid in ids:
        notebooks.wait(nid, "DELETED")


def test_no_platform_port_and_no_other_notebook_is_reachable(stack: Stack, pair) -> None:
    notebooks, running = pair
    ports = _platform_ports(stack)
    targets = [[host, port] for host in sorted(_host_addresses()) for port in sorted(ports)]
    for nb in running:
        [container] = notebooks.containers(nb["id"])
        # The container's network: its own loopback and nothing else.
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        code, out = _exec(container, "python3", "-c", PROBE, json.dumps(targets))
        assert code == 0, out
        reached = {t: r for t, r in json.loads(out).items() if r == "connected"}
        assert reached == {}, f"{nb['spec']['editor']} reached {reached}"
        # Nothing of the other notebook is there: not its directory, not its socket.
        other = next(o for o in running if o["id"] != nb["id"])
        theirs = NotebookPaths(notebooks_dir(stack.data_dir, stack.host_name), other["id"])
        for path in (theirs.editor_socket, theirs.workspace, stack.data_dir):
            code, _ = _exec(container, "test", "-e", str(path))
            assert code != 0, f"{path} is visible inside {nb['id']}"
        code, _ = _exec(container, "test", "-e", "/var/run/docker.sock")
        assert code != 0


def test_editors_run_unprivileged_and_own_their_workspace(pair) -> None:
    notebooks, running = pair
    for nb in running:
        [container] = notebooks.containers(nb["id"])
        # As the editor's user (what a terminal in the editor is): not root, no capability.
        assert _exec(container, "id", "-u")[1].strip() == "1000"
        code, status = _exec(container, "cat", "/proc/1/status")
        caps = {
            line.split(":")[0]: int(line.split(":")[1], 16)
            for line in status.splitlines()
            if line.startswith("Cap")
        }
        assert caps["CapEff"] == 0 and caps["CapPrm"] == 0 and caps["CapBnd"] == 0, caps
        assert "NoNewPrivs:\t1" in status
        code, out = _exec(
            container, "sh", "-c", "echo mine > /workspace/mine.txt && ls -ln /workspace/mine.txt"
        )
        assert code == 0, out
        assert out.split()[2:4] == ["1000", "1000"], out
        # Root's files on the host are out of reach: there is no way back to uid 0.
        assert _exec(container, "sh", "-c", "su -c id root </dev/null")[0] != 0


def test_a_planted_socket_link_does_not_reach_the_engine(
    stack: Stack, notebooks: Notebooks
) -> None:
    """The editor's socket sits in a directory the notebook's user owns. Replacing it with
    a link to the Docker engine's socket (or any other host socket) must not make the
    host agent, which is root, forward the gateway's requests there."""
    nb = notebooks.create(name="plants-a-link")
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING")
    base = nb["status"]["url"].split("/lab")[0]
    auth = {"Authorization": f"token {_token(nb)}"}
    assert httpx.get(f"{base}/api/status", headers=auth).status_code == 200
    [container] = notebooks.containers(nid)
    engine = "/var/run/docker.sock"
    assert os.path.exists(engine)
    code, out = _exec(
        container, "sh", "-c", f"rm /run/ainb/editor.sock && ln -s {engine} /run/ainb/editor.sock"
    )
    assert code == 0, out
    # Connections the gateway already holds lead to the editor as before; none leads to
    # the engine (whose answers carry its Api-Version header).
    for path in ("/version", "/containers/json", "/v1.41/info"):
        r = httpx.get(f"{base}{path}", headers=auth, timeout=30)
        assert "api-version" not in r.headers and "ApiVersion" not in r.text, path
    # A new tunnel is refused outright: the agent connects only to a socket, never a link.
    fleet = notebooks.api.get("/v1/hosts").json()
    [host] = [h for h in fleet["hosts"] if h["name"] == nb["status"]["host"]]
    address = host["inventory"]["editor_tunnel"]
    tunnel_host, _, tunnel_port = address.rpartition(":")
    with socket.create_connection((tunnel_host, int(tunnel_port)), timeout=10) as conn:
        conn.sendall(connect_request(nid, tunnel_token(stack.secrets["token_secret"])))
        answer = conn.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 404") and "not a socket" in answer, answer
    # And so is a WebSocket, which always takes a new tunnel.
    ws = "ws" + base.removeprefix("http") + f"/api/events/subscribe?token={_token(nb)}"
    with pytest.raises(InvalidStatus):
        connect(ws, origin=base)
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


SWAPPER = r"""
import os, sys, time
until = time.time() + float(sys.argv[2])
os.chdir(sys.argv[1])
swaps = 0
while time.time() < until:
    for name, target in (("d", sys.argv[3]), ("f.txt", sys.argv[3] + "/canary.txt")):
        # a real directory (or file) of the tree, then for a moment a link to the host's
        try:
            os.rename(name, name + ".real")
            os.symlink(target, name)
            time.sleep(0.001)
            os.unlink(name)
            os.rename(name + ".real", name)
            swaps += 1
        except OSError:  # a sync moved things meanwhile: put back what can be, go on
            if os.path.islink(name):
                os.unlink(name)
            if os.path.lexists(name + ".real") and not os.path.lexists(name):
                os.rename(name + ".real", name)
open("/tmp/swaps-" + sys.argv[1].replace("/", "_"), "w").write(str(swaps))
"""


def test_a_racing_link_swap_never_reaches_the_host(
    notebooks: Notebooks, s3, tmp_path_factory
) -> None:
    """While checkpoints, datasync pushes and pulls run, the notebook's user swaps a
    workspace directory and a file for links to a host directory, in a loop: the host
    files never reach S3, and nothing is written into the host directory."""
    host_dir = tmp_path_factory.mktemp("host-secrets")
    canary = b"HOST-CANARY-" + os.urandom(8).hex().encode()
    (host_dir / "canary.txt").write_bytes(canary)
    (host_dir / "f0").write_bytes(canary)
    before = sorted(p.name for p in host_dir.iterdir())
    data = make_bucket(s3, "race", {f"d/f{i}": b"remote %d\n" % i for i in range(20)})
    nb = notebooks.create(name="races", volumes=[f"{data}@local:/workspace/data:rw"])
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    [container] = notebooks.containers(nid)
    code, out = _exec(
        container, "sh", "-c",
        "mkdir -p /workspace/d && for i in $(seq 0 19); do echo mine $i > /workspace/d/f$i; "
        "done && echo mine > /workspace/f.txt && echo mine > /workspace/data/f.txt",
    )  # fmt: skip
    assert code == 0, out
    # The swappers run inside the container, as the notebook's user, for 40 s.
    for tree in ("/workspace", "/workspace/data"):
        container.exec_run(["python3", "-c", SWAPPER, tree, "40", str(host_dir)], detach=True)
    deadline = time.monotonic() + 35
    rounds = 0
    while time.monotonic() < deadline:
        for body in ({"direction": "push"}, {"direction": "pull", "volume": "/workspace/data"}):
            notebooks.datasync(nid, **body)  # done or failed: a swap may fail a file
        rounds += 1
    assert rounds >= 3
    time.sleep(6)  # the swappers end
    for tree in ("/workspace", "/workspace/data"):
        code, swaps = _exec(container, "cat", "/tmp/swaps-" + tree.replace("/", "_"))
        assert code == 0 and int(swaps) > 100, (tree, swaps)
    notebooks.command(nid, "stop")
    notebooks.wait(nid, "STOPPED", "FAILED", timeout=180)
    stored = {
        **{f"data/{k}": v for k, v in bucket_keys(s3, data).items()},
        **bucket_keys(s3, "ainb-workspaces", workspace_prefix(notebooks.project, nid)),
    }
    assert stored, "nothing was saved at all"
    leaked = [key for key, body in stored.items() if canary in body]
    assert leaked == [], leaked
    assert sorted(p.name for p in host_dir.iterdir()) == before
    assert (host_dir / "canary.txt").read_bytes() == canary
    assert (host_dir / "f0").read_bytes() == canary
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")
