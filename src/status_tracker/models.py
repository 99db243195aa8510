"""The JSON shapes of the `/v1` API."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from status_tracker.error_codes import describe
from status_tracker.precedence import Report, conflicts, is_known


def rfc3339(moment: datetime) -> str:
    """A timestamp as the API writes every one, JSON, JSON lines and CSV alike: RFC 3339 in UTC
    with `Z`, as pydantic writes the models' timestamps."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Event(BaseModel):
    """One report of a message's status, as it was received."""

    id: int
    status: str
    error_code: int | None
    error_description: str | None
    source: str = Field(description="callback, event_stream, send, poll, reconcile or inbound")
    received_at: datetime
    occurred_at: datetime | None = Field(
        default=None,
        description="When Twilio says it happened (Event Streams' `timestamp`); callbacks "
        "carry no event time",
    )
    carrier_done_at: datetime | None = Field(
        description="RawDlrDoneDate: when the carrier says it finished (its own clock)"
    )
    changed_status: bool = Field(
        description="False for a report that did not raise the status: stale or duplicate"
    )
    known_status: bool = Field(description="False for a status this service does not know yet")
    fields: dict[str, Any] = Field(description="Every field Twilio sent")
    query: dict[str, Any] = Field(description="Query parameters of the URL Twilio called")


ADDRESS_PATTERN = r"^(whatsapp:|rcs:|messenger:)?\+[1-9][0-9]{6,14}$"


class SendMessage(BaseModel):
    """A message to send. Give `body` and/or `media_urls`, or `content_sid`."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {"to": "+14155550100", "body": "Your code is 123456", "reference": "order-17"}
            ]
        },
    )

    to: str = Field(pattern=ADDRESS_PATTERN, description="E.164, or `whatsapp:+…`")
    body: str | None = Field(default=None, min_length=1, max_length=1600)
    media_urls: list[AnyHttpUrl] | None = Field(default=None, min_length=1, max_length=10)
    content_sid: str | None = Field(default=None, pattern=r"^HX[0-9a-f]{32}$")
    content_variables: dict[str, str] | None = None
    from_: str | None = Field(
        default=None,
        alias="from",
        pattern=ADDRESS_PATTERN + "|^[A-Za-z0-9 ]{1,11}$",
        description="Sender number (or alphanumeric ID); default TWILIO_FROM",
    )
    messaging_service_sid: str | None = Field(
        default=None,
        pattern=r"^MG[0-9a-f]{32}$",
        description="Default TWILIO_MESSAGING_SERVICE_SID",
    )
    send_at: datetime | None = Field(
        default=None, description="Schedule the message (needs a Messaging Service)"
    )
    validity_period: int | None = Field(default=None, ge=1, le=36000, description="Seconds")
    reference: str | None = Field(default=None, max_length=200, description="Your own id")
    metadata: dict[str, Any] | None = Field(default=None, description="Kept and returned as is")
    account_sid: str | None = Field(
        default=None,
        pattern=r"^AC[0-9a-f]{32}$",
        description="Send through this stored Twilio account (POST /v1/accounts); default: "
        "TWILIO_ACCOUNT_SID's, or the one account the API key is bound to",
    )
    use_service_callback: bool = Field(
        default=False,
        description="Leave the Messaging Service's own status callback URL in charge "
        "instead of this service's webhook",
    )


class MessageSummary(BaseModel):
    id: UUID = Field(description="The service's own id")
    sid: str | None = Field(description="Twilio's Message SID")
    status: str
    error_code: int | None
    error_description: str | None
    direction: str
    to: str | None
    from_: str | None = Field(serialization_alias="from")
    channel: str | None
    account_sid: str | None
    messaging_service_sid: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    final_at: datetime | None = Field(description="When the message first reached a final status")
    body: str | None
    media_urls: list[str] | None
    content_sid: str | None
    send_at: datetime | None
    reference: str | None
    metadata: dict[str, Any] | None
    send_outcome: str | None = Field(
        description="For messages sent through this service: pending, accepted, refused, or "
        "unknown (Twilio unreachable or timed out; reconciliation settles it)"
    )
    in_reply_to: UUID | None


class ConflictingReport(BaseModel):
    """A report of a final status that lost to the stored one: the message's reports conflict."""

    event_id: int
    status: str
    error_code: int | None
    error_description: str | None
    source: str
    received_at: datetime


class Message(MessageSummary):
    reports_conflict: bool = Field(
        description="True when a report of another final status lost to the stored one "
        "(say Twilio's `undelivered` under a `delivered` callback): see `conflicts`"
    )
    conflicts: list[ConflictingReport] = Field(
        description="Those losing reports, with their error codes, oldest first"
    )
    events: list[Event] = Field(description="Every report received, oldest first")


class MessagePage(BaseModel):
    messages: list[MessageSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


def timeline(events: list[Mapping[str, Any]]) -> list[Event]:
    """Events oldest first, each flagged by whether it raised the status of those before it."""
    best: tuple[int, str, int] | None = None
    result = []
    for event in events:
        key = Report(event["status"], event["error_code"]).key
        changed = best is None or key > best
        if changed:
            best = key
        result.append(
            Event(
                id=event["id"],
                status=event["status"],
                error_code=event["error_code"],
                error_description=describe(event["error_code"]),
                source=event["source"],
                received_at=event["received_at"],
                carrier_done_at=event["carrier_done_at"],
                occurred_at=event.get("occurred_at"),
                changed_status=changed,
                known_status=is_known(event["status"]),
                fields=event["fields"],
                query=event["query"],
            )
        )
    return result


def summary_view(message: Mapping[str, Any]) -> MessageSummary:
    return MessageSummary(**_summary_fields(message))


def message_view(message: Mapping[str, Any], events: list[Mapping[str, Any]]) -> Message:
    losing = [
        ConflictingReport(
            event_id=event["id"],
            status=event["status"],
            error_code=event["error_code"],
            error_description=describe(event["error_code"]),
            source=event["source"],
            received_at=event["received_at"],
        )
        for event in events
        if conflicts(message["status"], event["status"])
    ]
    return Message(
        **_summary_fields(message),
        reports_conflict=bool(losing),
        conflicts=losing,
        events=timeline(events),
    )


def _summary_fields(message: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": message["id"],
        "sid": message["sid"],
        "status": message["status"],
        "error_code": message["error_code"],
        "error_description": describe(message["error_code"]),
        "direction": message["direction"],
        "to": message["to_number"],
        "from_": message["from_number"],
        "channel": message["channel"],
        "account_sid": message["account_sid"],
        "messaging_service_sid": message["messaging_service_sid"],
        "created_at": message["created_at"],
        "updated_at": message["updated_at"],
        "sent_at": message["sent_at"],
        "delivered_at": message["delivered_at"],
        "read_at": message["read_at"],
        "final_at": message["final_at"],
        "body": message["body"],
        "media_urls": message["media_urls"],
        "content_sid": message["content_sid"],
        "send_at": message["send_at"],
        "reference": message["reference"],
        "metadata": message["metadata"],
        "send_outcome": message["send_outcome"],
        "in_reply_to": message["in_reply_to"],
    }


class Discrepancy(BaseModel):
    kind: str = Field(
        description="not_sent, ambiguous_match, not_at_twilio or status_conflict "
        "(what a pass could not settle)"
    )
    resolved: bool
    message_id: UUID | None
    sid: str | None
    detail: dict[str, Any]


class Reconciliation(BaseModel):
    id: int
    account_sid: str | None = Field(
        default=None, description="The stored account reconciled; null: the default account"
    )
    started_at: datetime
    finished_at: datetime | None
    since: datetime
    until: datetime
    dry_run: bool
    state: str = Field(description="running, finished, failed or interrupted")
    counts: dict[str, int] = Field(
        description="status_differs, missing_locally, unknown_attempt_matched (applied); "
        "not_sent, ambiguous_match, not_at_twilio, status_conflict (unresolved); fetch_errors; "
        "resumed"
    )
    errors: list[str]
    duration_seconds: float | None


class ReconciliationReport(Reconciliation):
    unresolved: list[Discrepancy]
