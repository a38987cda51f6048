"""What a notebook's workflow counts, through the Temporal SDK's meter: replay-safe (the SDK
drops what a replay would count twice) and exported with the SDK's own worker metrics on
the control worker's /metrics (worker/metrics.py). No I/O here."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

# The phases of a start, each ending where the next begins: waiting for capacity, pulling
# the data, starting the container, the editor's own start until it answers.
PHASES = ("queue", "pull", "launch", "ready")


def transition(project: str, flavor: str, state: str, code: str | None) -> None:
    workflow.metric_meter().create_counter(
        "ainb_notebook_transitions", "notebooks entering a state, by state and code"
    ).add(1, {"project": project, "flavor": flavor, "state": state, "code": code or ""})


def start_phase(flavor: str, phase: str, began: datetime, ended: datetime) -> None:
    seconds = max(0.0, (ended - began).total_seconds())
    workflow.metric_meter().create_histogram_float(
        "ainb_start_phase_seconds", "time spent in each phase of a start", "s"
    ).record(seconds, {"flavor": flavor, "phase": phase})


def time_to_running(flavor: str, began: datetime, ended: datetime) -> None:
    seconds = max(0.0, (ended - began).total_seconds())
    workflow.metric_meter().create_histogram_float(
        "ainb_time_to_running_seconds", "from STARTING to RUNNING", "s"
    ).record(seconds, {"flavor": flavor})
