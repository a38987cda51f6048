"""Runtime failures are classified so the workflow can tell ERROR causes apart."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from activities.runtime.base import ImageNotFound, LaunchSpec, RuntimeUnavailable
from activities.runtime.docker_runtime import DockerRuntime, engine_answers


def _spec(tmp_path: Path, image: str = "ainb/jupyterlab-python:3.11") -> LaunchSpec:
    return LaunchSpec(
        notebook_id="0" * 32,
        project="p",
        image=image,
        env={},
        mounts=[],
        workspace=tmp_path,
        run_dir=tmp_path / "run",
        cpus=1,
        memory_bytes=2**30,
    )


def test_engine_down_is_unavailable(tmp_path: Path) -> None:
    runtime = DockerRuntime(
        lambda: docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", timeout=2)
    )
    with pytest.raises(RuntimeUnavailable, match="does not answer"):
        runtime.start(_spec(tmp_path))
    with pytest.raises(RuntimeUnavailable):
        runtime.poll("0" * 32)
    with pytest.raises(RuntimeUnavailable):
        runtime.stop("0" * 32, 1)


@pytest.mark.skipif(not engine_answers(), reason="needs a Docker engine")
def test_missing_image_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound, match=r"images/build\.sh"):
        DockerRuntime().start(_spec(tmp_path, image="ainb/none:0"))
