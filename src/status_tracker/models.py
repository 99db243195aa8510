"""The JSON shapes of the `/v1` API."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from status_tracker.error_codes import describe
from status_tracker.precedence import Report, is_known


class Event(BaseModel):
    """One report of a message's status, as it was received."""

    id: int
    status: str
    error_code: int | None
    error_description: str | None
    source: str = Field(description="callback, send, poll, reconcile or inbound")
    received_at: datetime
    carrier_done_at: datetime | None = Field(
        description="RawDlrDoneDate: when the carrier says it finished (its own clock)"
    )
    changed_status: bool = Field(
        description="False for a report that did not raise the status: stale or duplicate"
    )
    known_status: bool = Field(description="False for a status this service does not know yet")
    fields: dict[str, Any] = Field(description="Every field Twilio sent")
    query: dict[str, Any] = Field(description="Query parameters of the URL Twilio called")


class Message(BaseModel):
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
    events: list[Event]


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
                changed_status=changed,
                known_status=is_known(event["status"]),
                fields=event["fields"],
                query=event["query"],
            )
        )
    return result


def message_view(message: Mapping[str, Any], events: list[Mapping[str, Any]]) -> Message:
    return Message(
        id=message["id"],
        sid=message["sid"],
        status=message["status"],
        error_code=message["error_code"],
        error_description=describe(message["error_code"]),
        direction=message["direction"],
        to=message["to_number"],
        from_=message["from_number"],
        channel=message["channel"],
        account_sid=message["account_sid"],
        messaging_service_sid=message["messaging_service_sid"],
        created_at=message["created_at"],
        updated_at=message["updated_at"],
        sent_at=message["sent_at"],
        delivered_at=message["delivered_at"],
        read_at=message["read_at"],
        final_at=message["final_at"],
        events=timeline(events),
    )
