"""The container a GPU notebook gets, as the real Docker engine records it: exactly the
granted device ids, the matching NVIDIA_VISIBLE_DEVICES, no network, and the hardening. (No GPU here,
so the container is created and inspected, not started.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from activities.runtime.base import LaunchSpec, Mount
from activities.runtime.docker_runtime import create_kwargs
from domain.config import JUPYTERLAB_IMAGE

pytestmark = pytest.mark.docker


def test_gpu_container_gets_exactly_its_devices(docker_client, tmp_path: Path) -> None:
    spec = LaunchSpec(
        notebook_id=uuid.uuid4().hex,
        project="gpu-test",
        image=JUPYTERLAB_IMAGE,
        env={"A": "1"},
        mounts=[Mount(source=tmp_path, target="/workspace/data", read_only=True)],
        workspace=tmp_path,
        run_dir=tmp_path,
        cpus=2,
        memory_bytes=2 * 2**30,
        gpus=2,
        gpu_ids=["1", "3"],
    )
    container = docker_client.containers.create(spec.image, **create_kwargs(spec))
    try:
        host = container.attrs["HostConfig"]
        [request] = host["DeviceRequests"]
        assert request["DeviceIDs"] == ["1", "3"] and request["Count"] == 0
        assert request["Capabilities"] == [["gpu"]] and request["Driver"] == "nvidia"
        assert "NVIDIA_VISIBLE_DEVICES=1,3" in container.attrs["Config"]["Env"]
        assert host["NanoCpus"] == 2 * 10**9 and host["Memory"] == 2 * 2**30
        assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]
        assert not host["CapAdd"]  # no capability at all
        assert host["SecurityOpt"] == ["no-new-privileges"] and host["PidsLimit"] == 4096
        assert host["NetworkMode"] == "none" and container.attrs["Config"]["User"] == "1000:1000"
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert set(mounts) == {"/workspace/data", "/run/ainb"}
        assert mounts["/workspace/data"]["RW"] is False
    finally:
        container.remove(force=True)
