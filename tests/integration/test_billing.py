"""Billing on the real stack: usage endpoints, host loss billed to the last heartbeat, and
a worker killed between a ledger write and its acknowledgement."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from domain.billing import billed_minutes
from ledger.usage import UsageLedger
from tests.integration.chaos_support import check_billing, own_stack
from tests.integration.conftest import Notebooks
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker

# Every test here runs twice: billing to the embedded SQLite ledger and to PostgreSQL. A
# checkpoint every 2 s and a short history make the workflows continue as new while
# RUNNING, within a test's time.
BILLING_ENV = {"AINB_CHECKPOINT_S": "2", "AINB_MAX_HISTORY_EVENTS": "150"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def billed(request, tmp_path_factory, docker_client) -> Iterator[tuple[Stack, Notebooks]]:
    project = f"bill-{uuid.uuid4().hex[:8]}"
    url = request.getfixturevalue("pg_server").new_database() if request.param != "sqlite" else None
    data = tmp_path_factory.mktemp(f"billing-{request.param}")
    with own_stack(data, docker_client, project, BILLING_ENV, ledger_url=url) as stack:
        with stack.api_client(timeout=60) as api:
            yield stack, Notebooks(api, project, docker_client)


@pytest.fixture
def notebooks(billed) -> Notebooks:
    return billed[1]


@pytest.fixture
def stack(billed) -> Stack:
    return billed[0]


def _usage(notebooks: Notebooks, nid: str) -> dict:
    r = notebooks.api.get(f"{notebooks.base}/{nid}/usage")
    assert r.status_code == 200, r.text
    return r.json()


def _final_record_written(stack: Stack, project: str, notebook_id: str) -> bool:
    # Through the ledger's own store, on whichever database the stack bills to.
    return any(r.final for r in UsageLedger(stack.ledger).records(project, notebook_id))


def test_usage_and_patch(notebooks: Notebooks) -> None:
    nb = notebooks.create(name="billed", timeout=3600)
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING")
    assert nb["status"]["auto_stop_at"]
    live = _usage(notebooks, nid)
    assert live["current"]["minutes"] == 1 and live["current"]["flavor"] == "ai1-1-cpu"
    r = notebooks.api.patch(f"{notebooks.base}/{nid}", json={"timeout": 5})
    assert r.status_code == 422 and r.json()["field"] == "timeout"
    r = notebooks.api.patch(f"{notebooks.base}/{nid}", json={"timeout_auto_restart": True})
    assert r.status_code == 200 and r.json()["spec"]["timeout_auto_restart"] is True
    time.sleep(2)
    assert notebooks.command(nid, "stop").status_code == 202
    nb = notebooks.wait(nid, "STOPPED")
    usage = _usage(notebooks, nid)
    [period] = usage["periods"]
    started = datetime.fromisoformat(period["started_at"])
    ended = datetime.fromisoformat(period["ended_at"])
    assert period["minutes"] == billed_minutes(ended - started) == 1
    assert usage["current"] is None and usage["total_minutes"] == 1
    assert nb["status"]["billed_minutes_total"] == 1

    summary = notebooks.api.get(f"/v1/projects/{notebooks.project}/usage").json()
    mine = [n for n in summary["by_notebook"] if n["notebook_id"] == nid]
    assert mine == [
        {"notebook_id": nid, "flavor": "ai1-1-cpu", "kind": "cpu", "minutes": 1, "unit_minutes": 1}
    ]
    assert any(f["flavor"] == "ai1-1-cpu" for f in summary["by_flavor"])
    # usage survives deletion
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")
    assert _usage(notebooks, nid)["total_minutes"] == 1


def test_killed_between_ledger_write_and_ack_counts_once(
    notebooks: Notebooks, stack: Stack
) -> None:
    nb = notebooks.create(name="ledger-crash")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    # the control worker now pauses after each ledger commit: kill it there
    stack.kill("control-worker")
    stack.extra_env["AINB_FAILPOINT_AFTER_LEDGER_WRITE_S"] = "30"
    stack.start_control_worker()
    assert notebooks.command(nid, "stop").status_code == 202
    eventually(
        lambda: _final_record_written(stack, notebooks.project, nid),
        timeout=60,
        what="the final record to be written",
    )
    stack.kill("control-worker", signal.SIGKILL)
    del stack.extra_env["AINB_FAILPOINT_AFTER_LEDGER_WRITE_S"]
    stack.start_control_worker()
    notebooks.wait(nid, "STOPPED")
    usage = _usage(notebooks, nid)
    [period] = usage["periods"]
    length = datetime.fromisoformat(period["ended_at"]) - datetime.fromisoformat(
        period["started_at"]
    )
    assert usage["total_minutes"] == period["minutes"] == billed_minutes(length)
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


def test_host_lost_is_billed_to_the_last_heartbeat(notebooks: Notebooks, stack: Stack) -> None:
    nb = notebooks.create(name="lost-host")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    time.sleep(3)
    killed_at = time.time()
    stack.kill("host-agent")  # kill -9: heartbeats stop, the container keeps running
    try:
        lost = time.monotonic()
        nb = notebooks.wait(nid, "ERROR", timeout=120)
        noticed_after = time.monotonic() - lost
        assert nb["status"]["info"]["code"] == "HOST_LOST"
        # bound: heartbeat timeout (5 s) + pickup timeout + a retry
        assert noticed_after < 5 + 15 + 15, noticed_after
        # The workflow shows ERROR, then writes the period's last record to the ledger.
        periods = eventually(
            lambda: _usage(notebooks, nid)["periods"],
            timeout=10,
            interval=0.2,
            retry_on=(),
            what="the period's last record",
        )
        [period] = periods
        ended = datetime.fromisoformat(period["ended_at"]).timestamp()
        assert killed_at - 2.5 <= ended <= killed_at + 0.5  # the last heartbeat, not the notice
        started = datetime.fromisoformat(period["started_at"])
        assert period["minutes"] == billed_minutes(timedelta(seconds=ended - started.timestamp()))
    finally:
        stack.start_host_agent()
        for c in notebooks.containers(nid):
            c.remove(force=True)
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


def test_continue_as_new_while_running_bills_every_minute_once(
    notebooks: Notebooks, stack: Stack
) -> None:
    nb = notebooks.create(name="long-history")
    nid = nb["id"]
    notebooks.wait(nid, "RUNNING")
    first_run = _run_id(stack, notebooks.project, nid)
    # Checkpoints every 2 s grow the history past its limit: the workflow continues as new,
    # carrying its billing meter whole into the next run.
    eventually(
        lambda: _run_id(stack, notebooks.project, nid) != first_run,
        timeout=120,
        interval=1,
        what="the workflow to continue as new while RUNNING",
    )
    assert notebooks.get(nid).json()["status"]["state"] == "RUNNING"
    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    [check] = check_billing(stack, notebooks.project, [nid])
    assert not check.problems, (check.problems, check.events)
    assert check.billed == check.expected >= 1
    assert _usage(notebooks, nid)["total_minutes"] == check.billed
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")


def _run_id(stack: Stack, project: str, nid: str) -> str:
    import asyncio

    from temporalio.client import Client

    from domain.ids import workflow_id

    async def describe() -> str:
        client = await Client.connect(stack.temporal_address)
        return (await client.get_workflow_handle(workflow_id(project, nid)).describe()).run_id

    return asyncio.run(describe())
