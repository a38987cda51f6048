"""The embedded platform on one machine: Temporal dev server (SQLite), SeaweedFS S3, the
control-plane worker, one host agent and the REST API, each its own process.

``ainb-stack`` (or ``python -m worker.stack``) brings it up, prints where each part is and
restarts a part that exits (:mod:`worker.supervisor`); Ctrl-C stops everything. Tests use
:class:`Stack` to run the same processes on free ports and to kill and restart them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.config
import httpx

from domain import search_attributes as sa
from domain.access import new_admin_token
from worker.supervisor import stop_on_sigterm, supervise

ROOT = Path(__file__).resolve().parent.parent


def free_port(avoid: set[int] | None = None, *, with_grpc_offset: bool = False) -> int:
    """A free loopback port; with_grpc_offset also needs port+10000 free (SeaweedFS)."""
    # `is None`, not `or`: an empty set passed in must collect what is handed out.
    if avoid is None:
        avoid = set()
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in avoid:
            continue
        if with_grpc_offset:
            if port + 10000 > 65000 or port + 10000 in avoid:
                continue
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            avoid.add(port + 10000)
        avoid.add(port)
        return port
    raise RuntimeError("no free port")


@dataclass
class Ports:
    temporal: int = 7233
    temporal_ui: int = 8233
    s3: int = 8333
    weed_master: int = 9333
    weed_volume: int = 8080
    weed_filer: int = 8888
    api: int = 8000

    @classmethod
    def random(cls, taken: set[int] | None = None) -> Ports:
        """Free loopback ports, none of them in ``taken`` (a port the caller has chosen:
        the probe of a free port releases it, so the same one can come out twice)."""
        used: set[int] = set(taken or ())
        return cls(
            temporal=free_port(used),
            temporal_ui=free_port(used),
            s3=free_port(used, with_grpc_offset=True),
            weed_master=free_port(used, with_grpc_offset=True),
            weed_volume=free_port(used, with_grpc_offset=True),
            weed_filer=free_port(used, with_grpc_offset=True),
            api=free_port(used),
        )


@dataclass
class Stack:
    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    runtime: str = "auto"
    host_name: str = "local"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Merged into the generated config file (tests add frameworks, flavors...).
    config_overrides: dict = field(default_factory=dict)
    # Simulated hosts (runtime "sim"): name -> AINB_* settings of that host's agent,
    # e.g. {"gpu-1": {"AINB_HOST_GPU_IDS": '["0","1"]', "AINB_HOST_GPU_MODEL": "sim"}}.
    sim_hosts: dict[str, dict[str, str]] = field(default_factory=dict)
    # More host agents on the stack's runtime: name -> settings of that host's agent, e.g.
    # {"second": {"DOCKER_HOST": "unix:///run/second.sock"}} for another Docker engine.
    extra_hosts: dict[str, dict[str, str]] = field(default_factory=dict)
    # Children write to our stdout instead of log files (one component per container).
    log_to_stdout: bool = False
    # The ledger's database (Settings.ledger_url); unset: data_dir/ledger.sqlite.
    ledger_url: str | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Each worker's /metrics (worker/metrics.py) on a loopback port of its own, kept across
    # its restarts: name -> URL.
    metrics_urls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        # Secrets, notebooks' data and logs live here: no other local user may read them.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        (self.data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
        self.config_path = self.data_dir / "config.json"
        self.secrets = self._load_secrets()
        self.admin_token_path = self.data_dir / "admin-token"
        self.admin_token = self._load_admin_token()

    # ------------------------------------------------------------- configuration

    def _load_secrets(self) -> dict[str, str]:
        """Credentials made once per data directory, so a restarted stack finds its data.

        ``secrets.json`` (mode 0600 from its creation) appears whole or not at all: each
        process writes a candidate to a private temporary file and hard-links it into place,
        which fails if another got there first, so components started side by side
        (compose) agree on the first set."""
        path = self.data_dir / "secrets.json"
        values = {
            "s3_access_key": "ainb" + secrets.token_hex(8),
            "s3_secret_key": secrets.token_urlsafe(32),
            "token_secret": secrets.token_urlsafe(32),
        }
        if not path.exists():
            try:
                _write_private(path, json.dumps(values), replace=False)
            except FileExistsError:
                pass  # another component made it first: use theirs
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # made by an older version, which left it wider
        return json.loads(path.read_text())

    def _load_admin_token(self) -> str:
        """The embedded stack's administrator token, made on first start; kept in its own
        0600 file (first writer wins, as for secrets.json) so that curl can read it."""
        path = self.admin_token_path
        if not path.exists():
            try:
                _write_private(path, new_admin_token() + "\n", replace=False)
            except FileExistsError:
                pass
        return path.read_text().strip()

    def api_client(self, **kwargs) -> httpx.Client:
        """An HTTP client of the REST API that shows the administrator token."""
        headers = {"authorization": f"Bearer {self.admin_token}", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.api_url, headers=headers, **kwargs)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def ledger(self) -> str:
        """The ledger's URL, for a test that reads what the platform billed."""
        return self.ledger_url or f"sqlite:///{self.data_dir / 'ledger.sqlite'}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.ports.temporal}"

    def write_config(self) -> None:
        config = {
            "temporal_address": self.temporal_address,
            "data_dir": str(self.data_dir),
            "host_name": self.host_name,
            "runtime": self.runtime,
            "storage_aliases": {
                "local": {
                    "endpoint": self.s3_endpoint,
                    "access_key": self.secrets["s3_access_key"],
                    "secret_key": self.secrets["s3_secret_key"],
                }
            },
            "platform_alias": "local",
            "token_secret": self.secrets["token_secret"],
            "admin_tokens": [self.admin_token],
            # One machine shares its cores among notebooks: offer more than it has, as an
            # operator would for CPU flavors (the engine still caps each container).
            "host_cpus": 32,
            "host_memory_gib": 128,
        }
        if self.ledger_url:
            config["ledger_url"] = self.ledger_url
        config = _merge(config, self.config_overrides)
        # It holds the S3 keys and the token secret: 0600, replaced whole.
        _write_private(self.config_path, json.dumps(config, indent=2), replace=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AINB_")}
        env.update(
            {
                "AINB_CONFIG": str(self.config_path),
                "AINB_API_PORT": str(self.ports.api),
                "AINB_PUBLIC_URL": self.api_url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def s3_client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.secrets["s3_access_key"],
            aws_secret_access_key=self.secrets["s3_secret_key"],
            config=botocore.config.Config(
                retries={"max_attempts": 2}, connect_timeout=2, s3={"addressing_style": "path"}
            ),
        )

    # ----------------------------------------------------------------- processes

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")
        extra = dict(env or {})
        if argv[-1] in ("worker.control", "worker.host"):
            url = self.metrics_urls.get(name) or f"http://127.0.0.1:{free_port()}/metrics"
            self.metrics_urls[name] = url
            extra.setdefault("AINB_METRICS_ADDRESS", url.split("/")[2])
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**self.env(), **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the stack, which stops children in order
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_temporal(self) -> None:
        argv = [
            _which("temporal"),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.ports.temporal),
            "--ui-port",
            str(self.ports.temporal_ui),
            "--db-filename",
            str(self.data_dir / "temporal.sqlite"),
            "--log-level",
            "warn",
        ]
        # WAL: one sequential append and one fsync per commit instead of a rollback
        # journal's several (the dev server's default).  synchronous=full keeps every
        # committed transaction across a power loss; the fleet bench goes from 2.7 to
        # 4 notebook lifecycles a second with it.
        argv += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=full"]
        # The dev server rereads search attributes from the database on every use unless
        # this is given (so that ones added at run time show at once); ours are all
        # registered at start. One task-queue partition: a single node gains nothing from
        # four, and a task in a partition without a waiting poller is forwarded first.
        # Together: 20 notebooks in flight go from ~3.8 to ~4.7 lifecycles a second.
        for value in (
            "system.forceSearchAttributesCacheRefreshOnRead=false",
            "matching.numTaskqueueReadPartitions=1",
            "matching.numTaskqueueWritePartitions=1",
        ):
            argv += ["--dynamic-config-value", value]
        for name, kind in sa.DEFINITIONS.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        # The dev server also binds random free ports of its own (HTTP, metrics, internal
        # services): one may be taken between its choice and its bind. Try again then.
        for _attempt in range(3):
            proc = self._spawn("temporal", argv)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if _tcp_open(self.ports.temporal):
                    return
                time.sleep(0.2)
            if proc.poll() is None:
                break
        _wait_for(
            lambda: _tcp_open(self.ports.temporal), 1, "Temporal dev server", self._log("temporal")
        )

    def start_s3(self) -> None:
        s3_dir = self.data_dir / "s3"
        s3_dir.mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "ainb",
                    "credentials": [
                        {
                            "accessKey": self.secrets["s3_access_key"],
                            "secretKey": self.secrets["s3_secret_key"],
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        s3_config = self.data_dir / "s3-identities.json"
        _write_private(s3_config, json.dumps(identities), replace=True)
        p = self.ports
        self._spawn(
            "s3",
            weed_server_argv(
                _which("weed"),
                data_dir=s3_dir,
                config=s3_config,
                s3_port=p.s3,
                master_port=p.weed_master,
                volume_port=p.weed_volume,
                filer_port=p.weed_filer,
            ),
        )
        client = self.s3_client()

        def ready() -> bool:
            try:
                client.list_buckets()
                return True
            except Exception:
                return False

        _wait_for(ready, 90, "SeaweedFS S3", self._log("s3"))

    def start_control_worker(self) -> None:
        self._spawn("control-worker", [sys.executable, "-m", "worker.control"])
        self._expect_alive("control-worker")

    def start_host_agent(self) -> None:
        self._spawn("host-agent", [sys.executable, "-m", "worker.host"])
        self._expect_alive("host-agent")

    def start_sim_host(self, name: str) -> None:
        self._start_named_host(name, {"AINB_RUNTIME": "sim", **self.sim_hosts.get(name, {})})

    def start_extra_host(self, name: str) -> None:
        self._start_named_host(name, self.extra_hosts.get(name, {}))

    def _start_named_host(self, name: str, env: dict[str, str]) -> None:
        env = {"AINB_HOST_NAME": name, **env}
        self._spawn(f"host-{name}", [sys.executable, "-m", "worker.host"], env)
        self._expect_alive(f"host-{name}")

    def wait_for_hosts(self, names: list[str], timeout: float = 60) -> None:
        """Until the fleet counts every named host as up (their agents registered)."""

        def ready() -> bool:
            try:
                with self.api_client(timeout=5) as api:
                    r = api.get("/v1/hosts")
            except httpx.HTTPError:
                return False
            up = {h["name"] for h in r.json().get("hosts", []) if h["state"] == "up"}
            return r.status_code == 200 and set(names) <= up

        _wait_for(ready, timeout, f"hosts {names} to register", self._log("host-agent"))

    def start_api(self) -> None:
        self._spawn("api", [sys.executable, "-m", "api.main"])

        def ready() -> bool:
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(ready, 60, "REST API", self._log("api"))

    def start(self) -> None:
        self.write_config()
        self.start_temporal()
        self.start_s3()
        self.start_control_worker()
        self.start_host_agent()
        for name in self.sim_hosts:
            self.start_sim_host(name)
        for name in self.extra_hosts:
            self.start_extra_host(name)
        self.start_api()
        self.wait_for_hosts([self.host_name, *self.sim_hosts, *self.extra_hosts])

    def _expect_alive(self, name: str) -> None:
        time.sleep(0.5)
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited at start:\n{self._log(name)()}")

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def start_part(self, name: str) -> None:
        """Start one part (again) on the same ports, data and config; wait until ready."""
        if name.removeprefix("host-") in self.sim_hosts:
            return self.start_sim_host(name.removeprefix("host-"))
        if name.removeprefix("host-") in self.extra_hosts:
            return self.start_extra_host(name.removeprefix("host-"))
        getattr(self, "start_" + name.replace("-", "_"))()

    def _log(self, name: str):
        path = self.log_path(name)
        return lambda: path.read_text(errors="replace")[-4000:] if path.exists() else "(see above)"

    def kill(self, name: str, sig: int = signal.SIGKILL, grace_s: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        """Stop in reverse order of start, politely first."""
        hosts = [f"host-{name}" for name in [*self.sim_hosts, *self.extra_hosts]]
        for name in ["api", *hosts, "host-agent", "control-worker", "s3", "temporal"]:
            # SeaweedFS takes ~15 s to stop politely; what it acknowledged is on disk already.
            self.kill(name, signal.SIGTERM, grace_s=3 if name == "s3" else 30)


def weed_server_argv(
    weed: str,
    *,
    data_dir: Path,
    config: Path,
    s3_port: int,
    master_port: int,
    volume_port: int,
    filer_port: int,
    volume_size_limit_mb: int = 256,
) -> list[str]:
    """A loopback-only SeaweedFS with S3 and identities from ``config``."""
    return [
        weed,
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master_port}",
        f"-volume.port={volume_port}",
        f"-filer.port={filer_port}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={config}",
        # Extra listeners we do not use would collide between two stacks on one machine.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",  # restart on the same data without a 10 s election
        "-volume.max=0",
        "-volume.preStopSeconds=0",  # stop promptly: writes are already on disk
    ]


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write ``path`` with mode 0600 from its first byte, atomically: the text goes to a
    temporary file of this process (mkstemp makes it 0600), then takes the path's place
    (``replace``), or is linked to it only if the path does not exist yet (FileExistsError
    otherwise). Readers see the old file or the new one whole, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _which(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError(f"{name} is not installed: pip install -e .")
    return found


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(check, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s; its log ends with:\n{log()}")


def run_component(stack: Stack, component: str) -> None:
    """Run one part until it exits or this process is told to stop."""
    stack.write_config()
    stop_on_sigterm()
    try:
        stack.start_part(component)
        print(f"ainb {component} is up", flush=True)
        # Not supervised: the container runtime restarts the container (`restart:` in
        # compose) and counts restarts; doing it here would hide the crash from it.
        sys.exit(stack.procs[component].wait())
    except KeyboardInterrupt:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the whole ainb platform on this machine.")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("AINB_DATA_DIR", ".ainb"))
    )
    parser.add_argument("--runtime", choices=["auto", "docker", "local"], default="auto")
    parser.add_argument("--api-port", type=int, help="the REST API's port (default 8000)")
    parser.add_argument(
        "--ports",
        choices=["default", "random"],
        default="default",
        help="default: the fixed ports printed at start (Temporal 7233, S3 8333...); random: "
        "free loopback ports for every part, for several stacks on one machine (tests); "
        "--api-port still applies. Not with --component, whose parts must agree on ports",
    )
    parser.add_argument(
        "--component",
        choices=["temporal", "s3", "control-worker", "host-agent", "api"],
        help="run only this part in the foreground (one per container in docker-compose.yml)",
    )
    args = parser.parse_args()
    if args.component and args.ports == "random":
        parser.error("--ports random: the parts run with --component must agree on ports")
    taken = {args.api_port} if args.api_port else set()
    ports = Ports.random(taken) if args.ports == "random" else Ports()
    ports.api = args.api_port or ports.api
    if args.component:
        stack = Stack(args.data_dir, ports, runtime=args.runtime, log_to_stdout=True)
        run_component(stack, args.component)
        return

    from activities.runtime.docker_runtime import engine_answers
    from domain.gateway import origin_pattern

    runtime = args.runtime
    if runtime == "auto":
        if not engine_answers():
            sys.exit(
                "ainb: no Docker engine answers, and notebooks run in containers. Install and "
                "start one (as root: apt-get install docker.io; scripts/up starts it), or run "
                "`scripts/up --runtime local` for single-user development without isolation."
            )
        runtime = "docker"
    stack = Stack(args.data_dir, ports, runtime=runtime)
    stop_on_sigterm()
    try:
        stack.start()
        from cli.config import install_embedded

        cli_config, written = install_embedded(stack.api_url, stack.admin_token, os.environ)
        cli_note = (
            f"the ainb CLI uses it ({cli_config})"
            if written
            else f'{cli_config} is your own: put token = "$(cat {stack.admin_token_path})" in it'
        )
        p = stack.ports
        runtime_note = (
            "docker (the local Docker engine; notebooks have no network)"
            if runtime == "docker"
            else "LOCAL PROCESSES (--runtime local): single-user development, NO ISOLATION"
        )
        print(
            f"""
ainb is up (data in {stack.data_dir})
  REST API        {stack.api_url}   (OpenAPI: {stack.api_url}/docs)
  admin token     {stack.admin_token_path}   (Authorization: Bearer ...; {cli_note})
  notebooks       {origin_pattern(stack.api_url)}   (each its own origin: status.url)
  Temporal        {stack.temporal_address}   (Web UI: http://127.0.0.1:{p.temporal_ui})
  S3 (SeaweedFS)  {stack.s3_endpoint}   (credentials in {stack.data_dir / "secrets.json"})
  control worker  task queue ainb-control; the fleet is workflow ainb-fleet
  host agent      host '{stack.host_name}', runtime: {runtime_note}
                  (registered: {stack.api_url}/v1/hosts)
  logs            {stack.data_dir / "logs"}
A part that exits is started again, with backoff; Ctrl-C stops everything.""",
            flush=True,
        )
        supervise(stack)  # returns only by KeyboardInterrupt (Ctrl-C, SIGTERM)
    except KeyboardInterrupt:
        print("\nstopping ainb...", flush=True)
    except RuntimeError as err:
        print(f"ainb could not start: {err}", file=sys.stderr, flush=True)
        stack.stop()
        sys.exit(1)
    stack.stop()
    print("stopped.", flush=True)


if __name__ == "__main__":
    main()
