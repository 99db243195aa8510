"""Twilio Event Streams: CloudEvents batches turned into the reports a status callback makes.

Event Streams delivers one account's events at least once, unordered, in batches (a JSON array
of CloudEvents 1.0, or one event), and retries a batch for hours. Each message event becomes the
same `StatusReport` as a callback, so the one precedence rule decides; the CloudEvent `id` is
claimed in the batch's transaction, so that a redelivery stores nothing twice.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from status_tracker import privacy, repository
from status_tracker.callbacks import (
    MAX_ERROR_CODE,
    MESSAGE_SID_PATTERN,
    Form,
    MalformedForm,
    StatusReport,
    channel_of,
    message_id_from_query,
    parse_error_code,
    parse_raw_dlr_done_date,
)
from status_tracker.precedence import normalise_status
from status_tracker.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "event_stream"
# `com.twilio.messaging.message.{queued,sent,delivered,undelivered,failed,read}`, schema
# Messaging.MessageStatus; a status Twilio adds under this prefix is stored and flagged.
MESSAGE_EVENT_PREFIX = "com.twilio.messaging.message."
# The statuses Event Streams reports: never accepted, scheduled, canceled, sending or
# partially_delivered (callbacks or reconciliation bring those).
STREAMED_STATUSES = frozenset({"queued", "sent", "failed", "delivered", "undelivered", "read"})
INBOUND_EVENT = "com.twilio.messaging.inbound-message.received"
KNOWN_EVENT_TYPES = frozenset(
    {MESSAGE_EVENT_PREFIX + status for status in STREAMED_STATUSES} | {INBOUND_EVENT}
)
# CloudEvent ids are Twilio SIDs (34 characters); anything far longer is not from Twilio.
MAX_EVENT_ID_LENGTH = 256
_SID = re.compile(MESSAGE_SID_PATTERN)
_STATUS_WORD = re.compile(r"[A-Za-z_]{1,64}")


class MalformedBatch(ValueError):
    pass


@dataclass
class Batch:
    """A batch parsed and scrubbed for storage, by CloudEvent id (each id once)."""

    # (id, type, the whole event when the event log cannot hold it): every event of the batch.
    claims: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    reports: dict[str, StatusReport] = field(default_factory=dict)
    inbound: dict[str, tuple[StatusReport, str | None]] = field(default_factory=dict)


def parse_batch(text: str, received_at: datetime, settings: Settings) -> Batch:
    """The events of a batch body; raises MalformedBatch for a body Twilio would not send.

    An event of a type not known here is kept whole and acknowledged, never refused: Event
    Streams would retry it for hours, and Twilio adds event types."""
    # PostgreSQL cannot store NUL in text or jsonb, and Twilio never sends it.
    if "\\u0000" in text:
        raise MalformedBatch("the body contains a NUL character")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise MalformedBatch(f"the body is not JSON: {error}") from error
    events = document if isinstance(document, list) else [document]
    batch = Batch()
    seen: set[str] = set()
    for event in events:
        if not isinstance(event, dict):
            raise MalformedBatch("each event must be a JSON object (a CloudEvent)")
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH:
            raise MalformedBatch("each event needs an `id` (a string)")
        if not isinstance(event_type, str) or not event_type:
            raise MalformedBatch(f"event {event_id} needs a `type` (a string)")
        if event_id in seen:
            continue  # Twilio repeated it within the batch: once is enough.
        seen.add(event_id)
        data = event.get("data")
        report = report_from_event(event, received_at) if isinstance(data, dict) else None
        if report is None:
            log.warning(
                "Event Streams event not for the event log: kept as received",
                extra={"event_type": event_type},
            )
            batch.claims.append((event_id, event_type, privacy.scrub_fields(event, settings)))
            continue
        batch.claims.append((event_id, event_type, None))
        if event_type not in KNOWN_EVENT_TYPES:
            log.warning(
                "Event Streams event type not known: stored in the event log, flagged if its "
                "status is unknown",
                extra={"event_type": event_type},
            )
        report = privacy.scrub_report(report, settings)
        if event_type == INBOUND_EVENT:
            body = event["data"].get("body")
            kept = privacy.body(body if isinstance(body, str) else None, settings)
            batch.inbound[event_id] = (report, kept)
        else:
            batch.reports[event_id] = report
    return batch


def report_from_event(event: dict[str, Any], received_at: datetime) -> StatusReport | None:
    """The report a message event makes, as its callback would; None for another kind of
    event (no message SID, or no status to be read from it)."""
    data: dict[str, Any] = event["data"]
    event_type: str = event["type"]
    sid = data.get("messageSid")
    if not isinstance(sid, str) or not _SID.fullmatch(sid):
        return None
    if event_type == INBOUND_EVENT:
        status = "received"
    else:
        reported = data.get("messageStatus")
        # Twilio writes it in capitals (DELIVERED); the type names it too.
        status = reported if isinstance(reported, str) else event_type.rpartition(".")[2]
        if not _STATUS_WORD.fullmatch(status.strip()):
            return None
        status = normalise_status(status, None)
    to, from_ = _text(data.get("to")), _text(data.get("from"))
    query = _callback_query(_text(data.get("statusCallBackUrl")))
    return StatusReport(
        sid=sid,
        status=status,
        error_code=_error_code(data.get("errorCode")),
        received_at=received_at,
        source=SOURCE,
        account_sid=_text(data.get("accountSid")),
        to=to,
        from_=from_,
        messaging_service_sid=_text(data.get("messagingServiceSid")),
        channel=channel_of((to, from_), sid.startswith("MM")),
        carrier_done_at=parse_raw_dlr_done_date(_text(data.get("rawDlrDoneDate"))),
        fields=event,
        query=query,
        message_id=message_id_from_query(query),
        occurred_at=_timestamp(data.get("timestamp")),
    )


async def store(connection: asyncpg.Connection, batch: Batch, received_at: datetime) -> int:
    """Store a batch in one transaction; the number of events new to the store."""
    claimed = await repository.record_stream_batch(
        connection, received_at, batch.claims, batch.reports, batch.inbound
    )
    return len(claimed)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_code(value: Any) -> int | None:
    # JSON gives an integer; a string is read as a callback's would be. An odd one is no code.
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_ERROR_CODE else None
    return parse_error_code(value) if isinstance(value, str) else None


def _timestamp(value: Any) -> datetime | None:
    """The event's own time (`2025-01-01T00:00:00.000Z`); None if missing or without a zone."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _callback_query(url: str | None) -> dict[str, Any]:
    """The query of the message's StatusCallback URL: the service's `mid`, the user's own ids."""
    if url is None:
        return {}
    try:
        return Form.parse(urlsplit(url).query).as_fields()
    except (MalformedForm, ValueError):
        return {}
