"""Webhooks Twilio calls. They are authenticated by signature, not by API key."""

import asyncio
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from twilio.request_validator import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER

from status_tracker import metrics, privacy
from status_tracker.accounts import AccountDirectory
from status_tracker.callbacks import Form, MalformedForm, StatusCallback, report_from_callback
from status_tracker.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Problem,
    RequestTimeout,
    ServiceUnavailable,
    render,
)
from status_tracker.ingest import Overloaded, ReportWriter
from status_tracker.settings import Settings

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])
ModelT = TypeVar("ModelT", bound=BaseModel)
STATUS_PATH = "/webhooks/twilio/status"
SIGNATURE_HEADER_RAW = SIGNATURE_HEADER.lower().encode()
SIGNATURE_SETTINGS_HEADER_RAW = SIGNATURE_SETTINGS_HEADER.lower().encode()

STATUS_CALLBACK_EXAMPLE = (
    "MessageSid=SM0123456789abcdef0123456789abcdef&SmsSid=SM0123456789abcdef0123456789abcdef"
    "&MessageStatus=delivered&SmsStatus=delivered&AccountSid=AC0123456789abcdef0123456789abcdef"
    "&From=%2B15005550006&To=%2B14155550100&ApiVersion=2010-04-01&RawDlrDoneDate=2611241130"
)


def form_request_body(
    required: list[str], properties: list[str], example: str | None = None
) -> dict[str, Any]:
    """OpenAPI for a form Twilio posts: the fields named, and any other (they are kept)."""
    media: dict[str, Any] = {
        "schema": {
            "type": "object",
            "required": required,
            "properties": {name: {"type": "string"} for name in [*required, *properties]},
            "additionalProperties": {"type": "string"},
        }
    }
    if example is not None:
        media["example"] = example
    return {
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": media},
        }
    }


def parse_form_model(model: type[ModelT], fields: dict[str, Any]) -> ModelT:
    """The form as `model`, or 400 naming what is missing or malformed."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise BadRequest(detail) from error


def header(scope: Scope, name: bytes) -> str | None:
    """A request header, read from the ASGI scope (where names are in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def closing(problem: Problem) -> Problem:
    """`problem`, answered on a connection that is then closed: its body was never read whole,
    and what is left of it must not keep the connection (or be read as the next request)."""
    problem.headers["Connection"] = "close"
    return problem


async def read_body(scope: Scope, receive: Receive, limit: int, seconds: float) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit` bytes, and (408)
    if it takes longer than `seconds` to arrive: a slow body holds a connection."""
    declared = header(scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise closing(PayloadTooLarge(f"The body is larger than {limit} bytes."))
    body = b""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk: bytes = message.get("body", b"")
                body += chunk
                if len(body) > limit:
                    raise closing(PayloadTooLarge(f"The body is larger than {limit} bytes."))
                if not message.get("more_body", False):
                    return body
    except TimeoutError as error:
        slow = RequestTimeout(f"The body took longer than {seconds:g} s to arrive.")
        raise closing(slow) from error


def public_url(scope: Scope, settings: Settings) -> str:
    """The URL Twilio signed: the configured public base, never the Host a proxy passed on."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    url = settings.public_url.rstrip("/") + raw_path.decode("latin-1")
    query: bytes = scope.get("query_string", b"")
    return f"{url}?{query.decode('latin-1')}" if query else url


async def verified_form(
    scope: Scope, receive: Receive, settings: Settings, verifier: AccountDirectory
) -> tuple[Form, Form]:
    """The form body and the query, once size, encoding and signature are checked (with the
    tokens of the account the form's AccountSid names)."""
    # Refused before the body is read: an unsigned request must not hold a connection.
    signature = header(scope, SIGNATURE_HEADER_RAW)
    if not signature:
        raise closing(Forbidden(f"Missing {SIGNATURE_HEADER}."))
    body = await read_body(scope, receive, settings.max_body_bytes, settings.body_timeout_seconds)
    try:
        form = Form.parse(body.decode("utf-8"))
        query = Form.parse(scope.get("query_string", b"").decode("latin-1"))
    except (UnicodeDecodeError, MalformedForm) as error:
        raise BadRequest(f"The body is not a valid UTF-8 form: {error}") from error
    if not verifier.verify(
        public_url(scope, settings),
        form,
        signature,
        header(scope, SIGNATURE_SETTINGS_HEADER_RAW),
    ):
        raise Forbidden(f"{SIGNATURE_HEADER} does not match this request.")
    return form, query


# How a callback refused with each problem is counted (status_tracker_callbacks_received).
REFUSALS: dict[type[Problem], str] = {
    Forbidden: "bad_signature",
    BadRequest: "bad_request",
    PayloadTooLarge: "too_large",
    RequestTimeout: "too_slow",
}


async def store_status_callback(scope: Scope, receive: Receive) -> None:
    """`check_and_store`, counted in the metrics when refused (the writer counts what it
    stores)."""
    try:
        await check_and_store(scope, receive)
    except ClientDisconnect:
        raise
    except Problem as problem:
        metrics.callback_received(REFUSALS.get(type(problem), "unavailable"))
        raise
    except Exception:
        metrics.callback_received("unavailable")
        raise


async def check_and_store(scope: Scope, receive: Receive) -> None:
    """Check, parse and store one status callback; return once it is committed.

    Raises a Problem (400, 403, 413, 503) or a database error: either way nothing was stored."""
    received_at = datetime.now(UTC)
    state = scope["state"]
    settings: Settings = state["settings"]
    writer: ReportWriter = state["writer"]
    form, query = await verified_form(scope, receive, settings, state["verifier"])
    fields = form.as_fields()
    callback = parse_form_model(StatusCallback, fields)
    report = report_from_callback(
        callback,
        fields,
        query.as_fields(),
        received_at,
        header(scope, b"i-twilio-idempotency-token"),
    )
    try:
        await writer.write(privacy.scrub_report(report, settings))
    except Overloaded as error:
        raise ServiceUnavailable(f"Too many callbacks waiting to be stored: {error}.") from error


@router.post(
    "/status",
    status_code=204,
    summary="Twilio status callback",
    response_class=Response,
    responses={
        204: {"description": "Stored durably"},
        400: {"description": "No MessageSid/MessageStatus, or a malformed one (problem+json)"},
        403: {"description": "Missing or wrong X-Twilio-Signature (problem+json)"},
        408: {"description": "Body too slow to arrive (problem+json)"},
        413: {"description": "Body too large (problem+json)"},
        503: {"description": "Database unavailable or overloaded: not stored (problem+json)"},
    },
    openapi_extra=form_request_body(
        required=["MessageSid", "MessageStatus"],
        properties=["ErrorCode", "To", "From", "RawDlrDoneDate", "EventType"],
        example=STATUS_CALLBACK_EXAMPLE,
    ),
)
async def status_callback(request: Request) -> Response:
    """Point a message's StatusCallback here. Every callback is appended to the message's event
    log and applied by the precedence rule; the answer (204) comes only once it is committed."""
    await store_status_callback(request.scope, request.receive)
    return Response(status_code=204)


async def serve_status_callback(scope: Scope, receive: Receive, send: Send) -> None:
    """`status_callback` as a bare ASGI app, which the application calls before any middleware
    or routing: on the path that carries tens of millions of callbacks a day, those cost more
    than checking and storing the callback. Errors are answered as the router would."""
    try:
        await store_status_callback(scope, receive)
    except ClientDisconnect:
        return  # Twilio gave up on this request; it retries, and nothing was stored.
    except Exception as error:
        response = await render(Request(scope, receive), error)
        await response(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
