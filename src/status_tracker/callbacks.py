"""Turning a status callback's raw form body into a report the repository can store."""

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from status_tracker.countries import country_of
from status_tracker.precedence import INBOUND_STATUSES, normalise_status

MESSAGE_SID_PATTERN = r"^(SM|MM)[0-9a-f]{32}$"
# Error codes are stored as PostgreSQL integers; Twilio's have five digits.
MAX_ERROR_CODE = 2**31 - 1
MAX_ERROR_CODE_DIGITS = len(str(MAX_ERROR_CODE))
# Twilio sends a few dozen fields; a form with thousands of them is not from Twilio.
MAX_FIELDS = 1000


class MalformedForm(ValueError):
    pass


class Form:
    """The ordered name/value pairs of a form body, repeated names included.

    It has the `getall` that twilio's RequestValidator looks for, so the signature is computed
    over exactly the pairs that are stored.
    """

    __slots__ = ("_by_name", "pairs")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self._by_name: dict[str, list[str]] | None = None

    @classmethod
    def parse(cls, text: str) -> "Form":
        """Parse `application/x-www-form-urlencoded` as `urllib.parse.parse_qsl` does (blank
        values kept, strict UTF-8), at a third of its cost: most of Twilio's values need no
        decoding, and this runs for every callback."""
        pairs: list[tuple[str, str]] = []
        if text:
            parts = text.split("&")
            if len(parts) > MAX_FIELDS:
                raise MalformedForm(f"more than {MAX_FIELDS} fields")
            for part in parts:
                if part:
                    name, _, value = part.partition("=")
                    if "%" in part or "+" in part:
                        name, value = _form_decode(name), _form_decode(value)
                    pairs.append((name, value))
        # PostgreSQL text cannot hold NUL, and Twilio never sends it.
        if ("\x00" in text or "%00" in text) and any(
            "\x00" in name or "\x00" in value for name, value in pairs
        ):
            raise MalformedForm("a field contains a NUL character")
        return cls(pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def getall(self, name: str) -> list[str]:
        return self._index().get(name, [])

    def _index(self) -> dict[str, list[str]]:
        if self._by_name is None:
            self._by_name = {}
            for name, value in self.pairs:
                self._by_name.setdefault(name, []).append(value)
        return self._by_name

    def as_fields(self) -> dict[str, str | list[str]]:
        """Every field, a repeated name as the list of its values in order."""
        return {
            name: values[0] if len(values) == 1 else list(values)
            for name, values in self._index().items()
        }


def _form_decode(text: str) -> str:
    try:
        return unquote(text.replace("+", " "), errors="strict")
    except UnicodeDecodeError as error:
        raise MalformedForm(str(error)) from error


class StatusCallback(BaseModel):
    """A status callback as Twilio posts it. Fields Twilio adds later are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True)

    message_sid: str = Field(alias="MessageSid", pattern=MESSAGE_SID_PATTERN)
    message_status: str = Field(alias="MessageStatus", min_length=1, max_length=64)
    account_sid: str | None = Field(default=None, alias="AccountSid")
    to: str | None = Field(default=None, alias="To")
    from_: str | None = Field(default=None, alias="From")
    messaging_service_sid: str | None = Field(default=None, alias="MessagingServiceSid")
    error_code: str | None = Field(default=None, alias="ErrorCode")
    raw_dlr_done_date: str | None = Field(default=None, alias="RawDlrDoneDate")
    event_type: str | None = Field(default=None, alias="EventType")

    @field_validator("message_status")
    @classmethod
    def _status_is_a_word(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_]+", value.strip()):
            raise ValueError("MessageStatus must be a status name such as 'delivered'")
        return value


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One report of a message's status, ready to store, whatever its source."""

    sid: str | None  # None for a send Twilio refused or never answered
    status: str
    error_code: int | None
    received_at: datetime
    source: str
    account_sid: str | None = None
    to: str | None = None
    from_: str | None = None
    messaging_service_sid: str | None = None
    channel: str | None = None
    carrier_done_at: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    idempotency_token: str | None = None
    message_id: UUID | None = None
    # When Twilio says it happened (Event Streams' `timestamp`); callbacks carry no event time.
    occurred_at: datetime | None = None
    # The customer's country: of `To` for what we send, of `From` for what we receive. Taken
    # from the number as received: a report redacted later keeps it (dataclasses.replace).
    country: str | None = None

    def __post_init__(self) -> None:
        if self.country is None:
            customer = self.from_ if self.status in INBOUND_STATUSES else self.to
            object.__setattr__(self, "country", country_of(customer))


def parse_error_code(raw: str | None) -> int | None:
    # Refusing a callback loses it (Twilio does not retry a 4xx), so an odd code is kept raw in
    # the fields and stored as no code rather than refused. ASCII digits only: str.isdigit() and
    # int() also take "³", "①" and Arabic-Indic digits, and int() refuses thousands of digits.
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_ERROR_CODE_DIGITS):
        return None
    code = int(raw)
    return code if code <= MAX_ERROR_CODE else None


def parse_raw_dlr_done_date(raw: str | None) -> datetime | None:
    """`RawDlrDoneDate` is the carrier's YYMMDDhhmm[ss], on the carrier's clock, taken as UTC."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) not in (10, 12):
        return None
    # By hand rather than strptime, which costs as much as the rest of the callback's parsing.
    try:
        year = int(raw[0:2])
        return datetime(
            year + (2000 if year < 69 else 1900), int(raw[2:4]), int(raw[4:6]),
            int(raw[6:8]), int(raw[8:10]), int(raw[10:12] or 0), tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        return None


def channel_of(addresses: tuple[str | None, ...], media: bool) -> str:
    """`whatsapp:+1…` and `rcs:…` name their channel; plain numbers are SMS, or MMS with media."""
    for address in addresses:
        if address and ":" in address:
            return address.split(":", 1)[0].lower()
    return "mms" if media else "sms"


def message_id_from_query(query: dict[str, Any]) -> UUID | None:
    """The local id the service put in its own StatusCallback URL, if this callback carries one."""
    raw = query.get("mid")
    if not isinstance(raw, str):
        return None
    try:
        return UUID(raw)
    except ValueError:
        return None


def report_from_callback(
    callback: StatusCallback,
    fields: dict[str, Any],
    query: dict[str, Any],
    received_at: datetime,
    idempotency_token: str | None,
) -> StatusReport:
    return StatusReport(
        sid=callback.message_sid,
        status=normalise_status(callback.message_status, callback.event_type),
        error_code=parse_error_code(callback.error_code),
        received_at=received_at,
        source="callback",
        account_sid=callback.account_sid,
        to=callback.to,
        from_=callback.from_,
        messaging_service_sid=callback.messaging_service_sid,
        channel=channel_of((callback.to, callback.from_), callback.message_sid.startswith("MM")),
        carrier_done_at=parse_raw_dlr_done_date(callback.raw_dlr_done_date),
        fields=fields,
        query=query,
        idempotency_token=idempotency_token,
        message_id=message_id_from_query(query),
    )
