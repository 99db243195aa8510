"""The country of a phone number (ISO 3166 alpha-2), for breakdowns and rollups.

Computed at ingest from the number as Twilio sent it, before STATUS_TRACKER_REDACT_NUMBERS
removes its last digits, so that a redacted store still breaks delivery down by country.
"""

import phonenumbers

# A country is decided by the calling code and, for shared codes (+1, +7, +44...), by the first
# digits after it; eight digits decide it in every numbering plan. Keying the cache by them keeps
# the hot path at one dictionary lookup for the numbers of a busy country.
_DECIDING_DIGITS = 8


def country_of(address: str | None) -> str | None:
    """`+14155550100` -> `US`; `whatsapp:+447700900123` -> `GB`; None for short codes,
    alphanumeric senders and what is not a number."""
    if not address:
        return None
    number = address.rpartition(":")[2]  # whatsapp:+…, rcs:+…, messenger:…
    if not number.startswith("+"):
        return None
    # A redacted number (`+1415555****`) keeps the digits that decide the country.
    prefix = number[: 1 + _DECIDING_DIGITS]
    if prefix not in _by_prefix:
        if len(_by_prefix) >= _CACHED_PREFIXES:
            _by_prefix.clear()
        _by_prefix[prefix] = _country_of_number(number.replace("*", "0"))
    return _by_prefix[prefix]


_CACHED_PREFIXES = 65536
_by_prefix: dict[str, str | None] = {}


def _country_of_number(number: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    # A number no region claims (a fictional 555 number, a new range) is counted in its calling
    # code's main country, as Twilio's own pricing does.
    region = phonenumbers.region_code_for_number(parsed) or (
        phonenumbers.region_code_for_country_code(parsed.country_code or 0)
    )
    # Not `ZZ` (no region) nor `001` (+800, +882 and other numbers of no country).
    return region if region and region.isalpha() and region != phonenumbers.UNKNOWN_REGION else None
