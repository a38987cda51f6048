"""/metrics on the API and on each worker answers in Prometheus text, and its numbers move
when a notebook starts and stops."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.chaos_support import Editor
from tests.integration.conftest import PROJECT_API_TOKEN, Notebooks
from tests.support import eventually
from worker.stack import Stack

pytestmark = pytest.mark.docker


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            # The parser names a counter's samples <name>_total whatever the exporter wrote
            # (the SDK writes none): compared here without it.
            out[(s.name.removesuffix("_total"), frozenset(s.labels.items()))] = s.value
    return out


def _sum(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _worker(stack: Stack, name: str) -> dict:
    r = httpx.get(stack.metrics_urls[name], timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return _samples(r.text)


def _api(stack: Stack) -> dict:
    with stack.api_client(timeout=30) as admin:
        r = admin.get("/metrics")
    assert r.status_code == 200, r.text
    return _samples(r.text)


def test_only_the_fleets_readers_scrape_the_api(stack: Stack) -> None:
    assert httpx.get(f"{stack.api_url}/metrics", timeout=10).status_code == 401
    operator = {"authorization": f"Bearer {PROJECT_API_TOKEN}"}
    assert httpx.get(f"{stack.api_url}/metrics", headers=operator, timeout=10).status_code == 403
    assert _api(stack)  # the administrator's token


def test_the_numbers_move_when_a_notebook_starts_and_stops(
    stack: Stack, notebooks: Notebooks
) -> None:
    project = notebooks.project
    control0, host0, api0 = (
        _worker(stack, "control-worker"),
        _worker(stack, "host-agent"),
        _api(stack),
    )
    # The Temporal SDK's own worker metrics are there beside ours.
    assert _sum(control0, "temporal_worker_task_slots_available") > 0
    assert _sum(host0, "temporal_worker_task_slots_available") > 0

    nb = notebooks.create(name="metered")
    nid = nb["id"]
    nb = notebooks.wait(nid, "RUNNING")
    Editor(nb).write("metered.txt", "x" * 100_000)

    control = _worker(stack, "control-worker")
    running = "ainb_notebook_transitions"
    assert _sum(control, running, state="RUNNING", project=project) == 1 + _sum(
        control0, running, state="RUNNING", project=project
    )
    ttr = "ainb_time_to_running_seconds_count"
    assert _sum(control, ttr) == _sum(control0, ttr) + 1
    for phase in ("queue", "pull", "launch", "ready"):
        name = "ainb_start_phase_seconds_count"
        assert _sum(control, name, phase=phase) == _sum(control0, name, phase=phase) + 1, phase

    def api_sees(state: str) -> dict | None:
        samples = _api(stack)
        return samples if _sum(samples, "ainb_notebooks", project=project, state=state) else None

    api = eventually(
        lambda: api_sees("RUNNING"), timeout=30, interval=1, what="RUNNING in /metrics"
    )
    assert _sum(api, "ainb_http_requests", kind="api") > _sum(
        api0, "ainb_http_requests", kind="api"
    )
    assert _sum(api, "ainb_http_requests", kind="gateway") > _sum(
        api0, "ainb_http_requests", kind="gateway"
    )
    assert _sum(api, "ainb_host_up", host=stack.host_name) == 1
    assert _sum(api, "ainb_scrape_source_up") == 3

    assert notebooks.command(nid, "stop").status_code == 202
    notebooks.wait(nid, "STOPPED")
    control = _worker(stack, "control-worker")
    assert _sum(control, running, state="STOPPED", project=project) == 1 + _sum(
        control0, running, state="STOPPED", project=project
    )
    host = _worker(stack, "host-agent")
    pushed = "ainb_sync_bytes"
    assert _sum(host, pushed, direction="push") >= _sum(host0, pushed, direction="push") + 100_000

    def billed() -> dict | None:
        samples = _api(stack)
        more = _sum(samples, "ainb_billed_minutes") > _sum(api0, "ainb_billed_minutes")
        gone = not _sum(samples, "ainb_notebooks", project=project, state="RUNNING")
        return samples if more and gone else None

    eventually(billed, timeout=30, interval=1, what="the billed minutes in /metrics")
    notebooks.delete(nid)
    notebooks.wait(nid, "DELETED")
