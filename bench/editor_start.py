"""Editor start study: where a cold editor's start goes, and what the images cut.

Everything runs with a notebook's isolation (network `none`, uid 1000, no capability,
1 CPU, 4 GiB, the editor on a Unix socket in a bind-mounted directory):
  * phases of one cold start of the JupyterLab image: `docker create`, `docker start`,
    the editor's first log line (the interpreter and its imports are done), the socket
    answering `/api/status`, and the first `GET /lab` (the page a browser loads first);
  * the import profile (`python -X importtime`) of `jupyterlab.labapp` in the image: the
    modules with the largest cumulative import time;
  * time until the editor answers, in `--rounds` interleaved rounds: the shipped image
    against the *stock* one, the same image with what ours removes put back as a plain
    `pip install jupyterlab` has it (rfc3987-syntax and lark, from the build's wheel
    cache, committed to a throwaway image), printed as a ratio;
  * code-server (the VS Code image): time until `/healthz` answers, and its first page.

    python bench/editor_start.py [--rounds 8] [--top 15] [--json out.json]
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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activities.runtime import editor_socket
from domain.config import JUPYTERLAB_IMAGE, VSCODE_IMAGE

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels" / "jupyterlab"
STOCK_IMAGE = "ainb-bench/jupyterlab-stock:latest"
REMOVED = ("rfc3987-syntax", "lark")  # images/jupyterlab/Dockerfile
TOKEN = "bench"
POLL_S = 0.005
LIMITS = ["--network", "none", "--user", "1000:1000", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges", "--cpus", "1", "--memory", "4g"]  # fmt: skip


class Editor:
    """One cold editor container, its socket directory on the host, removed on exit."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.dir = Path(tempfile.mkdtemp(prefix="ainb-editor-start-"))
        for d in ("run", "workspace"):
            (self.dir / d).mkdir(mode=0o700)
            os.chown(self.dir / d, 1000, 1000)
        self.sock = self.dir / "run" / "editor.sock"
        self.name = f"ainb-bench-editor-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Editor:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def create(self) -> None:
        subprocess.run(
            ["docker", "create", "--name", self.name, *LIMITS,
             "-e", "AINB_EDITOR_SOCKET=/run/ainb/editor.sock", "-e", f"AINB_EDITOR_TOKEN={TOKEN}",
             "-v", f"{self.dir / 'run'}:/run/ainb", "-v", f"{self.dir / 'workspace'}:/workspace",
             self.image],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        subprocess.run(["docker", "start", self.name], check=True, capture_output=True)

    def wait(self, path: str, ready: set[int]) -> None:
        while editor_socket.probe(self.sock, path) not in ready:
            time.sleep(POLL_S)

    def get(self, path: str) -> float:
        """Seconds a full `GET path` takes (the whole body read)."""
        began = time.perf_counter()
        with editor_socket.connect(self.sock, 30) as s:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            while s.recv(65536):
                pass
        return time.perf_counter() - began

    def first_log(self) -> float:
        """Epoch seconds of the editor's first log line."""
        logs = subprocess.run(
            ["docker", "logs", "-t", self.name], capture_output=True, text=True, check=True
        )
        stamps = [line.split(" ", 1)[0] for line in (logs.stdout + logs.stderr).splitlines()]
        return min(datetime.fromisoformat(s[:26] + "+00:00").timestamp() for s in stamps if s)


def answered(image: str, path: str, ready: set[int]) -> float:
    """Seconds from `docker create` until the editor answers ``path``."""
    with Editor(image) as ed:
        began = time.perf_counter()
        ed.create()
        ed.start()
        ed.wait(path, ready)
        return time.perf_counter() - began


def phases() -> dict[str, float]:
    with Editor(JUPYTERLAB_IMAGE) as ed:
        t0 = time.time()
        ed.create()
        created = time.time()
        ed.start()
        started = time.time()
        ed.wait("/api/status", {403})
        ready = time.time()
        first_page = ed.get(f"/lab?token={TOKEN}")
        return {
            "docker create": created - t0,
            "docker start": started - created,
            "interpreter and imports (to the first log line)": ed.first_log() - started,
            "server set-up (to answering /api/status)": ready - ed.first_log(),
            "first GET /lab": first_page,
            "total to answering": ready - t0,
        }


def import_profile(top: int) -> list[tuple[str, float]]:
    out = subprocess.run(
        ["docker", "run", "--rm", *LIMITS, "--entrypoint", "/opt/ainb/venv/bin/python",
         JUPYTERLAB_IMAGE, "-X", "importtime", "-c", "import jupyterlab.labapp"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        rows.append((name.rstrip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def build_stock() -> None:
    """The shipped image with the removed packages put back, offline, from the wheel cache."""
    name = f"ainb-bench-stock-{uuid.uuid4().hex[:8]}"
    wheels = [str(p.name) for p in WHEELS.glob("*.whl") if p.name.split("-")[0].replace("_", "-")
              in REMOVED]  # fmt: skip
    if len(wheels) != len(REMOVED):
        sys.exit(f"{WHEELS} lacks the wheels of {REMOVED}: run images/build.sh first")
    subprocess.run(
        ["docker", "run", "--name", name, "--network", "none", "-v", f"{WHEELS}:/wheels:ro",
         "--entrypoint", "/opt/ainb/venv/bin/pip", JUPYTERLAB_IMAGE, "install", "--no-index",
         "--no-deps", "--disable-pip-version-check", *(f"/wheels/{w}" for w in wheels)],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        subprocess.run(
            ["docker", "commit", "--change", 'ENTRYPOINT ["/usr/local/bin/ainb-editor"]',
             "--change", "CMD []", "--change", "USER 1000:1000", name, STOCK_IMAGE],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict = {}

    answered(JUPYTERLAB_IMAGE, "/api/status", {403})  # warm-up: page cache, engine
    out["phases"] = phases()
    print("JupyterLab, one cold start:")
    for name, s in out["phases"].items():
        print(f"  {name:<50}{s:>7.2f} s")

    out["imports"] = import_profile(args.top)
    print(f"\nimport jupyterlab.labapp, top {args.top} cumulative:")
    for name, s in out["imports"]:
        print(f"  {name:<50}{s:>7.3f} s")

    build_stock()
    try:
        runs: dict[str, list[float]] = {"shipped": [], "stock": [], "code-server": []}
        images = {"shipped": JUPYTERLAB_IMAGE, "stock": STOCK_IMAGE}
        answered(STOCK_IMAGE, "/api/status", {403})
        answered(VSCODE_IMAGE, "/healthz", {200})
        for i in range(args.rounds):
            order = ("shipped", "stock") if i % 2 == 0 else ("stock", "shipped")
            for kind in order:
                runs[kind].append(answered(images[kind], "/api/status", {403}))
            runs["code-server"].append(answered(VSCODE_IMAGE, "/healthz", {200}))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()))
    finally:
        subprocess.run(["docker", "rmi", "-f", STOCK_IMAGE], capture_output=True)
    out["answering"] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                            "runs": v} for k, v in runs.items()}  # fmt: skip
    print(f"\n{'editor':<14}{'median s':>10}{'min s':>8}{'max s':>8}")
    for kind, r in out["answering"].items():
        print(f"{kind:<14}{r['median']:>10.2f}{r['min']:>8.2f}{r['max']:>8.2f}")
    ratio = out["answering"]["shipped"]["median"] / out["answering"]["stock"]["median"]
    out["shipped_over_stock"] = ratio
    print(f"shipped/stock JupyterLab: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
