"""Every error the API returns is JSON with a message a person can act on."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ledger.engine import LedgerUnavailable


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        # More named facts of the refusal (a storage 403: alias, bucket, prefix, rule), in
        # the body beside "field" and in its "errors" entry.
        self.details = details or {}
        self.headers = headers


class FieldError(BaseModel):
    model_config = ConfigDict(extra="allow")
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every refusal: what went wrong, and the field it names when one is to blame."""

    model_config = ConfigDict(extra="allow")
    error: str
    field: str | None = None
    errors: list[FieldError] | None = None


def _documented(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


# What any authenticated route may answer besides its success (the OpenAPI document says
# so, and the schema tests hold every answer to it).
ERROR_RESPONSES: dict[int | str, dict] = {
    401: _documented("no API token, or not a valid one"),
    403: _documented("the token may not do this"),
    422: _documented("invalid input; `field` names it"),
    503: _documented("the control plane did not answer in time"),
}
NOTEBOOK_RESPONSES: dict[int | str, dict] = {
    **ERROR_RESPONSES,
    404: _documented("no such notebook in the project (or not within the token's reach)"),
    409: _documented("the notebook's state forbids it"),
}


def _field(loc: tuple | list) -> str:
    # Drop the "body"/"query"/"path" prefix; join indices and names as a.b[0].c
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path") else list(loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _allowed_methods(request: Request) -> list[str]:
    routes = request.app.router.routes
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        body: dict = {"error": err.message}
        if err.field:
            body["field"] = err.field
            body["errors"] = [{"field": err.field, "message": err.message, **err.details}]
        body.update({k: v for k, v in err.details.items() if k not in body})
        return JSONResponse(status_code=err.status, content=body, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> Response:
        # The framework's own refusals (no such route, method not allowed, a body it cannot
        # read) in the same shape as ours.
        if err.status_code == 400 and isinstance(err.__cause__, ValueError):
            # FastAPI's answer to a JSON body that is not UTF-8: invalid input, as for a
            # body that does not parse (json_invalid), and documented as such.
            message = "body: not valid JSON (it must be UTF-8 text)"
            return JSONResponse(
                status_code=422,
                content={
                    "error": f"invalid request: {message}",
                    "field": "body",
                    "errors": [{"field": "body", "message": message}],
                },
            )
        headers = dict(err.headers or {})
        if err.status_code == 405 and (allowed := _allowed_methods(request)):
            # Starlette names the methods of the first route of the path only; each route
            # of a path has its own method (RFC 9110: Allow lists all of them).
            headers["Allow"] = ", ".join(allowed)
        if not is_body_allowed_for_status_code(err.status_code):
            return Response(status_code=err.status_code, headers=headers)
        return JSONResponse(
            status_code=err.status_code, content={"error": str(err.detail)}, headers=headers
        )

    @app.exception_handler(LedgerUnavailable)
    async def _ledger_down(_: Request, err: LedgerUnavailable) -> JSONResponse:
        # Usage, tokens and the audit live there; the notebooks run on without it.
        logging.getLogger("ainb.api").warning("the ledger did not answer: %s", err)
        return JSONResponse(
            status_code=503,
            content={"error": "the ledger (usage, tokens, audit) did not answer; try again"},
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        logging.getLogger("ainb.api").exception("unhandled error")
        return JSONResponse(status_code=500, content={"error": f"internal error: {err}"})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = []
        for e in err.errors():
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            # A body that does not parse: its loc is ("body", offset), not a field.
            where = "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ()))
            errors.append({"field": where, "message": msg})
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse(
            status_code=422,
            content={
                "error": f"invalid request: {summary}",
                "field": errors[0]["field"],
                "errors": errors,
            },
        )
