"""STOPPING and DELETING: the container gone, its capacity given back, the data pushed
until storage has it, the host's copy removed; what cannot be saved stays, listed."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from domain import activity_names as A
    from domain import codes
    from domain.ids import CONTROL_TASK_QUEUE, host_task_queue
    from domain.left_data import describe_left, left_targets
    from domain.lifecycle import Event, react
    from domain.messages import (
        DeleteWorkspaceInput,
        Ending,
        StopContainerInput,
        StopContainerResult,
    )
    from domain.states import NotebookState
    from domain.status import HostData, Info, UnsavedItem

from workflows.notebook import events
from workflows.notebook.context import RunContext, default_ending
from workflows.notebook.fleet_calls import release_capacity
from workflows.notebook.host_calls import HostLost, host_activity, remove_local_data
from workflows.notebook.syncs import save

S = NotebookState


async def teardown(nb: RunContext) -> None:
    """The stop sequence: container gone, data pushed, local data removed (I2, I3).
    What a push could not save for good stays on the host, listed (SYNC_FAILED)."""
    m, st, tuning = nb.m, nb.status, nb.inp.tuning
    unsaved: list[UnsavedItem] = []
    if m.task_queue is not None:
        try:
            stopped = await host_activity(
                nb,
                A.STOP_CONTAINER,
                StopContainerInput(ref=nb.ref, grace_s=tuning.stop_grace_s),
                result_type=StopContainerResult,
                start_to_close=timedelta(seconds=tuning.stop_grace_s + 60),
                attempts=0,
                failure_code=codes.INTERNAL_ERROR,
            )
            if stopped.existed:
                st.last_stopped_at = workflow.now()
            # The container is gone: its capacity goes back at once, before the push (I5).
            await release_capacity(nb)
            unsaved = await _push_data(nb)
            if unsaved:
                st.left_on_host = HostData(
                    host=st.host or "",
                    reason="a push failed for a reason retries cannot fix",
                    since=workflow.now(),
                    items=unsaved,
                )
            if not nb.left_here():
                await remove_local_data(nb)
        except HostLost:
            events.host_lost(nb, "the host stopped answering while the notebook was stopping")
            if not nb.deleting():
                return
        st.container = None
        st.endpoint = None
        m.task_queue = None
    await release_capacity(nb)  # queued, or never launched

    left = st.left_on_host if nb.keeps_data else None
    if nb.deleting():
        if left is not None and m.force_delete:
            await drop_left_data(nb, left)
        elif left is not None:
            # Unsaved data stops a delete: only ?force=true drops it.
            result = "failed" if unsaved else await save_left_data(nb, deleting=True)
            if result == "unreachable" and not left.items:
                # What a lost host may hold is not known to be anything: its last
                # checkpoint is what remains (I2), and the delete goes on.
                m.dropped = f"what host {left.host}, lost, may still hold"
                st.left_on_host = None
            elif result != "saved":
                m.delete_after_stop = False
                events.save_failed(nb, result, deleting=True)
                return
        nb.transition(S.DELETING, Info(message="removing the notebook's data"))
        await _delete_workspace(nb)
        nb.apply(react(S.DELETING, Event.DATA_REMOVED), _deleted_info(nb))
        return

    if left is not None and (unsaved or m.retry_save or not left.items):
        # This stop's own failure; a datasync push of a SYNC_FAILED notebook; or what
        # a lost host held, which a start stopped early did not get to save.
        m.retry_save = False
        result = "failed" if unsaved else await save_left_data(nb, deleting=False)
        if result == "failed" or (result == "unreachable" and left.items):
            events.save_failed(nb, result, deleting=False)
            return
        if result == "saved":
            m.ending = m.ending or Ending(
                state=S.STOPPED,
                info=Info(
                    code=codes.STOPPED_BY_USER, message="the data left on the host was saved"
                ),
            )
    ending = m.ending or default_ending()
    nb.transition(ending.state, ending.info)
    if m.restart_after_stop and ending.state == S.STOPPED:
        m.restart_after_stop = False
        nb.transition(S.STARTING, Info(message="restarting after its timeout (auto-restart)"))


async def _delete_workspace(nb: RunContext) -> None:
    ws = nb.status.workspace
    assert ws is not None
    if nb.m.keep_workspace:
        return
    await workflow.execute_activity(
        A.DELETE_WORKSPACE,
        DeleteWorkspaceInput(ref=nb.ref, bucket=ws.bucket, prefix=ws.prefix),
        task_queue=CONTROL_TASK_QUEUE,
        start_to_close_timeout=timedelta(minutes=30),
        heartbeat_timeout=timedelta(seconds=20),
        retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
    )
    ws.saved = False


def _deleted_info(nb: RunContext) -> Info:
    dropped = nb.m.dropped
    return Info(message=f"deleted; dropped {dropped}" if dropped else "deleted")


async def _push_data(nb: RunContext) -> list[UnsavedItem]:
    """Push what was fully pulled, retrying while storage is unreachable: a stop is
    never reported done before the data is in object storage (I1, I2). Returns what
    could not be saved for a reason retries cannot fix (kept on the host)."""
    if not nb.m.container_launched:
        return []  # nothing ran, so nothing changed since the pull
    deleting_for_good = nb.deleting() and not nb.m.keep_workspace
    ws = nb.status.workspace
    assert ws is not None
    unsaved: list[UnsavedItem] = []
    # One at a time: each retries on its own until storage takes it.
    for index, volume in enumerate(nb.inp.spec.volumes):
        status = nb.status.volumes[index]
        if volume.pushed and status.pulled:
            if status.repull:
                # A pull while RUNNING did not finish: finish it (it keeps local
                # changes) so a push cannot take missing files for deleted ones.
                if item := await save(nb, index, "pull"):
                    unsaved.append(item)
                    continue
                status.repull = False
            if item := await save(nb, index, "push"):
                unsaved.append(item)
            elif deleting_for_good and nb.keeps_data:
                if item := await save(nb, index, "push", preserved=True):
                    unsaved.append(item)
    if ws.restored and not deleting_for_good:
        if item := await save(nb, None, "push"):
            unsaved.append(item)
    return unsaved


async def save_left_data(nb: RunContext, *, deleting: bool) -> str:
    """Push what an earlier run left on a host (a lost host, a push that failed for
    good), adding to storage without deleting anything there; then remove it.
    "saved", "failed" (status.left_on_host lists what stays) or "unreachable" (the
    host does not answer now; the data stays listed)."""
    left = nb.status.left_on_host
    assert left is not None
    queue = host_task_queue(left.host)
    nb.set_info(Info(message=f"saving the data an earlier run left on host {left.host}"))
    drop_workspace = deleting and not nb.m.keep_workspace
    targets = left_targets(left, nb.inp.spec.volumes, drop_workspace=drop_workspace)
    unsaved: list[UnsavedItem] = []
    if not targets:
        # Nothing there is worth keeping (a delete drops the workspace): only tidy up.
        await drop_left_data(nb, left)
        nb.m.dropped = ""
        return "saved"
    try:
        for index in targets:
            item = await save(nb, index, "push", task_queue=queue, keep_remote=True)
            if item is None and index is not None and drop_workspace:
                item = await save(nb, index, "push", task_queue=queue, preserved=True)
            if item is not None:
                unsaved.append(item)
        if not unsaved:
            await remove_local_data(nb, queue)
    except HostLost:
        nb.set_info(
            Info(
                message=f"host {left.host}, which holds data of an earlier run, does not "
                "answer: it is saved once the host is back"
            )
        )
        return "unreachable"
    if unsaved:
        nb.status.left_on_host = left.model_copy(update={"items": unsaved, "since": workflow.now()})
        return "failed"
    nb.status.left_on_host = None
    return "saved"


async def drop_left_data(nb: RunContext, left: HostData) -> None:
    """DELETE ?force=true: remove what could not be saved, and say so."""
    nb.m.dropped = describe_left(left)
    try:
        await remove_local_data(nb, host_task_queue(left.host))
    except HostLost:
        nb.m.dropped += f" (host {left.host} does not answer: its copy is not removed)"
    nb.status.left_on_host = None
