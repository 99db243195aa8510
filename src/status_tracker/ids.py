"""Time-ordered message ids (UUID version 7, RFC 9562).

A random id puts every new message, and every event appended to it, on a random page of the
primary key and of the event log's index: once those indexes outgrow memory, each callback
reads and dirties pages all over them. An id that starts with its creation time lands next to
the messages created just before it, so the pages that change are the few most recent ones.
The database's `uuid7()` (migration 2026_12_04_layout) makes the same ids.
"""

import secrets
from datetime import datetime
from uuid import UUID


def uuid7(at: datetime) -> UUID:
    """A new id whose first 48 bits are `at` in Unix milliseconds, the rest random."""
    milliseconds = int(at.timestamp() * 1000) & (2**48 - 1)
    random_bits = secrets.randbits(74)
    value = (
        milliseconds << 80
        | 0x7 << 76  # version 7
        | (random_bits >> 62) << 64  # 12 random bits
        | 0b10 << 62  # RFC 9562 variant
        | random_bits & (2**62 - 1)
    )
    return UUID(int=value)
