"""Erasure of a phone number: every stored trace of it blanked, on a data subject's request.

The number is found in every form the store may hold it: on every channel (`+1…`,
`whatsapp:+1…`, `rcs:+1…`), with or without its `+` (WhatsApp's `WaId`), and as
STATUS_TRACKER_REDACT_NUMBERS=last4 stores it (`+1415555****`), whatever the setting is now:
it may have changed since. A redacted form is shared by every number that differs only in its
last four digits; their rows are erased too, since the store cannot tell them apart.
"""

import logging
import re
from dataclasses import dataclass

import asyncpg

from status_tracker import privacy, repository

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"(?:[a-z]+:)?\+?([0-9]{7,15})")
# Members of a JSON document (an event's fields, a send's request) that are about the person
# behind the number rather than the message: bodies, media, names, places (privacy's lists, at
# any depth), and where Twilio placed them (FromCity, ToZip, …).
PERSONAL_KEYS = "^(" + "|".join(sorted({
    *privacy.BODY_FIELDS, *privacy.NAME_FIELDS, *privacy.LOCATION_FIELDS,
    "MediaUrl[0-9]*", "media_url", "content_variables", ".*Name",
    "(From|To)(City|State|Zip|Country)",
})) + ")$"  # fmt: skip


class InvalidNumber(ValueError):
    pass


@dataclass(frozen=True)
class Number:
    e164: str
    addresses: list[str]
    pattern: str


def parse(number: str) -> Number:
    """A number as given (`+14155550100`, `14155550100` or `whatsapp:+14155550100`)."""
    found = _NUMBER.fullmatch(number.strip())
    if found is None:
        raise InvalidNumber("Give a phone number in E.164 form, e.g. +14155550100.")
    digits = found.group(1)
    e164 = "+" + digits
    plain = [e164, *(prefix + e164 for prefix in privacy.CHANNEL_PREFIXES)]
    redacted = [re.sub(r"[0-9]{4}$", "****", address) for address in plain]
    # Not inside a longer number; with a channel prefix, if any, so that the whole address goes.
    pattern = rf"(?:[a-z]+:)?(?<![0-9])\+?(?:{digits}|{digits[:-4]}\*{{4}})(?![0-9*])"
    return Number(e164, plain + redacted, pattern)


async def erase(
    connection: asyncpg.Connection, number: str, erased_by: str | None
) -> asyncpg.Record:
    """Erase `number` (see repository.erasure_statements); the audit record."""
    parsed = parse(number)
    record = await repository.erase_number(
        connection,
        addresses=parsed.addresses,
        pattern=parsed.pattern,
        personal_keys=PERSONAL_KEYS,
        number_sha256=privacy.number_sha256(parsed.e164),
        erased_by=erased_by,
    )
    log.info(
        "number erased",
        extra={"erasure": record["id"], "number_sha256": record["number_sha256"],
               "counts": record["counts"]},
    )  # fmt: skip
    return record
