"""The state table, cell by cell: every state and command, and every state and event, of
``domain.lifecycle`` against docs/lifecycle.md, and against the lifecycle's invariants."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain import codes
from domain.lifecycle import (
    COMMAND_TABLE,
    EVENT_TABLE,
    Event,
    command_reaction,
    describe,
    describe_command,
    exit_event,
    outcome,
    react,
    render_markdown,
)
from domain.states import IDLE_STATES, Command, NotebookState, Outcome

S = NotebookState
E = Event
DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"
ENDS = IDLE_STATES | {S.DELETED}
USER_EVENTS = {E.START_FAILED_USER, E.EXITED_ERROR, E.CONTAINER_GONE, E.SAVE_FAILED}
PLATFORM_EVENTS = {E.START_FAILED_PLATFORM, E.WATCH_FAILED, E.HOST_LOST, E.WORKFLOW_CLOSED}


def _doc_rows(first_header: str) -> dict[str, dict[str, str]]:
    """The page's table whose header starts with ``first_header``, as row → column → cell."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


COMMAND_CELLS = [(s, c) for s in NotebookState for c in Command]
EVENT_CELLS = [(s, e) for s in NotebookState for e in Event]


@pytest.mark.parametrize(("state", "command"), COMMAND_CELLS)
def test_command_cell_is_on_the_page(state: NotebookState, command: Command) -> None:
    assert _doc_rows("now")[state.value][command.value] == describe_command(state, command)


@pytest.mark.parametrize(("state", "event"), EVENT_CELLS)
def test_event_cell_is_on_the_page(state: NotebookState, event: Event) -> None:
    assert _doc_rows("event")[event.value][state.value] == describe(react(state, event))


def test_the_page_shows_the_whole_table() -> None:
    text = DOC.read_text()
    for table in render_markdown().split("\n\n"):
        assert table.strip() in text


@pytest.mark.parametrize(("state", "command"), COMMAND_CELLS)
def test_command_cell_keeps_the_rules(state: NotebookState, command: Command) -> None:
    verdict = outcome(state, command)
    reaction = command_reaction(state, command)
    if state == S.DELETED:
        assert verdict == Outcome.GONE
    if verdict != Outcome.PROCEED:
        assert reaction.ignored, "only a command that proceeds changes anything"
        return
    assert not reaction.ignored
    if command == Command.START:
        assert state in IDLE_STATES and reaction.now == S.STARTING
    elif command == Command.STOP:
        assert reaction.now == S.STOPPING and reaction.then == S.STOPPED
        assert reaction.code == codes.STOPPED_BY_USER and not reaction.restart
    else:
        assert reaction.then == S.DELETED
        # A stop under way finishes first; anything else begins the delete at once.
        assert reaction.now == (None if state == S.STOPPING else S.DELETING)


@pytest.mark.parametrize(("state", "event"), EVENT_CELLS)
def test_event_cell_keeps_the_rules(state: NotebookState, event: Event) -> None:
    reaction = react(state, event)
    if state == S.DELETED:
        assert reaction.ignored, "nothing happens to a deleted notebook"
    if reaction.ignored:
        assert (state, event) not in EVENT_TABLE
        return
    if reaction.now == S.RUNNING:
        # Only a start that got its editor answering is billed (I4).
        assert (state, event) == (S.STARTING, E.READY)
    if reaction.now == S.STOPPING:
        assert reaction.then in ENDS, "a stop always says where it ends"
    if reaction.then is not None:
        assert reaction.then in ENDS
        if event in USER_EVENTS:
            assert reaction.then == S.FAILED
        if event in PLATFORM_EVENTS and reaction.then != S.DELETED:
            assert reaction.then == S.ERROR
    if reaction.now in (S.FAILED, S.ERROR):
        assert reaction.then is None
        assert reaction.now == (S.FAILED if event in USER_EVENTS else S.ERROR)
    assert not reaction.restart or (reaction.then == S.STOPPED and event == E.TIMEOUT_RESTART)
    if state == S.DELETING and event != E.WORKFLOW_CLOSED:
        # A delete ends deleted, or FAILED with its data kept (never silently stopped).
        assert reaction.now in (None, S.DELETED, S.FAILED) and reaction.then in (None, S.DELETED)


def test_every_state_but_deleted_has_a_way_out() -> None:
    for state in NotebookState:
        if state == S.DELETED:
            continue
        by_command = any(
            COMMAND_TABLE[state][c] == Outcome.PROCEED and command_reaction(state, c).now
            for c in Command
        )
        by_event = any(react(state, e).now not in (None, state) for e in Event)
        assert by_command or by_event, state


def test_sync_failed_keeps_what_it_says_when_closed() -> None:
    assert react(S.FAILED, E.WORKFLOW_CLOSED, code=codes.SYNC_FAILED).ignored
    assert react(S.FAILED, E.WORKFLOW_CLOSED, code="EXIT_CODE_1").now == S.ERROR


def test_events_named_from_what_the_workflow_sees() -> None:
    assert exit_event(0) == E.EXITED_OK
    assert exit_event(3) == E.EXITED_ERROR
    assert exit_event(None) == E.CONTAINER_GONE
