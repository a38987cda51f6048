"""The Python client (api/client.py) against the real stack: the services the REST API
runs, called directly through the Temporal client."""

from __future__ import annotations

import asyncio

import pytest

from api.client import Ainb, ApiError
from domain.config import Settings
from tests.support import eventually_async
from worker.stack import Stack

pytestmark = pytest.mark.docker


def test_python_client_drives_a_notebook(stack: Stack, project: str, monkeypatch) -> None:
    for key, value in stack.env().items():
        if key.startswith("AINB_"):
            monkeypatch.setenv(key, value)

    async def scenario() -> None:
        ainb = await Ainb.connect(project, Settings.load())
        with pytest.raises(ApiError) as refused:
            await ainb.create(
                {"name": "py", "framework": {"id": "cobol"},
                 "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}
            )  # fmt: skip
        assert refused.value.status == 422 and refused.value.field == "framework.id"

        nb = await ainb.create(
            {"name": "py", "framework": {"id": "python"}, "labels": {"via": "python"},
             "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}
        )  # fmt: skip
        assert nb.spec.framework.version == "3.11"  # the catalog's default
        nb = await ainb.wait(nb.id, "RUNNING", within_s=120)
        assert nb.status.url
        assert nb.id in {n.id for n in await ainb.list(state="RUNNING")}
        nb = await ainb.set_labels(nb.id, {"via": "python", "tier": "gold"})
        assert nb.spec.labels == {"via": "python", "tier": "gold"}
        assert nb.status.last_command_by and nb.status.last_command_by.token_id == "temporal-client"

        await ainb.stop(nb.id)
        await ainb.wait(nb.id, "STOPPED", within_s=120)
        with pytest.raises(ApiError) as conflict:
            await ainb.stop(nb.id)
        assert conflict.value.status == 409
        assert (await ainb.usage(nb.id)).total_minutes >= 1

        await ainb.start(nb.id)
        await ainb.wait(nb.id, "RUNNING", within_s=120)
        await ainb.delete(nb.id)

        async def get_error() -> ApiError | None:
            try:
                await ainb.get(nb.id)
            except ApiError as err:
                return err
            return None

        gone = await eventually_async(
            get_error, timeout=120, interval=0.2, what=f"GET {nb.id} to be refused"
        )
        assert gone.status == 404

    asyncio.run(scenario())
