"""Numbers and bodies as the console shows them: masked unless the viewer revealed them (an
audited action). Numbers stored redacted (STATUS_TRACKER_REDACT_NUMBERS=last4) stay redacted."""

import re
from typing import Any

from status_tracker.privacy import BODY_FIELDS, LOCATION_FIELDS, NAME_FIELDS, NUMBER_FIELDS

HIDDEN = "•"
# A number inside any text: a field Twilio adds tomorrow, a JSON document in a field, a detail.
_NUMBER_IN_TEXT = re.compile(r"\+[0-9*]{7,15}")


def number(address: str | None, reveal: bool) -> str | None:
    """Every digit but the first two and the last two hidden: `+14155550100` -> `+14•••••••00`,
    `whatsapp:+4915112345678` -> `whatsapp:+49•••••••••78`. A channel prefix stays readable."""
    if address is None or reveal:
        return address
    first = next((i for i, c in enumerate(address) if c.isdigit() or c == "*"), None)
    if first is None or len(address) - first <= 4:
        return address
    head, tail = first + 2, len(address) - 2
    return address[:head] + HIDDEN * (tail - head) + address[tail:]


def body(text: str | None, reveal: bool) -> str | None:
    if text is None or reveal:
        return text
    return f"{HIDDEN * 3} ({len(text)} characters, hidden)"


def fields(values: dict[str, Any], reveal: bool) -> dict[str, Any]:
    """Twilio's raw fields (or any such document) with numbers, names, places and bodies
    masked, whatever field carries them."""
    if reveal:
        return values
    return {name: _value(name, value) for name, value in values.items()}


def _value(name: str, value: Any) -> Any:
    if isinstance(value, dict):
        return fields(value, False)
    if isinstance(value, list):
        return [_value(name, item) for item in value]
    if not isinstance(value, str) or not value:
        return value
    if name in BODY_FIELDS:
        return body(value, False)
    if name in NAME_FIELDS or name in LOCATION_FIELDS or name.endswith("Name"):
        return HIDDEN * 3
    if name in NUMBER_FIELDS:
        return number(value, False)
    return _NUMBER_IN_TEXT.sub(lambda found: number(found.group(0), False) or "", value)
