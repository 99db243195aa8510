"""Inbound messages, answered with TwiML so that replies are tracked too (TWILIO.md §2, §6)."""

from collections.abc import Callable
from datetime import UTC, datetime
from string import Template
from uuid import UUID

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from twilio.twiml.messaging_response import MessagingResponse

from status_tracker import opt_outs, privacy, repository
from status_tracker.callbacks import MESSAGE_SID_PATTERN, StatusReport, channel_of
from status_tracker.countries import country_of
from status_tracker.deps import PoolDep, SettingsDep, VerifierDep
from status_tracker.ids import uuid7
from status_tracker.routes.webhooks import form_request_body, parse_form_model, verified_form
from status_tracker.sending import status_callback_url
from status_tracker.settings import Settings

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])

MAX_MEDIA = 10


class InboundMessage(BaseModel):
    """An incoming message as Twilio posts it; every other field is kept too."""

    model_config = ConfigDict(extra="allow", frozen=True)

    message_sid: str = Field(alias="MessageSid", pattern=MESSAGE_SID_PATTERN)
    from_: str = Field(alias="From", min_length=1)
    to: str = Field(alias="To", min_length=1)
    body: str = Field(default="", alias="Body")
    num_media: int = Field(default=0, alias="NumMedia", ge=0, le=MAX_MEDIA)
    account_sid: str | None = Field(default=None, alias="AccountSid")
    messaging_service_sid: str | None = Field(default=None, alias="MessagingServiceSid")


EMPTY_TWIML = str(MessagingResponse())
TWIML_EXAMPLE = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Message action="https://your.host/webhooks'
    '/twilio/status?mid=…" method="POST">Thanks, we got it.</Message></Response>'
)


@router.post(
    "/inbound",
    summary="Twilio incoming-message webhook, answered with TwiML",
    response_class=Response,
    responses={
        200: {
            "description": "TwiML: `<Response/>`, or the configured reply",
            "content": {"application/xml": {"example": TWIML_EXAMPLE}},
        },
        400: {"description": "No MessageSid, From or To (problem+json)"},
        403: {"description": "Missing or wrong X-Twilio-Signature (problem+json)"},
        408: {"description": "Body too slow to arrive (problem+json)"},
        413: {"description": "Body too large (problem+json)"},
        503: {"description": "Database unavailable: not stored (problem+json)"},
    },
    openapi_extra=form_request_body(
        required=["MessageSid", "From", "To"], properties=["Body", "NumMedia", "MediaUrl0"]
    ),
)
async def inbound_message(
    request: Request, settings: SettingsDep, verifier: VerifierDep, pool: PoolDep
) -> Response:
    """Point a number's (or Messaging Service's) "A message comes in" webhook here. The message
    is stored (direction `inbound`, status `received`); STOP/START keywords are recorded; with
    `STATUS_TRACKER_AUTO_REPLY` set, the reply is recorded first and its status tracked."""
    received_at = datetime.now(UTC)
    form, query = await verified_form(request.scope, request.receive, settings, verifier)
    fields = form.as_fields()
    inbound = parse_form_model(InboundMessage, fields)
    # A repeated MediaUrlN (not Twilio's doing, but signed all the same) keeps each of its URLs.
    media = [url for i in range(inbound.num_media) for url in form.getall(f"MediaUrl{i}")]
    channel = channel_of((inbound.to, inbound.from_), bool(media))
    report = StatusReport(
        sid=inbound.message_sid,
        status="received",
        error_code=None,
        received_at=received_at,
        source="inbound",
        account_sid=inbound.account_sid,
        to=inbound.to,
        from_=inbound.from_,
        messaging_service_sid=inbound.messaging_service_sid,
        channel=channel,
        fields=fields,
        query=query.as_fields(),
    )
    opt_out_type = fields.get("OptOutType")
    kind = opt_outs.kind_of(inbound.body, opt_out_type if isinstance(opt_out_type, str) else None)
    reply_text = _reply_text(settings, inbound, kind)
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        async with connection.transaction():
            message_id, first_time = await repository.record_inbound(
                connection,
                privacy.scrub_report(report, settings),
                privacy.body(inbound.body, settings),
                media or None,
            )
            if kind == "STOP" or kind == "START":
                for scope in opt_outs.scopes_of(inbound.messaging_service_sid, inbound.to):
                    await repository.record_opt_out(
                        connection, privacy.number_sha256(inbound.from_), scope,
                        kind == "STOP", inbound.body.strip().upper()[:64] or kind, received_at,
                        message_id,
                    )  # fmt: skip
            if reply_text is None:
                return Response(EMPTY_TWIML, media_type="application/xml")
            # Twilio retries an inbound whose answer it never got: answer with the same reply.
            earlier = None if first_time else await repository.get_reply(connection, message_id)
            reply_id = earlier["id"] if earlier else await _record_reply(
                connection, settings, inbound, message_id, reply_text, channel, received_at
            )  # fmt: skip
    twiml = MessagingResponse()
    twiml.message(reply_text, action=status_callback_url(settings, reply_id), method="POST")
    return Response(str(twiml), media_type="application/xml")


def _reply_text(
    settings: Settings, inbound: InboundMessage, kind: opt_outs.Kind | None
) -> str | None:
    # Twilio answers STOP, START and HELP itself.
    if not settings.auto_reply or kind is not None:
        return None
    return _render(settings, inbound)


def _render(
    settings: Settings,
    inbound: InboundMessage,
    number: Callable[[str, Settings], str | None] = lambda address, _: address,
) -> str:
    template = Template(settings.auto_reply or "")
    return template.safe_substitute({"from": number(inbound.from_, settings), "body": inbound.body})


async def _record_reply(
    connection: object,
    settings: Settings,
    inbound: InboundMessage,
    inbound_id: UUID,
    text: str,
    channel: str,
    at: datetime,
) -> UUID:
    reply_id = uuid7(at)
    await repository.record_attempt(
        connection,
        message_id=reply_id,
        to=privacy.redact_number(inbound.from_, settings) or inbound.from_,
        country=country_of(inbound.from_),
        from_=privacy.redact_number(inbound.to, settings),
        messaging_service_sid=inbound.messaging_service_sid,
        channel=channel,
        # The reply's text as stored: a `$from` in it is the sender's number, redacted likewise.
        body=privacy.body(_render(settings, inbound, privacy.redact_number), settings),
        media_urls=None,
        content_sid=None,
        content_variables=None,
        send_at=None,
        validity_period=None,
        reference=None,
        metadata=None,
        idempotency_key=None,
        request_hash="",
        created_at=at,
        fields=privacy.scrub_fields(
            {
                "twiml": {
                    "to": inbound.from_,
                    "body": _render(settings, inbound, privacy.redact_number),
                }
            },
            settings,
        ),
        direction="outbound-reply",
        in_reply_to=inbound_id,
    )
    return reply_id
