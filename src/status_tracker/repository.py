"""Every SQL statement of the service.

Functions take an asyncpg connection (or pool) and plain values, and return plain records, so
the web layer, the CLI, the reconciliation job and the benchmarks share them.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import orjson

from status_tracker import metrics
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
# message's log is applied again, which changes nothing, but not appended twice. Twilio retries
# within minutes: the log is searched for the token over the last day only, that is in the one
# or two partitions of the event log that can hold it.
# A message's events are received after it was created (a day's margin for clocks): reading them
# with this condition skips the partitions of the event log that are older than the message.
EVENTS_SINCE_CREATED = "received_at >= {created_at} - interval '1 day'"
_FINAL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
# What each report did, for metrics: the row as the upsert left it, against the row as it was
# (the statement's snapshot, which its own upsert does not change). Only a report committed by
# another worker between this statement's start and its lock goes unseen: two final reports of
# one message committed at that same moment may both count as making it final.
_OUTCOMES = """
SELECT i.n,
       (m.status, m.error_code) IS DISTINCT FROM (old.status, old.error_code) AS changed,
       m.final_at IS NOT NULL AND old.final_at IS NULL AS became_final,
       m.status, m.error_code, m.to_number,
       coalesce(m.messaging_service_sid, m.from_number) AS sender,
       extract(epoch FROM m.final_at - m.created_at)::float8 AS seconds_to_final
FROM message m
JOIN incoming i USING (id)
-- The row as it was before this statement (its snapshot). A probe of the primary key per
-- report (OFFSET 0 keeps it one): a join would be planned once, on an empty table at the
-- service's first start, as a scan of the whole table for every batch after.
LEFT JOIN LATERAL (SELECT status, error_code, final_at FROM messages o WHERE o.id = i.id
                   OFFSET 0) old ON true
"""
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
        query jsonb, idempotency_token text, message_id uuid, country text,
        occurred_at timestamptz, n integer
    )
),
-- Whether each report is appended: the message's event count grows in the same upsert.
fresh AS (
    SELECT i.*, (i.idempotency_token IS NULL
                 OR NOT EXISTS (SELECT 1 FROM message_events e
                                WHERE e.message_id = i.id
                                  AND e.idempotency_token = i.idempotency_token
                                  AND e.received_at >= i.received_at - interval '1 day'))
                AS appended
    FROM incoming i
),
message AS (
    INSERT INTO messages AS m (
        id, sid, account_sid, status, status_rank, error_code, to_number, from_number,
        messaging_service_sid, channel, country, created_at, updated_at,
        sent_at, delivered_at, read_at, final_at, event_count
    )
    SELECT id, sid, account_sid, status, status_rank, error_code, to_number, from_number,
           messaging_service_sid, channel, country, received_at, received_at,
           CASE WHEN status = 'sent' THEN received_at END,
           CASE WHEN status = 'delivered' THEN received_at END,
           CASE WHEN status = 'read' THEN received_at END,
           CASE WHEN status IN ({_FINAL}) THEN received_at END,
           appended::integer
    FROM fresh ORDER BY id
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
        country = coalesce(m.country, EXCLUDED.country),
        created_at = least(m.created_at, EXCLUDED.created_at),
        updated_at = greatest(m.updated_at, EXCLUDED.updated_at),
        sent_at = least(m.sent_at, EXCLUDED.sent_at),
        delivered_at = least(m.delivered_at, EXCLUDED.delivered_at),
        read_at = least(m.read_at, EXCLUDED.read_at),
        final_at = least(m.final_at, EXCLUDED.final_at),
        event_count = m.event_count + EXCLUDED.event_count
    RETURNING id, status, error_code, from_number, to_number, messaging_service_sid,
              created_at, final_at
),
logged AS (
    INSERT INTO message_events (
        message_id, status, status_rank, error_code, source, received_at, carrier_done_at,
        fields, query, idempotency_token, occurred_at
    )
    SELECT id, status, status_rank, error_code, source, received_at, carrier_done_at,
           fields, query, idempotency_token, occurred_at
    FROM fresh WHERE appended
)
{_OUTCOMES}
"""


def _record_reports_rounds(reports: Sequence[StatusReport]) -> list[str]:
    """RECORD_REPORTS' documents: the first report of each message in the first, its second
    (if any) in the next, and so on. Reports of one message in one batch are rare."""
    rounds: list[list[dict[str, Any]]] = []
    seen: dict[object, int] = {}
    for n, report in enumerate(reports):
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
            "country": report.country,
            "occurred_at": report.occurred_at,
            "n": n,
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


async def record_reports(
    connection: asyncpg.Connection, reports: Sequence[StatusReport]
) -> list[bool]:
    """Store reports in one transaction: each is appended to the event log and applied to its
    message's status by the precedence rule, whatever their order. Returns, for each report,
    whether it changed its message (else it was a repeat, or outranked already)."""
    rounds = _record_reports_rounds(reports)
    outcomes: list[asyncpg.Record] = []

    async def store() -> None:
        outcomes.clear()
        if len(rounds) == 1:
            outcomes.extend(await connection.fetch(RECORD_REPORTS, rounds[0]))
            return
        async with connection.transaction():
            for batch in rounds:
                outcomes.extend(await connection.fetch(RECORD_REPORTS, batch))

    await _run_again_if_a_sid_race_is_lost(store)
    return _count(reports, outcomes)


async def record_report(db: Executor, report: StatusReport) -> bool:
    """Store one report: append it to the event log and apply it to the message's status.
    Within a caller's transaction: a lost race for a new SID fails the transaction."""
    outcomes = await db.fetch(RECORD_REPORTS, *_record_reports_rounds([report]))
    return _count([report], outcomes)[0]


def _count(reports: Sequence[StatusReport], outcomes: list[asyncpg.Record]) -> list[bool]:
    """Each report's `changed`, once the messages it made final are counted in the metrics."""
    changed = [False] * len(reports)
    finals: list[metrics.Final] = []
    for row in outcomes:
        report = reports[row["n"]]
        changed[row["n"]] = row["changed"]
        # Inbound messages are final on arrival, and their sender is a person: not counted.
        if row["became_final"] and row["status"] != "received":
            finals.append(
                (
                    row["status"],
                    row["error_code"],
                    report.country or metrics.country_of(report.to or row["to_number"]),
                    row["sender"],
                    row["seconds_to_final"],
                )
            )
    metrics.messages_final(finals)
    return changed


def visible(accounts: Sequence[str] | None, args: list[Any], column: str = "account_sid") -> str:
    """The condition that confines a query to the messages of `accounts` (None: every message),
    appending its value to `args`. Every read of messages on behalf of an API key goes through
    it: a key bound to accounts finds nothing of another account's, whatever it asks."""
    if accounts is None:
        return "TRUE"
    args.append(list(accounts))
    return f"{column} = ANY(${len(args)}::text[])"


MESSAGE_COLUMNS = """
    id, sid, account_sid, direction, status, error_code, to_number, from_number,
    messaging_service_sid, channel, created_at, updated_at, sent_at, delivered_at, read_at,
    final_at, body, media_urls, content_sid, send_at, reference, metadata, send_outcome,
    in_reply_to
"""


async def get_message(
    db: Executor, id_or_sid: str, accounts: Sequence[str] | None = None
) -> asyncpg.Record | None:
    """A message by its Twilio SID or by the service's own id, if it is one of `accounts`'."""
    key: UUID | str
    try:
        column, key = "id", UUID(id_or_sid)
    except ValueError:
        column, key = "sid", id_or_sid
    args: list[Any] = [key]
    record: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {column} = $1 AND {visible(accounts, args)}",
        *args,
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
    country: str | None = None,
    account_sid: str | None = None,
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
                send_outcome, created_at, updated_at, in_reply_to, country, account_sid,
                event_count
            )
            VALUES (
                $1, $19, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                $13, $14, $15, $16, 'pending', $17, $17, $20, $21, $22, 1
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
        country,
        account_sid,
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
        f"""
        UPDATE message_events SET message_id = $2
        WHERE message_id = $1 AND {EVENTS_SINCE_CREATED.format(created_at="$3::timestamptz")}
        """,
        early,
        attempt_id,
        await connection.fetchval("SELECT created_at FROM messages WHERE id = $1", early),
    )
    await connection.execute(
        f"""
        UPDATE messages m SET
            (status, status_rank, error_code) = (
                SELECT e.status, e.status_rank, e.error_code FROM message_events e
                WHERE e.message_id = m.id
                  AND e.{EVENTS_SINCE_CREATED.format(created_at="m.created_at")}
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
            final_at = least(m.final_at, early.final_at),
            event_count = m.event_count + early.event_count
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


async def list_events(db: Executor, message: asyncpg.Record) -> list[asyncpg.Record]:
    """A message's event log, oldest first."""
    records: list[asyncpg.Record] = await db.fetch(
        f"""
        SELECT id, status, error_code, source, received_at, carrier_done_at, occurred_at,
               fields, query
        FROM message_events
        WHERE message_id = $1 AND {EVENTS_SINCE_CREATED.format(created_at="$2::timestamptz")}
        ORDER BY id
        """,
        message["id"],
        message["created_at"],
    )
    return records


async def ping(db: Executor) -> None:
    await db.fetchval("SELECT 1")


# --- Reconciliation ----------------------------------------------------------------------------

# One pass at a time per account across every worker and replica: a session-level advisory lock,
# RECONCILE_LOCK for the default account, and one derived from the SID for a stored account.
RECONCILE_LOCK = 0x5354_5243
_LOCK_KEY = """CASE WHEN $2::text IS NULL THEN $1::bigint
               ELSE ($1::bigint << 32) | (hashtext($2) & x'ffffffff'::bigint) END"""


async def try_reconcile_lock(
    connection: asyncpg.Connection, account_sid: str | None = None
) -> bool:
    locked: bool = await connection.fetchval(
        f"SELECT pg_try_advisory_lock({_LOCK_KEY})", RECONCILE_LOCK, account_sid
    )
    return locked


async def release_reconcile_lock(
    connection: asyncpg.Connection, account_sid: str | None = None
) -> None:
    await connection.execute(f"SELECT pg_advisory_unlock({_LOCK_KEY})", RECONCILE_LOCK, account_sid)


def pass_scope(account_sid: str | None, default_sid: str | None, args: list[Any]) -> str:
    """The messages a pass of `account_sid` reconciles (None: the default account, whose SID is
    `default_sid`): a stored account's own; the default account's and those of no account
    (sends recorded before accounts were); with neither SID known, every message."""
    if account_sid is not None:
        args.append(account_sid)
        return f"account_sid = ${len(args)}"
    if default_sid is None:
        return "TRUE"
    args.append(default_sid)
    return f"(account_sid IS NULL OR account_sid = ${len(args)})"


async def start_reconciliation(
    db: Executor, since: datetime, until: datetime, dry_run: bool, account_sid: str | None = None
) -> int:
    """Record a new pass; a pass of the account still 'running' (we hold its lock) was
    interrupted."""
    await db.execute(
        "UPDATE reconciliations SET state = 'interrupted' "
        "WHERE state = 'running' AND account_sid IS NOT DISTINCT FROM $1",
        account_sid,
    )
    reconciliation_id: int = await db.fetchval(
        "INSERT INTO reconciliations (since, until, dry_run, account_sid) VALUES ($1, $2, $3, $4) "
        "RETURNING id",
        since,
        until,
        dry_run,
        account_sid,
    )
    return reconciliation_id


async def last_pass_finished_at(db: Executor, account_sid: str | None = None) -> datetime | None:
    """When the account's last pass that applied its findings (not a dry run) finished."""
    finished: datetime | None = await db.fetchval(
        "SELECT max(finished_at) FROM reconciliations WHERE state = 'finished' AND NOT dry_run "
        "AND account_sid IS NOT DISTINCT FROM $1",
        account_sid,
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
"""


async def stale_messages(
    db: Executor,
    created_after: datetime,
    created_before: datetime,
    account_sid: str | None = None,
    default_sid: str | None = None,
) -> list[asyncpg.Record]:
    """Outbound messages with a SID that are not final although they should be by now, of the
    pass's account (see pass_scope)."""
    args: list[Any] = [created_after, created_before]
    scope = pass_scope(account_sid, default_sid, args)
    records: list[asyncpg.Record] = await db.fetch(
        f"{STALE_MESSAGES} AND {scope} ORDER BY created_at", *args
    )
    return records


async def messages_by_sid(db: Executor, sids: Sequence[str]) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        "SELECT id, sid, status, error_code FROM messages WHERE sid = ANY($1::text[])", list(sids)
    )
    return records


async def unsettled_attempts(
    db: Executor,
    since: datetime,
    until: datetime,
    pending_before: datetime,
    account_sid: str | None = None,
    default_sid: str | None = None,
) -> list[asyncpg.Record]:
    """Sends whose outcome is unknown (or that never got an answer, by `pending_before`), of the
    pass's account (see pass_scope)."""
    args: list[Any] = [since, until, pending_before]
    scope = pass_scope(account_sid, default_sid, args)
    records: list[asyncpg.Record] = await db.fetch(
        f"""
        SELECT id, to_number, from_number, messaging_service_sid, body, created_at FROM messages
        WHERE sid IS NULL AND created_at BETWEEN $1 AND $2
          AND (send_outcome = 'unknown' OR (send_outcome = 'pending' AND created_at < $3))
          AND {scope}
        ORDER BY created_at
        """,
        *args,
    )
    return records


async def sent_messages_between(
    db: Executor,
    since: datetime,
    until: datetime,
    account_sid: str | None = None,
    default_sid: str | None = None,
) -> list[asyncpg.Record]:
    """Outbound messages with a SID created in the window (to find those Twilio lacks), of the
    pass's account (see pass_scope)."""
    args: list[Any] = [since, until]
    scope = pass_scope(account_sid, default_sid, args)
    records: list[asyncpg.Record] = await db.fetch(
        f"""
        SELECT id, sid, status, error_code FROM messages
        WHERE sid IS NOT NULL AND direction <> 'inbound' AND created_at BETWEEN $1 AND $2
          AND {scope}
        """,
        *args,
    )
    return records


RECONCILIATION_COLUMNS = """
    id, account_sid, started_at, finished_at, since, until, dry_run, state, counts, errors,
    duration_seconds
"""


async def list_reconciliations(
    db: Executor, limit: int, accounts: Sequence[str] | None = None
) -> list[asyncpg.Record]:
    """The newest passes of `accounts` (None: every pass; a default account's pass is of no
    stored account)."""
    args: list[Any] = [limit]
    records: list[asyncpg.Record] = await db.fetch(
        f"SELECT {RECONCILIATION_COLUMNS} FROM reconciliations WHERE {visible(accounts, args)} "
        "ORDER BY id DESC LIMIT $1",
        *args,
    )
    return records


async def get_reconciliation(
    db: Executor, reconciliation_id: int, accounts: Sequence[str] | None = None
) -> asyncpg.Record | None:
    args: list[Any] = [reconciliation_id]
    record: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {RECONCILIATION_COLUMNS} FROM reconciliations "
        f"WHERE id = $1 AND {visible(accounts, args)}",
        *args,
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
    source: str = "inbound",
) -> tuple[UUID, bool]:
    """Store an inbound message and its event; (its id, False if Twilio had sent it before)."""
    record = await db.fetchrow(
        """
        WITH message AS (
            INSERT INTO messages AS m (
                id, sid, account_sid, direction, status, status_rank, to_number, from_number,
                messaging_service_sid, channel, body, media_urls, created_at, updated_at,
                final_at, country, event_count
            )
            VALUES (uuid7($11), $1, $2, 'inbound', $3, $4, $5, $6, $7, $8, $9, $10, $11, $11,
                    $11, $16, 1)
            ON CONFLICT (sid) DO UPDATE SET
                updated_at = greatest(m.updated_at, EXCLUDED.updated_at),
                event_count = m.event_count + 1
            RETURNING m.id, (xmax = 0) AS inserted
        ), event AS (
            INSERT INTO message_events (message_id, status, status_rank, source, received_at,
                                        fields, query, occurred_at)
            SELECT id, $3, $4, $14, $11, $12, $13, $15 FROM message
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
        source,
        report.occurred_at,
        report.country,
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
    # The accounts whose messages may be listed (None: every message): see `visible`.
    account_sids: Sequence[str] | None = None

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
        conditions.append(visible(self.account_sids, args))
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


# The breakdowns `message_rollups` keeps (the migration 2026_12_06_months, with the same
# expressions): the value of each, over `messages`.
BREAKDOWNS = {
    "country": "country",
    "from": "CASE WHEN direction <> 'inbound' THEN from_number END",
    "messaging_service": "messaging_service_sid",
}
# Seconds from `sent` to `delivered`: the upper bounds of the delivery-time histogram's buckets,
# as the SQL function message_delivery_bucket has them (tests/test_rollups.py holds them equal).
DELIVERY_BOUNDS = (
    0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600, 7200,
    21600, 86400,
)  # fmt: skip
# The other breakdowns: by error code, from the rollups' totals; by the client's own reference
# (often one per message, which no rollup could keep small), from `messages` itself.
OTHER_BREAKDOWNS = ("error_code", "reference")
_ROLLUP_COLUMNS = "hour, account_sid, breakdown, value, status, error_code, delivery_bucket"
_DAILY_COLUMNS = _ROLLUP_COLUMNS.replace("hour,", "day,", 1)


async def fold_rollup_deltas(db: Executor) -> None:
    """Fold the counts that writers appended into the hourly and daily rollups, in one
    statement: a reader sees them either unfolded or folded, never twice nor missing.
    Concurrent folds are safe: a delta row is deleted, and so folded, once."""
    daily = _DAILY_COLUMNS.replace("day,", "date_trunc('day', hour, 'UTC'),", 1)
    await db.execute(
        f"""
        WITH folded AS (DELETE FROM message_rollup_deltas RETURNING *),
        hourly AS (
            INSERT INTO message_rollups AS r ({_ROLLUP_COLUMNS}, messages)
            SELECT {_ROLLUP_COLUMNS}, sum(messages) FROM folded GROUP BY {_ROLLUP_COLUMNS}
            ON CONFLICT ON CONSTRAINT message_rollups_key
            DO UPDATE SET messages = r.messages + EXCLUDED.messages
        )
        INSERT INTO message_rollups_daily AS r ({_DAILY_COLUMNS}, messages)
        SELECT {daily}, sum(messages) FROM folded GROUP BY {daily}
        ON CONFLICT ON CONSTRAINT message_rollups_daily_key
        DO UPDATE SET messages = r.messages + EXCLUDED.messages
        """
    )


def _whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The whole hours inside [since, until): rollups answer for them, the messages for the
    rest. (until, until) when there is none."""
    start = since.replace(minute=0, second=0, microsecond=0)
    if start < since:
        start += timedelta(hours=1)
    end = until.replace(minute=0, second=0, microsecond=0)
    return (start, end) if start < end else (until, until)


def _window(since: datetime, until: datetime, days: bool) -> list[datetime]:
    """$1..$6 of _counted: the window, its whole hours, and (if `days`) the whole days inside
    those; (hours' end, hours' end) when no day is read whole."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    start, end = _whole_hours(since, until)
    first_day = start.replace(hour=0)
    if first_day < start:
        first_day += timedelta(days=1)
    last_day = end.replace(hour=0)
    if not days or first_day >= last_day:
        first_day = last_day = end
    return [since, until, start, end, first_day, last_day]


def _counted(breakdown: str, rolled: str, value: str, extra: str, accounts: str) -> str:
    """Counted rows (hour, value, status, `extra` columns, messages) of the window $1..$2 (see
    _window): whole days $5..$6 from the daily rollups, the other whole hours $3..$4 from the
    hourly ones (and the deltas not yet folded into either), the part-hours at either end from
    `messages`; of the accounts the condition `accounts` (from `visible`) lets through, of the
    rollups' `breakdown` rows. The value is `rolled` over rollup rows, `value` over messages."""
    columns = f"hour, {rolled}, status, {extra}, messages"
    raw = f"""
        SELECT date_trunc('hour', created_at, 'UTC'), {value}, status,
               {extra.replace("delivery_bucket", "message_delivery_bucket(sent_at, delivered_at)")},
               1
        FROM messages
    """
    rollups = f"FROM message_rollups WHERE breakdown = '{breakdown}' AND {accounts}"
    return f"""
        SELECT {columns} {rollups} AND hour >= $3 AND hour < $5
        UNION ALL
        SELECT {columns.replace("hour,", "day,", 1)} FROM message_rollups_daily
        WHERE breakdown = '{breakdown}' AND {accounts} AND day >= $5 AND day < $6
        UNION ALL
        SELECT {columns} {rollups} AND hour >= $6 AND hour < $4
        UNION ALL
        SELECT {columns} FROM message_rollup_deltas
        WHERE breakdown = '{breakdown}' AND hour >= $3 AND hour < $4 AND {accounts}
        UNION ALL
        {raw} WHERE created_at >= $1 AND created_at < $3 AND {accounts}
        UNION ALL
        {raw} WHERE created_at >= $4 AND created_at < $2 AND {accounts}
    """


async def message_stats(
    db: Executor,
    since: datetime,
    until: datetime,
    bucket: str,
    accounts: Sequence[str] | None = None,
) -> list[asyncpg.Record]:
    """Counts of the messages of `accounts` (None: all) created in [since, until), by grouping
    set: `kind` 'status', 'error_code', 'delivery_bucket', or 'series' (by `start`, the series'
    `bucket`, 'hour' or 'day' in UTC, and status). Exact for any window; a scan of messages
    only for the part-hours at its ends."""
    # A series by hour cannot read whole days.
    args: list[Any] = [*_window(since, until, days=bucket == "day"), bucket]
    condition = visible(accounts, args)
    counted = _counted("", "value", "NULL::text", "error_code, delivery_bucket", condition)
    records: list[asyncpg.Record] = await db.fetch(
        f"""
        SELECT CASE WHEN GROUPING(error_code) = 0 THEN 'error_code'
                    WHEN GROUPING(delivery_bucket) = 0 THEN 'delivery_bucket'
                    WHEN GROUPING(status) = 0 AND GROUPING(date_trunc($7, hour, 'UTC')) = 1
                    THEN 'status' ELSE 'series' END AS kind,
               status, error_code, delivery_bucket, date_trunc($7, hour, 'UTC') AS start,
               sum(messages)::bigint AS count
        FROM ({counted}) AS counted (hour, value, status, error_code, delivery_bucket, messages)
        GROUP BY GROUPING SETS ((status), (error_code), (delivery_bucket),
                                (date_trunc($7, hour, 'UTC'), status))
        HAVING sum(messages) <> 0
        """,
        *args,
    )
    return records


async def message_breakdown(
    db: Executor,
    since: datetime,
    until: datetime,
    group_by: str,
    accounts: Sequence[str] | None = None,
) -> list[asyncpg.Record]:
    """(value, status, count) of the messages of `accounts` (None: all) created in [since,
    until), by `group_by`: a key of BREAKDOWNS or one of OTHER_BREAKDOWNS."""
    args: list[Any] = _window(since, until, days=True)
    if group_by not in BREAKDOWNS and group_by != "error_code":
        args[2:] = [until] * 4  # no rollup rows: the whole window from the messages
    condition = visible(accounts, args)
    if group_by in BREAKDOWNS:
        rows = _counted(group_by, "value", BREAKDOWNS[group_by], "NULL::integer", condition)
    elif group_by == "error_code":
        rows = _counted("", "error_code::text", "error_code::text", "NULL::integer", condition)
    else:
        rows = _counted(group_by, "value", group_by, "NULL::integer", condition)
    records: list[asyncpg.Record] = await db.fetch(
        f"""
        SELECT value, status, sum(messages)::bigint AS count
        FROM ({rows}) AS counted (hour, value, status, unused, messages)
        GROUP BY value, status HAVING sum(messages) <> 0
        """,
        *args,
    )
    return records


# --- Export ------------------------------------------------------------------------------------
#
# PostgreSQL writes each line of an export and Python only forwards them: formatting rows in
# Python, with a count of each message's events, held the export to about 5,000 rows a second.

# What a spreadsheet may read as the start of a formula (OWASP's CSV injection list), and the
# full-width forms some spreadsheets fold into them: a CSV cell starting with one gets a `'`.
FORMULA_STARTS = "=+-@\t\r\uff1d\uff0b\uff0d\uff20"  # full-width = + - @
_FORMULA_STARTS_SQL = "ARRAY[" + ", ".join(f"chr({ord(c)})" for c in FORMULA_STARTS) + "]"

# The columns of an export, as (name, SQL of its value, kind): `text` is quoted in CSV when it
# must be and kept from reading as a formula; `plain` (a UUID) and `number` need neither;
# `time` is written in RFC 3339 as models.rfc3339 writes it; `json` (JSON lines only) is the
# document as stored.
MESSAGE_EXPORT = (
    ("id", "m.id", "plain"),
    ("sid", "m.sid", "text"),
    ("direction", "m.direction", "text"),
    ("status", "m.status", "text"),
    ("error_code", "m.error_code", "number"),
    ("error_description", "($3::jsonb ->> m.error_code::text)", "text"),
    ("to", "m.to_number", "text"),
    ("from", "m.from_number", "text"),
    ("channel", "m.channel", "text"),
    ("reference", "m.reference", "text"),
    ("created_at", "m.created_at", "time"),
    ("updated_at", "m.updated_at", "time"),
    ("sent_at", "m.sent_at", "time"),
    ("delivered_at", "m.delivered_at", "time"),
    ("read_at", "m.read_at", "time"),
    ("final_at", "m.final_at", "time"),
    # Messages stored before event_count existed have none: their events are counted.
    (
        "event_count",
        f"""coalesce(m.event_count, (
        SELECT count(*) FROM message_events e WHERE e.message_id = m.id
          AND e.{EVENTS_SINCE_CREATED.format(created_at="m.created_at")}))""",
        "number",
    ),
)
EVENT_EXPORT = (
    ("message_id", "m.id", "plain"),
    ("sid", "m.sid", "text"),
    ("id", "e.id", "number"),
    ("status", "e.status", "text"),
    ("error_code", "e.error_code", "number"),
    ("source", "e.source", "text"),
    ("received_at", "e.received_at", "time"),
    ("carrier_done_at", "e.carrier_done_at", "time"),
)
EVENT_EXPORT_DOCUMENTS = (("fields", "e.fields", "json"), ("query", "e.query", "json"))


def _rfc3339(value: str) -> str:
    """models.rfc3339 in SQL, in a session in UTC (export_lines sets it): microseconds only
    when not zero, all six of them. The text form of a timestamp says the same, in a tenth of
    to_char's time, but for trailing zeros of its microseconds, which it leaves out."""
    return (
        f"CASE WHEN date_part('microseconds', {value})::bigint % 10 <> 0 "
        f"THEN replace(replace({value}::text, ' ', 'T'), '+00', 'Z') "
        f"WHEN date_trunc('second', {value}) = {value} "
        f"""THEN to_char({value}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') """
        f"""ELSE to_char({value}, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END"""
    )


def _csv_cell(value: str, kind: str) -> str:
    """A cell as Python's csv module writes it: quoted only if it holds a comma, a quote or a
    line break."""
    if kind == "time":
        return f"coalesce({_rfc3339(value)}, '')"
    if kind != "text":
        return f"coalesce({value}::text, '')"
    safe = f"CASE WHEN left({value}, 1) = ANY({_FORMULA_STARTS_SQL}) THEN '''' || {value} " \
        f"ELSE {value} END"  # fmt: skip
    quoted = f"strpos({value}, ',') + strpos({value}, '\"') + strpos({value}, chr(10)) " \
        f"+ strpos({value}, chr(13)) > 0"  # fmt: skip
    return (
        f"CASE WHEN {value} IS NULL THEN '' "
        f"WHEN {quoted} THEN '\"' || replace({safe}, '\"', '\"\"') || '\"' "
        f"ELSE {safe} END"
    )


def _export_query(columns: Sequence[tuple[str, str, str]], csv: bool, rows: str) -> str:
    """One line per row, made by one call (concat_ws, row_to_json), not by a chain of copies."""
    if csv:
        cells = ", ".join(_csv_cell(value, kind) for _, value, kind in columns)
        return f"SELECT concat_ws(',', {cells}) || chr(13) || chr(10) {rows}"
    values = ", ".join(
        f'{_rfc3339(value) if kind == "time" else value} AS "{name}"'
        for name, value, kind in columns
    )
    from_, rest = rows.split("WHERE", 1)
    return f"SELECT row_to_json(line)::text || chr(10) {from_}, LATERAL (SELECT {values}) line " \
        f"WHERE {rest}"  # fmt: skip


# {visible}: the accounts' condition, filled in by export_lines.
_MESSAGES_OF_THE_WINDOW = """
    FROM messages m WHERE m.created_at >= $1 AND m.created_at < $2 AND {visible}
    ORDER BY m.created_at, m.id
"""
_EVENTS_OF_THE_WINDOW = f"""
    FROM messages m JOIN message_events e
         ON e.message_id = m.id AND e.{EVENTS_SINCE_CREATED.format(created_at="m.created_at")}
    WHERE m.created_at >= $1 AND m.created_at < $2 AND {{visible}}
    ORDER BY m.created_at, m.id, e.id
"""
EXPORT_QUERIES = {
    ("messages", "csv"): _export_query(MESSAGE_EXPORT, True, _MESSAGES_OF_THE_WINDOW),
    ("messages", "jsonl"): _export_query(MESSAGE_EXPORT, False, _MESSAGES_OF_THE_WINDOW),
    ("events", "csv"): _export_query(EVENT_EXPORT, True, _EVENTS_OF_THE_WINDOW),
    ("events", "jsonl"): _export_query(
        EVENT_EXPORT + EVENT_EXPORT_DOCUMENTS, False, _EVENTS_OF_THE_WINDOW
    ),
}


async def export_error_codes(db: Executor, since: datetime, until: datetime) -> list[int]:
    """The error codes of the window's messages, whose descriptions an export carries."""
    codes: list[int] = await db.fetchval(
        "SELECT coalesce(array_agg(DISTINCT error_code), '{}') FROM messages "
        "WHERE created_at >= $1 AND created_at < $2 AND error_code IS NOT NULL",
        since,
        until,
    )
    return codes


async def export_lines(
    connection: asyncpg.Connection,
    since: datetime,
    until: datetime,
    *,
    events: bool,
    format: str,
    descriptions: dict[int, str],
    accounts: Sequence[str] | None = None,
) -> AsyncIterator[str]:
    """The window's messages (or events) of `accounts` (None: all), oldest first, as lines of
    CSV or JSON (`format`), a few thousand at a time, through a server-side cursor: constant
    memory. The caller holds `connection` in a transaction. `descriptions`: of the error codes,
    for messages."""
    args: list[Any] = [since, until]
    if not events:
        args.append({str(code): text for code, text in descriptions.items()})
    condition = visible(accounts, args, "m.account_sid")
    query = EXPORT_QUERIES["events" if events else "messages", format]
    # For this transaction only: timestamps written in UTC (see _rfc3339), and the window read in
    # the order of messages_created, so that lines flow from the first fetch. When the window
    # is most of the table the planner would rather sort all of it first: nothing is sent
    # until that is done (past the database timeout at a million rows), and the sort spills
    # to disk.
    await connection.execute(
        "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL enable_sort = off"
    )
    cursor = await connection.cursor(query.replace("{visible}", condition), *args)
    while rows := await cursor.fetch(2000):
        yield "".join(row[0] for row in rows)


# --- Reconciliation progress and conflicting reports -------------------------------------------


async def save_resume(db: Executor, reconciliation_id: int, resume: dict[str, Any] | None) -> None:
    """Where the pass's window listing stands: its next page, the SIDs it holds (null: done)."""
    await db.execute(
        "UPDATE reconciliations SET resume = $2 WHERE id = $1", reconciliation_id, resume
    )


async def last_resumable_pass(
    db: Executor, account_sid: str | None = None
) -> asyncpg.Record | None:
    """The account's latest pass, if it applied its findings and stopped mid-listing (failed or
    crashed): its window and where it stopped. Called under the pass lock, so a 'running' one is
    dead."""
    record: asyncpg.Record | None = await db.fetchrow(
        """
        SELECT id, since, until, resume FROM (
            SELECT id, since, until, resume, state, dry_run FROM reconciliations
            WHERE account_sid IS NOT DISTINCT FROM $1
            ORDER BY id DESC LIMIT 1
        ) latest
        WHERE NOT dry_run AND resume IS NOT NULL
          AND state IN ('failed', 'interrupted', 'running')
        """,
        account_sid,
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


# --- The event log's day partitions, retention and archives ------------------------------------

# One partition a day (UTC) of message_events; event_partitions records each.
PARTITION_OPTIONS = (
    "autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02"
)


def partition_name(since: datetime) -> str:
    return f"message_events_{since:%Y%m%d}"


async def create_event_partition(
    connection: asyncpg.Connection, name: str, since: datetime | None, until: datetime
) -> None:
    """The partition [since, until) (since None: from the beginning), unless it exists."""
    low = "MINVALUE" if since is None else f"'{since.isoformat()}'"
    async with connection.transaction():
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF message_events "
            f"FOR VALUES FROM ({low}) TO ('{until.isoformat()}') WITH ({PARTITION_OPTIONS})"
        )
        await connection.execute(
            """
            INSERT INTO event_partitions (name, since, until) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE SET dropped_at = NULL
            """,
            name,
            since,
            until,
        )


async def event_partitions(db: Executor) -> list[asyncpg.Record]:
    """Every partition retention knows of, oldest first, dropped ones included."""
    records: list[asyncpg.Record] = await db.fetch("SELECT * FROM event_partitions ORDER BY until")
    return records


async def partitions_ending_by(db: Executor, horizon: datetime) -> list[asyncpg.Record]:
    """The partitions (not dropped) whose every event was received before `horizon`."""
    records: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM event_partitions WHERE until <= $1 AND dropped_at IS NULL ORDER BY until",
        horizon,
    )
    return records


# Messages that retention removes with a partition: every event of theirs was received before
# its end (a message changes, and `updated_at` moves, with every event it gets).
RETIRED_MESSAGES = "created_at < $1 AND updated_at < $1"


async def count_partition(db: Executor, name: str, until: datetime) -> tuple[int, int]:
    """(events in the partition, messages retired with it)."""
    events: int = await db.fetchval(f"SELECT count(*) FROM {name}")
    messages: int = await db.fetchval(
        f"SELECT count(*) FROM messages WHERE {RETIRED_MESSAGES}", until
    )
    return events, messages


async def archive_lines(
    connection: asyncpg.Connection, name: str, until: datetime
) -> AsyncIterator[tuple[str, str]]:
    """(table, row as JSON) of the partition's events, then of the messages retired with it, in
    a stable order. The caller holds `connection` in a repeatable-read transaction, so the
    counts it takes match. Rows are PostgreSQL's own JSON of them (`to_jsonb`): restoring them
    through `jsonb_populate_record` gives back the same values."""
    queries = (
        ("message_events", f"SELECT to_jsonb(e)::text FROM {name} e ORDER BY id", ()),
        (
            "messages",
            f"SELECT to_jsonb(m)::text FROM messages m WHERE {RETIRED_MESSAGES} ORDER BY id",
            (until,),
        ),
    )
    for table, query, args in queries:
        async for record in connection.cursor(query, *args, prefetch=5000):
            yield table, record[0]


async def record_archive(db: Executor, name: str, events: int, path: str, sha256: str) -> None:
    await db.execute(
        """
        UPDATE event_partitions SET events = $2, archive = $3, archive_sha256 = $4,
                                    archived_at = now()
        WHERE name = $1
        """,
        name,
        events,
        path,
        sha256,
    )


async def drop_event_partition(connection: asyncpg.Connection, name: str) -> None:
    """Detach the partition without blocking writers (CONCURRENTLY waits for the transactions
    that use it, and blocks none), then drop it. One interrupted half-way is finished."""
    pending: bool | None = await connection.fetchval(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)", name
    )
    if pending:
        await connection.execute(f"ALTER TABLE message_events DETACH PARTITION {name} FINALIZE")
    elif pending is not None:
        await connection.execute(f"ALTER TABLE message_events DETACH PARTITION {name} CONCURRENTLY")
    async with connection.transaction():
        await connection.execute(f"DROP TABLE IF EXISTS {name}")
        await connection.execute(
            "UPDATE event_partitions SET dropped_at = now() WHERE name = $1", name
        )


async def delete_retired_messages(
    connection: asyncpg.Connection, until: datetime, batch: int
) -> int:
    """Delete up to `batch` messages whose every event was received before `until`; their
    counts stay in the rollups. Small batches: no long lock, no burst of WAL."""
    async with connection.transaction():
        await connection.execute("SET LOCAL status_tracker.retention = on")
        deleted: str = await connection.execute(
            f"""
            DELETE FROM messages WHERE id IN (
                SELECT id FROM messages WHERE {RETIRED_MESSAGES} LIMIT $2
            )
            """,
            until,
            batch,
        )
    return int(deleted.split()[-1])


async def forget_stream_events(db: Executor, before: datetime, batch: int) -> int:
    """Forget up to `batch` Event Streams ids received before `before`."""
    deleted: str = await db.execute(
        "DELETE FROM stream_events WHERE id IN ("
        "SELECT id FROM stream_events WHERE received_at < $1 LIMIT $2)",
        before,
        batch,
    )
    return int(deleted.split()[-1])


# The members of an event's fields that hold a body or media: what body retention removes.
BODY_KEYS = "^(Body|body|MediaUrl[0-9]*|MediaContentType[0-9]*|media_url|content_variables)$"


async def blank_bodies(connection: asyncpg.Connection, before: datetime, batch: int) -> int:
    """Forget the bodies and media URLs of up to `batch` messages created before `before`, in
    the messages and in their events (the one change the event log allows besides erasure,
    under the same `status_tracker.erasure` setting: members of fields and query removed)."""
    async with connection.transaction():
        await connection.execute("SET LOCAL status_tracker.erasure = on")
        blanked = await connection.fetch(
            """
            UPDATE messages SET body = NULL, media_urls = NULL WHERE id IN (
                SELECT id FROM messages
                WHERE created_at < $1 AND (body IS NOT NULL OR media_urls IS NOT NULL)
                LIMIT $2
            )
            RETURNING id, created_at
            """,
            before,
            batch,
        )
        if blanked:
            # '$^' matches no text: only the body members go.
            await connection.execute(
                f"""
                UPDATE message_events SET fields = erase_number_in(fields, '$^', $3)
                WHERE message_id = ANY($1::uuid[])
                  AND {EVENTS_SINCE_CREATED.format(created_at="$2::timestamptz")}
                  AND fields::text ~ '"(Body|body|MediaUrl|media_url|content_variables)'
                """,
                [row["id"] for row in blanked],
                min(row["created_at"] for row in blanked),
                BODY_KEYS,
            )
    return len(blanked)


async def restore_rows(connection: asyncpg.Connection, table: str, rows: Sequence[str]) -> int:
    """Put archived rows back, skipping those already there; how many were added. Counted in
    the rollups already, they are not counted again."""
    if table == "messages":
        query = """
            INSERT INTO messages
            SELECT r.* FROM unnest($1::text[]) AS j,
                            jsonb_populate_record(NULL::messages, j::jsonb) AS r
            ON CONFLICT (id) DO NOTHING
        """
    else:
        query = """
            INSERT INTO message_events
            SELECT r.* FROM unnest($1::text[]) AS j,
                            jsonb_populate_record(NULL::message_events, j::jsonb) AS r
            WHERE NOT EXISTS (SELECT 1 FROM message_events e
                              WHERE e.message_id = r.message_id AND e.id = r.id
                                AND e.received_at = r.received_at)
        """
    async with connection.transaction():
        await connection.execute("SET LOCAL status_tracker.retention = on")
        added: str = await connection.execute(query, list(rows))
    return int(added.split()[-1])


# --- Event Streams -----------------------------------------------------------------------------

# Each CloudEvent id of a batch is claimed once, in id order (two redeliveries of one batch then
# wait for each other instead of deadlocking); the ids returned are the ones new to the store.
CLAIM_STREAM_EVENTS = """
INSERT INTO stream_events (id, type, received_at, event)
SELECT e.id, e.type, $2, e.event
FROM json_to_recordset($1::json) AS e(id text, type text, event jsonb)
ORDER BY e.id
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# Batches posted at once (Event Streams posts several) that share messages would otherwise lock
# them in different orders and deadlock (a batch stores a message's reports in rounds, and
# creates new messages in random id order): each batch first takes a transaction lock per SID, in
# one order. Two-key advisory locks, in a space of their own: no hash can collide with the
# reconciliation's one-key lock.
STREAM_LOCKS = 0x5354_4553
LOCK_STREAM_SIDS = f"""
SELECT pg_advisory_xact_lock({STREAM_LOCKS}, key)
FROM (SELECT DISTINCT hashtext(sid) AS key FROM unnest($1::text[]) AS sid ORDER BY key) keys
"""


async def record_stream_batch(
    connection: asyncpg.Connection,
    received_at: datetime,
    claims: Sequence[tuple[str, str, dict[str, Any] | None]],
    reports: Mapping[str, StatusReport],
    inbound: Mapping[str, tuple[StatusReport, str | None]],
) -> set[str]:
    """Store an Event Streams batch in one transaction: claim every CloudEvent id (`claims`:
    id, type, and the whole event if the event log cannot hold it), then store the reports and
    inbound messages (by event id) of the ids claimed now. Returns those ids; a redelivered
    batch claims none and stores nothing."""
    document = orjson.dumps(
        [{"id": event_id, "type": kind, "event": event} for event_id, kind, event in claims]
    ).decode()
    sids = sorted(
        {report.sid for report in reports.values() if report.sid is not None}
        | {report.sid for report, _ in inbound.values() if report.sid is not None}
    )
    claimed: set[str] = set()

    new: list[StatusReport] = []
    outcomes: list[asyncpg.Record] = []

    async def store() -> None:
        nonlocal claimed, new
        outcomes.clear()
        async with connection.transaction():
            await connection.execute(LOCK_STREAM_SIDS, sids)
            rows = await connection.fetch(CLAIM_STREAM_EVENTS, document, received_at)
            claimed = {row["id"] for row in rows}
            new = [report for event_id, report in reports.items() if event_id in claimed]
            for batch in _record_reports_rounds(new):
                outcomes.extend(await connection.fetch(RECORD_REPORTS, batch))
            for event_id, (report, body) in inbound.items():
                if event_id in claimed:
                    await record_inbound(connection, report, body, None, source=report.source)

    await _run_again_if_a_sid_race_is_lost(store)
    _count(new, outcomes)  # messages made final, in the metrics
    return claimed


# --- Erasure -----------------------------------------------------------------------------------

ERASED = "<erased>"  # what takes the place of a number erased from a text (as in erase_number_in)


def erasure_statements() -> list[tuple[str, str]]:
    """What an erasure changes: (table, data-modifying statement returning one row per row it
    changed), run together as one statement (so all see the store as it was before).

    `erased` names the ids of the number's messages (to or from it). $1: the number's stored
    forms (text[]: every channel, plain and as STATUS_TRACKER_REDACT_NUMBERS=last4 stores it);
    $2: a regular expression that finds it inside a text; $3: a regular expression of the keys
    of personal members (bodies, media, names, places) of a JSON document.

    A table added later that holds numbers gets its statement here (message_rollups are
    scrubbed after these: see erase_number). opt_outs is kept as it is: it holds only hashes,
    and the opt-out must still hold if the number ever comes back (see README, Erasure)."""
    return [
        (
            "message_events",
            # The one change the append-only log allows, under status_tracker.erasure (see
            # erase_number): personal values of fields and query go, the rest stays.
            """
            UPDATE message_events SET fields = erase_number_in(fields, $2, $3),
                                      query = erase_number_in(query, $2, $3)
            WHERE message_id IN (SELECT id FROM erased) RETURNING 1
            """,
        ),
        (
            "messages",
            f"""
            UPDATE messages SET
                to_number = CASE WHEN to_number = ANY($1) THEN '{ERASED}' ELSE to_number END,
                from_number = CASE WHEN from_number = ANY($1) THEN '{ERASED}'
                                   ELSE from_number END,
                body = NULL, media_urls = NULL, content_variables = NULL, request_hash = NULL,
                reference = regexp_replace(reference, $2, '{ERASED}', 'g'),
                idempotency_key = regexp_replace(idempotency_key, $2, '{ERASED}', 'g'),
                metadata = erase_number_in(metadata, $2, NULL)
            WHERE id IN (SELECT id FROM erased) RETURNING 1
            """,
        ),
        (
            "webhook_events",
            # Outbound webhooks not yet delivered go without the number too.
            f"""
            UPDATE webhook_events SET payload = erase_number_in(payload, $2, $3),
                                      reference = regexp_replace(reference, $2, '{ERASED}', 'g')
            WHERE message_id IN (SELECT id FROM erased) RETURNING 1
            """,
        ),
        (
            "stream_events",
            # Event Streams events of types the event log does not hold, kept whole.
            """
            UPDATE stream_events SET event = erase_number_in(event, $2, $3)
            WHERE event::text ~ $2 RETURNING 1
            """,
        ),
        (
            "discrepancies",
            """
            UPDATE discrepancies SET detail = erase_number_in(detail, $2, $3)
            WHERE message_id IN (SELECT id FROM erased) OR detail::text ~ $2 RETURNING 1
            """,
        ),
        (
            "reconciliations",
            """
            UPDATE reconciliations SET errors = erase_number_in(errors, $2, NULL),
                                       resume = erase_number_in(resume, $2, NULL)
            WHERE errors::text ~ $2 OR resume::text ~ $2 RETURNING 1
            """,
        ),
    ]


async def erase_number(
    connection: asyncpg.Connection,
    *,
    addresses: Sequence[str],
    pattern: str,
    personal_keys: str,
    number_sha256: str,
    erased_by: str | None,
) -> asyncpg.Record:
    """Blank every stored trace of a number, in one transaction, and record it in `erasures`
    (by hash only); the audit record. See erasure_statements for the arguments."""
    statements = erasure_statements()
    changes = ",\n".join(f"changed_{table} AS ({sql})" for table, sql in statements)
    counts = ", ".join(
        f"'{table}', (SELECT count(*) FROM changed_{table})" for table, _ in statements
    )
    async with connection.transaction():
        # Lets the event log's trigger take this transaction's changes of fields and query.
        await connection.execute("SET LOCAL status_tracker.erasure = on")
        changed = await connection.fetchval(
            f"""
            WITH erased AS (
                SELECT id FROM messages WHERE to_number = ANY($1) OR from_number = ANY($1)
            ),
            {changes}
            SELECT jsonb_build_object({counts})
            """,
            list(addresses),
            pattern,
            personal_keys,
        )
        # The statement above moved the number's messages out of the rollups' `from` breakdown
        # (their triggers ran at its end); what the rollups still hold of it goes too, folded
        # into the erased sender's counts.
        await connection.execute(
            f"""
            UPDATE message_rollup_deltas SET value = '{ERASED}'
            WHERE breakdown = 'from' AND value = ANY($1)
            """,
            list(addresses),
        )
        rollups = 0
        for table, time, key in (
            ("message_rollups", "hour", "message_rollups_key"),
            ("message_rollups_daily", "day", "message_rollups_daily_key"),
        ):
            rollups += await connection.fetchval(
                f"""
                WITH gone AS (
                    DELETE FROM {table} WHERE breakdown = 'from' AND value = ANY($1)
                    RETURNING *
                ), folded AS (
                    INSERT INTO {table} AS r (
                        {time}, account_sid, breakdown, value, status, error_code,
                        delivery_bucket, messages
                    )
                    SELECT {time}, account_sid, breakdown, '{ERASED}', status, error_code,
                           delivery_bucket, sum(messages)
                    FROM gone GROUP BY {time}, account_sid, breakdown, status, error_code,
                                       delivery_bucket
                    ON CONFLICT ON CONSTRAINT {key}
                    DO UPDATE SET messages = r.messages + EXCLUDED.messages
                )
                SELECT count(*) FROM gone
                """,
                list(addresses),
            )
        record: asyncpg.Record = await connection.fetchrow(
            """
            INSERT INTO erasures (number_sha256, erased_by, counts)
            VALUES ($1, $2, $3::jsonb || jsonb_build_object('message_rollups', $4::bigint))
            RETURNING id, number_sha256, erased_at, erased_by, counts
            """,
            number_sha256,
            erased_by,
            changed,
            rollups,
        )
    return record
