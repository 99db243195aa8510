"""Outbound webhooks off the callback's path: the transaction that stores reports notes them,
and the delivery workers derive their events and deliveries right after.

With one endpoint attached, the outbox trigger of 2026_12_07_webhooks cost ingest about a fifth
of its throughput (`bench/ingest.py --webhook-endpoint`): for every report, in the callback's
transaction, it looked up the message and its previous status, numbered the event, built the
payload and wrote the event and its deliveries. Now:

- the trigger writes one `webhook_pending_reports` row per statement: the (message, event) ids
  of the reports it appended and their time span. It is written only while someone listens, in
  the very transaction of the reports, so `kill -9` at any moment loses nothing: what is
  committed is derived, by whichever process comes next.
- `webhook_derive_events(n)` takes the oldest of those rows, up to `n` reports, and does what
  the trigger did, in one statement, for all of them at once, then deletes them: in the same
  transaction, so each is derived exactly once. One call runs at a time (a transaction-level
  advisory lock; another caller returns 0 at once), and rows are taken in the order they were
  written. A message's rows are written in the order its row lock serialised them, so its events
  are judged and numbered in the order they were stored, as the trigger did; the events a call
  writes are committed together, in its transaction, for the stream to read in (xid, id) order.

A pending row is committed only with its reports and holds no personal data (ids and times).
Downgrade derives what is pending, then puts the previous trigger back.

Revision ID: 2026_12_13_webhooks_off_the_path
Revises: 2026_12_12_daily_rollups
Create Date: 2026-12-13
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "2026_12_13_webhooks_off_the_path"
down_revision = "2026_12_12_daily_rollups"
branch_labels = None
depends_on = None

# precedence.FINAL_STATUSES, as of this revision.
_FINAL = (
    "('canceled', 'failed', 'undelivered', 'partially_delivered', 'delivered', 'read', 'received')"
)
# Any constant: the key of the advisory lock that lets one derivation run at a time.
_DERIVING = 7_200_213_001

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    CREATE TABLE webhook_pending_reports (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_ids uuid[] NOT NULL,
        event_ids bigint[] NOT NULL,
        first_received_at timestamptz NOT NULL,
        last_received_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # The send's own `pending` record is never a change: not noted. One row per statement, and
    # none when nobody listens (two index probes, as before).
    """
    CREATE OR REPLACE FUNCTION webhook_outbox_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF webhook_listeners_exist() THEN
            INSERT INTO webhook_pending_reports (message_ids, event_ids, first_received_at,
                                                 last_received_at)
            SELECT array_agg(message_id ORDER BY id), array_agg(id ORDER BY id),
                   min(received_at), max(received_at)
            FROM new_events WHERE status <> 'pending'
            HAVING count(*) > 0;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    # The trigger's former statement, over the pending rows instead of one statement's new rows.
    # It is static, so PL/pgSQL plans it once per connection and keeps the plan (an ANALYZE of a
    # table it reads makes it plan again).
    #
    # A report that raised its message's status (as precedence.py ranks it, against every report
    # logged before it) is a `message.status_changed`, and also a `message.final` when it is the
    # first final status; the first `received` of an inbound message is a `message.inbound`.
    f"""
    CREATE FUNCTION webhook_derive_events(max_reports integer) RETURNS integer
    LANGUAGE plpgsql AS $$
    DECLARE
        derived integer;
    BEGIN
        IF NOT pg_try_advisory_xact_lock({_DERIVING}) THEN
            RETURN 0;
        END IF;
        WITH pending AS (
            -- The oldest notes up to `max_reports` reports (at least one note, whatever its size).
            DELETE FROM webhook_pending_reports WHERE id IN (
                SELECT id FROM (
                    SELECT id, cardinality(event_ids) AS reports,
                           sum(cardinality(event_ids)) OVER (ORDER BY id) AS running
                    FROM (SELECT id, event_ids FROM webhook_pending_reports
                          ORDER BY id LIMIT max_reports) oldest
                ) counted
                WHERE running - reports < max_reports)
            RETURNING id, message_ids, event_ids, first_received_at, last_received_at
        ),
        new_events AS (
            SELECT e.* FROM pending
            CROSS JOIN LATERAL unnest(pending.message_ids, pending.event_ids) AS r(message_id, id)
            -- A probe of the event log's index per event, in the partitions of the row's span.
            CROSS JOIN LATERAL (
                SELECT id, message_id, status, status_rank, error_code, source, received_at
                FROM message_events
                WHERE message_id = r.message_id AND id = r.id
                  AND received_at >= pending.first_received_at
                  AND received_at <= pending.last_received_at
                OFFSET 0
            ) e
        ),
        changes AS (
            SELECT e.id AS event_id, e.message_id, e.status, e.error_code, e.source,
                   e.received_at, previous.status AS previous_status, m.sid, m.reference,
                   m.metadata, m.direction, m.to_number, m.from_number, m.body, m.media_urls
            FROM new_events e
            -- A probe of the primary key per event (OFFSET 0 keeps it one): as a join, the plan
            -- kept for the session may hash the whole of `messages` for every call.
            CROSS JOIN LATERAL (
                SELECT created_at, sid, reference, metadata, direction, to_number, from_number,
                       body, media_urls
                FROM messages WHERE id = e.message_id OFFSET 0
            ) m
            LEFT JOIN LATERAL (
                -- Only the partitions of the event log since the message was created, up to
                -- the report's (a day's margin each way for clocks): not the days ahead.
                SELECT p.status, p.status_rank, p.error_code FROM message_events p
                WHERE p.message_id = e.message_id AND p.id < e.id
                  AND p.received_at >= m.created_at - interval '1 day'
                  AND p.received_at < e.received_at + interval '1 day'
                ORDER BY p.status_rank DESC, p.status COLLATE "C" DESC,
                         coalesce(p.error_code, -1) DESC
                LIMIT 1
            ) previous ON true
            WHERE previous.status IS NULL
               OR (e.status_rank, e.status COLLATE "C", coalesce(e.error_code, -1))
                  > (previous.status_rank, previous.status COLLATE "C",
                     coalesce(previous.error_code, -1))
        ),
        typed AS (
            SELECT c.*, kind.type FROM changes c
            CROSS JOIN LATERAL (VALUES
                (CASE WHEN c.source = 'inbound' THEN 'message.inbound'
                      ELSE 'message.status_changed' END),
                (CASE WHEN c.source <> 'inbound' AND c.status IN {_FINAL}
                           AND (c.previous_status IS NULL
                                OR c.previous_status NOT IN {_FINAL})
                      THEN 'message.final' END)
            ) AS kind(type)
            WHERE kind.type IS NOT NULL
        ),
        numbered AS (
            SELECT t.*,
                   coalesce((SELECT max(w.sequence) FROM webhook_events w
                             WHERE w.message_id = t.message_id), 0)
                   + row_number() OVER (PARTITION BY t.message_id
                                        ORDER BY t.event_id, t.type DESC) AS sequence
            FROM typed t
        ),
        events AS (
            INSERT INTO webhook_events (type, message_id, sequence, reference, payload)
            SELECT type, message_id, sequence, reference,
               jsonb_build_object(
                   'message_id', message_id, 'sid', sid, 'reference', reference,
                   'metadata', metadata, 'direction', direction, 'to', to_number,
                   'from', from_number, 'status', status, 'previous_status', previous_status,
                   'error_code', error_code, 'sequence', sequence,
                   'event', jsonb_build_object(
                       'id', event_id, 'status', status, 'error_code', error_code,
                       'source', source, 'received_at',
                       to_char(received_at AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
               || CASE WHEN type = 'message.inbound'
                       THEN jsonb_build_object('body', body, 'media_urls', media_urls)
                       ELSE '{{}}'::jsonb END
            FROM numbered
            ORDER BY message_id, sequence
            RETURNING id, type, reference
        ),
        fanned_out AS (
            INSERT INTO webhook_deliveries (endpoint_id, event_id)
            SELECT endpoint.id, event.id
            FROM events event
            JOIN webhook_endpoints endpoint
              ON endpoint.enabled AND event.type = ANY (endpoint.event_types)
             AND (endpoint.reference_prefix IS NULL
                  OR starts_with(coalesce(event.reference, ''), endpoint.reference_prefix))
            ORDER BY event.id, endpoint.id
        )
        SELECT coalesce(sum(cardinality(event_ids)), 0) INTO derived FROM pending;
        RETURN derived;
    END
    $$
    """,
)

DOWNGRADE = (
    # Waits for a derivation under way, then derives what is left (the lock is held already).
    f"""
    DO $$ BEGIN
        PERFORM pg_advisory_xact_lock({_DERIVING});
        WHILE webhook_derive_events(1000) > 0 LOOP END LOOP;
    END $$
    """,
    "DROP FUNCTION webhook_derive_events(integer)",
    "DROP TABLE webhook_pending_reports",
)


def _previous_trigger_function() -> str:
    """The outbox trigger's function as 2026_12_07_webhooks made it."""
    path = Path(__file__).with_name("2026_12_07_webhooks.py")
    spec = importlib.util.spec_from_file_location("webhooks_revision", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (statement,) = (s for s in module.UPGRADE if "CREATE FUNCTION webhook_outbox_events()" in s)
    return str(statement).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
    op.execute(_previous_trigger_function())
