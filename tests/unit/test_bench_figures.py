"""How the sync benchmark turns repeated runs into one figure per tool."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "sync_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sync_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _run(bench, tool: str, seconds: float, rep: int, *, ok: bool = True, peak: float = 10.0):
    return bench.Result("a", "pull", tool, seconds, peak, 0 if ok else 1, rep=rep, ok=ok)


def test_median_run_keeps_the_largest_peak_and_any_failure(bench) -> None:
    runs = [_run(bench, "ours", s, i, peak=p) for i, (s, p) in enumerate([(5, 1), (3, 9), (4, 2)])]
    mid = bench._median_run(runs)
    assert (mid.seconds, mid.rep, mid.peak_mib, mid.ok) == (4, 2, 9, True)
    assert runs[2].peak_mib == 2  # the runs themselves are left as measured
    runs.append(_run(bench, "ours", 1, 3, ok=False))
    assert not bench._median_run(runs).ok


def test_ratios_compare_runs_of_the_same_repetition(bench) -> None:
    runs = {
        "ours": [_run(bench, "ours", 4, 0), _run(bench, "ours", 6, 1)],
        "s5cmd": [_run(bench, "s5cmd", 5, 0), _run(bench, "s5cmd", 3, 1)],
        "rclone": [_run(bench, "rclone", 8, 0), _run(bench, "rclone", 2, 1, ok=False)],
    }
    assert bench._ratios_per_rep(runs) == [0.8, 2.0]


def test_each_tool_runs_in_each_place_and_after_each_other_tool(bench) -> None:
    tools = ["ours", "s5cmd", "rclone", "aws"]
    orders = [bench.run_order(tools, i) for i in range(10, 14)]  # any four in a row
    for order in orders:
        assert sorted(order) == sorted(tools)
    for place in range(4):
        assert {o[place] for o in orders} == set(tools)
    follows = [(o[k], o[k + 1]) for o in orders for k in range(3)]
    assert sorted(follows) == sorted((a, b) for a in tools for b in tools if a != b)
