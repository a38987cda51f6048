"""How many CRT event-loop threads a process runs, by the CPUs it may use."""

from __future__ import annotations

import os

import pytest

from activities.storage import crt_engine


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 2), (5, 4), (64, 4)])
def test_one_cpu_is_left_to_the_python_thread(monkeypatch, cpus: int, threads: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    assert crt_engine._event_loop_threads() == threads


def test_falls_back_to_cpu_count_without_affinity(monkeypatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert crt_engine._event_loop_threads() == 4
