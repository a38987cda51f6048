"""The warm pool's pure rules: which launches a slot can serve, what a claim hands the
editor, and the directory swap that a crash at any point lets a retry finish."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from activities.runtime.base import LaunchSpec, Mount
from activities.runtime.warm_pool import _take_place, _write_claim, claim_document, misfit


def _spec(tmp_path: Path, **changes) -> LaunchSpec:
    spec = LaunchSpec(
        notebook_id="n1",
        project="p",
        image="img",
        env={"AINB_EDITOR_TOKEN": "tok", "AINB_EDITOR_READ_TOKEN": "rd", "AINB_NOTEBOOK_ID": "n1"},
        mounts=[Mount(source=tmp_path / "workspace", target="/workspace")],
        workspace=tmp_path / "workspace",
        run_dir=tmp_path / "run",
        cpus=1,
        memory_bytes=1 << 30,
    )
    return dataclasses.replace(spec, **changes)


def test_a_plain_jupyterlab_launch_fits(tmp_path: Path) -> None:
    assert misfit(_spec(tmp_path)) is None


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"editor": "vscode"}, "editor"),
        ({"env": {"AINB_EDITOR_TOKEN": ""}}, "unsecure_http"),
        ({"gpus": 1}, "GPU"),
        ({"gpu_ids": ["0"]}, "GPU"),
        ({"env": {"AINB_EDITOR_TOKEN": "t", "HOME": "/x"}}, "HOME"),
        ({"env": {"AINB_EDITOR_TOKEN": "t", "JUPYTER_CONFIG_DIR": "/x"}}, "JUPYTER_CONFIG_DIR"),
        ({"env": {"AINB_EDITOR_TOKEN": "t", "PATH": "/x"}}, "PATH"),
    ],
)
def test_what_a_running_container_cannot_take_is_a_cold_start(
    tmp_path: Path, changes: dict, why: str
) -> None:
    reason = misfit(_spec(tmp_path, **changes))
    assert reason is not None and why in reason


def test_volumes_need_a_cold_start(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    data = Mount(source=tmp_path / "v0", target="/workspace/data")
    assert misfit(dataclasses.replace(spec, mounts=[*spec.mounts, data])) is not None
    ro = Mount(source=tmp_path / "workspace", target="/workspace", read_only=True)
    assert misfit(dataclasses.replace(spec, mounts=[ro])) is not None


def test_the_claim_carries_the_tokens_apart_from_the_environment(tmp_path: Path) -> None:
    doc = claim_document(_spec(tmp_path))
    assert doc["token"] == "tok" and doc["read_token"] == "rd"
    assert doc["env"] == {"AINB_NOTEBOOK_ID": "n1"}


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    slot = tmp_path / "slot" / "workspace"
    slot.mkdir(parents=True)
    (slot / ".keep-inode").write_text("slot")  # stands for the bind mount
    target = tmp_path / "nb" / "workspace"
    (target / "sub").mkdir(parents=True)
    (target / "a.txt").write_text("a")
    (target / "sub" / "b.txt").write_text("b")
    return slot, target


def _check(slot_inode: int, target: Path) -> None:
    assert target.stat().st_ino == slot_inode
    assert (target / "a.txt").read_text() == "a"
    assert (target / "sub" / "b.txt").read_text() == "b"
    assert not target.with_name("workspace.aside").exists()


def test_the_slot_takes_the_notebooks_place_with_its_files(tmp_path: Path) -> None:
    slot, target = _trees(tmp_path)
    inode = slot.stat().st_ino
    _take_place(slot, target)
    _check(inode, target)
    assert not slot.exists()
    _take_place(slot, target)  # again (a retried launch): nothing changes
    _check(inode, target)


def test_a_swap_cut_short_is_finished_by_the_next_attempt(tmp_path: Path) -> None:
    slot, target = _trees(tmp_path)
    inode = slot.stat().st_ino
    # Died after the notebook's tree moved aside, before the slot's took its place.
    target.rename(target.with_name("workspace.aside"))
    _take_place(slot, target)
    _check(inode, target)

    # Died half way through moving the files in.
    slot2, target2 = _trees(tmp_path / "again")
    inode2 = slot2.stat().st_ino
    aside = target2.with_name("workspace.aside")
    target2.rename(aside)
    slot2.rename(target2)
    (aside / "a.txt").rename(target2 / "a.txt")
    _take_place(slot2, target2)
    _check(inode2, target2)


def test_the_claim_file_is_written_whole_and_through_no_planted_link(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    # What the editor's user could plant in its own socket directory.
    (run / "claim.json.tmp").symlink_to(outside)
    (run / "claim.json").symlink_to(outside)
    _write_claim(run / "claim.json", {"token": "t"}, os.getuid(), os.getgid())
    assert outside.read_text() == "untouched"
    assert not (run / "claim.json").is_symlink()
    assert json.loads((run / "claim.json").read_text()) == {"token": "t"}
    assert (run / "claim.json").stat().st_mode & 0o777 == 0o600
    assert not (run / "claim.json.tmp").exists()
