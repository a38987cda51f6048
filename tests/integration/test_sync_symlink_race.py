"""Hostile trees: while a sync pulls into or pushes from a tree, "the notebook" swaps a
directory (or a file) of it for a symlink to a host directory (or file) in a tight loop.

Nothing of the host may reach storage, and nothing may be written on the host: every
failure caused by a swap must be that file's failure, never an escape.  The same for
the preserved-files rescue into the workspace (``activities.host._move_tree_contents``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from activities.storage import sync
from activities.storage.errors import StorageError

try:
    from tests.integration.test_sync import bucket, prefix, s3, seaweed
except ImportError:  # pragma: no cover - rootdir not on sys.path
    from test_sync import bucket, prefix, s3, seaweed  # type: ignore[no-redef]  # noqa: F401

ROUNDS = 20
CANARY = b"HOST-CANARY-7f3a9c"
NFILES = 40


_SWAPPER = r"""
import os, shutil, signal, sys, time
path, target = sys.argv[1], sys.argv[2]
hold_link, hold_real = float(sys.argv[3]), float(sys.argv[4])
away = path + ".swapped-away"
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
swaps = 0


def restore():
    try:
        if os.path.islink(path):
            os.unlink(path)
    except OSError:
        pass
    if os.path.lexists(away):
        try:
            os.rename(away, path)
        except OSError:  # the sync made a new one meanwhile: drop the old
            if os.path.isdir(away) and not os.path.islink(away):
                shutil.rmtree(away, ignore_errors=True)
            else:
                try:
                    os.unlink(away)
                except OSError:
                    pass


print("ready", flush=True)
while not stop:
    try:
        os.rename(path, away)
    except OSError:
        time.sleep(0.0002)  # not there (yet): the sync is making it
        continue
    try:
        os.symlink(target, path)
        swaps += 1
        time.sleep(hold_link)  # the sync runs into the link
    except OSError:
        pass
    finally:
        restore()
    time.sleep(hold_real)  # the sync sees the real thing (and, say, lists it)
restore()
print(swaps, flush=True)
"""


class Swapper:
    """Another process (like the notebook's code: no GIL shared with the sync) replacing
    ``root/name`` by a symlink to ``target`` and back, as fast as it can.

    The sync may create, preserve or remove ``root/name`` meanwhile: whatever happens,
    the swapper puts a real entry back (or leaves the sync's) and goes on."""

    def __init__(
        self, root: Path, name: str, target: Path, hold_link: float = 0.002, hold_real=0.0005
    ) -> None:
        self.argv = [sys.executable, "-c", _SWAPPER, str(root / name), str(target)]
        self.argv += [str(hold_link), str(hold_real)]
        self.swaps = 0

    def __enter__(self) -> Swapper:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.swaps = int(out.strip() or 0)


def state(root: Path) -> dict[str, tuple]:
    """Names, types, contents, modes, owners and mtimes of everything under ``root``."""
    out: dict[str, tuple] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        body = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
        out[str(p.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_mtime_ns,
            body,
            link,
        )
    return out


@pytest.fixture()
def host(tmp_path: Path) -> Path:
    """A host directory outside the tree (think /etc or another notebook's tree) whose
    files have the tree's names, and a canary in each."""
    d = tmp_path / "host"
    (d / "sub").mkdir(parents=True)
    for i in range(NFILES):
        (d / f"f{i}").write_bytes(CANARY + b" f%d" % i)
    (d / "shadow").write_bytes(CANARY + b" shadow")
    (d / "sub" / "id_rsa").write_bytes(CANARY + b" key")
    (d / "hostfile").write_bytes(CANARY + b" single file")
    return d


def make_tree(root: Path, tag: bytes = b"tree") -> None:
    (root / "d" / "sub").mkdir(parents=True)
    for i in range(NFILES):
        (root / "d" / f"f{i}").write_bytes(b"%s f%d" % (tag, i))
    (root / "d" / "sub" / "deep").write_bytes(tag + b" deep")
    (root / "top.txt").write_bytes(tag + b" top")
    (root / "link").symlink_to("d/f0")  # a symlink of the user's: saved as a symlink


def objects(s3, bucket: str, prefix: str) -> dict[str, tuple[bytes, dict]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", ()):
            obj = s3.get_object(Bucket=bucket, Key=o["Key"])
            out[o["Key"][len(prefix) + 1 :]] = (obj["Body"].read(), obj.get("Metadata") or {})
    return out


def test_push_never_uploads_host_files(s3, bucket, prefix, tmp_path, host):
    root = tmp_path / "tree"
    make_tree(root)
    before = state(host)
    failures = 0
    with Swapper(root, "d", host) as dirs, Swapper(root, "top.txt", host / "hostfile") as files:
        for r in range(ROUNDS):
            try:
                sync.push(s3, root, bucket, f"{prefix}/{r}", delete=True)
            except StorageError as exc:
                failures += 1  # a swapped file fails the push; nothing escapes
                assert "did not complete" in str(exc), exc
    assert dirs.swaps > 0 and files.swaps > 0
    names = {f"f{i}" for i in range(NFILES)} | {"sub/", "sub/deep"}
    for r in range(ROUNDS):
        for key, (body, meta) in objects(s3, bucket, f"{prefix}/{r}").items():
            assert CANARY not in body, key
            assert "shadow" not in key and "id_rsa" not in key and "hostfile" not in key, key
            if key.startswith("d/"):
                assert key[2:] in names, key
            if key in ("d", "top.txt") and "symlink" in meta:
                assert body == b""  # the swapped-in link, saved as a link: fine
    assert state(host) == before
    # once the notebook stops playing, the push completes and the tree round-trips
    sync.push(s3, root, bucket, f"{prefix}/final", delete=True)
    got = objects(s3, bucket, f"{prefix}/final")
    assert got["d/f3"][0] == b"tree f3" and got["top.txt"][0] == b"tree top"
    assert "symlink" in got["link"][1]
    print(f"push: {failures} of {ROUNDS} rounds failed on a swap, {dirs.swaps} dir swaps")


def test_pull_never_writes_on_the_host(s3, bucket, prefix, tmp_path, host):
    # two versions of the data, pulled in turn: every round rewrites (and preserves,
    # and deletes) everything under d/
    for tag in (b"A", b"B"):
        src = tmp_path / f"src-{tag.decode()}"
        make_tree(src, tag)
        if tag == b"B":
            (src / "d" / "f1").unlink()
            (src / "d" / "only-in-b").write_bytes(b"B only")
        sync.push(s3, src, bucket, f"{prefix}/{tag.decode()}")
    root = tmp_path / "tree"
    sync.pull(s3, bucket, f"{prefix}/A", root, delete=True)
    before = state(host)
    host_file = host / "hostfile"
    failures = 0
    with Swapper(root, "d", host) as dirs, Swapper(root, "top.txt", host_file) as files:
        for r in range(ROUNDS):
            try:
                sync.pull(s3, bucket, f"{prefix}/{'AB'[r % 2]}", root, delete=True)
            except StorageError:
                failures += 1
            assert state(host) == before, f"round {r}"
    assert dirs.swaps > 0 and files.swaps > 0
    assert state(host) == before
    assert host_file.read_bytes() == CANARY + b" single file"
    # nothing of the host was copied into the tree either, and once the notebook stops
    # playing a pull completes (what the notebook changed meanwhile is kept or preserved)
    sync.pull(s3, bucket, f"{prefix}/B", root, delete=True)
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert CANARY not in p.read_bytes(), p
    assert os.readlink(root / "link") == "d/f0"
    assert (root / "d" / "only-in-b").read_bytes() == b"B only"
    print(f"pull: {failures} of {ROUNDS} rounds failed on a swap, {dirs.swaps} dir swaps")


def test_preserved_rescue_never_writes_on_the_host(tmp_path, host):
    host_mod = pytest.importorskip("activities.host")
    notebook = tmp_path / "notebook"
    workspace = notebook / "workspace"
    (workspace / ".ainb-preserved").mkdir(parents=True)
    area = notebook / "volumes" / ".0.preserved"
    before = state(host)
    moved = failed = 0
    with Swapper(workspace, ".ainb-preserved", host) as swapper:
        for r in range(ROUNDS * 5):
            run = area / f"run{r}"
            (run / "d").mkdir(parents=True)
            (run / "d" / "f").write_bytes(b"preserved %d" % r)
            (run / "link").symlink_to("/etc/passwd")
            try:
                moved += host_mod._move_tree_contents(area, workspace, ".ainb-preserved/data/v")
            except OSError as exc:
                failed += 1
                assert exc.errno in (2, 20, 40), exc  # ENOENT, ENOTDIR, ELOOP: refused
                shutil.rmtree(area)
            assert state(host) == before, f"round {r}"
    assert swapper.swaps > 0
    assert moved + 2 * failed == 2 * ROUNDS * 5
    runs = sorted((workspace / ".ainb-preserved" / "data" / "v").iterdir())
    assert 0 < len(runs) <= moved // 2  # (the "user" may drop a swapped-away copy)
    for run in runs:
        assert (run / "d" / "f").read_bytes().startswith(b"preserved ")
        assert os.readlink(run / "link") == "/etc/passwd"
    print(f"rescue: {moved // 2} runs moved, {failed} refused, {swapper.swaps} swaps")


def test_the_crt_only_ever_gets_descriptor_paths(s3, bucket, prefix, tmp_path, monkeypatch):
    from activities.storage.crt_engine import CrtEngine

    engine = CrtEngine.for_client(s3)
    with pytest.raises(ValueError, match="/proc/self/fd"):
        engine.put(bucket, f"{prefix}/x", [], lambda t: None, size=1, send_filepath="/etc/passwd")
    # without /proc the engine streams from the descriptor we opened (never a path)
    from activities.storage.sync import pull_download, push_upload

    # Read where the transfers decide (a module each), not the package's re-export.
    monkeypatch.setattr(pull_download, "_HAVE_PROC_FD", False)
    monkeypatch.setattr(push_upload, "_HAVE_PROC_FD", False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    data = os.urandom(20 * 1024 * 1024 + 12345)  # multipart
    (src / "d" / "big").write_bytes(data)
    (src / "d" / "mid").write_bytes(data[: 3 * 1024 * 1024])
    sync.push(s3, src, bucket, prefix)
    sync.pull(s3, bucket, prefix, dst)
    assert (dst / "d" / "big").read_bytes() == data
    assert (dst / "d" / "mid").read_bytes() == data[: 3 * 1024 * 1024]
