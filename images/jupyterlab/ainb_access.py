"""Read-only JupyterLab for ainb's read tokens (loaded by ainb-editor into jupyter_server).

The gateway signs a visitor in with one of two tokens: the editor's own (everything), or
its read token, for a project token of role `read`. A request carrying the read token is
the user `ainb-reader`, whom the authorizer lets only *read*: browse and download files,
list kernels and sessions; never write a file, start or talk to a kernel ("execute"),
open or list terminals. The reader is never remembered in a login cookie: every request
shows its token again, so nothing a reader's browser keeps outlives the read token.
"""

from __future__ import annotations

import hmac
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
