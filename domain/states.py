"""Notebook states, commands and what a command may do; the tables that say which, in
which state, are in ``domain.lifecycle``."""

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
