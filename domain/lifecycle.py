"""The state table as data: what each command and each event does in each state.

The notebook workflow asks these tables what to do and does it; `docs/lifecycle.md` shows
them (`render_markdown`), and `tests/unit/test_lifecycle_table.py` checks every cell of
both against the page and against the invariants. Pure: no Temporal here.

A reaction says which state the notebook enters at once (``now``; None: it stays where
it is) and, when that starts a stop, where the stop ends once the container is gone and
the data saved (``then``), with the ``status.info.code`` it ends with and whether it is
started again afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain import codes
from domain.states import Command, NotebookState, Outcome

S = NotebookState
C = Command


class Event(StrEnum):
    """What happens to a notebook without a command (the workflow notices it)."""

    READY = "the editor answers"
    START_FAILED_USER = "a start fails by the notebook's doing"  # its data, spec, quota
    START_FAILED_PLATFORM = "a start fails by the platform's doing"  # image, engine, storage
    EXITED_OK = "the editor exits 0"
    EXITED_ERROR = "the editor exits non-zero"
    CONTAINER_GONE = "the editor's container disappears"
    TIMEOUT = "RUNNING for its timeout"
    TIMEOUT_RESTART = "RUNNING for its timeout, with auto-restart"
    WATCH_FAILED = "watching the container fails past retries"
    HOST_LOST = "the host is lost"
    SAVE_FAILED = "a push fails for a reason retries cannot fix"
    DATA_REMOVED = "container, local data and (unless kept) the workspace removed"
    WORKFLOW_CLOSED = "the workflow is closed from outside"


@dataclass(frozen=True)
class Reaction:
    now: NotebookState | None  # the state entered at once; None: no change
    then: NotebookState | None = None  # where the stop that ``now`` begins ends
    code: str | None = None  # the ending's status.info.code (None: the event's own)
    restart: bool = False  # STARTING again once STOPPED

    @property
    def ignored(self) -> bool:
        return self.now is None and self.then is None


IGNORED = Reaction(now=None)


def _stop_then(end: NotebookState, code: str | None, *, restart: bool = False) -> Reaction:
    return Reaction(now=S.STOPPING, then=end, code=code, restart=restart)


# What a command does, beyond the command table's verdict (PROCEED cells only).
COMMAND_REACTIONS: dict[tuple[NotebookState, Command], Reaction] = {
    (S.STOPPED, C.START): Reaction(now=S.STARTING),
    (S.FAILED, C.START): Reaction(now=S.STARTING),
    (S.ERROR, C.START): Reaction(now=S.STARTING),
    (S.STARTING, C.STOP): _stop_then(S.STOPPED, codes.STOPPED_BY_USER),
    (S.RUNNING, C.STOP): _stop_then(S.STOPPED, codes.STOPPED_BY_USER),
    (S.STARTING, C.DELETE): Reaction(now=S.DELETING, then=S.DELETED),
    (S.RUNNING, C.DELETE): Reaction(now=S.DELETING, then=S.DELETED),
    # The stop under way finishes first: DELETING once stopped.
    (S.STOPPING, C.DELETE): Reaction(now=None, then=S.DELETED),
    (S.STOPPED, C.DELETE): Reaction(now=S.DELETING, then=S.DELETED),
    (S.FAILED, C.DELETE): Reaction(now=S.DELETING, then=S.DELETED),
    (S.ERROR, C.DELETE): Reaction(now=S.DELETING, then=S.DELETED),
}

_P, _N, _C, _G = Outcome.PROCEED, Outcome.NO_CHANGE, Outcome.CONFLICT, Outcome.GONE

# Column order: start, stop, delete.
COMMAND_TABLE: dict[NotebookState, dict[Command, Outcome]] = {
    S.STARTING: {C.START: _C, C.STOP: _P, C.DELETE: _P},
    S.RUNNING: {C.START: _C, C.STOP: _P, C.DELETE: _P},
    S.STOPPING: {C.START: _C, C.STOP: _N, C.DELETE: _P},
    S.STOPPED: {C.START: _P, C.STOP: _C, C.DELETE: _P},
    S.FAILED: {C.START: _P, C.STOP: _C, C.DELETE: _P},
    S.ERROR: {C.START: _P, C.STOP: _C, C.DELETE: _P},
    S.DELETING: {C.START: _C, C.STOP: _C, C.DELETE: _N},
    S.DELETED: {C.START: _G, C.STOP: _G, C.DELETE: _G},
}

E = Event
_ACTIVE = (S.STARTING, S.RUNNING, S.STOPPING)

# Cells not listed are ignored: the event cannot happen in that state, or changes nothing.
EVENT_TABLE: dict[tuple[NotebookState, Event], Reaction] = {
    (S.STARTING, E.READY): Reaction(now=S.RUNNING),
    (S.STARTING, E.START_FAILED_USER): _stop_then(S.FAILED, None),
    (S.STARTING, E.START_FAILED_PLATFORM): _stop_then(S.ERROR, None),
    (S.RUNNING, E.EXITED_OK): _stop_then(S.STOPPED, codes.EXITED),
    (S.RUNNING, E.EXITED_ERROR): _stop_then(S.FAILED, None),  # EXIT_CODE_N
    (S.RUNNING, E.CONTAINER_GONE): _stop_then(S.FAILED, codes.EXITED),
    (S.RUNNING, E.TIMEOUT): _stop_then(S.STOPPED, codes.TIMEOUT),
    (S.RUNNING, E.TIMEOUT_RESTART): _stop_then(S.STOPPED, codes.TIMEOUT, restart=True),
    (S.RUNNING, E.WATCH_FAILED): _stop_then(S.ERROR, None),
    # A run from before the STOP_WINS_RACES patch may see the editor's end after a stop
    # whose cancel was lost: the stop goes on, and ends the way the editor did.
    (S.STOPPING, E.EXITED_OK): Reaction(now=None, then=S.STOPPED, code=codes.EXITED),
    (S.STOPPING, E.EXITED_ERROR): Reaction(now=None, then=S.FAILED),
    (S.STOPPING, E.CONTAINER_GONE): Reaction(now=None, then=S.FAILED, code=codes.EXITED),
    (S.STOPPING, E.TIMEOUT): _stop_then(S.STOPPED, codes.TIMEOUT),
    (S.STOPPING, E.TIMEOUT_RESTART): _stop_then(S.STOPPED, codes.TIMEOUT, restart=True),
    (S.STOPPING, E.WATCH_FAILED): _stop_then(S.ERROR, None),
    # Nothing can be pushed from a lost host: its last checkpoint is what remains.
    **{(s, E.HOST_LOST): Reaction(now=S.ERROR, code=codes.HOST_LOST) for s in _ACTIVE},
    # A delete goes on without the host.
    (S.DELETING, E.HOST_LOST): Reaction(now=None, then=S.DELETED),
    # What could not be saved stays on the host, listed; a delete is not done.
    **{
        (s, E.SAVE_FAILED): Reaction(now=S.FAILED, code=codes.SYNC_FAILED)
        for s in (S.STARTING, S.STOPPING, S.DELETING)
    },
    (S.DELETING, E.DATA_REMOVED): Reaction(now=S.DELETED),
    # What the closed run left running is saved and removed (the stop ends in ERROR);
    # a notebook that ran nothing only says what happened. A pending delete is dropped:
    # the notebook waits for a start or a delete.
    **{
        (s, E.WORKFLOW_CLOSED): _stop_then(S.ERROR, codes.WORKFLOW_CLOSED)
        for s in (*_ACTIVE, S.DELETING)
    },
    (S.STOPPED, E.WORKFLOW_CLOSED): Reaction(now=S.ERROR, code=codes.WORKFLOW_CLOSED),
    (S.ERROR, E.WORKFLOW_CLOSED): Reaction(now=S.ERROR, code=codes.WORKFLOW_CLOSED),
    # FAILED SYNC_FAILED keeps what it says (it lists the unsaved data); see react().
    (S.FAILED, E.WORKFLOW_CLOSED): Reaction(now=S.ERROR, code=codes.WORKFLOW_CLOSED),
}


def outcome(state: NotebookState, command: Command) -> Outcome:
    return COMMAND_TABLE[state][command]


def command_reaction(state: NotebookState, command: Command) -> Reaction:
    """What an accepted command does (IGNORED when it changes nothing)."""
    return COMMAND_REACTIONS.get((state, command), IGNORED)


def react(state: NotebookState, event: Event, *, code: str | None = None) -> Reaction:
    """What ``event`` does to a notebook in ``state`` whose status code is ``code``."""
    if event == E.WORKFLOW_CLOSED and state == S.FAILED and code == codes.SYNC_FAILED:
        return IGNORED  # what it says about the unsaved data outranks how the run ended
    return EVENT_TABLE.get((state, event), IGNORED)


def exit_event(exit_code: int | None) -> Event:
    if exit_code is None:
        return E.CONTAINER_GONE
    return E.EXITED_OK if exit_code == 0 else E.EXITED_ERROR


def conflict_message(state: NotebookState, command: Command) -> str:
    hints = {
        C.START: "it can be started only when STOPPED, FAILED or ERROR",
        C.STOP: "it can be stopped only when STARTING, RUNNING or STOPPING",
        C.DELETE: "it is already being deleted",
    }
    return f"cannot {command.value} a notebook that is {state.value}: {hints[command]}"


# ------------------------------------------------------------------ the page's tables


def describe(reaction: Reaction) -> str:
    """One cell of the page: ``→ STOPPING ⇒ STOPPED (EXITED), then STARTING``."""
    if reaction.ignored:
        return "—"
    parts = []
    if reaction.now is not None:
        parts.append(f"→ {reaction.now.value}")
    if reaction.then is not None:
        parts.append(f"⇒ {reaction.then.value}")
    text = " ".join(parts) if parts else "no change"
    if reaction.now is None and reaction.then is not None:
        text = f"stays, {text}"
    if reaction.code:
        text += f" `{reaction.code}`"
    if reaction.restart:
        text += ", then → STARTING"
    return text


def describe_command(state: NotebookState, command: Command) -> str:
    verdict = outcome(state, command)
    if verdict == Outcome.CONFLICT:
        return "409"
    if verdict == Outcome.GONE:
        return "404"
    if verdict == Outcome.NO_CHANGE:
        return "202, no change"
    return describe(command_reaction(state, command))


def render_markdown() -> str:
    """Both tables as the page shows them (the test compares them cell by cell)."""
    head = "| now | " + " | ".join(c.value for c in Command) + " |"
    rows = [head, "|---|" + "---|" * len(Command)]
    for state in NotebookState:
        cells = [describe_command(state, c) for c in Command]
        rows.append(f"| {state.value} | " + " | ".join(cells) + " |")
    rows += ["", "| event | " + " | ".join(s.value for s in NotebookState) + " |"]
    rows.append("|---|" + "---|" * len(NotebookState))
    for event in Event:
        cells = [describe(react(s, event)) for s in NotebookState]
        rows.append(f"| {event.value} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
