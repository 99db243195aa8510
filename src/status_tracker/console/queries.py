"""The console's own SQL: its sessions and the audit of revealed numbers. Everything it shows of
messages, events and reconciliations is read through `repository`."""

from datetime import datetime
from uuid import UUID

import asyncpg

from status_tracker.repository import Executor


async def create_session(
    db: Executor, token_sha256: str, key_sha256: str, csrf_token: str, expires_at: datetime
) -> None:
    # Sign-ins are rare: clearing the expired sessions here keeps the table small without a job.
    await db.execute("DELETE FROM console_sessions WHERE expires_at < now()")
    await db.execute(
        "INSERT INTO console_sessions (token_sha256, key_sha256, csrf_token, expires_at) "
        "VALUES ($1, $2, $3, $4)",
        token_sha256,
        key_sha256,
        csrf_token,
        expires_at,
    )


async def get_session(db: Executor, token_sha256: str) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow(
        "SELECT key_sha256, csrf_token FROM console_sessions "
        "WHERE token_sha256 = $1 AND expires_at > now()",
        token_sha256,
    )
    return record


async def delete_session(db: Executor, token_sha256: str) -> None:
    await db.execute("DELETE FROM console_sessions WHERE token_sha256 = $1", token_sha256)


async def record_reveal(db: Executor, message_id: UUID, key_fingerprint: str) -> None:
    await db.execute(
        "INSERT INTO console_reveals (message_id, key_fingerprint) VALUES ($1, $2)",
        message_id,
        key_fingerprint,
    )


async def list_reveals(db: Executor, message_id: UUID, limit: int) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        "SELECT key_fingerprint, revealed_at FROM console_reveals WHERE message_id = $1 "
        "ORDER BY revealed_at DESC LIMIT $2",
        message_id,
        limit,
    )
    return records
