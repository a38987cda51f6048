"""Where a notebook is reached: one origin per notebook, whichever host runs it.

Each notebook is served from its own browser origin (`http://{id}.localhost:8000` on the
embedded stack, `https://{id}.nb.example.com` in production), so a page one notebook
serves can never read another notebook or the REST API with the visitor's cookies: the
browser's same-origin policy keeps them apart. The editors serve at `/` of that origin.
The old path `/notebooks/{project}/{id}/...` on the API's origin only redirects there.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from domain.spec import Editor

GATEWAY_ROOT = "/notebooks"
ID_FIELD = "{id}"
# Inside the container: the directory the host binds, and the editor's socket in it.
EDITOR_RUN_DIR = "/run/ainb"
EDITOR_SOCKET = EDITOR_RUN_DIR + "/editor.sock"

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def legacy_prefix(project: str, notebook_id: str) -> str:
    """The path notebooks were served under before they had their own origin."""
    return f"{GATEWAY_ROOT}/{project}/{notebook_id}/"


def origin_pattern(public_url: str, pattern: str = "") -> str:
    """The notebooks' origin with `{id}` in its host: the configured pattern, else the
    API's own host with `{id}.` in front (`localhost` standing in for a loopback address,
    as browsers and curl resolve `*.localhost` to loopback without DNS)."""
    if pattern:
        if ID_FIELD not in urlsplit(pattern).netloc:
            raise ValueError(f"notebook_origin {pattern!r} must hold {ID_FIELD} in its host")
        return pattern.rstrip("/")
    parts = urlsplit(public_url)
    host = parts.hostname or "localhost"
    if host in _LOOPBACK_HOSTS:
        host = "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'http'}://{ID_FIELD}.{host}{port}"


def notebook_origin(pattern: str, notebook_id: str) -> str:
    return pattern.replace(ID_FIELD, notebook_id)


def host_matcher(pattern: str) -> re.Pattern[str]:
    """Matches a request's Host header against the pattern; group 1 is the notebook id.
    The port may be left out when it is the scheme's default."""
    parts = urlsplit(pattern)
    host = parts.netloc
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    head, _, tail = host.partition(ID_FIELD)
    port_optional = parts.port == default_port
    tail_re = re.escape(tail)
    if port_optional:
        tail_re = re.escape(tail.rsplit(":", 1)[0]) + f"(?::{default_port})?"
    elif parts.port is None and default_port:
        tail_re += f"(?::{default_port})?"
    return re.compile(f"^{re.escape(head)}([a-f0-9]{{32}}){tail_re}$", re.IGNORECASE)


def ready_path(editor: Editor) -> str:
    return "/" + editor.ready_path


def notebook_url(pattern: str, editor: Editor, notebook_id: str) -> str:
    """The address people use: the notebook's own origin, stable across stops and hosts."""
    return notebook_origin(pattern, notebook_id) + "/" + editor.home_path
