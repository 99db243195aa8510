"""Webhooks Twilio calls. They are authenticated by signature, not by API key."""

from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send
from twilio.request_validator import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER

from status_tracker import privacy
from status_tracker.callbacks import Form, MalformedForm, StatusCallback, report_from_callback
from status_tracker.database import DATABASE_ERRORS
from status_tracker.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Problem,
    ServiceUnavailable,
    render,
)
from status_tracker.ingest import Overloaded, ReportWriter
from status_tracker.settings import Settings
from status_tracker.signatures import SignatureVerifier

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])
ModelT = TypeVar("ModelT", bound=BaseModel)
STATUS_PATH = "/webhooks/twilio/status"

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


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    return bytes(body)


def public_url(request: Request, settings: Settings) -> str:
    """The URL Twilio signed: the configured public base, never the Host a proxy passed on."""
    raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    url = settings.public_url.rstrip("/") + raw_path.decode("latin-1")
    query: bytes = request.scope.get("query_string", b"")
    return f"{url}?{query.decode('latin-1')}" if query else url


async def verified_form(
    request: Request, settings: Settings, verifier: SignatureVerifier
) -> tuple[Form, Form]:
    """The form body and the query, once size, encoding and signature are checked."""
    body = await read_body(request, settings.max_body_bytes)
    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise Forbidden(f"Missing {SIGNATURE_HEADER}.")
    try:
        form = Form.parse(body.decode("utf-8"))
        query = Form.parse(request.scope.get("query_string", b"").decode("latin-1"))
    except (UnicodeDecodeError, MalformedForm) as error:
        raise BadRequest(f"The body is not a valid UTF-8 form: {error}") from error
    if not verifier.verify(
        public_url(request, settings),
        form,
        signature,
        request.headers.get(SIGNATURE_SETTINGS_HEADER),
    ):
        raise Forbidden(f"{SIGNATURE_HEADER} does not match this request.")
    return form, query


@router.post(
    "/status",
    status_code=204,
    summary="Twilio status callback",
    response_class=Response,
    responses={
        204: {"description": "Stored durably"},
        400: {"description": "No MessageSid/MessageStatus, or a malformed one (problem+json)"},
        403: {"description": "Missing or wrong X-Twilio-Signature (problem+json)"},
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
    # The hot path (tens of millions a day): app state is read directly, since resolving
    # dependencies costs as much as the rest of the handler.
    received_at = datetime.now(UTC)
    settings: Settings = request.state.settings
    verifier: SignatureVerifier = request.state.verifier
    writer: ReportWriter = request.state.writer
    form, query = await verified_form(request, settings, verifier)
    fields = form.as_fields()
    callback = parse_form_model(StatusCallback, fields)
    report = report_from_callback(
        callback,
        fields,
        query.as_fields(),
        received_at,
        request.headers.get("i-twilio-idempotency-token"),
    )
    report = privacy.scrub_report(report, settings)
    try:
        await writer.write(report)
    except Overloaded as error:
        raise ServiceUnavailable(f"Too many callbacks waiting to be stored: {error}.") from error
    return Response(status_code=204)


_RENDERED: tuple[type[Exception], ...] = (Problem, *DATABASE_ERRORS)


class StatusCallbackFastPath:
    """ASGI middleware that hands status callbacks straight to `status_callback`.

    The route above stays (it documents the webhook and serves it the same way); this only
    skips the router, the dependency machinery and the exception middleware, which cost more
    than the handler itself on the path that carries tens of millions of callbacks a day.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != STATUS_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await status_callback(request)
        except _RENDERED as error:
            response = await render(request, error)
        await response(scope, receive, send)
