"""Phone numbers and bodies are personal data: stored redacted, or not at all, when asked.

`STATUS_TRACKER_REDACT_NUMBERS=last4` keeps every number without its last four digits;
`STATUS_TRACKER_STORE_BODIES=false` keeps no body. Applied wherever a report or a message is
built for storage; with neither set, nothing is copied (the status webhook is the hot path).
"""

import dataclasses
import hashlib
import json
import re
from typing import Any

from status_tracker.callbacks import StatusReport
from status_tracker.settings import Settings

# The one list of personal fields, as Twilio names them in webhooks (WhatsApp and RCS included)
# and as the SDK's arguments do. A field not named here is still caught if its value is an
# address (`+…`, `whatsapp:+…`, `rcs:+…`) or its name ends in `Name`: Twilio adds fields without
# notice, and a new one carrying a number or a person's name must not slip through.
NUMBER_FIELDS = frozenset({
    "To", "From", "ChannelToAddress", "WaId", "OriginalRepliedMessageSender",
    "ForwardedFrom", "ReferralNumber", "to", "from_",
})  # fmt: skip
NAME_FIELDS = frozenset({"ProfileName", "DisplayName", "SenderName"})
# Where a WhatsApp user shared a place: as personal as a name.
LOCATION_FIELDS = frozenset({"Latitude", "Longitude", "Address", "Label"})
# JSON documents Twilio embeds in a form field; scrubbed inside by the same rules.
JSON_FIELDS = frozenset({"ChannelMetadata"})
BODY_FIELDS = frozenset({"Body", "body"})
REDACTED = "<redacted>"
# The channels whose addresses are a number behind a prefix (`whatsapp:+1…`).
CHANNEL_PREFIXES = ("whatsapp:", "rcs:", "messenger:")
_LAST_FOUR_DIGITS = re.compile(r"\d(?=(?:\D*\d){0,3}\D*$)")
_ADDRESS_WITH_PLUS = re.compile(r"(?:[a-z]+:)?\+[0-9]{7,15}")


def active(settings: Settings) -> bool:
    return settings.redact_numbers != "none" or not settings.store_bodies


def redact_number(address: str | None, settings: Settings) -> str | None:
    """`+14155550100` -> `+1415555****` under `last4`; unchanged otherwise."""
    if address is None or settings.redact_numbers == "none":
        return address
    return _LAST_FOUR_DIGITS.sub("*", address)


def body(text: str | None, settings: Settings) -> str | None:
    return text if settings.store_bodies else None


def scrub_fields(fields: dict[str, Any], settings: Settings) -> dict[str, Any]:
    if not active(settings):
        return fields
    scrubbed: dict[str, Any] = {}
    for name, value in fields.items():
        if name in BODY_FIELDS and not settings.store_bodies:
            continue
        scrubbed[name] = _scrub_value(name, value, settings)
    return scrubbed


def _scrub_value(name: str, value: Any, settings: Settings) -> Any:
    if isinstance(value, dict):
        return scrub_fields(value, settings)
    if isinstance(value, list):
        return [_scrub_value(name, item, settings) for item in value]
    if settings.redact_numbers == "none" or not isinstance(value, str):
        return value
    if name in JSON_FIELDS:
        try:
            document = json.loads(value)
        except ValueError:
            return REDACTED
        return json.dumps(_scrub_value(name + ".", document, settings), separators=(",", ":"))
    if name in NUMBER_FIELDS or (_ADDRESS_WITH_PLUS.fullmatch(value) is not None):
        return redact_number(value, settings)
    if name in NAME_FIELDS or name in LOCATION_FIELDS or name.endswith("Name"):
        return REDACTED if value else value
    return value


def scrub_report(report: StatusReport, settings: Settings) -> StatusReport:
    if not active(settings):
        return report
    return dataclasses.replace(
        report,
        to=redact_number(report.to, settings),
        from_=redact_number(report.from_, settings),
        fields=scrub_fields(report.fields, settings),
    )


def number_sha256(address: str) -> str:
    """How an opt-out is kept: no number needs to be stored to enforce it."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()
