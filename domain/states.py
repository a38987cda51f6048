"""Notebook states and the command table of ``shared/spec/lifecycle.md``."""

from __future__ import annotations

from enum import StrEnum


class NotebookState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"


class Command(StrEnum):
    START = "start"
    STOP = "stop"
    DELETE = "delete"


class Outcome(StrEnum):
    """What a command does in a given state."""

    PROCEED = "proceed"  # the command changes the state
    NO_CHANGE = "no_change"  # accepted (202) but nothing to do: already under way
    CONFLICT = "conflict"  # the state forbids it (409)
    GONE = "gone"  # the notebook no longer exists (404)


S = NotebookState
IDLE_STATES = frozenset({S.STOPPED, S.FAILED, S.ERROR})
ACTIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})

_P, _N, _C, _G = Outcome.PROCEED, Outcome.NO_CHANGE, Outcome.CONFLICT, Outcome.GONE

# Rows are the lifecycle spec's table, column order: start, stop, delete.
COMMAND_TABLE: dict[NotebookState, dict[Command, Outcome]] = {
    S.STARTING: {Command.START: _C, Command.STOP: _P, Command.DELETE: _P},
    S.RUNNING: {Command.START: _C, Command.STOP: _P, Command.DELETE: _P},
    S.STOPPING: {Command.START: _C, Command.STOP: _N, Command.DELETE: _P},
    S.STOPPED: {Command.START: _P, Command.STOP: _C, Command.DELETE: _P},
    S.FAILED: {Command.START: _P, Command.STOP: _C, Command.DELETE: _P},
    S.ERROR: {Command.START: _P, Command.STOP: _C, Command.DELETE: _P},
    S.DELETING: {Command.START: _C, Command.STOP: _C, Command.DELETE: _N},
    S.DELETED: {Command.START: _G, Command.STOP: _G, Command.DELETE: _G},
}


def outcome(state: NotebookState, command: Command) -> Outcome:
    return COMMAND_TABLE[state][command]


def conflict_message(state: NotebookState, command: Command) -> str:
    hints = {
        Command.START: "it can be started only when STOPPED, FAILED or ERROR",
        Command.STOP: "it can be stopped only when STARTING, RUNNING or STOPPING",
        Command.DELETE: "it is already being deleted",
    }
    return f"cannot {command.value} a notebook that is {state.value}: {hints[command]}"
