"""The status precedence rule: which of the reports received for a message is its status.

Twilio's callbacks arrive late, twice and out of order, and carry no event time. So the stored
status is the highest-ranked status ever reported, by a fixed order of statuses; ties between two
reports of the same status go to the higher error code. The stored state then depends only on
the *set* of reports received, never on their order or repetition.

This module is the rule; the repository applies it inside PostgreSQL by comparing the `key` it
computes here, so that concurrent writers agree without reading first.
"""

from collections.abc import Iterable
from dataclasses import dataclass

# Lowest first. Outbound and inbound messages never mix, so one ladder serves both. `pending` is
# the service's own: an attempt recorded before Twilio has answered. Ranks are stored with each
# report, so they are spaced to leave room for statuses Twilio may add between these.
RANKS: dict[str, int] = {
    "pending": 5,
    "scheduled": 10,
    "accepted": 20,
    "queued": 30,
    "sending": 40,
    "sent": 50,
    "canceled": 60,
    "failed": 70,
    "undelivered": 80,
    "partially_delivered": 90,
    "delivered": 100,
    "read": 110,
    "receiving": 120,
    "received": 130,
}
STATUS_ORDER: tuple[str, ...] = tuple(RANKS)

# A status Twilio adds tomorrow ranks below every known one: it is logged, never overrides.
UNKNOWN_RANK = 0

FINAL_STATUSES = frozenset(
    {"canceled", "failed", "undelivered", "partially_delivered", "delivered", "read", "received"}
)

# The statuses of a message someone sent to us.
INBOUND_STATUSES = frozenset({"receiving", "received"})

# Missing error codes sort below every real one.
NO_ERROR_CODE = -1


def rank(status: str) -> int:
    return RANKS.get(status, UNKNOWN_RANK)


def is_known(status: str) -> bool:
    return status in RANKS


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Report:
    """One report of a message's status: a callback, a send response, a poll."""

    status: str
    error_code: int | None = None

    @property
    def key(self) -> tuple[int, str, int]:
        # The status text breaks ties between two unknown statuses, the error code between two
        # reports of one status: both only to make the winner independent of arrival order.
        error = NO_ERROR_CODE if self.error_code is None else self.error_code
        return (rank(self.status), self.status, error)


def winner(reports: Iterable[Report]) -> Report:
    """The report whose status the message takes, given every report received for it."""
    return max(reports, key=lambda report: report.key)


def conflicts(stored: str, reported: str) -> bool:
    """Whether a report contradicts the stored status rather than merely trailing it: both final,
    the report ranked lower (`undelivered` under `delivered`: one segment of several failed, or
    a carrier that said both). The stored status still stands; the conflict is only shown.
    `delivered` under `read` is no conflict: a message read was delivered."""
    return (
        is_final(stored)
        and is_final(reported)
        and rank(reported) < rank(stored)
        and not (reported == "delivered" and stored == "read")
    )


def normalise_status(message_status: str, event_type: str | None) -> str:
    """The status a callback reports. WhatsApp and RCS read receipts say `EventType=READ`."""
    if event_type is not None and event_type.upper() == "READ":
        return "read"
    return message_status.strip().lower()
