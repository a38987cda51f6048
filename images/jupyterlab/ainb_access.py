"""Read-only JupyterLab for ainb's read tokens (loaded by ainb-editor into jupyter_server).

The gateway signs a visitor in with one of two tokens: the editor's own (everything), or
its read token, for a project token of role `read`. A request carrying the read token is
the user `ainb-reader`, whom the authorizer lets only *read*: browse and download files,
list kernels and sessions; never write a file, start or talk to a kernel ("execute"),
open or list terminals. The reader is never remembered in a login cookie: every request
shows its token again, so nothing a reader's browser keeps outlives the read token.

A warm editor (ainb's warm pool) is started before anyone asks for it, with a token
nobody knows: PoolIdentityProvider turns it into one notebook's editor when the host agent
writes the claim file (the notebook's tokens and environment), which it reads once.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import PasswordIdentityProvider, User
from traitlets import Unicode

READER = "ainb-reader"


class ReaderIdentityProvider(PasswordIdentityProvider):
    read_token_file = Unicode("", config=True, help="file holding the read-only token")

    _read_token: str | None = None

    def read_token(self) -> str:
        if self._read_token is None:
            path = self.read_token_file
            self._read_token = Path(path).read_text().strip() if path else ""
        return self._read_token

    async def _get_user(self, handler):  # type: ignore[override]
        given = self.get_token(handler) or ""
        expected = self.read_token()
        if expected and given and hmac.compare_digest(given.encode(), expected.encode()):
            return User(
                username=READER,
                name="Read-only visitor",
                display_name="Read-only visitor",
                initials="RO",
            )
        return await super()._get_user(handler)


class ReadOnlyForReaders(Authorizer):
    def is_authorized(self, handler, user, action, resource) -> bool:  # type: ignore[override]
        if getattr(user, "username", None) != READER:
            return True
        return action == "read" and resource != "terminals"


class PoolIdentityProvider(ReaderIdentityProvider):
    """Refuses everyone until claimed; then the notebook's own tokens apply, and kernels
    and terminals started from then on get the notebook's environment (none can start
    before: starting one takes a signed-in user)."""

    claim_file = Unicode("", config=True, help="file the host agent writes the claim to")

    _claimed = False

    def _claim(self) -> bool:
        if self._claimed:
            return True
        try:
            claim = json.loads(Path(self.claim_file).read_text())
        except (FileNotFoundError, ValueError):
            return False  # not claimed yet, or the agent's rename has not landed
        token = str(claim.get("token") or "")
        if not token:
            return False  # never "no auth": a claim without a token is refused
        os.environ.update({str(k): str(v) for k, v in (claim.get("env") or {}).items()})
        self.token = token
        self._read_token = str(claim.get("read_token") or "")
        self._claimed = True
        # Where a cold editor's children find its token, they find this one's.
        if path := os.environ.get("JUPYTER_TOKEN_FILE"):
            Path(path).write_text(token)
        # Read once: what is in the file now (the notebook's own tokens) changes nothing.
        Path(self.claim_file).unlink(missing_ok=True)
        return True

    async def _get_user(self, handler):  # type: ignore[override]
        if not self._claim():
            return None
        return await super()._get_user(handler)
