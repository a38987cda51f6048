"""Where a notebook's data lives on its host: one directory per notebook, owned by root,
holding the trees bound into its container (the workspace, each volume, the editor's
socket directory) and, beside them, what the container must never see (manifests)."""

from __future__ import annotations

from pathlib import Path

from domain.ids import valid_notebook_id


def host_dir(data_dir: Path, host_name: str) -> Path:
    """One host's part of the data directory (notebooks, caches, runtime state): closed to
    other local users."""
    return (data_dir / "hosts" / host_name).resolve()


def notebooks_dir(data_dir: Path, host_name: str) -> Path:
    return host_dir(data_dir, host_name) / "notebooks"


class NotebookPaths:
    def __init__(self, root: Path, notebook_id: str) -> None:
        # The id becomes a path component: nothing but the id's own shape may get there.
        if not valid_notebook_id(notebook_id):
            raise ValueError(f"not a notebook id: {notebook_id!r}")
        self.root = root / notebook_id
        self.workspace = self.root / "workspace"
        self.volumes = self.root / "volumes"
        self.run = self.root / "run"
        self.editor_socket = self.run / "editor.sock"

    def volume(self, index: int) -> Path:
        return self.volumes / str(index)
