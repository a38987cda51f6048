"""Count what one recorded path of the notebook workflow costs Temporal: history events,
workflow tasks and activities (by name), from the files tests/unit/histories/record.py
writes. Compare two versions of the same path:

    python bench/history_steps.py tests/unit/histories/lifecycle-a01fc8b.json \\
        tests/unit/histories/lifecycle-edd1938.json
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path


def steps(path: Path) -> dict:
    runs = json.loads(path.read_text())["runs"]
    events = [e for run in runs for e in run["events"]]
    activities = collections.Counter(
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if "activityTaskScheduledEventAttributes" in e
    )
    return {
        "events": len(events),
        "workflow_tasks": sum(
            e["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED" for e in events
        ),
        "activities": sum(activities.values()),
        "local_activities": sum(
            e["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
            and e["markerRecordedEventAttributes"].get("markerName") == "core_local_activity"
            for e in events
        ),
        "by_activity": dict(sorted(activities.items())),
    }


def main() -> None:
    for name in sys.argv[1:]:
        s = steps(Path(name))
        print(
            f"{Path(name).name}: {s['events']} events, {s['workflow_tasks']} workflow tasks, "
            f"{s['activities']} activities, {s['local_activities']} local activities"
        )
        print("   " + ", ".join(f"{k} x{v}" for k, v in s["by_activity"].items()))


if __name__ == "__main__":
    main()
