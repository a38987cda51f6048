"""A real PostgreSQL for the tests: Debian's server binaries (package ``postgresql``),
``initdb`` into a temporary directory, listening on a free loopback port only, no Unix
socket. The server refuses to run as root, so under root (CI) it runs as the ``postgres``
user the package makes.

Usage::

    with PgServer.started() as pg:
        url = pg.new_database()        # postgresql://ainb:...@127.0.0.1:<port>/t_<hex>
        pg.kill(); pg.start()          # the same data: a crash and a restart
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"
USER = "ainb"


def server_bin() -> Path | None:
    """The newest server's bin directory Debian installed, or one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parents[1].name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the server dies with the test process, so none is ever orphaned.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.password = secrets.token_urlsafe(16)
        self.port = _free_port()
        # Not under pytest's tmp (0700, root's): the server's user must reach its directory.
        self.root = Path(tempfile.mkdtemp(prefix="ainb-pg-"))
        self.data = self.root / "data"
        self._as: dict = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.proc: subprocess.Popen | None = None
        self._initdb()

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[PgServer]:
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server: apt-get install postgresql")
        server = cls(bindir)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--no-sync",  # a test's server: speed over surviving a power cut
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._as,
        )
        pwfile.unlink()

    def start(self, timeout: float = 30) -> None:
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # its backends too are killed as one, by group
            **self._as,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not answer in {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@{LOOPBACK}:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def kill(self) -> None:
        """SIGKILL to the server and every backend, as a crash: connections cut mid-flight."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
