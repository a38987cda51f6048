"""Where a notebook is reached: one stable address per notebook, whichever host runs it.

The gateway (api/gateway.py) serves every notebook under its own path prefix. JupyterLab
is told that prefix as its base URL, so it builds its links under it and the gateway passes
paths through unchanged; code-server only uses relative links, so the gateway strips the
prefix for it.
"""

from __future__ import annotations

from domain.spec import Editor

GATEWAY_ROOT = "/notebooks"


def gateway_prefix(project: str, notebook_id: str) -> str:
    return f"{GATEWAY_ROOT}/{project}/{notebook_id}/"


def keeps_prefix(editor: Editor) -> bool:
    """Whether the editor serves under the gateway's prefix itself (it has a base URL)."""
    return editor is Editor.JUPYTERLAB


def editor_base_path(editor: Editor, project: str, notebook_id: str) -> str:
    """The base path the editor serves under on its host."""
    return gateway_prefix(project, notebook_id) if keeps_prefix(editor) else "/"


def ready_path(editor: Editor, project: str, notebook_id: str) -> str:
    return editor_base_path(editor, project, notebook_id) + editor.ready_path


def home_path(editor: Editor, project: str, notebook_id: str) -> str:
    return editor_base_path(editor, project, notebook_id) + editor.home_path


def notebook_url(public_url: str, editor: Editor, project: str, notebook_id: str) -> str:
    """The address people use: the gateway's, stable across stops, starts and hosts."""
    return public_url.rstrip("/") + gateway_prefix(project, notebook_id) + editor.home_path
