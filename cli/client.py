"""The REST calls, and the two ways they fail: the API said no, or nobody answered."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from typing import Any

import httpx

from cli.config import Config

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class ApiError(Exception):
    """The API answered with an error status; ``message`` is what to show a person."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    @property
    def client_error(self) -> bool:
        return 400 <= self.status < 500

    def line(self) -> str:
        # Catalog errors already start with their field; validation errors say "field: ..."
        # after a prefix. Name the field once, wherever the API put it.
        text = self.message
        if self.field and self.field not in text:
            text = f"{self.field}: {text}"
        return f"{text} (HTTP {self.status})"


class Unreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the ainb API at {url}: {reason}")
        self.url = url


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # api/errors.py says {"error", "field"?}; "detail" and "message": other servers.
        message = body.get("error") or body.get("detail") or body.get("message")
        if not isinstance(message, str):
            message = str(message) if message else response.reason_phrase
        field = body.get("field") if isinstance(body.get("field"), str) else None
        return ApiError(response.status_code, message, field)
    text = response.text.strip().splitlines()[0] if response.text.strip() else ""
    return ApiError(response.status_code, text or response.reason_phrase)


def _reason(err: httpx.TransportError) -> str:
    if isinstance(err, httpx.ConnectError):
        return "connection refused" if "refused" in str(err).lower() else f"cannot connect ({err})"
    if isinstance(err, httpx.TimeoutException):
        return "no answer in time"
    return str(err) or type(err).__name__


class Client:
    def __init__(self, config: Config, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"user-agent": "ainb-cli"}
        if config.token:
            headers["authorization"] = f"Bearer {config.token}"
        self.config = config
        self._http = httpx.Client(
            base_url=config.url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise Unreachable(self.config.url, _reason(err)) from None
        if response.status_code >= 400:
            raise _error(response)
        try:
            return response.json() if response.content else None
        except ValueError:
            # Something else answers at that address (a proxy's page, another service).
            raise ApiError(
                response.status_code, f"the answer from {self.config.url}{path} is not JSON"
            ) from None

    @property
    def _notebooks(self) -> str:
        return f"/v1/projects/{self.config.project}/notebooks"

    def create(self, spec: dict) -> dict:
        return self._call("POST", self._notebooks, json=spec)

    def list(
        self, state: str | None = None, labels: builtins.list[str] | None = None
    ) -> builtins.list[dict]:
        params: dict[str, Any] = {}
        if state:
            params["state"] = state
        if labels:
            params["label"] = labels
        return self._call("GET", self._notebooks, params=params)

    def get(self, notebook_id: str) -> dict:
        return self._call("GET", f"{self._notebooks}/{notebook_id}")

    def command(self, notebook_id: str, verb: str) -> dict:
        return self._call("POST", f"{self._notebooks}/{notebook_id}/{verb}")

    def delete(self, notebook_id: str, keep_workspace: bool = False) -> dict:
        params = {"keep_workspace": "true"} if keep_workspace else None
        return self._call("DELETE", f"{self._notebooks}/{notebook_id}", params=params)

    def set_labels(self, notebook_id: str, labels: dict[str, str]) -> dict:
        return self._call("PUT", f"{self._notebooks}/{notebook_id}/labels", json={"labels": labels})

    def logs(self, notebook_id: str, follow: bool, tail: int | None) -> Iterator[bytes]:
        """The container's output as it comes (no read timeout: --follow waits for lines)."""
        params: dict[str, Any] = {"follow": follow}
        if tail is not None:
            params["tail"] = tail
        path = f"{self._notebooks}/{notebook_id}/logs"
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(30.0, read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                yield from response.iter_raw()
        except httpx.TransportError as err:
            raise Unreachable(self.config.url, _reason(err)) from None

    def changes(self, notebook_id: str, after_version: int | None = None) -> Iterator[dict]:
        """The notebook at each change, from the API's event stream, until the stream ends
        (the server's time limit, or the notebook deleted: its last answer is DELETED)."""
        params: dict[str, Any] = {}
        if after_version is not None:
            params["after_version"] = after_version
        path = f"{self._notebooks}/{notebook_id}/events"
        try:
            # Keep-alive comments come every 15 s: a minute of silence is a dead stream.
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(30.0, read=60.0)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                data: builtins.list[str] = []
                kind = "message"
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif not line:
                        # The notebooks are what is followed; transitions are in them too.
                        if data and kind == "notebook":
                            yield json.loads("\n".join(data))
                        data, kind = [], "message"
        except httpx.TransportError as err:
            raise Unreachable(self.config.url, _reason(err)) from None

    def notebook_usage(self, notebook_id: str) -> dict:
        return self._call("GET", f"{self._notebooks}/{notebook_id}/usage")

    def project_usage(self, start: str | None = None, end: str | None = None) -> dict:
        params = {k: v for k, v in (("from", start), ("to", end)) if v}
        return self._call("GET", f"/v1/projects/{self.config.project}/usage", params=params)

    def capabilities(self, kind: str) -> builtins.list[dict]:
        return self._call("GET", f"/v1/capabilities/{kind}")

    # ------------------------------------------------------------ tokens and audit

    @property
    def _tokens(self) -> str:
        return f"/v1/projects/{self.config.project}/tokens"

    def rotate_token(self, notebook_id: str) -> dict:
        """A new link token for the notebook: its old links stop working."""
        return self._call("POST", f"{self._notebooks}/{notebook_id}/token/rotate")

    def create_token(self, body: dict) -> dict:
        return self._call("POST", self._tokens, json=body)

    def list_tokens(self) -> builtins.list[dict]:
        return self._call("GET", self._tokens)

    def get_token(self, token_id: str) -> dict:
        return self._call("GET", f"{self._tokens}/{token_id}")

    def revoke_token(self, token_id: str) -> dict:
        return self._call("DELETE", f"{self._tokens}/{token_id}")

    def renew_token(self, token_id: str, expires_in_s: int | None = None) -> dict:
        body = {"expires_in_s": expires_in_s}
        return self._call("POST", f"{self._tokens}/{token_id}/renew", json=body)

    def audit(
        self, start: str | None = None, end: str | None = None, limit: int | None = None
    ) -> builtins.list[dict]:
        params: dict[str, Any] = {k: v for k, v in (("from", start), ("to", end)) if v}
        if limit is not None:
            params["limit"] = limit
        return self._call("GET", f"/v1/projects/{self.config.project}/audit", params=params)
