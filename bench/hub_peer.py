"""The JupyterHub peer of bench/spawn_bench.py: JupyterHub 6 + DockerSpawner 14, installed
from PyPI into a virtualenv of its own, spawning the same JupyterLab image (with the
`jupyterhub` package added, which its single-user server needs) under the same limits.

What differs, and why: no configurable-http-proxy (it needs Node.js): a proxy class that
only records the routes, and the benchmark asks each single-user server directly (one hop
fewer than through a proxy, in JupyterHub's favour); and host networking on loopback for
its containers, since a single-user server must reach the hub's API (ainb's notebooks have
no network at all).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

HUB_VERSION = "6.1.1"
SPAWNER_VERSION = "14.0.0"
POLL_S = 0.05

CONFIG = """
import json
from jupyterhub.proxy import Proxy
from jupyterhub.utils import random_port
from dockerspawner import DockerSpawner

ROUTES = {routes!r}

class RecordingProxy(Proxy):
    should_start = False
    _routes = {{}}

    async def add_route(self, routespec, target, data):
        self._routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}
        self._save()

    async def delete_route(self, routespec):
        self._routes.pop(routespec, None)
        self._save()

    async def get_all_routes(self):
        return dict(self._routes)

    def _save(self):
        with open(ROUTES + ".tmp", "w") as f:
            json.dump(self._routes, f)
        import os
        os.replace(ROUTES + ".tmp", ROUTES)

class LoopbackSpawner(DockerSpawner):
    async def start(self):
        self.port = random_port()
        return await super().start()

    async def get_ip_and_port(self):
        return "127.0.0.1", self.port

c.JupyterHub.proxy_class = RecordingProxy
c.JupyterHub.bind_url = "http://127.0.0.1:{public_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{state}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{
    "name": "bench",
    "scopes": ["admin:users", "admin:servers", "access:servers"],
    "services": ["bench"],
}}]
c.JupyterHub.spawner_class = LoopbackSpawner
c.DockerSpawner.image = "{image}"
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True  # no port bindings: they conflict with host networking
c.DockerSpawner.remove = True
c.DockerSpawner.notebook_dir = "/workspace"
c.DockerSpawner.cpu_limit = 1.0
c.DockerSpawner.mem_limit = "4G"
c.DockerSpawner.extra_host_config = {{
    "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": 4096,
}}
c.Spawner.ip = "127.0.0.1"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = 3600
"""

DOCKERFILE = """
FROM {base}
COPY wheels/ /tmp/wheels/
RUN /opt/ainb/venv/bin/pip install --no-index --find-links /tmp/wheels \\
        --disable-pip-version-check --no-cache-dir "jupyterhub=={version}"
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["jupyterhub-singleuser"]
"""


def _venv(root: Path) -> Path:
    """JupyterHub and DockerSpawner in a virtualenv of their own (not the project's)."""
    venv = root / "venv"
    if not (venv / "bin" / "jupyterhub").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
             f"jupyterhub=={HUB_VERSION}", f"dockerspawner=={SPAWNER_VERSION}"],
            check=True,
        )  # fmt: skip
    return venv


def build_image(base: str, root: Path) -> str:
    """``base`` plus the jupyterhub package (wheels fetched on the host, built offline)."""
    tag = f"ainb-bench/hub-{base.replace('/', '-').replace(':', '-')}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    ctx = Path(tempfile.mkdtemp(prefix="hub-image-", dir=root))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--python-version", "3.11", "--platform",
         "manylinux2014_x86_64", "-d", str(ctx / "wheels"), f"jupyterhub=={HUB_VERSION}"],
        check=True,
    )  # fmt: skip
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base, version=HUB_VERSION))
    subprocess.run(
        ["docker", "build", "--network", "host", "--pull=false", "-t", tag, str(ctx)],
        check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    shutil.rmtree(ctx)
    return tag


class Hub:
    def __init__(self, image: str, root: Path, free_port) -> None:
        self.root = root
        self.state = Path(tempfile.mkdtemp(prefix="hub-state-", dir=root))
        self.token = secrets.token_hex(16)
        self.hub_port = free_port()
        self.routes = self.state / "routes.json"
        venv = _venv(root)
        config = self.state / "jupyterhub_config.py"
        config.write_text(
            textwrap.dedent(CONFIG).format(
                routes=str(self.routes), public_port=free_port(), hub_port=self.hub_port,
                state=self.state, token=self.token, image=build_image(image, root),
            )
        )  # fmt: skip
        self.log = open(self.state / "hub.log", "w")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "jupyterhub"), "-f", str(config)],
            cwd=self.state, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.hub_port}/hub/api",
            headers={"Authorization": f"token {self.token}"},
            timeout=120,
        )
        # The single-user servers' client, made once (as for ainb's: spawn_bench.browser).
        self.browser = httpx.Client(headers={"Authorization": f"token {self.token}"}, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.api.get("/").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"JupyterHub did not start; see {self.state / 'hub.log'}")
            time.sleep(0.2)

    def spawn(self) -> tuple[str, float]:
        """(user, seconds from the spawn request until the server's /api/status is 200)."""
        user = f"u{secrets.token_hex(4)}"
        self.api.post(f"/users/{user}").raise_for_status()  # untimed: the account
        began = time.perf_counter()
        self.api.post(f"/users/{user}/server").raise_for_status()
        while not self.api.get(f"/users/{user}").json()["servers"].get("", {}).get("ready"):
            time.sleep(POLL_S)
        target = self._target(user)
        while self.browser.get(f"{target}/user/{user}/api/status").status_code != 200:
            time.sleep(POLL_S)
        return user, time.perf_counter() - began

    def _target(self, user: str) -> str:
        routes = json.loads(self.routes.read_text())
        return routes[f"/user/{user}/"]["target"].rstrip("/")

    def stop(self, user: str) -> None:
        self.api.delete(f"/users/{user}/server")
        while self.api.get(f"/users/{user}").json()["servers"]:
            time.sleep(0.2)
        self.api.delete(f"/users/{user}")

    def close(self) -> None:
        self.api.close()
        self.browser.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
