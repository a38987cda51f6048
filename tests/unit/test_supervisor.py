"""The embedded stack's restart rules, on a clock the test moves: no processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from worker.supervisor import Policy, RestartRules, describe_exit, stop_on_sigterm, supervise


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def clock() -> Clock:
    return Clock()


def crash_at_once(rules: RestartRules, clock: Clock, name: str) -> float:
    """The part starts when due and exits 0.1 s later; the delay it is given."""
    rules.started(name)
    clock.advance(0.1)
    decision = rules.exited(name)
    assert decision.restart
    clock.advance(decision.delay_s)
    assert rules.due() == [name]
    return decision.delay_s


def test_delays_double_from_one_second_up_to_thirty(clock: Clock) -> None:
    rules = RestartRules(Policy(max_restarts=100), clock)
    delays = [crash_at_once(rules, clock, "api") for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_the_sixth_quick_exit_in_a_row_gives_up(clock: Clock) -> None:
    rules = RestartRules(clock=clock)
    first_exit = clock.now + 0.1
    for n in range(1, 6):
        rules.started("api")
        clock.advance(0.1)
        decision = rules.exited("api")
        assert (decision.restart, decision.failures) == (True, n)
        clock.advance(decision.delay_s)
    rules.started("api")
    clock.advance(0.1)
    decision = rules.exited("api")
    assert (decision.restart, decision.failures) == (False, 6)
    assert rules.gave_up("api")
    assert clock.now - first_exit < 32  # 1+2+4+8+16 s of waiting, 0.1 s runs
    clock.advance(3600)
    assert rules.due() == []


def test_a_part_that_always_dies_before_a_minute_is_given_up(clock: Clock) -> None:
    # Exits 59 s after each start: never two in one minute, still never healthy.
    rules = RestartRules(clock=clock)
    for _ in range(5):
        rules.started("s3")
        clock.advance(59)
        assert rules.exited("s3").restart
    rules.started("s3")
    clock.advance(59)
    assert not rules.exited("s3").restart


def test_a_stable_run_resets_the_backoff_and_the_count(clock: Clock) -> None:
    rules = RestartRules(clock=clock)
    for _ in range(4):
        crash_at_once(rules, clock, "control-worker")
    rules.started("control-worker")
    clock.advance(60)
    decision = rules.exited("control-worker")
    assert (decision.restart, decision.delay_s, decision.failures) == (True, 1, 1)


def test_a_part_is_due_only_once_its_delay_is_over(clock: Clock) -> None:
    rules = RestartRules(clock=clock)
    rules.started("temporal")
    rules.started("host-agent")
    clock.advance(5)
    rules.exited("host-agent")
    clock.advance(0.5)
    assert rules.due() == []
    rules.exited("temporal")
    clock.advance(1)
    # Both due: in the order they first started, so Temporal comes back first.
    assert rules.due() == ["temporal", "host-agent"]
    rules.started("temporal")
    assert rules.due() == ["host-agent"]


def test_parts_are_counted_apart(clock: Clock) -> None:
    rules = RestartRules(clock=clock)
    for _ in range(5):
        crash_at_once(rules, clock, "api")
    rules.started("s3")
    clock.advance(0.1)
    assert rules.exited("s3").delay_s == 1
    assert not rules.gave_up("s3")


def test_exit_codes_name_their_signal() -> None:
    assert describe_exit(-9) == "code -9 (SIGKILL)"
    assert describe_exit(1) == "code 1"


# ------------------------------------------------------------------ the loop, on fakes

# Above the kernel's pid_max, so the loop's kill of a dead part's group finds nobody.
FAKE_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1000


class FakeProc:
    def __init__(self, exit_after: int | None) -> None:
        self.pid = FAKE_PID
        self.returncode: int | None = None
        self.polls_left = exit_after

    def poll(self) -> int | None:
        if self.polls_left is not None:
            self.polls_left -= 1
            if self.polls_left < 0:
                self.returncode = -9
        return self.returncode


class FakeStack:
    """Parts named in ``crashy`` exit at the first look, again after every start; a
    part named in ``broken`` fails to come up."""

    def __init__(self, tmp_path: Path, crashy=(), broken=()) -> None:
        self.logs = tmp_path
        self.crashy, self.broken = set(crashy), set(broken)
        self.procs = {n: self._proc(n) for n in ("temporal", "control-worker", "api")}
        self.starts: list[str] = []

    def _proc(self, name: str) -> FakeProc:
        return FakeProc(0 if name in self.crashy else None)

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start_part(self, name: str) -> None:
        self.starts.append(name)
        self.procs[name] = self._proc(name)
        if name in self.broken:
            raise RuntimeError(f"{name} did not come up within 60s; its log ends with:\n...")

    def kill(self, name: str) -> None:
        self.procs.pop(name, None)


def run_loop(stack: FakeStack, clock: Clock, seconds: float) -> list[str]:
    """The loop for ``seconds`` of the fake clock; what it said."""
    said: list[str] = []
    end = clock.now + seconds

    def sleep(s: float) -> None:
        clock.advance(s)
        if clock.now >= end:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        supervise(stack, RestartRules(clock=clock), say=said.append, sleep=sleep)
    return said


def test_the_loop_restarts_a_part_that_exits(tmp_path: Path, clock: Clock) -> None:
    stack = FakeStack(tmp_path)
    stack.procs["control-worker"].polls_left = 3
    said = run_loop(stack, clock, 10)
    assert stack.starts == ["control-worker"]
    assert said[0].startswith("ainb: control-worker exited with code -9 (SIGKILL); restarting")
    assert "in 1s" in said[0] and str(tmp_path / "control-worker.log") in said[0]
    assert said[1] == "ainb: control-worker is up again"
    assert "starting control-worker again" in (tmp_path / "control-worker.log").read_text()


def test_the_loop_gives_up_on_a_crashing_part_only(tmp_path: Path, clock: Clock) -> None:
    stack = FakeStack(tmp_path, crashy=["api"])
    said = run_loop(stack, clock, 120)
    assert stack.starts == ["api"] * 5
    assert "GIVING UP on api, the rest keeps running" in said[-1]
    assert "exit 6 in a row within 60s of its start" in said[-1]
    assert set(stack.procs) == {"temporal", "control-worker"}


def test_a_part_that_does_not_come_back_counts_as_an_exit(tmp_path: Path, clock: Clock) -> None:
    stack = FakeStack(tmp_path, broken=["temporal"])
    stack.procs["temporal"].polls_left = 0
    said = run_loop(stack, clock, 120)
    assert stack.starts == ["temporal"] * 5
    assert "did not come back (temporal did not come up within 60s" in said[1]
    assert "GIVING UP on temporal" in said[-1]
    assert "temporal" not in stack.procs


def test_sigterm_interrupts_once() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at once; this is only a bound
        os.kill(os.getpid(), signal.SIGTERM)  # the stop under way goes on
    finally:
        signal.signal(signal.SIGTERM, previous)
