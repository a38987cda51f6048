"""Data a run left on a host (a lost host, a push that failed for good): which targets to
save, and how to say what is left, in words."""

from __future__ import annotations

from collections.abc import Sequence

from domain.datasync import WORKSPACE
from domain.spec import Volume
from domain.status import HostData


def size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def describe_left(left: HostData) -> str:
    """What a notebook left on a host, in words: the API's messages and the delete's answer."""
    if not left.items:
        return f"whatever the run lost with host {left.host} holds (unknown)"
    parts = [
        f"{i.target} ({i.files if i.files is not None else '?'} files, {size(i.bytes)}"
        + (f", at {i.path}" if i.path else "")
        + ")"
        for i in left.items
    ]
    return f"on host {left.host}: " + "; ".join(parts)


def left_targets(
    left: HostData, volumes: Sequence[Volume], *, drop_workspace: bool
) -> list[int | None]:
    """What to push of what was left: the listed targets (all pushed ones when nothing is
    listed), a volume by its index, the workspace as None (not when a delete drops it)."""
    if left.items:
        names = {i.target for i in left.items}
        targets: list[int | None] = [
            i for i, v in enumerate(volumes) if v.mount_path in names and v.pushed
        ]
        if WORKSPACE in names:
            targets.append(None)
    else:
        targets = [i for i, v in enumerate(volumes) if v.pushed]
        targets.append(None)
    if drop_workspace:
        targets = [t for t in targets if t is not None]
    return targets


def sync_failed_message(left: HostData, *, unreachable: bool, deleting: bool) -> str:
    """Why a notebook is FAILED SYNC_FAILED, and how to go on."""
    why = (
        f"host {left.host}, which holds it, does not answer"
        if unreachable
        else "; ".join(f"{i.target}: {i.error}" for i in left.items if i.error) or left.reason
    )
    then = (
        "the notebook was not deleted: DELETE ?force=true drops it"
        if deleting
        else "a start or a datasync push tries again; DELETE ?force=true drops it"
    )
    return f"could not save {describe_left(left)}: {why}. It is kept on the host; {then}"
