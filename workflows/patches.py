"""Patch ids of the notebook workflow (``workflow.patched``): see docs/versioning.md.

A notebook's workflow runs for months, so a change to the commands it issues reaches
running notebooks through a patch: a run that began before the change (its history has no
marker) keeps the old commands until its next continue-as-new; a run that begins after it
takes the new ones and records the marker. Every id stays here, with the date it came in,
until docs/versioning.md's deprecation rule lets it go.
"""

from __future__ import annotations

# 2026-12: a push that fails for a reason retries cannot fix ends the stop in FAILED
# SYNC_FAILED with the data kept on the host (status.left_on_host) instead of retrying
# forever; a lost host's data is pushed before the notebook starts again; a delete that
# drops the workspace first pushes the volumes' preserved files to their own storage.
KEEP_UNSAVED_DATA = "keep-unsaved-data"

# 2026-12: a stop or delete wins over an activity that completed in the same workflow task
# (the RUNNING phase ends at its next step instead of watching on), and a stop during a
# usage write cancels the write instead of failing the workflow.
STOP_WINS_RACES = "stop-wins-races"

# 2026-12: the container's launch and the wait for its editor are one host activity
# (launch_editor) instead of two: one activity and one workflow task fewer per start.
LAUNCH_WAITS_READY = "launch-waits-ready"

# 2026-12: usage records are written to the ledger by a local activity (in the control
# worker that runs the workflow) instead of one on the control task queue: at every
# checkpoint, one marker instead of three activity events and a workflow task.
USAGE_LOCAL = "usage-local"

ALL = (KEEP_UNSAVED_DATA, STOP_WINS_RACES, LAUNCH_WAITS_READY, USAGE_LOCAL)
