"""The framework catalog's real ML framework: PyTorch (CPU) notebooks for both editors."""

from __future__ import annotations

import docker
import pytest

from domain.config import PYTORCH_IMAGES
from tests.integration.conftest import REQUIRE_DOCKER, Notebooks

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def pytorch_images(docker_client) -> None:
    missing = []
    for image in PYTORCH_IMAGES.values():
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        problem = f"images {missing} are missing: bash images/build-pytorch.sh"
        if REQUIRE_DOCKER:
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.mark.parametrize("editor", ["jupyterlab", "vscode"])
def test_pytorch_notebook_computes(notebooks: Notebooks, pytorch_images, editor: str) -> None:
    # No version: the catalog's default is used and shown.
    nb = notebooks.create(name=f"torch-{editor}", framework={"id": "pytorch"}, editor=editor)
    assert nb["spec"]["framework"] == {"id": "pytorch", "version": "2.13"}
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING", timeout=180)
    [container] = notebooks.containers(nid)
    assert container.image.tags == [PYTORCH_IMAGES[editor]]
    # The notebook's own Python (the one its kernels and terminals use) has torch.
    code, out = container.exec_run(
        [
            "/opt/ainb/venv/bin/python",
            "-c",
            "import numpy, torch; print(torch.__version__, "
            "int(torch.from_numpy(numpy.arange(4.0)).sum()))",
        ]
    )
    assert code == 0, out.decode()
    assert out.decode().split() == ["2.13.0+cpu", "6"]
    assert notebooks.delete(nid).status_code == 202
    notebooks.wait(nid, "DELETED")
