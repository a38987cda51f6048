"""Billing on the real stack: usage endpoints, host loss billed to the last heartbeat, and
a worker killed between a ledger write and its acknowledgement."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from domain.billing import billed_minutes
from tests.integration.conftest import Notebooks
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker


def _usage(notebooks: Notebooks, nid: str) -> dict:
    r = notebooks.api.get(f"{notebooks.base}/{nid}/usage")
    assert r.status_code == 200, r.text
    return r.json()


def _final_record_written(ledger: Path, notebook_id: str) -> bool:
    """Read through SQLite (a commit may still be in the WAL), on a connection closed at
    once: a plain open() and close() of a database file this process also holds would
    drop that process's SQLite locks."""
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT COUNT(*) FROM usage WHERE notebook_id = ? AND final = 1", [notebook_id]
        ).fetchone()
    return bool(row and row[0])


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
    ledger = stack.data_dir / "ledger.sqlite"
    eventually(
        lambda: _final_record_written(ledger, nid),
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
