"""Simulated runtime: a host with no engine, whose "containers" are records on disk.

For fleet tests and benchmarks: many hosts, with GPUs they do not have, on one machine.
A container runs from start until stop (or until a test writes its exit code); records
outlive the agent, so a restarted agent re-adopts them like real containers. Every start
is appended to ``starts.jsonl`` with its wall-clock time, for the benchmarks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from activities.runtime.base import ContainerState, LaunchSpec
from activities.runtime.file_logs import FileLogStream
from domain.ids import container_name


class SimRuntime:
    name = "sim"
    serves_http = False

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir

    def _record(self, notebook_id: str) -> Path:
        return self._dir / f"{notebook_id}.json"

    def start(self, spec: LaunchSpec) -> ContainerState:
        current = self.poll(spec.notebook_id)
        if current is not None and current.running:
            return current
        self._dir.mkdir(parents=True, exist_ok=True)
        record = {
            "notebook": spec.notebook_id,
            "project": spec.project,
            "cpus": spec.cpus,
            "memory_bytes": spec.memory_bytes,
            "gpu_ids": list(spec.gpu_ids),
            "started_at": time.time(),
            "exit_code": None,
        }
        tmp = self._record(spec.notebook_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._record(spec.notebook_id))
        with open(self._dir / "starts.jsonl", "a") as log:
            log.write(json.dumps({"notebook": spec.notebook_id, "at": record["started_at"]}) + "\n")
        return self._state(record)

    @staticmethod
    def _state(record: dict) -> ContainerState:
        code = record.get("exit_code")
        return ContainerState(
            name=container_name(record["notebook"]),
            running=code is None,
            exit_code=code,
        )

    def read(self, notebook_id: str) -> dict | None:
        try:
            return json.loads(self._record(notebook_id).read_text())
        except FileNotFoundError:
            return None

    def poll(self, notebook_id: str) -> ContainerState | None:
        record = self.read(notebook_id)
        return None if record is None else self._state(record)

    def stop(self, notebook_id: str, grace_s: float) -> ContainerState | None:
        record = self.read(notebook_id)
        if record is None:
            return None
        if record.get("exit_code") is None:
            record["exit_code"] = 0
        self._record(notebook_id).unlink(missing_ok=True)
        return self._state(record)

    def logs(self, notebook_id: str, tail: int = 50) -> str:
        return ""

    def log_stream(self, notebook_id: str, tail: int, follow: bool):
        return FileLogStream(None, tail, follow=False) if self.read(notebook_id) else None

    def managed(self) -> dict[str, str]:
        if not self._dir.is_dir():
            return {}
        return {
            p.stem: r.get("project", "")
            for p in self._dir.glob("*.json")
            if (r := self.read(p.stem)) is not None
        }
