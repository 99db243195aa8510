"""Sending a message so that every attempt is on record, whatever Twilio answers.

The attempt is stored before Twilio is called; Twilio's answer (or its silence) is stored after.
A timeout or a 5xx may still have sent the message, so it is never retried: the attempt stays
`unknown` until reconciliation finds it in Twilio's message list.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode
from uuid import UUID

import asyncpg
import httpx
from twilio.base.exceptions import TwilioRestException

from status_tracker import metrics, opt_outs, privacy, repository
from status_tracker.accounts import Account
from status_tracker.callbacks import StatusReport, channel_of
from status_tracker.countries import country_of
from status_tracker.ids import uuid7
from status_tracker.models import SendMessage, rfc3339
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi

log = logging.getLogger(__name__)

STATUS_WEBHOOK_PATH = "/webhooks/twilio/status"
# Twilio's code for a recipient who opted out of the sender ("Attempt to send to unsubscribed
# recipient").
OPTED_OUT = 21610
# Twilio retries a callback answered 5xx or timed out only when the URL's fragment says so
# (TWILIO.md §4); the fragment is not part of the signature.
CALLBACK_RETRIES = "rc=3&rp=5xx,ct,rt&ct=3000&rt=4000"


class InvalidSend(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class OptedOut(Exception):
    """The recipient replied STOP: refused here, without calling Twilio (which would, 21610)."""

    code = 21610


class IdempotencyConflict(Exception):
    pass


@dataclass(frozen=True)
class SendResult:
    message_id: UUID
    outcome: Literal["accepted", "refused", "unknown", "replayed"]
    error: Exception | None = None


def status_callback_url(settings: Settings, message_id: UUID) -> str:
    query = urlencode({"mid": str(message_id)})
    return f"{settings.public_url.rstrip('/')}{STATUS_WEBHOOK_PATH}?{query}#{CALLBACK_RETRIES}"


def request_hash(request: SendMessage) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def twilio_params(
    request: SendMessage, settings: Settings, message_id: UUID, account: Account | None = None
) -> dict[str, Any]:
    """The arguments of `messages.create_async` for this request, defaults applied (those of
    the stored `account`, else of the settings)."""
    service = request.messaging_service_sid
    sender = request.from_
    if service is None and sender is None:
        if account is not None:
            service, default_from = account.messaging_service_sid, account.default_from
        else:
            service, default_from = settings.twilio_messaging_service_sid, settings.twilio_from
        sender = None if service else default_from
    if service is None and sender is None:
        raise InvalidSend(
            "from",
            "Give 'from' or 'messaging_service_sid' (or set TWILIO_FROM or "
            "TWILIO_MESSAGING_SERVICE_SID).",
        )
    if sender is not None and request.to.startswith("whatsapp:") and sender.startswith("+"):
        # Twilio refuses a WhatsApp To with an SMS From (21910): the sender's WhatsApp address.
        sender = "whatsapp:" + sender
    if request.body is None and request.media_urls is None and request.content_sid is None:
        raise InvalidSend("body", "Give 'body', 'media_urls' or 'content_sid'.")
    if request.content_variables is not None and request.content_sid is None:
        raise InvalidSend("content_variables", "'content_variables' needs 'content_sid'.")
    if request.send_at is not None and service is None:
        raise InvalidSend("send_at", "A scheduled message needs a Messaging Service.")
    if request.use_service_callback and service is None:
        raise InvalidSend("use_service_callback", "Only a Messaging Service has its own callback.")

    params: dict[str, Any] = {"to": request.to}
    optional: dict[str, Any] = {
        "from_": sender,
        "messaging_service_sid": service,
        "body": request.body,
        "media_url": [str(url) for url in request.media_urls] if request.media_urls else None,
        "content_sid": request.content_sid,
        "content_variables": json.dumps(request.content_variables)
        if request.content_variables
        else None,
        "validity_period": request.validity_period,
        "status_callback": None
        if request.use_service_callback
        else status_callback_url(settings, message_id),
    }
    if request.send_at is not None:
        optional["send_at"] = request.send_at.astimezone(UTC)
        optional["schedule_type"] = "fixed"
    params.update({name: value for name, value in optional.items() if value is not None})
    return params


async def send(
    pool: asyncpg.Pool,
    twilio: TwilioApi,
    settings: Settings,
    request: SendMessage,
    idempotency_key: str | None,
    account: Account | None = None,
) -> SendResult:
    now = datetime.now(UTC)
    message_id = uuid7(now)
    params = twilio_params(request, settings, message_id, account)
    fingerprint = request_hash(request)
    recipient = privacy.number_sha256(request.to)
    scope = opt_outs.scope(params.get("messaging_service_sid"), params.get("from_"))
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        recorded = await repository.record_attempt(
            connection,
            message_id=message_id,
            to=privacy.redact_number(request.to, settings) or request.to,
            country=country_of(request.to),
            from_=privacy.redact_number(params.get("from_"), settings),
            messaging_service_sid=params.get("messaging_service_sid"),
            channel=channel_of((request.to, params.get("from_")), bool(request.media_urls)),
            body=privacy.body(request.body, settings),
            media_urls=params.get("media_url"),
            content_sid=request.content_sid,
            content_variables=request.content_variables,
            send_at=request.send_at,
            validity_period=request.validity_period,
            reference=request.reference,
            metadata=request.metadata,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            created_at=now,
            # On record from the start, so that a key bound to the account sees the attempt.
            account_sid=account.sid if account else settings.twilio_account_sid,
            fields=privacy.scrub_fields(
                # Stored under Twilio's names: `from`, not the SDK's `from_`.
                {"request": {k.rstrip("_"): _jsonable(v) for k, v in params.items()}},
                settings,
            ),
        )
        if not recorded:
            assert idempotency_key is not None
            earlier = await repository.get_idempotent_request(connection, idempotency_key)
            if earlier is None:  # the key's message was never committed: cannot happen
                raise IdempotencyConflict("The idempotency key is in use; retry.")
            if earlier["request_hash"] != fingerprint:
                raise IdempotencyConflict("This Idempotency-Key was used with a different request.")
            return SendResult(earlier["id"], "replayed")
        if await repository.is_opted_out(connection, recipient, scope):
            # Twilio would refuse it (21610); refusing here keeps the attempt on record anyway.
            report = _report(message_id, status="failed", error_code=21610,
                             fields={"refused_locally": True, "code": 21610})  # fmt: skip
            await repository.record_send_result(connection, report, "refused")
            metrics.send("refused", OptedOut.code)
            return SendResult(message_id, "refused", OptedOut())

    outcome: Literal["accepted", "refused", "unknown"]
    error: Exception | None = None
    try:
        created = await twilio.create_message(**params)
    except TwilioRestException as refusal:
        error = refusal
        # A 4xx means Twilio did not take the message; a 5xx may still have sent it.
        outcome = "refused" if refusal.status < 500 else "unknown"
        report = _report(
            message_id,
            status="failed" if outcome == "refused" else "pending",
            error_code=refusal.code if outcome == "refused" else None,
            fields={"http_status": refusal.status, "code": refusal.code, "message": refusal.msg},
        )
    except (httpx.TimeoutException, httpx.TransportError) as failure:
        error = failure
        outcome = "unknown"
        report = _report(
            message_id,
            status="pending",
            fields={"error": type(failure).__name__, "detail": "no answer from Twilio"},
        )
    else:
        outcome = "accepted"
        report = _report(
            message_id,
            sid=created.sid,
            status=created.status,
            account_sid=created.account_sid,
            fields=_created_fields(created),
        )
    log.info(
        "message sent",
        extra={"message_id": str(message_id), "sid": report.sid, "outcome": outcome},
    )
    if isinstance(error, TwilioRestException) and error.status == 429:
        # Still 429 after the retries: Twilio never took it.
        metrics.send("rate_limited", error.code)
    else:
        metrics.send(outcome, report.error_code)
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        await repository.record_send_result(connection, report, outcome)
        if isinstance(error, TwilioRestException) and error.code == OPTED_OUT:
            # Twilio knows of a STOP this service never saw: the next send is refused here.
            await repository.record_opt_out(
                connection, recipient, scope, True, str(OPTED_OUT), now, message_id
            )
    return SendResult(message_id, outcome, error)


async def cancel(
    pool: asyncpg.Pool, twilio: TwilioApi, settings: Settings, sid: str, message_id: UUID
) -> None:
    """Cancel a scheduled message at Twilio and record Twilio's answer."""
    canceled = await twilio.cancel_message(sid)
    report = _report(
        message_id,
        sid=sid,
        status=canceled.status,
        source="cancel",
        fields=_created_fields(canceled),
    )
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        await repository.record_report(connection, report)


def _report(
    message_id: UUID,
    *,
    status: str,
    fields: dict[str, Any],
    sid: str | None = None,
    error_code: int | None = None,
    account_sid: str | None = None,
    source: str = "send",
) -> StatusReport:
    return StatusReport(
        sid=sid,
        status=status,
        error_code=error_code,
        received_at=datetime.now(UTC),
        source=source,
        account_sid=account_sid,
        fields=fields,
        message_id=message_id,
    )


def _created_fields(message: Any) -> dict[str, Any]:
    names = (
        "sid", "status", "date_created", "num_segments", "num_media", "price", "price_unit",
        "error_code", "error_message", "messaging_service_sid",
    )  # fmt: skip
    return {name: _jsonable(getattr(message, name, None)) for name in names}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, list | dict | str | int | float | bool) or value is None:
        return value
    return str(value)
