"""Every SQL statement of the service.

Functions take an asyncpg connection (or pool) and plain values, and return plain records, so
the web layer, the CLI, the reconciliation job and the benchmarks share them.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import orjson

from status_tracker.callbacks import StatusReport
from status_tracker.precedence import FINAL_STATUSES, NO_ERROR_CODE, rank

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool

# The precedence rule (precedence.Report.key) in SQL: does the incoming report outrank the stored
# status? The row is locked by the upsert, so concurrent reports for one message serialise here.
_WINS = f"""(EXCLUDED.status_rank, EXCLUDED.status COLLATE "C",
            coalesce(EXCLUDED.error_code, {NO_ERROR_CODE}))
         > (m.status_rank, m.status COLLATE "C", coalesce(m.error_code, {NO_ERROR_CODE}))"""

# Reports stored by one statement, one round trip: each message is created or its status raised,
# and every report is appended to the event log. The reports travel as one JSON document, which
# costs a fraction of the client time that the same values cost as parameters.
#
# A message is found by SID, else by the local id the caller passes: the id in our own
# StatusCallback URL, so a callback that outruns the send's response still lands on the attempt.
# That id only names a message that has no SID yet or the same one: a callback for another SID
# carrying it (a copied URL) must not rewrite that message. A message we did not send gets a new
# time-ordered id; two first callbacks racing for one SID then collide on the SID's unique key,
# and `record_reports` runs the loser again, which finds the winner's row. Rows are upserted in
# id order: two batches sharing messages lock them in the same order and cannot deadlock. A
# statement may not update a row twice: callers give each message at most one report per
# statement. A report whose idempotency token (Twilio's retry of one callback) is already in the
# message's log is applied again, which changes nothing, but not appended twice.
_FINAL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
RECORD_REPORTS = f"""
WITH incoming AS (
    SELECT coalesce((SELECT id FROM messages WHERE sid = r.sid),
                    (SELECT id FROM messages
                     WHERE id = r.message_id AND (sid IS NULL OR r.sid IS NULL OR sid = r.sid)),
                    uuid7(r.received_at)) AS id, r.*
    FROM json_to_recordset($1::json) AS r(
        sid text, account_sid text, status text, status_rank smallint, error_code integer,
        to_number text, from_number text, messaging_service_sid text, channel text,
        received_at timestamptz, source text, carrier_done_at timestamptz, fields jsonb,
        query jsonb, idempotency_token text, message_id uuid
    )
),
message AS (
    INSERT INTO messages AS m (
        id, sid, account_sid, status, status_rank, error_code, to_number, from_number,
        messaging_service_sid, channel, created_at, updated_at,
        sent_at, delivered_at, read_at, final_at
    )
    SELECT id, sid, account_sid, status, status_rank, error_code, to_number, from_number,
           messaging_service_sid, channel, received_at, received_at,
           CASE WHEN status = 'sent' THEN received_at END,
           CASE WHEN status = 'delivered' THEN received_at END,
           CASE WHEN status = 'read' THEN received_at END,
           CASE WHEN status IN ({_FINAL}) THEN received_at END
    FROM incoming ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        sid = coalesce(m.sid, EXCLUDED.sid),
        -- A report carrying a SID proves Twilio took a send whose answer was lost or is late.
        send_outcome = CASE WHEN m.send_outcome IN ('pending', 'unknown')
                             AND EXCLUDED.sid IS NOT NULL
                            THEN 'accepted' ELSE m.send_outcome END,
        status = CASE WHEN {_WINS} THEN EXCLUDED.status ELSE m.status END,
        status_rank = CASE WHEN {_WINS} THEN EXCLUDED.status_rank ELSE m.status_rank END,
        error_code = CASE WHEN {_WINS} THEN EXCLUDED.error_code ELSE m.error_code END,
        account_sid = coalesce(m.account_sid, EXCLUDED.account_sid),
        to_number = coalesce(m.to_number, EXCLUDED.to_number),
        from_number = coalesce(m.from_number, EXCLUDED.from_number),
        messaging_service_sid = coalesce(m.messaging_service_sid, EXCLUDED.messaging_service_sid),
        channel = coalesce(m.channel, EXCLUDED.channel),
        created_at = least(m.created_at, EXCLUDED.created_at),
        updated_at = greatest(m.updated_at, EXCLUDED.updated_at),
        sent_at = least(m.sent_at, EXCLUDED.sent_at),
        delivered_at = least(m.delivered_at, EXCLUDED.delivered_at),
        read_at = least(m.read_at, EXCLUDED.read_at),
        final_at = least(m.final_at, EXCLUDED.final_at)
)
INSERT INTO message_events (
    message_id, status, status_rank, error_code, source, received_at, carrier_done_at,
    fields, query, idempotency_token
)
SELECT id, status, status_rank, error_code, source, received_at, carrier_done_at,
       fields, query, idempotency_token
FROM incoming i
WHERE i.idempotency_token IS NULL
   OR NOT EXISTS (SELECT 1 FROM message_events e
                  WHERE e.message_id = i.id AND e.idempotency_token = i.idempotency_token)
"""


def _record_reports_rounds(reports: Sequence[StatusReport]) -> list[str]:
    """RECORD_REPORTS' documents: the first report of each message in the first, its second
    (if any) in the next, and so on. Reports of one message in one batch are rare."""
    rounds: list[list[dict[str, Any]]] = []
    seen: dict[object, int] = {}
    for report in reports:
        key = report.sid if report.sid is not None else report.message_id
        index = seen[key] = seen.get(key, -1) + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append({
            "sid": report.sid,
            "account_sid": report.account_sid,
            "status": report.status,
            "status_rank": rank(report.status),
            "error_code": report.error_code,
            "to_number": report.to,
            "from_number": report.from_,
            "messaging_service_sid": report.messaging_service_sid,
            "channel": report.channel,
            "received_at": report.received_at,
            "source": report.source,
            "carrier_done_at": report.carrier_done_at,
            "fields": report.fields,
            "query": report.query,
            "idempotency_token": report.idempotency_token,
            "message_id": report.message_id and str(report.message_id),
        })  # fmt: skip
    # orjson: a sixth of json.dumps' cost, which the busiest process pays for every callback.
    return [orjson.dumps(batch).decode() for batch in rounds]


# How often a statement that lost a race for a new SID runs again (it then finds the winner's
# row, so once is enough but for a third writer).
_SID_RACE_ATTEMPTS = 3


async def _run_again_if_a_sid_race_is_lost(store: Callable[[], Awaitable[None]]) -> None:
    """Run `store` (one transaction) until it does not lose a race for a new SID's unique key."""
    for attempt in range(_SID_RACE_ATTEMPTS):
        try:
            await store()
            return
        except asyncpg.UniqueViolationError as error:
            constraint: str | None = error.constraint_name
            if constraint != "messages_sid_key" or attempt == _SID_RACE_ATTEMPTS - 1:
                raise


async def record_reports(connection: asyncpg.Connection, reports: Sequence[StatusReport]) -> None:
    """Store reports in one transaction: each is appended to the event log and applied to its
    message's status by the precedence rule, whatever their order."""
    rounds = _record_reports_rounds(reports)

    async def store() -> None:
        if len(rounds) == 1:
            await connection.execute(RECORD_REPORTS, rounds[0])
            return
        async with connection.transaction():
            for batch in rounds:
                await connection.execute(RECORD_REPORTS, batch)

    await _run_again_if_a_sid_race_is_lost(store)


async def record_report(db: Executor, report: StatusReport) -> None:
    """Store one report: append it to the event log and apply it to the message's status.
    Within a caller's transaction: a lost race for a new SID fails the transaction."""
    await db.execute(RECORD_REPORTS, *_record_reports_rounds([report]))


MESSAGE_COLUMNS = """
    id, sid, account_sid, direction, status, error_code, to_number, from_number,
    messaging_service_sid, channel, created_at, updated_at, sent_at, delivered_at, read_at,
    final_at, body, media_urls, content_sid, send_at, reference, metadata, send_outcome,
    in_reply_to
"""


async def get_message(db: Executor, id_or_sid: str) -> asyncpg.Record | None:
    """A message by its Twilio SID or by the service's own id."""
    key: UUID | str
    try:
        column, key = "id", UUID(id_or_sid)
    except ValueError:
        column, key = "sid", id_or_sid
    record: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {column} = $1", key
    )
    return record


async def record_attempt(
    db: Executor,
    *,
    message_id: UUID,
    to: str,
    from_: str | None,
    messaging_service_sid: str | None,
    channel: str,
    body: str | None,
    media_urls: list[str] | None,
    content_sid: str | None,
    content_variables: dict[str, str] | None,
    send_at: datetime | None,
    validity_period: int | None,
    reference: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
    request_hash: str,
    created_at: datetime,
    fields: dict[str, Any],
    direction: str = "outbound-api",
    in_reply_to: UUID | None = None,
) -> bool:
    """Record a send attempt before Twilio is called (or a TwiML reply before it is answered).
    False: the idempotency key is taken."""
    recorded: UUID | None = await db.fetchval(
        """
        WITH message AS (
            INSERT INTO messages (
                id, direction, status, status_rank, to_number, from_number,
                messaging_service_sid, channel, body, media_urls, content_sid, content_variables,
                send_at, validity_period, reference, metadata, idempotency_key, request_hash,
                send_outcome, created_at, updated_at, in_reply_to
            )
            VALUES (
                $1, $19, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                $13, $14, $15, $16, 'pending', $17, $17, $20
            )
            ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id
        )
        INSERT INTO message_events (message_id, status, status_rank, source, received_at, fields)
        SELECT id, 'pending', $2, 'send', $17, $18 FROM message
        RETURNING message_id
        """,
        message_id,
        rank("pending"),
        to,
        from_,
        messaging_service_sid,
        channel,
        body,
        media_urls,
        content_sid,
        content_variables,
        send_at,
        validity_period,
        reference,
        metadata,
        idempotency_key,
        request_hash,
        created_at,
        fields,
        direction,
        in_reply_to,
    )
    return recorded is not None


async def record_send_result(
    connection: asyncpg.Connection, report: StatusReport, outcome: str
) -> None:
    """Apply what Twilio answered to a send (or that it did not), in one transaction. A callback
    that creates a record of the SID meanwhile makes it run again, to merge that record."""

    async def store() -> None:
        async with connection.transaction():
            if report.sid is not None:
                await _merge_early_record(connection, report.sid, report.message_id)
            await record_report(connection, report)
            # "unknown" never overrides what a callback already proved: that Twilio took it.
            await connection.execute(
                """
                UPDATE messages
                SET send_outcome = CASE WHEN $2 = 'unknown' AND sid IS NOT NULL
                                        THEN 'accepted' ELSE $2 END
                WHERE id = $1
                """,
                report.message_id,
                outcome,
            )

    await _run_again_if_a_sid_race_is_lost(store)


async def _merge_early_record(
    connection: asyncpg.Connection, sid: str, attempt_id: UUID | None
) -> None:
    """Fold a message that callbacks created under `sid` into the send attempt `attempt_id`.

    Callbacks without our local id (a Messaging Service's own callback URL) can outrun the send's
    response and create a record of their own; the attempt is the one to keep.
    """
    early: UUID | None = await connection.fetchval(
        "SELECT id FROM messages WHERE sid = $1 AND id <> $2 FOR UPDATE", sid, attempt_id
    )
    if early is None:
        return
    await connection.execute(
        "UPDATE message_events SET message_id = $2 WHERE message_id = $1", early, attempt_id
    )
    await connection.execute(
        f"""
        UPDATE messages m SET
            (status, status_rank, error_code) = (
                SELECT e.status, e.status_rank, e.error_code FROM message_events e
                WHERE e.message_id = m.id
                ORDER BY e.status_rank DESC, e.status COLLATE "C" DESC,
                         coalesce(e.error_code, {NO_ERROR_CODE}) DESC
                LIMIT 1),
            account_sid = coalesce(m.account_sid, early.account_sid),
            from_number = coalesce(m.from_number, early.from_number),
            channel = coalesce(m.channel, early.channel),
            updated_at = greatest(m.updated_at, early.updated_at),
            sent_at = least(m.sent_at, early.sent_at),
            delivered_at = least(m.delivered_at, early.delivered_at),
            read_at = least(m.read_at, early.read_at),
            final_at = least(m.final_at, early.final_at)
        FROM messages early
        WHERE m.id = $1 AND early.id = $2
        """,
        attempt_id,
        early,
    )
    await connection.execute("DELETE FROM messages WHERE id = $1", early)


async def get_idempotent_request(db: Executor, key: str) -> asyncpg.Record | None:
    """The message an idempotency key made, with the hash of the request that made it."""
    record: asyncpg.Record | None = await db.fetchrow(
        "SELECT id, request_hash FROM messages WHERE idempotency_key = $1", key
    )
    return record


async def list_events(db: Executor, message_id: UUID) -> list[asyncpg.Record]:
    """A message's event log, oldest first."""
    records: list[asyncpg.Record] = await db.fetch(
        """
        SELECT id, status, error_code, source, received_at, carrier_done_at, fields, query
        FROM message_events WHERE message_id = $1 ORDER BY id
        """,
        message_id,
    )
    return records


async def ping(db: Executor) -> None:
    await db.fetchval("SELECT 1")


# --- Reconciliation ----------------------------------------------------------------------------

# One pass at a time across every worker and replica: a session-level advisory lock.
RECONCILE_LOCK = 0x5354_5243


async def try_reconcile_lock(connection: asyncpg.Connection) -> bool:
    locked: bool = await connection.fetchval("SELECT pg_try_advisory_lock($1)", RECONCILE_LOCK)
    return locked


async def release_reconcile_lock(connection: asyncpg.Connection) -> None:
    await connection.execute("SELECT pg_advisory_unlock($1)", RECONCILE_LOCK)


async def start_reconciliation(
    db: Executor, since: datetime, until: datetime, dry_run: bool
) -> int:
    """Record a new pass; a pass still 'running' (we hold the lock) was interrupted."""
    await db.execute("UPDATE reconciliations SET state = 'interrupted' WHERE state = 'running'")
    reconciliation_id: int = await db.fetchval(
        "INSERT INTO reconciliations (since, until, dry_run) VALUES ($1, $2, $3) RETURNING id",
        since,
        until,
        dry_run,
    )
    return reconciliation_id


async def last_pass_finished_at(db: Executor) -> datetime | None:
    """When the last pass that applied its findings (not a dry run) finished."""
    finished: datetime | None = await db.fetchval(
        "SELECT max(finished_at) FROM reconciliations WHERE state = 'finished' AND NOT dry_run"
    )
    return finished


async def finish_reconciliation(
    connection: asyncpg.Connection,
    reconciliation_id: int,
    *,
    state: str,
    counts: dict[str, int],
    errors: list[str],
    duration_seconds: float,
    discrepancies: Sequence[tuple[str, bool, UUID | None, str | None, dict[str, Any]]],
) -> None:
    async with connection.transaction():
        await connection.executemany(
            """
            INSERT INTO discrepancies (reconciliation_id, kind, resolved, message_id, sid, detail)
            VALUES ($1, $2, $3, $4, $5, $6)
            """,
            [(reconciliation_id, *discrepancy) for discrepancy in discrepancies],
        )
        await connection.execute(
            """
            UPDATE reconciliations
            SET state = $2, counts = $3, errors = $4, duration_seconds = $5, finished_at = now()
            WHERE id = $1
            """,
            reconciliation_id,
            state,
            counts,
            errors,
            duration_seconds,
        )


# The final statuses are written out as in the partial index messages_not_final, which a shipped
# migration defines: the planner uses the index only while the two predicates match (a test checks
# both against precedence.FINAL_STATUSES).
STALE_MESSAGES = """
SELECT id, sid, status, error_code FROM messages
WHERE sid IS NOT NULL AND direction <> 'inbound' AND created_at BETWEEN $1 AND $2
  AND status NOT IN ('canceled', 'failed', 'undelivered', 'partially_delivered',
                     'delivered', 'read', 'received')
ORDER BY created_at
"""


async def stale_messages(
    db: Executor, created_after: datetime, created_before: datetime
) -> list[asyncpg.Record]:
    """Outbound messages with a SID that are not final although they should be by now."""
    records: list[asyncpg.Record] = await db.fetch(STALE_MESSAGES, created_after, created_before)
    return records


async def messages_by_sid(db: Executor, sids: Sequence[str]) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        "SELECT id, sid, status, error_code FROM messages WHERE sid = ANY($1::text[])", list(sids)
    )
    return records


async def unsettled_attempts(
    db: Executor, since: datetime, until: datetime, pending_before: datetime
) -> list[asyncpg.Record]:
    """Sends whose outcome is unknown (or that never got an answer, by `pending_before`)."""
    records: list[asyncpg.Record] = await db.fetch(
        """
        SELECT id, to_number, from_number, messaging_service_sid, body, created_at FROM messages
        WHERE sid IS NULL AND created_at BETWEEN $1 AND $2
          AND (send_outcome = 'unknown' OR (send_outcome = 'pending' AND created_at < $3))
        ORDER BY created_at
        """,
        since,
        until,
        pending_before,
    )
    return records


async def sent_messages_between(
    db: Executor, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    """Outbound messages with a SID created in the window (to find those Twilio lacks)."""
    records: list[asyncpg.Record] = await db.fetch(
        """
        SELECT id, sid, status, error_code FROM messages
        WHERE sid IS NOT NULL AND direction <> 'inbound' AND created_at BETWEEN $1 AND $2
        """,
        since,
        until,
    )
    return records


RECONCILIATION_COLUMNS = """
    id, started_at, finished_at, since, until, dry_run, state, counts, errors, duration_seconds
"""


async def list_reconciliations(db: Executor, limit: int) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        f"SELECT {RECONCILIATION_COLUMNS} FROM reconciliations ORDER BY id DESC LIMIT $1", limit
    )
    return records


async def get_reconciliation(db: Executor, reconciliation_id: int) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {RECONCILIATION_COLUMNS} FROM reconciliations WHERE id = $1", reconciliation_id
    )
    return record


async def list_discrepancies(db: Executor, reconciliation_id: int) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        """
        SELECT kind, resolved, message_id, sid, detail FROM discrepancies
        WHERE reconciliation_id = $1 ORDER BY resolved, id
        """,
        reconciliation_id,
    )
    return records


# --- Inbound messages and opt-outs -------------------------------------------------------------


async def record_inbound(
    db: Executor,
    report: StatusReport,
    body: str | None,
    media_urls: list[str] | None,
) -> tuple[UUID, bool]:
    """Store an inbound message and its event; (its id, False if Twilio had sent it before)."""
    record = await db.fetchrow(
        """
        WITH message AS (
            INSERT INTO messages AS m (
                id, sid, account_sid, direction, status, status_rank, to_number, from_number,
                messaging_service_sid, channel, body, media_urls, created_at, updated_at,
                final_at
            )
            VALUES (uuid7($11), $1, $2, 'inbound', $3, $4, $5, $6, $7, $8, $9, $10, $11, $11,
                    $11)
            ON CONFLICT (sid) DO UPDATE SET updated_at = greatest(m.updated_at, EXCLUDED.updated_at)
            RETURNING m.id, (xmax = 0) AS inserted
        ), event AS (
            INSERT INTO message_events (message_id, status, status_rank, source, received_at,
                                        fields, query)
            SELECT id, $3, $4, 'inbound', $11, $12, $13 FROM message
        )
        SELECT id, inserted FROM message
        """,
        report.sid,
        report.account_sid,
        report.status,
        rank(report.status),
        report.to,
        report.from_,
        report.messaging_service_sid,
        report.channel,
        body,
        media_urls,
        report.received_at,
        report.fields,
        report.query,
    )
    assert record is not None
    return record["id"], record["inserted"]


async def get_reply(db: Executor, inbound_id: UUID) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow(
        "SELECT id, body FROM messages WHERE in_reply_to = $1 ORDER BY created_at LIMIT 1",
        inbound_id,
    )
    return record


# An opt-out's scope is the sender it was sent to: a Messaging Service SID (its whole pool) or the
# SHA-256 of a sender number; `*` (rows from before scopes) holds for every sender.
EVERY_SENDER = "*"


async def record_opt_out(
    db: Executor,
    number_sha256: str,
    scope: str,
    opted_out: bool,
    keyword: str,
    at: datetime,
    message_id: UUID,
) -> None:
    """The latest keyword a number sent to this scope wins; an older one arriving late changes
    nothing."""
    await db.execute(
        """
        INSERT INTO opt_outs AS o (number_sha256, scope, opted_out, keyword, changed_at, message_id)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (number_sha256, scope) DO UPDATE
        SET opted_out = EXCLUDED.opted_out, keyword = EXCLUDED.keyword,
            changed_at = EXCLUDED.changed_at, message_id = EXCLUDED.message_id
        WHERE o.changed_at <= EXCLUDED.changed_at
        """,
        number_sha256,
        scope,
        opted_out,
        keyword,
        at,
        message_id,
    )
    if not opted_out:
        # START lifts an opt-out from before scopes too: the number asked for messages again.
        await db.execute(
            "UPDATE opt_outs SET opted_out = false, keyword = $2, changed_at = $3, "
            "message_id = $4 WHERE number_sha256 = $1 AND scope = '*' AND changed_at <= $3",
            number_sha256,
            keyword,
            at,
            message_id,
        )


async def is_opted_out(db: Executor, number_sha256: str, scope: str) -> bool:
    """Whether the number opted out of this sender (or, before scopes, of every sender)."""
    opted_out: bool | None = await db.fetchval(
        "SELECT bool_or(opted_out) FROM opt_outs WHERE number_sha256 = $1 AND scope IN ($2, '*')",
        number_sha256,
        scope,
    )
    return bool(opted_out)


# --- Queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageFilter:
    """Which messages to list. `statuses`, `to` and `from_` match any of their values."""

    statuses: Sequence[str] = ()
    direction: str | None = None
    to: Sequence[str] = ()
    from_: Sequence[str] = ()
    error_code: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    reference: str | None = None

    def where(self, args: list[Any]) -> str:
        """SQL conditions for these filters, appending their values to `args`. One value at most
        of `statuses`, `to` and `from_` (see list_messages)."""
        if max(len(self.statuses), len(self.to), len(self.from_)) > 1:
            raise ValueError("MessageFilter.where takes one status, to and from at most")
        conditions = ["TRUE"]

        def condition(sql: str, value: Any) -> None:
            args.append(value)
            conditions.append(sql.format(f"${len(args)}"))

        for sql, value in (
            ("status = {}", self.statuses[0] if self.statuses else None),
            ("direction = {}", self.direction),
            ("to_number = {}", self.to[0] if self.to else None),
            ("from_number = {}", self.from_[0] if self.from_ else None),
            ("error_code = {}", self.error_code),
            ("created_at >= {}", self.since),
            ("created_at < {}", self.until),
            ("reference = {}", self.reference),
        ):
            if value is not None:
                condition(sql, value)
        return " AND ".join(conditions)


def _each(values: Sequence[str]) -> list[tuple[str, ...]]:
    """Each distinct value alone, or no filter at all."""
    return [(value,) for value in dict.fromkeys(values)] or [()]


async def list_messages(
    db: Executor,
    filters: MessageFilter,
    limit: int,
    after: tuple[datetime, UUID] | None = None,
) -> list[asyncpg.Record]:
    """Newest first; `after` is the (created_at, id) of the last row of the previous page.

    Each status, recipient and sender asked for (and each combination of them) is read as its
    own index range, newest first, and the ranges are merged in one statement: a condition
    `status = ANY(...)` makes PostgreSQL (before 17) read every match of the whole store and sort
    them, hundreds of milliseconds on a full store. The ranges are disjoint: no row is merged
    twice."""
    args: list[Any] = [limit]
    keyset = ""
    if after is not None:
        args.extend(after)
        keyset = " AND (created_at, id) < ($2, $3)"
    ranges = [
        f"SELECT {MESSAGE_COLUMNS} FROM messages "
        f"WHERE {replace(filters, statuses=status, to=to, from_=from_).where(args)}{keyset} "
        "ORDER BY created_at DESC, id DESC LIMIT $1"
        for status in _each(filters.statuses)
        for to in _each(filters.to)
        for from_ in _each(filters.from_)
    ]
    query = ranges[0] if len(ranges) == 1 else (
        " UNION ALL ".join(f"({part})" for part in ranges)
        + " ORDER BY created_at DESC, id DESC LIMIT $1"
    )  # fmt: skip
    records: list[asyncpg.Record] = await db.fetch(query, *args)
    return records


async def message_stats(
    db: Executor, since: datetime, until: datetime, bucket: str
) -> dict[str, Any]:
    """Counts by status and error code, delivery times, and a series, for messages created in
    [since, until). `bucket` is 'hour' or 'day'."""
    window = "created_at >= $1 AND created_at < $2"
    by_status = await db.fetch(
        f"SELECT status, count(*) AS count FROM messages WHERE {window} GROUP BY status "
        "ORDER BY count DESC",
        since,
        until,
    )
    by_error = await db.fetch(
        f"SELECT error_code, count(*) AS count FROM messages WHERE {window} "
        "AND error_code IS NOT NULL GROUP BY error_code ORDER BY count DESC",
        since,
        until,
    )
    timing = await db.fetchrow(
        f"""
        SELECT
            percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - sent_at))
                AS median,
            percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - sent_at))
                AS p95
        FROM messages
        WHERE {window} AND delivered_at IS NOT NULL AND sent_at IS NOT NULL
          AND delivered_at >= sent_at
        """,
        since,
        until,
    )
    series = await db.fetch(
        f"""
        SELECT date_trunc($3, created_at) AS start, count(*) AS total,
               count(*) FILTER (WHERE status IN ('delivered', 'read')) AS delivered,
               count(*) FILTER (WHERE status IN ('failed', 'undelivered')) AS failed
        FROM messages WHERE {window} GROUP BY 1 ORDER BY 1
        """,
        since,
        until,
        bucket,
    )
    return {"by_status": by_status, "by_error": by_error, "timing": timing, "series": series}


EXPORT_QUERY = f"""
    SELECT {MESSAGE_COLUMNS},
           (SELECT count(*) FROM message_events e WHERE e.message_id = m.id) AS event_count
    FROM messages m WHERE created_at >= $1 AND created_at < $2
    ORDER BY created_at, id
"""

EXPORT_EVENTS_QUERY = """
    SELECT m.id AS message_id, m.sid, e.id, e.status, e.error_code, e.source, e.received_at,
           e.carrier_done_at, e.fields, e.query
    FROM messages m JOIN message_events e ON e.message_id = m.id
    WHERE m.created_at >= $1 AND m.created_at < $2
    ORDER BY m.created_at, m.id, e.id
"""


async def export_rows(
    connection: asyncpg.Connection, since: datetime, until: datetime, events: bool
) -> AsyncIterator[asyncpg.Record]:
    """Every message (or event) of the window, through a server-side cursor: constant memory.
    The caller holds `connection` in a transaction."""
    query = EXPORT_EVENTS_QUERY if events else EXPORT_QUERY
    async for record in connection.cursor(query, since, until, prefetch=1000):
        yield record


# --- Reconciliation progress and conflicting reports -------------------------------------------


async def save_resume(db: Executor, reconciliation_id: int, resume: dict[str, Any] | None) -> None:
    """Where the pass's window listing stands: its next page, the SIDs it holds (null: done)."""
    await db.execute(
        "UPDATE reconciliations SET resume = $2 WHERE id = $1", reconciliation_id, resume
    )


async def last_resumable_pass(db: Executor) -> asyncpg.Record | None:
    """The latest pass, if it applied its findings and stopped mid-listing (failed or crashed):
    its window and where it stopped. Called under the pass lock, so a 'running' one is dead."""
    record: asyncpg.Record | None = await db.fetchrow(
        """
        SELECT id, since, until, resume FROM (
            SELECT id, since, until, resume, state, dry_run FROM reconciliations
            ORDER BY id DESC LIMIT 1
        ) latest
        WHERE NOT dry_run AND resume IS NOT NULL
          AND state IN ('failed', 'interrupted', 'running')
        """
    )
    return record


async def reported_by_reconciliation(
    db: Executor, message_ids: Sequence[UUID]
) -> set[tuple[UUID, str, int | None]]:
    """(message, status, error code) of every report reconciliation already logged for these."""
    records = await db.fetch(
        """
        SELECT DISTINCT message_id, status, error_code FROM message_events
        WHERE message_id = ANY($1::uuid[]) AND source IN ('reconcile', 'poll')
        """,
        list(message_ids),
    )
    return {(row["message_id"], row["status"], row["error_code"]) for row in records}
