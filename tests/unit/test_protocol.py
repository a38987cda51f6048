"""The names in domain/protocol.py are the ones the workflows answer to, the typed calls
of temporal_client cover every handler with the workflow's own argument and answer
types, and the values never change (histories and running workflows hold them)."""

from __future__ import annotations

import inspect
import typing

import pytest
from temporalio import workflow

from domain import protocol as P
from domain.config import TUNED, Settings
from domain.fleet import queued_message
from domain.messages import Tuning
from temporal_client import fleet_calls, notebook_calls
from workflows.fleet import FleetWorkflow
from workflows.notebook import NotebookWorkflow

NOTEBOOK = workflow._Definition.must_from_class(NotebookWorkflow)
FLEET = workflow._Definition.must_from_class(FleetWorkflow)


def test_the_values_never_change() -> None:
    assert (P.NOTEBOOK_WORKFLOW_TYPE, P.FLEET_WORKFLOW_TYPE) == ("Notebook", "Fleet")
    assert (P.FLEET_WORKFLOW_ID, P.MEMO_KEY) == ("ainb-fleet", "notebook")
    assert P.NOTEBOOK_UPDATES == (
        "start",
        "stop",
        "patch",
        "datasync",
        "set_labels",
        "rotate_token",
        "delete",
    )
    assert P.NOTEBOOK_QUERIES == ("get", "carry")
    assert P.NOTEBOOK_SIGNALS == ("capacity_granted",)
    assert P.FLEET_UPDATES == (
        "request",
        "release",
        "register_host",
        "host_heartbeat",
        "configure",
    )
    assert P.FLEET_QUERIES == ("view", "position", "project_gpus")
    assert P.ERROR_TYPES == ("CONFLICT", "INVALID", "FORBIDDEN", "GONE")
    assert P.sync_activity_id(P.sync_key(None), "push", "0123abcd") == (
        "sync:workspace:push:0123abcd"
    )
    assert P.sync_activity_id(P.sync_key(2), "pull", "ffff0000") == "sync:volume-2:pull:ffff0000"


def test_the_workflows_answer_to_the_protocol_names() -> None:
    assert NOTEBOOK.name == P.NOTEBOOK_WORKFLOW_TYPE
    assert set(NOTEBOOK.updates) == set(P.NOTEBOOK_UPDATES)
    assert set(NOTEBOOK.queries) == set(P.NOTEBOOK_QUERIES)
    assert {name for name in NOTEBOOK.signals if name} == set(P.NOTEBOOK_SIGNALS)
    assert FLEET.name == P.FLEET_WORKFLOW_TYPE
    assert set(FLEET.updates) == set(P.FLEET_UPDATES)
    assert set(FLEET.queries) == set(P.FLEET_QUERIES)


def _calls(module, defn) -> list[tuple[str, object, object]]:
    handlers = {**defn.updates, **defn.queries}
    return [(name, getattr(module, name, None), handlers[name]) for name in sorted(handlers)]


@pytest.mark.parametrize(
    ("name", "call", "handler"),
    _calls(notebook_calls, NOTEBOOK) + _calls(fleet_calls, FLEET),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_one_typed_call_per_handler_with_the_workflows_types(name, call, handler) -> None:
    """A call of temporal_client named after each handler, taking (handle, *its args)
    and answering what the handler answers."""
    assert call is not None, f"temporal_client has no call for {name}"
    hints = typing.get_type_hints(call)
    params = [
        p for p in inspect.signature(call).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert [hints[p.name] for p in params[1:]] == list(handler.arg_types or [])
    assert hints["return"] == handler.ret_type


def test_a_sync_activity_id_parses_back() -> None:
    for key in (P.WORKSPACE_KEY, P.volume_key(0), P.volume_key(11)):
        for direction in ("push", "pull"):
            parsed = P.parse_sync_activity_id(P.sync_activity_id(key, direction, "a1b2c3d4"))
            assert parsed == P.SyncActivityId(key, direction, "a1b2c3d4")
    for other in ("1", "launch_container", "sync:workspace:push", "x:workspace:push:1"):
        assert P.parse_sync_activity_id(other) is None


def test_the_queued_message() -> None:
    assert queued_message(2, "1 x ai1-1-gpu (1 GPU, 8 vCPU, 45 GiB)") == (
        "queued: number 2 in line for 1 x ai1-1-gpu (1 GPU, 8 vCPU, 45 GiB); "
        "it starts as soon as a host has room"
    )


def test_settings_take_their_tuning_defaults_from_tuning() -> None:
    settings = Settings()
    for name in TUNED:
        assert getattr(settings, name) == Tuning.model_fields[name].default, name
    assert settings.tuning() == Tuning()
    changed = Settings(heartbeat_timeout_s=7, max_history_events=99)
    assert changed.tuning() == Tuning(heartbeat_timeout_s=7, max_history_events=99)
    # The workflow input's shape: every field of Tuning, no more.
    assert set(settings.tuning().model_dump()) == set(Tuning.model_fields)
