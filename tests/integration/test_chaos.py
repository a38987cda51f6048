"""Chaos: many lifecycles with workspace writes, several at once, while the control
worker and the host agent are killed (-9) at random moments and restarted. Every notebook
must still end where its commands lead, leave no container, lose no byte, and be billed
exactly its RUNNING time (I2, I3, I4)."""

from __future__ import annotations

import logging
import os
import random
import time
import traceback
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.integration.chaos_support import (
    Api,
    Chaos,
    Editor,
    Gone,
    check_billing,
    managed_containers,
    own_stack,
    running,
    saved_file,
)
from worker.stack import Stack

pytestmark = pytest.mark.docker
log = logging.getLogger("ainb.chaos")

# Seeded so that a failing run can be replayed: AINB_CHAOS_SEED=<the logged seed>.
SEED = int(os.environ.get("AINB_CHAOS_SEED", "20250611"))
WORKERS = 4
ROUNDS = 5
# Lifecycles got fast enough that five rounds could end before the chaos thread had killed
# anything four times: each worker goes on past ROUNDS until it has, up to MAX_ROUNDS.
MIN_KILLS = 4
MAX_ROUNDS = 12
# What the chaos thread kills, in an order the seed shuffles: each part several times,
# and both at once (a whole-machine restart of the workers).
PLAN = ["control-worker"] * 3 + ["host-agent"] * 3 + ["both"] * 2
# A step takes seconds, tens of seconds when it meets a kill (a workflow task times out
# after 10 s, a host activity's heartbeat after 5 s, then retries): 2 minutes is a stuck one.
STEP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def chaos_project() -> str:
    # Our own: the no-container check goes by this label, which must be only ours.
    return f"chaos-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory, docker_client, chaos_project):
    # A host agent killed for a few seconds restarts well within its pickup timeout: 30 s
    # (not the shared stack's 15 s) so that two cores busy with four editors starting do
    # not turn a slow restart into a lost host, which is not what this test is about.
    env = {"AINB_HOST_PICKUP_TIMEOUT_S": "30"}
    with own_stack(tmp_path_factory.mktemp("chaos"), docker_client, chaos_project, env) as s:
        yield s


@dataclass
class Lifecycle:
    tag: str
    nid: str = ""
    step: str = "create"
    seen: list[str] = field(default_factory=list)
    path: str = ""
    written: bytes = b""
    saved: bool = False  # the file was in object storage once STOPPED
    back: bool = False  # the editor served it again after the restart
    seconds: float = 0.0
    error: str = ""


def _content(rng: random.Random, tag: str) -> str:
    # Unique per lifecycle: another notebook's file, or an older one, cannot pass for it.
    body = "".join(rng.choice("0123456789abcdef") for _ in range(48_000))
    return f"{tag} {uuid.uuid4()}\n" + "\n".join(body[i : i + 80] for i in range(0, 48_000, 80))


def _lifecycle(stack: Stack, s3, docker_client, project: str, worker: int, rnd: int) -> Lifecycle:
    lc = Lifecycle(tag=f"w{worker}r{rnd}")
    rng = random.Random(f"{SEED}-{lc.tag}")
    api = Api(stack, project)
    began = time.monotonic()
    path = lc.path = f"work/{lc.tag}.txt"
    try:
        nb = api.create(lc.tag)
        lc.nid = nid = nb["id"]
        lc.step = "first start"
        nb = api.wait(nid, "RUNNING", timeout=STEP_TIMEOUT_S, seen=lc.seen)
        editor = Editor(nb)
        content = _content(rng, lc.tag)
        lc.written = content.encode()
        lc.step = "write"
        editor.write(path, content)
        assert editor.read(path) == content, f"{nid}: the editor did not serve what it took"

        lc.step = "stop"
        api.command(nid, "stop", {"STOPPING", "STOPPED"})
        nb = api.wait(nid, "STOPPED", timeout=STEP_TIMEOUT_S, seen=lc.seen)
        assert nb["status"]["info"]["code"] == "STOPPED_BY_USER", nb["status"]
        assert managed_containers(docker_client, project, nid) == [], (
            f"{nid}: expected no container once STOPPED"
        )
        lc.saved = saved_file(s3, project, nid, path) == lc.written
        assert lc.saved, f"{nid}: expected {path} in object storage once STOPPED (I2)"

        lc.step = "second start"
        api.command(nid, "start", {"STARTING", "RUNNING"})
        nb = api.wait(nid, "RUNNING", timeout=STEP_TIMEOUT_S, seen=lc.seen)
        lc.step = "read back"
        got = Editor(nb).read(path)
        lc.back = got == content
        assert lc.back, (
            f"{nid}: expected {path} back after the restart; the editor has "
            f"{'no such file' if got is None else f'{len(got)} other characters'}"
        )

        lc.step = "delete"
        api.command(nid, "delete", {"DELETING", "DELETED"})
        api.wait(nid, "DELETED", timeout=STEP_TIMEOUT_S, seen=lc.seen)
        lc.step = "done"
    except Exception as err:  # every lifecycle reports; the test asserts on all
        status = ""
        if lc.nid:
            try:
                status = str(api.get(lc.nid)["status"])
            except Exception as again:
                status = f"(no status: {again!r})"
        where = traceback.extract_tb(err.__traceback__)[-1]
        lc.error = (
            f"{lc.tag} {lc.nid} failed at {lc.step} ({where.filename}:{where.lineno}): {err}\n"
            f"status now: {status}"
        )
    finally:
        lc.seconds = time.monotonic() - began
        api.close()
    log.warning("lifecycle %s %s: %s in %.0fs", lc.tag, lc.nid, lc.step, lc.seconds)
    return lc


def test_lifecycles_survive_workers_killed_at_random(
    chaos_stack: Stack, chaos_project: str, docker_client
) -> None:
    stack, project = chaos_stack, chaos_project
    s3 = stack.s3_client()
    rng = random.Random(SEED)
    plan = list(PLAN)
    rng.shuffle(plan)
    chaos = Chaos(stack, rng, plan)
    log.warning("chaos seed %d, plan %s", SEED, plan)
    began = time.monotonic()
    chaos.start()

    def worker(w: int) -> list[Lifecycle]:
        ran: list[Lifecycle] = []
        while len(ran) < ROUNDS or (chaos.kills < MIN_KILLS and len(ran) < MAX_ROUNDS):
            ran.append(_lifecycle(stack, s3, docker_client, project, w, len(ran)))
        return ran

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            done = [lc for batch in pool.map(worker, range(WORKERS)) for lc in batch]
    finally:
        chaos.stop()
    elapsed = time.monotonic() - began
    # Whatever the chaos thread was doing when the lifecycles ended, both parts run now.
    for name, start in (
        ("control-worker", stack.start_control_worker),
        ("host-agent", stack.start_host_agent),
    ):
        if not running(stack, name):
            start()
    report = "\n".join(chaos.events)
    log.warning("chaos done in %.0fs:\n%s", elapsed, report)
    assert chaos.error is None, f"the chaos thread itself failed: {chaos.error!r}"
    assert chaos.kills >= MIN_KILLS, f"expected at least {MIN_KILLS} kills:\n{report}"
    assert len(done) >= WORKERS * ROUNDS

    # Every check runs, so that one finding does not hide another; all are reported.
    problems = [lc.error for lc in done if lc.error]
    # Every byte written was read back after the restart, or is at least in storage.
    lost = [
        lc.nid
        for lc in done
        if lc.written and not lc.back and saved_file(s3, project, lc.nid, lc.path) != lc.written
    ]
    if lost:
        problems.append(f"expected every written file back or in storage; lost in {lost}")
    log.warning("%d bytes written", sum(len(lc.written) for lc in done))
    api = Api(stack, project)
    for lc in done:
        if lc.step == "done":
            try:
                api.get(lc.nid)
                problems.append(f"{lc.nid}: expected 404 once DELETED")
            except Gone:
                pass
    api.close()
    left = managed_containers(docker_client, project)
    if left:
        problems.append(
            "expected no managed container, found "
            + ", ".join(f"{c.name} ({c.status})" for c in left)
        )
    host_dirs = stack.data_dir / "hosts" / "local" / "notebooks"
    leftovers = [lc.nid for lc in done if lc.step == "done" and (host_dirs / lc.nid).exists()]
    if leftovers:
        problems.append(f"expected no host-local data of deleted notebooks: {leftovers}")

    # The ledger against the histories: each RUNNING period of each notebook, from the
    # NotebookState upserts the workflow itself recorded (see state_changes), billed
    # ceil(seconds / 60) minutes, once. A history is Temporal's durable account of what
    # the workflow did, whatever crashed (a replay adds no event): an account apart from
    # the metering code and from the ledger's own timestamps, which that code wrote.
    checks = check_billing(stack, project, [lc.nid for lc in done if lc.nid])
    for c in checks:
        spans = [(a.isoformat(), b and b.isoformat()) for a, b in c.periods]
        if c.problems:
            problems.append(
                f"billing of {c.nid}: {c.problems}; RUNNING in history {spans}\n"
                + "\n".join(c.events)
            )
        elif c.notes:
            warnings.warn(
                f"billing of {c.nid}: same minutes, other times: {c.notes}\n" + "\n".join(c.events),
                stacklevel=1,
            )
    expected_periods = {lc.nid: 2 for lc in done if lc.step in ("delete", "done")}
    short = [c.nid for c in checks if c.nid in expected_periods and len(c.periods) != 2]
    if short:
        problems.append(f"expected two RUNNING periods each, in history: {short}")
    log.warning("billing: %d notebooks, %d min in all", len(checks), sum(c.billed for c in checks))
    assert not problems, f"seed {SEED}; chaos:\n{report}\n\n" + "\n\n".join(problems)
