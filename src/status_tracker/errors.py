"""One hierarchy of errors, rendered by one handler as RFC 9457 `application/problem+json`."""

import logging
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from status_tracker.database import DATABASE_ERRORS, is_unavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    status = 500
    title = "Internal Server Error"
    default_headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extensions = extensions
        self.headers = dict(self.default_headers)


class BadRequest(Problem):
    status = 400
    title = "Bad Request"


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(Problem):
    status = 403
    title = "Forbidden"


class NotFound(Problem):
    status = 404
    title = "Not Found"


class RequestTimeout(Problem):
    status = 408
    title = "Request Timeout"


class Conflict(Problem):
    status = 409
    title = "Conflict"


class Unprocessable(Problem):
    status = 422
    title = "Unprocessable Content"


class BadGateway(Problem):
    status = 502
    title = "Bad Gateway"


class GatewayTimeout(Problem):
    status = 504
    title = "Gateway Timeout"


class PayloadTooLarge(Problem):
    status = 413
    title = "Content Too Large"


class ServiceUnavailable(Problem):
    status = 503
    title = "Service Unavailable"
    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extensions)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": "body", "message": _json_error(await request.body(), error)}
        if error["type"] == "json_invalid"
        else {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
        for error in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(422, "Unprocessable Content", detail, errors=errors)


def _json_error(body: bytes, error: Any) -> str:
    """Where and what, in words: FastAPI only says "JSON decode error" and a character offset."""
    position = error["loc"][-1] if isinstance(error["loc"][-1], int) else 0
    before = body.decode("utf-8", "replace")[:position]  # a position in characters, not bytes
    line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
    what = error.get("ctx", {}).get("error") or "malformed JSON"
    return f"The body is not valid JSON: {what} at line {line}, column {column}."


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem_response(
        exc.status_code, _title(exc.status_code), str(exc.detail), dict(exc.headers or {})
    )


async def _database(request: Request, exc: Exception) -> JSONResponse:
    # SQLSTATE class 22, data exception: a value from the request PostgreSQL cannot hold (a NUL
    # character, say). The request is at fault, not the service.
    if str(getattr(exc, "sqlstate", "")).startswith("22"):
        return problem_response(400, "Bad Request", "A value in the request cannot be stored.")
    if not is_unavailable(exc):
        log.error("database error", exc_info=exc)
        return problem_response(500, "Internal Server Error")
    log.warning("database unavailable", extra={"error": type(exc).__name__})
    problem = ServiceUnavailable("The database is unavailable; retry shortly.")
    return problem_response(problem.status, problem.title, problem.detail, problem.headers)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def render(request: Request, exc: Exception) -> JSONResponse:
    """The answer to any exception, for code that runs outside the router (and so outside the
    middleware that answers what no handler takes): anything unexpected is logged, then a 500."""
    if isinstance(exc, Problem):
        return await _problem(request, exc)
    if isinstance(exc, DATABASE_ERRORS):
        return await _database(request, exc)
    log.error("unhandled error", exc_info=exc)
    return problem_response(500, "Internal Server Error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database)
