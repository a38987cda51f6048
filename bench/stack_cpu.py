"""CPU-seconds the embedded stack's parts have used so far, each with its children (the
Temporal server's, an agent's helpers), by part name: what the benchmarks charge the
platform, read twice around what they measure."""

from __future__ import annotations

import psutil

from worker.stack import Stack


class Cpu:
    def __init__(self, stack: Stack) -> None:
        self._stack = stack

    def per_process(self) -> dict[str, float]:
        # Read from stack.procs each time: a part restarted since is its new process.
        out: dict[str, float] = {}
        for name, proc in self._stack.procs.items():
            try:
                root = psutil.Process(proc.pid)
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0.0
            for p in family:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    def total(self) -> float:
        return sum(self.per_process().values())
