"""activities.storage.beneath: paths resolved under a root without following symlinks,
with openat2 and with the component-by-component walk (forced), and chown_tree."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from activities.storage import beneath
from activities.storage.beneath import Tree, chown_tree, copy_entry, move_entry, swapped


@pytest.fixture(params=["openat2", "walk"])
def mode(request, monkeypatch) -> str:
    if request.param == "openat2":
        if not beneath.openat2_available():
            pytest.skip("openat2 is not available here")
    else:
        monkeypatch.setattr(beneath, "use_openat2", False)
        assert not beneath.openat2_available()
    return request.param


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """root/ with d/f and d/e/g; outside/ (a host directory) with f and e/g."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for base in (root / "d", outside):
        (base / "e").mkdir(parents=True)
        (base / "f").write_bytes(b"tree" if base != outside else b"HOST")
        (base / "e" / "g").write_bytes(b"tree-g" if base != outside else b"HOST-g")
    return root, outside


def _read(tree: Tree, rel: str) -> bytes:
    fd = tree.open(rel, os.O_RDONLY)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_openat2_probe_matches_the_kernel():
    # this kernel (>= 5.6, no seccomp filter in the test run) has it; the flag turns it off
    assert beneath.openat2_available() in (True, False)


def test_opens_plain_paths(mode, layout):
    root, _ = layout
    with Tree(root) as tree:
        assert _read(tree, "d/f") == b"tree"
        assert _read(tree, "d/e/g") == b"tree-g"
        fd = tree.open("d/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)
        assert stat.S_IMODE((root / "d" / "new").stat().st_mode) == 0o640 & ~_umask()
        assert tree.lstat("d/e").st_ino == (root / "d" / "e").stat().st_ino
        assert tree.lstat("missing/x") is None
        assert tree.lstat("d/f/x") is None  # a file as a parent: "not there"


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.parametrize("rel", ["d", "d/e"])
def test_a_symlinked_directory_is_never_followed(mode, layout, rel):
    root, outside = layout
    real = root / (rel + ".real")
    (root / rel).rename(real)
    (root / rel).symlink_to(outside / "e" if rel == "d/e" else outside)
    with Tree(root) as tree:
        for target in (f"{rel}/f", f"{rel}/g", f"{rel}/e/g"):
            with pytest.raises(OSError) as exc:
                os.close(tree.open(target, os.O_RDONLY))
            assert exc.value.errno == errno.ELOOP, target
            assert swapped(exc.value)
        with pytest.raises(OSError) as exc:
            os.close(tree.open(f"{rel}/x", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        assert exc.value.errno == errno.ELOOP
        with pytest.raises(OSError) as exc:
            tree.lstat(f"{rel}/f")
        assert exc.value.errno == errno.ELOOP
        with pytest.raises(OSError) as exc:
            tree.makedirs(f"{rel}/new/deeper")
        assert swapped(exc.value)
        with pytest.raises(OSError) as exc:
            os.close(tree.opendir(rel))
        assert swapped(exc.value)
        # the link itself is still seen, as a link
        assert stat.S_ISLNK(tree.lstat(rel).st_mode)
    assert sorted(p.name for p in outside.rglob("*")) == ["e", "f", "g"]


def test_a_symlinked_last_component_is_never_followed(mode, layout):
    root, outside = layout
    (root / "d" / "f").unlink()
    (root / "d" / "f").symlink_to(outside / "f")
    with Tree(root) as tree:
        for flags in (os.O_RDONLY, os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_DIRECTORY):
            with pytest.raises(OSError) as exc:
                os.close(tree.open("d/f", flags))
            assert exc.value.errno == errno.ELOOP
    assert (outside / "f").read_bytes() == b"HOST"


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "../outside/f", "d/../../outside/f", "d//f", "./d/f", ""]
)
def test_unsafe_relative_paths_are_refused(mode, layout, rel):
    root, _ = layout
    with Tree(root) as tree:
        if rel == "":
            os.close(tree.open(rel, os.O_RDONLY))  # the root itself
            return
        with pytest.raises(OSError) as exc:
            os.close(tree.open(rel, os.O_RDONLY))
        assert exc.value.errno == errno.EINVAL


def test_a_cached_directory_stays_the_directory_it_was(mode, layout):
    root, outside = layout
    with Tree(root) as tree:
        with tree.parent("d/new") as (dfd, name):
            # swapped after we resolved it: what we do through its descriptor stays in it
            (root / "d").rename(root / "d.moved")
            (root / "d").symlink_to(outside)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
            os.close(fd)
        assert (root / "d.moved" / "new").exists()
        assert not (outside / "new").exists()
        # resolving again refuses the link
        tree.forget("d")
        with pytest.raises(OSError) as exc, tree.dir("d"):
            pass
        assert exc.value.errno == errno.ELOOP


def test_the_directory_cache_is_bounded_and_keeps_descriptors_in_use(mode, tmp_path):
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    with Tree(tmp_path, cache_size=2) as tree:
        held = tree.dir("d0")
        fd0 = held.__enter__()
        for i in range(1, 10):
            with tree.dir(f"d{i}") as fd:
                assert os.fstat(fd).st_ino == (tmp_path / f"d{i}").stat().st_ino
        assert len(tree._cache) <= 3  # two, plus the one still in use
        assert os.fstat(fd0).st_ino == (tmp_path / "d0").stat().st_ino  # not closed
        tree.forget("d0")  # closed only once released
        assert os.fstat(fd0).st_ino == (tmp_path / "d0").stat().st_ino
        held.__exit__(None, None, None)
        with pytest.raises(OSError):  # closed now (nothing was opened since)
            os.fstat(fd0)


def test_makedirs_and_rmdir(mode, tmp_path):
    with Tree(tmp_path) as tree:
        tree.makedirs("a/b/c")
        tree.makedirs("a/b/c")  # exists: fine
        assert (tmp_path / "a" / "b" / "c").is_dir()
        (tmp_path / "a" / "f").write_text("x")
        with pytest.raises(OSError) as exc:
            tree.makedirs("a/f/g")
        assert exc.value.errno == errno.ENOTDIR
        tree.rmdir("a/b/c")
        assert not (tmp_path / "a" / "b" / "c").exists()


def _tree_state(path: Path) -> list[tuple]:
    out = []
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        body = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        link = os.readlink(p) if p.is_symlink() else None
        out.append((str(p.relative_to(path)), stat.S_IFMT(st.st_mode), body, link))
    return out


def _sample(base: Path, outside: Path) -> None:
    (base / "sub" / "deeper").mkdir(parents=True)
    (base / "sub" / "file").write_bytes(b"data")
    os.chmod(base / "sub" / "file", 0o640)
    os.utime(base / "sub" / "file", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    (base / "sub" / "link").symlink_to(outside)
    (base / "sub" / "deeper" / "x").write_bytes(b"x" * 3000)


def test_copy_entry_keeps_links_as_links(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("HOST")
    src.mkdir()
    dst.mkdir()
    _sample(src, outside)
    fs, fd = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDONLY)
    try:
        assert copy_entry(fs, "sub", fd, "sub") == 3
    finally:
        os.close(fs)
        os.close(fd)
    assert _tree_state(dst) == _tree_state(src)
    st = (dst / "sub" / "file").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert not (dst / "sub" / "link" / "secret").is_symlink()  # the link, not a copy of it
    assert os.readlink(dst / "sub" / "link") == str(outside)


def test_move_entry_across_file_systems(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to move across")
    src = Path(tempfile.mkdtemp(dir=shm))
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        _sample(src, outside)
        expected = _tree_state(src)
        fs, fd = os.open(src, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY)
        try:
            move_entry(fs, "sub", fd, "moved")  # EXDEV: copied, then removed
        finally:
            os.close(fs)
            os.close(fd)
        assert not (src / "sub").exists()
        assert [(r.replace("sub", "moved", 1), *rest) for r, *rest in expected] == [
            t for t in _tree_state(tmp_path) if t[0].startswith("moved")
        ]
        assert list(outside.iterdir()) == []
    finally:
        shutil.rmtree(src, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_tree_never_follows_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "target").write_text("host")
    (root / "a" / "file").write_text("x")
    (root / "a" / "b" / "file2").write_text("y")
    (root / "a" / "to-file").symlink_to(outside / "target")
    (root / "a" / "to-dir").symlink_to(outside)
    before = {p: (p.stat().st_uid, p.stat().st_gid) for p in (outside, outside / "target")}

    n = chown_tree(root, 4321, 4322)

    assert n == 7  # root, a, b, file, file2, two links
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (4321, 4322), p
    assert {p: (p.stat().st_uid, p.stat().st_gid) for p in before} == before


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_tree_does_not_cross_mount_points(tmp_path, monkeypatch):
    (tmp_path / "m" / "inner").mkdir(parents=True)
    real_stat = os.stat
    mounted = (tmp_path / "m").stat().st_ino

    class _Other:
        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            return self._st.st_dev + 1 if name == "st_dev" else getattr(self._st, name)

    def fake_stat(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        return _Other(st) if st.st_ino == mounted else st

    monkeypatch.setattr(beneath.os, "stat", fake_stat)
    n = chown_tree(tmp_path, 4321, 4321)
    monkeypatch.undo()
    assert n == 1  # only the root: "m" looks like another file system
    assert (tmp_path / "m").stat().st_uid != 4321
    assert (tmp_path / "m" / "inner").stat().st_uid != 4321
