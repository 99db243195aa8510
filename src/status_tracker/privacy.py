"""Phone numbers and bodies are personal data: stored redacted, or not at all, when asked.

`STATUS_TRACKER_REDACT_NUMBERS=last4` keeps every number without its last four digits;
`STATUS_TRACKER_STORE_BODIES=false` keeps no body. Applied wherever a report or a message is
built for storage; with neither set, nothing is copied (the status webhook is the hot path).
"""

import dataclasses
import hashlib
import re
from typing import Any

from status_tracker.callbacks import StatusReport
from status_tracker.settings import Settings

# Fields that carry a number or a body, as Twilio names them and as the SDK's arguments do.
NUMBER_FIELDS = frozenset({"To", "From", "ChannelToAddress", "WaId", "to", "from_"})
BODY_FIELDS = frozenset({"Body", "body"})
_LAST_FOUR_DIGITS = re.compile(r"\d(?=(?:\D*\d){0,3}\D*$)")


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
        if isinstance(value, dict):
            scrubbed[name] = scrub_fields(value, settings)
        elif name in NUMBER_FIELDS and isinstance(value, str):
            scrubbed[name] = redact_number(value, settings)
        elif name in BODY_FIELDS and not settings.store_bodies:
            continue
        else:
            scrubbed[name] = value
    return scrubbed


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
