"""What a datasync covers: pure rules, checked by the update's validator (the API's 422)."""

from __future__ import annotations

from collections.abc import Sequence

from domain.spec import Volume

WORKSPACE = "workspace"


class InvalidField(ValueError):
    """Bad input naming the field it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def datasync_targets(volumes: Sequence[Volume], direction: str, volume: str | None) -> list[str]:
    """The mount paths (or ``workspace``) a datasync covers, or InvalidField."""
    if volume is None:
        if direction == "pull":
            targets = [v.mount_path for v in volumes]
            if not targets:
                raise InvalidField("volume", "the notebook has no volumes to pull")
            return targets
        return [v.mount_path for v in volumes if v.pushed] + [WORKSPACE]
    wanted = volume.rstrip("/") or volume
    if wanted in (WORKSPACE, "/workspace"):
        if direction == "pull":
            raise InvalidField(
                "volume",
                "the workspace is restored at start only; pull a volume, or push the workspace",
            )
        return [WORKSPACE]
    match = next((v for v in volumes if v.mount_path == wanted), None)
    if match is None:
        known = ", ".join([v.mount_path for v in volumes] + [WORKSPACE])
        raise InvalidField("volume", f"no volume is mounted at {volume!r} (known: {known})")
    if direction == "push" and not match.pushed:
        raise InvalidField("volume", f"{match.mount_path} is read-only (ro): it is never pushed")
    return [match.mount_path]
