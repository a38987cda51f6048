"""Editor tokens are derived, not stored: the host agent and the API compute the same
value from a secret both are configured with, so no token ever enters workflow history."""

from __future__ import annotations

import functools
import hashlib
import hmac


@functools.lru_cache(maxsize=65536)  # the gateway asks on every request of every editor
def editor_token(secret: str, notebook_id: str) -> str:
    digest = hmac.new(secret.encode(), f"editor:{notebook_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:40]


@functools.lru_cache(maxsize=65536)
def editor_read_token(secret: str, notebook_id: str) -> str:
    """The editor's second token (JupyterLab): signs in a read-only visitor."""
    digest = hmac.new(secret.encode(), f"editor-read:{notebook_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:40]


def agent_token(secret: str) -> str:
    """What the API shows a host agent to read its containers' logs."""
    digest = hmac.new(secret.encode(), b"agent-logs", hashlib.sha256)
    return digest.hexdigest()


def tunnel_token(secret: str) -> str:
    """What the gateway shows a host agent to reach the editors it runs."""
    digest = hmac.new(secret.encode(), b"agent-editor-tunnel", hashlib.sha256)
    return digest.hexdigest()


@functools.lru_cache(maxsize=65536)
def link_token(secret: str, project: str, notebook_id: str, generation: int) -> str:
    """What a notebook's link carries (status.url): opens it through the gateway, until
    the notebook's token generation changes (a rotation)."""
    message = f"link:{project}/{notebook_id}:{generation}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:40]


@functools.lru_cache(maxsize=65536)
def session_mac(secret: str, project: str, notebook_id: str, generation: int, who: str) -> str:
    """The gateway's cookie for a notebook names who opened it (the link, or an API token's
    id) and proves it with this: bound to the generation like the link itself."""
    message = f"session:{project}/{notebook_id}:{generation}:{who}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:40]
