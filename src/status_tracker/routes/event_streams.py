"""The Event Streams webhook sink: batches of CloudEvents, signed like any Twilio webhook."""

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from twilio.request_validator import SIGNATURE_HEADER

from status_tracker import event_streams
from status_tracker.callbacks import Form, MalformedForm
from status_tracker.deps import PoolDep, SettingsDep, VerifierDep
from status_tracker.errors import BadRequest, Forbidden
from status_tracker.routes.webhooks import (
    SIGNATURE_HEADER_RAW,
    SIGNATURE_SETTINGS_HEADER_RAW,
    closing,
    header,
    public_url,
    read_body,
)

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])

BATCH_EXAMPLE = [
    {
        "specversion": "1.0",
        "type": "com.twilio.messaging.message.delivered",
        "source": "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/"
        "SM0123456789abcdef0123456789abcdef.json",
        "id": "EZ0123456789abcdef0123456789abcdef",
        "dataschema": "https://events-schemas.twilio.com/Messaging.MessageStatus/8",
        "datacontenttype": "application/json",
        "time": "2026-11-24T11:30:01.000Z",
        "data": {
            "messageSid": "SM0123456789abcdef0123456789abcdef",
            "timestamp": "2026-11-24T11:30:00.812Z",
            "accountSid": "AC0123456789abcdef0123456789abcdef",
            "eventName": "com.twilio.messaging.message.delivered",
            "from": "+15005550006",
            "to": "+14155550100",
            "messageStatus": "DELIVERED",
            "numberOfSegments": 1,
            "mcc": "310",
            "mnc": "260",
            "rawDlrDoneDate": "2611241130",
            "statusCallBackUrl": "https://your.host/webhooks/twilio/status?mid=0193…",
            "tags": {},
        },
    }
]


class StreamBatchStored(BaseModel):
    events: int = Field(description="Distinct CloudEvent ids in the batch")
    stored: int = Field(description="Events new to the store, now committed")
    duplicates: int = Field(description="Events stored before (a redelivery): left as they were")


@router.post(
    "/events",
    summary="Twilio Event Streams webhook sink (batches of CloudEvents)",
    responses={
        400: {"description": "Not JSON, or an event without `id` or `type` (problem+json)"},
        403: {
            "description": "Missing or wrong X-Twilio-Signature, no `bodySHA256` in the URL, or "
            "a body that does not match it (problem+json)"
        },
        408: {"description": "Body too slow to arrive (problem+json)"},
        413: {"description": "Body too large (problem+json)"},
        503: {"description": "Database unavailable: nothing stored, Twilio retries"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": ["array", "object"], "items": {"type": "object"}},
                    "example": BATCH_EXAMPLE,
                }
            },
        }
    },
)
async def event_streams_batch(
    request: Request, settings: SettingsDep, verifier: VerifierDep, pool: PoolDep
) -> StreamBatchStored:
    """Make this the destination of an Event Streams webhook sink. Message events go into each
    message's event log under the same precedence rule as status callbacks (source
    `event_stream`, with Twilio's `timestamp` as `occurred_at`); a batch is stored in one
    transaction, and a redelivered event is acknowledged and not stored again."""
    received_at = datetime.now(UTC)
    scope = request.scope
    # Refused before the body is read: an unsigned request must not hold a connection.
    signature = header(scope, SIGNATURE_HEADER_RAW)
    if not signature:
        raise closing(Forbidden(f"Missing {SIGNATURE_HEADER}."))
    try:
        query = Form.parse(scope.get("query_string", b"").decode("latin-1"))
    except MalformedForm as error:
        raise closing(BadRequest(f"The query string is not valid: {error}")) from error
    if not query.getall("bodySHA256"):
        # Without it the signature would cover the URL alone, not the body.
        raise closing(Forbidden("The URL carries no bodySHA256: Twilio signs JSON bodies so."))
    body = await read_body(
        scope, request.receive, settings.event_streams_max_body_bytes, settings.body_timeout_seconds
    )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"The body is not UTF-8: {error}") from error
    signature_settings = header(scope, SIGNATURE_SETTINGS_HEADER_RAW)
    if not verifier.verify(public_url(scope, settings), text, signature, signature_settings):
        raise Forbidden(f"{SIGNATURE_HEADER} does not match this request.")
    try:
        batch = event_streams.parse_batch(text, received_at, settings)
    except event_streams.MalformedBatch as error:
        raise BadRequest(str(error)) from error
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        stored = await event_streams.store(connection, batch, received_at)
    events = len(batch.claims)
    return StreamBatchStored(events=events, stored=stored, duplicates=events - stored)
