"""Every SQL statement of outbound webhooks and the event stream.

Whichever path stores a report (callbacks, sends, inbound messages, reconciliation), a trigger
notes it in `webhook_pending_reports` in the same transaction while anybody listens: no commit
without what it must tell. The delivery workers then derive the outbox's events
(`webhook_events`) and each event's deliveries from those notes (`derive_events`), off the
callback's path. A finished reconciliation pass writes its event at once, by a trigger of its own.
(Migrations 2026_12_07_webhooks and 2026_12_13_webhooks_off_the_path.)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from status_tracker.repository import Executor

ENDPOINT_COLUMNS = """
    id, url, description, event_types, reference_prefix, enabled, disabled_reason,
    failing_since, created_at, updated_at, previous_secret_expires_at
"""


async def create_endpoint(
    db: Executor,
    *,
    endpoint_id: UUID,
    url: str,
    description: str | None,
    event_types: Sequence[str],
    reference_prefix: str | None,
    secret: str,
) -> asyncpg.Record:
    record: asyncpg.Record = await db.fetchrow(
        f"""
        INSERT INTO webhook_endpoints (id, url, description, event_types, reference_prefix, secret)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING {ENDPOINT_COLUMNS}
        """,
        endpoint_id,
        url,
        description,
        list(event_types),
        reference_prefix,
        secret,
    )
    return record


async def list_endpoints(db: Executor) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    )
    return records


async def get_endpoint(db: Executor, endpoint_id: UUID) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id
    )
    return record


async def update_endpoint(
    db: Executor, endpoint_id: UUID, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Set the given columns (names from the route's model, never from the client)."""
    if changes.get("enabled"):
        # Enabled again: what disabled it, and the failures so far, are history.
        changes = {**changes, "disabled_reason": None, "failing_since": None}
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
    record: asyncpg.Record | None = await db.fetchrow(
        f"""
        UPDATE webhook_endpoints SET {assignments}, updated_at = now()
        WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}
        """,
        endpoint_id,
        *changes.values(),
    )
    return record


async def delete_endpoint(connection: asyncpg.Connection, endpoint_id: UUID) -> bool:
    """Delete the endpoint with its deliveries (and their attempts)."""
    async with connection.transaction():
        deleted: UUID | None = await connection.fetchval(
            "DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id", endpoint_id
        )
        await connection.execute(
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1", endpoint_id
        )
    return deleted is not None


async def rotate_secret(
    db: Executor, endpoint_id: UUID, secret: str, overlap_seconds: float
) -> asyncpg.Record | None:
    """The new secret signs from now on; the current one keeps signing too for the overlap."""
    record: asyncpg.Record | None = await db.fetchrow(
        f"""
        UPDATE webhook_endpoints
        SET previous_secret = secret, secret = $2,
            previous_secret_expires_at = now() + make_interval(secs => $3), updated_at = now()
        WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}
        """,
        endpoint_id,
        secret,
        overlap_seconds,
    )
    return record


async def list_deliveries(
    db: Executor, endpoint_id: UUID, limit: int, before: int | None
) -> list[asyncpg.Record]:
    """An endpoint's deliveries, newest first, each with its attempts (oldest first)."""
    records: list[asyncpg.Record] = await db.fetch(
        """
        SELECT d.id, d.event_id, e.type AS event_type, d.state, d.attempts,
               CASE WHEN d.state = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
               d.created_at, d.delivered_at,
               coalesce((SELECT jsonb_agg(jsonb_build_object(
                             'attempted_at', a.attempted_at, 'status_code', a.status_code,
                             'latency_ms', a.latency_ms, 'response_excerpt', a.response_excerpt,
                             'error', a.error) ORDER BY a.id)
                         FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]') AS attempt_log
        FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
        WHERE d.endpoint_id = $1 AND ($3::bigint IS NULL OR d.id < $3)
        ORDER BY d.id DESC LIMIT $2
        """,
        endpoint_id,
        limit,
        before,
    )
    return records


async def replay(db: Executor, endpoint_id: UUID, since: datetime, until: datetime) -> int:
    """Deliver again every event of [since, until) that the endpoint's filters take."""
    count: int = await db.fetchval(
        """
        WITH replayed AS (
            INSERT INTO webhook_deliveries (endpoint_id, event_id)
            SELECT endpoint.id, event.id
            FROM webhook_endpoints endpoint JOIN webhook_events event
              ON event.type = ANY (endpoint.event_types)
             AND (endpoint.reference_prefix IS NULL
                  OR starts_with(coalesce(event.reference, ''), endpoint.reference_prefix))
            WHERE endpoint.id = $1 AND event.created_at >= $2 AND event.created_at < $3
            ORDER BY event.id
            RETURNING 1
        )
        SELECT count(*) FROM replayed
        """,
        endpoint_id,
        since,
        until,
    )
    return count


# --- Delivery workers ---------------------------------------------------------------------------


async def derive_events(db: Executor, max_reports: int) -> int:
    """Turn the oldest notes of stored reports (one per statement that stored some), up to
    `max_reports` reports, into outbox events and their deliveries, in one transaction; how many
    reports were taken. One call runs at a time across every process: another returns 0 at
    once."""
    taken: int = await db.fetchval("SELECT webhook_derive_events($1)", max_reports)
    return taken


async def claim_deliveries(db: Executor, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Take up to `limit` due deliveries of enabled endpoints, for `lease_seconds`: a worker that
    dies with them leaves them due again once the lease is over. Other workers skip the rows
    locked here instead of waiting for them."""
    records: list[asyncpg.Record] = await db.fetch(
        """
        WITH due AS (
            SELECT d.id FROM webhook_deliveries d
            JOIN webhook_endpoints endpoint ON endpoint.id = d.endpoint_id AND endpoint.enabled
            WHERE d.state = 'pending' AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at, d.id
            LIMIT $1
            FOR UPDATE OF d SKIP LOCKED
        ),
        claimed AS (
            UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
            FROM due WHERE d.id = due.id
            RETURNING d.id, d.endpoint_id, d.event_id, d.attempts
        )
        SELECT c.id, c.endpoint_id, c.attempts, endpoint.url, endpoint.secret,
               CASE WHEN endpoint.previous_secret_expires_at > now()
                    THEN endpoint.previous_secret END AS previous_secret,
               event.id AS event_id, event.type, event.payload, event.created_at
        FROM claimed c
        JOIN webhook_endpoints endpoint ON endpoint.id = c.endpoint_id
        JOIN webhook_events event ON event.id = c.event_id
        """,
        limit,
        lease_seconds,
    )
    return records


async def record_attempt(
    db: Executor,
    *,
    delivery_id: int,
    endpoint_id: UUID,
    attempted_at: datetime,
    status_code: int | None,
    latency_ms: int,
    response_excerpt: str | None,
    error: str | None,
    delivered: bool,
    retry_in_seconds: float | None,
    disable_reason: str | None,
    failing_for_seconds: float,
) -> None:
    """Log an attempt and settle its delivery (one statement, one round trip): delivered, due
    again in `retry_in_seconds`, or given up (None). A failure marks the endpoint failing; failing
    for `failing_for_seconds`, or `disable_reason` given (a 410), disables it. A success ends its
    failing spell."""
    await db.execute(
        """
        WITH attempt AS (
            INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms,
                                          response_excerpt, error)
            VALUES ($1, $3, $4, $5, $6, $7)
        ),
        settled AS (
            UPDATE webhook_deliveries
            SET state = CASE WHEN $8 THEN 'delivered'
                             WHEN $9::float8 IS NULL THEN 'failed' ELSE 'pending' END,
                delivered_at = CASE WHEN $8 THEN now() END,
                next_attempt_at = now() + make_interval(secs => coalesce($9, 0))
            WHERE id = $1
        )
        UPDATE webhook_endpoints
        SET failing_since = CASE WHEN $8 THEN NULL ELSE coalesce(failing_since, now()) END,
            enabled = enabled AND ($8 OR ($10::text IS NULL
                      AND coalesce(failing_since, now()) > now() - make_interval(secs => $11))),
            disabled_reason = CASE
                WHEN $8 OR NOT enabled THEN disabled_reason
                WHEN $10::text IS NOT NULL THEN $10
                WHEN coalesce(failing_since, now()) <= now() - make_interval(secs => $11)
                THEN 'every delivery failed since ' || failing_since::text
                ELSE disabled_reason END,
            updated_at = CASE WHEN $8 THEN updated_at ELSE now() END
        -- A success changes the endpoint only to end a failing spell.
        WHERE id = $2 AND NOT ($8 AND failing_since IS NULL)
        """,
        delivery_id,
        endpoint_id,
        attempted_at,
        status_code,
        latency_ms,
        response_excerpt,
        error,
        delivered,
        retry_in_seconds,
        disable_reason,
        failing_for_seconds,
    )


@dataclass(frozen=True, slots=True)
class Delivered:
    """A successful attempt, to record with others (`record_delivered`)."""

    delivery_id: int
    endpoint_id: UUID
    attempted_at: datetime
    status_code: int
    latency_ms: int
    response_excerpt: str | None


async def record_delivered(db: Executor, attempts: Sequence[Delivered]) -> None:
    """Log successful attempts and settle their deliveries, in one statement: what
    `record_attempt` does for one success (its endpoint's failing spell, if any, is over)."""
    await db.execute(
        """
        WITH attempt AS (
            SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::integer[],
                                 $5::integer[], $6::text[])
                AS a(delivery_id, endpoint_id, attempted_at, status_code, latency_ms,
                     response_excerpt)
        ),
        logged AS (
            INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms,
                                          response_excerpt)
            SELECT delivery_id, attempted_at, status_code, latency_ms, response_excerpt
            FROM attempt ORDER BY delivery_id
        ),
        settled AS (
            UPDATE webhook_deliveries d
            SET state = 'delivered', delivered_at = now(), next_attempt_at = now()
            FROM attempt WHERE d.id = attempt.delivery_id
        )
        UPDATE webhook_endpoints SET failing_since = NULL
        WHERE id IN (SELECT endpoint_id FROM attempt) AND failing_since IS NOT NULL
        """,
        [a.delivery_id for a in attempts],
        [a.endpoint_id for a in attempts],
        [a.attempted_at for a in attempts],
        [a.status_code for a in attempts],
        [a.latency_ms for a in attempts],
        [a.response_excerpt for a in attempts],
    )


async def oldest_pending_seconds(db: Executor) -> float:
    """How long the oldest delivery still pending, or report whose events are still to derive,
    has waited (0: none)."""
    seconds: float = await db.fetchval(
        """
        SELECT coalesce(extract(epoch FROM now() - least(
            (SELECT min(created_at) FROM webhook_deliveries WHERE state = 'pending'),
            (SELECT created_at FROM webhook_pending_reports ORDER BY id LIMIT 1))), 0)::float8
        """
    )
    return seconds


async def prune(db: Executor, older_than_seconds: float, batch: int = 10_000) -> int:
    """Delete a batch of outbox events and of deliveries (with their attempts) older than the
    retention, and stream leases long expired; how many rows went (0: nothing left to prune)."""
    await db.execute("DELETE FROM event_streams WHERE expires_at < now()")
    deleted: int = await db.fetchval(
        """
        WITH old_deliveries AS (
            DELETE FROM webhook_deliveries WHERE id IN (
                SELECT id FROM webhook_deliveries
                WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)
            RETURNING 1
        ),
        old_events AS (
            DELETE FROM webhook_events WHERE id IN (
                SELECT id FROM webhook_events
                WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM old_deliveries) + (SELECT count(*) FROM old_events)
        """,
        older_than_seconds,
        batch,
    )
    return deleted


# --- The stream ---------------------------------------------------------------------------------


async def hold_stream_lease(db: Executor, stream_id: UUID, seconds: float) -> None:
    """While a stream holds a lease (and for `seconds` after it is gone), the outbox records
    events even with no endpoint, so that a client reconnecting within it misses none."""
    await db.execute(
        """
        INSERT INTO event_streams (id, expires_at) VALUES ($1, now() + make_interval(secs => $2))
        ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
        """,
        stream_id,
        seconds,
    )


async def stream_position(db: Executor, after_event_id: int | None) -> tuple[int, int]:
    """Where a stream starts: just after `after_event_id` (as (xid, id)), or, with none, after
    every event of a transaction already over."""
    if after_event_id is not None:
        row = await db.fetchrow(
            "SELECT xid::text::bigint AS xid, id FROM webhook_events WHERE id = $1",
            after_event_id,
        )
        if row is not None:
            return row["xid"], row["id"]
        return 0, after_event_id
    xmin: int = await db.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    return xmin - 1, 2**62


async def events_after(db: Executor, position: tuple[int, int], limit: int) -> list[asyncpg.Record]:
    """Events after `position`, in (transaction, id) order, of transactions that are over.

    Ids are handed out before commit, so a smaller id can become visible after a larger one;
    reading by id would then skip it for good. Every transaction that can still commit events
    has an id at or above the oldest one running (the snapshot's xmin), and later ones above
    that: the events below it are complete and, in (xid, id) order, never gain one behind a
    position already passed."""
    records: list[asyncpg.Record] = await db.fetch(
        """
        SELECT id, xid::text::bigint AS xid, type, reference, payload, created_at
        FROM webhook_events
        WHERE (xid, id) > ($1::text::xid8, $2)
          AND xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY xid, id LIMIT $3
        """,
        str(position[0]),
        position[1],
        limit,
    )
    return records
