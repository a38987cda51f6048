"""The embedded stack's parts are restarted when they exit, within limits.

:class:`RestartRules` decides, without touching a process: how long to wait before the
next start (doubling from 1 s, up to 30 s, while a part keeps failing), and when to give
up on it: after 5 restarts in a row that each ran less than a minute. A part that ran for
a minute was healthy: its next exit starts the count afresh.
:func:`supervise` applies the rules to a :class:`worker.stack.Stack` until interrupted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


@dataclass(frozen=True)
class Policy:
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    # Restarts in a row, each followed by a run shorter than stable_s; the next such exit
    # gives up. A part crashing at once is given up ~31 s after its first exit (1+2+4+8+16).
    # Counted in a row rather than in a sliding minute: once the delays reach the cap, a
    # window would never hold 5 again, and a part that always crashes would be retried for
    # ever.
    max_restarts: int = 5
    # A run at least this long was healthy: its exit starts the backoff and count afresh.
    stable_s: float = 60.0


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float  # 0 when giving up
    failures: int  # exits in a row after short runs, this one included


@dataclass
class _Part:
    started_at: float
    failures: int = 0
    due_at: float | None = None
    gave_up: bool = False


class RestartRules:
    """When each named part is to start again; all times come from ``clock``."""

    def __init__(self, policy: Policy | None = None, clock: Clock = time.monotonic) -> None:
        self.policy = policy or Policy()
        self.clock = clock
        self._parts: dict[str, _Part] = {}

    def started(self, name: str) -> None:
        """The part was (re)started now: its run time counts from here."""
        part = self._parts.setdefault(name, _Part(started_at=0.0))
        part.started_at = self.clock()
        part.due_at = None

    def exited(self, name: str) -> Decision:
        """The part exited now (or failed to come up): restart it later, or give up."""
        p, now = self.policy, self.clock()
        part = self._parts.setdefault(name, _Part(started_at=now))
        if now - part.started_at >= p.stable_s:
            part.failures = 0
        part.failures += 1
        if part.failures > p.max_restarts:
            part.gave_up, part.due_at = True, None
            return Decision(False, 0.0, part.failures)
        delay = min(p.first_delay_s * 2 ** (part.failures - 1), p.max_delay_s)
        part.due_at = now + delay
        return Decision(True, delay, part.failures)

    def due(self) -> list[str]:
        """Parts whose wait is over, in the order they were first started (dependencies
        first: Temporal before the workers that connect to it)."""
        now = self.clock()
        return [n for n, p in self._parts.items() if p.due_at is not None and p.due_at <= now]

    def gave_up(self, name: str) -> bool:
        part = self._parts.get(name)
        return bool(part and part.gave_up)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"code {code}"
    return f"code {code}"


def stop_on_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: one KeyboardInterrupt in the main thread, wherever it
    is (waiting, or starting a part), and none for a second signal, which would break
    off the orderly stop that the first began."""
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)


def supervise(
    stack: Any,
    rules: RestartRules | None = None,
    *,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Watch ``stack.procs`` forever, restarting parts as ``rules`` say; only an exception
    (KeyboardInterrupt on Ctrl-C/SIGTERM) ends it, so a stop is never seen as a crash."""
    rules = rules or RestartRules()
    for name in stack.procs:
        rules.started(name)
    while True:
        for name, proc in list(stack.procs.items()):
            if proc.poll() is not None:
                stack.procs.pop(name)
                _kill_leftovers(proc.pid)
                _report(stack, rules, name, f"exited with {describe_exit(proc.returncode)}", say)
        for name in rules.due():
            _restart(stack, rules, name, say)
        sleep(poll_s)


def _restart(stack: Any, rules: RestartRules, name: str, say: Callable[[str], None]) -> None:
    rules.started(name)
    with open(stack.log_path(name), "a") as log:
        log.write(f"\n--- ainb stack: starting {name} again ---\n")
    try:
        stack.start_part(name)  # same ports, data dir and config; waits until ready
    except (RuntimeError, OSError) as err:
        proc = stack.procs.get(name)
        code = proc.poll() if proc else None
        stack.kill(name)  # a part that never became ready is not left half up
        if proc:
            _kill_leftovers(proc.pid)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        how = "killed, not ready" if code is None else f"exited with {describe_exit(code)}"
        _report(stack, rules, name, f"did not come back ({first_line}; {how})", say)
        return
    say(f"ainb: {name} is up again")


def _report(
    stack: Any, rules: RestartRules, name: str, what: str, say: Callable[[str], None]
) -> None:
    decision = rules.exited(name)
    p = rules.policy
    log = stack.log_path(name)
    if decision.restart:
        say(
            f"ainb: {name} {what}; restarting it in {decision.delay_s:g}s (restart "
            f"{decision.failures} of at most {p.max_restarts} in a row that each run less "
            f"than {p.stable_s:g}s; its log: {log})"
        )
    else:
        say(
            f"ainb: {name} {what}, exit {decision.failures} in a row within {p.stable_s:g}s "
            f"of its start: GIVING UP on {name}, the rest keeps running. Read its log "
            f"({log}), then restart the stack to try again."
        )


def _kill_leftovers(pgid: int) -> None:
    """Each part leads its own process group (start_new_session): whatever it started
    and left behind would hold its ports and fail the restart."""
    if pgid <= 1:
        return  # 0 would be our own group
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left: the usual case
